"""The book's datasets under one name: a thin front over the modules that do the work.

* :mod:`immulib.files`: where files are found (``data_dir`` → ``$IMMULIB_DATA`` → cache →
  download), their fingerprints (checked on every load), downloads with timeouts.
* :mod:`immulib.house_prices`: Kaggle's House Prices ``train.csv``, the D_P/D_H split and the
  authors' preprocessing.
* :mod:`immulib.images`: MNIST, Fashion-MNIST and scikit-learn's 8×8 digits.

Every public name that used to live here is still importable from here.
"""

from __future__ import annotations

from .files import (
    CACHE_ENV_VAR,
    DEFAULT_TIMEOUT,
    ENV_VAR,
    FINGERPRINTS,
    TIMEOUT_ENV_VAR,
    DamagedFileError,
    Fingerprint,
    cache_dir,
    locate,
    verify,
)
from .house_prices import (
    COLLINEAR_RTOL,
    HOUSE_PRICE_COLUMNS,
    HOUSE_PRICES_OPENML_ID,
    SETUPS,
    TARGET_H,
    TARGET_P,
    HousePrices,
    house_price_split,
    load_house_prices,
    read_train_csv,
    well_posed_columns,
)
from .images import (
    MIRRORS,
    MNIST_MEAN,
    MNIST_STD,
    SPLITS,
    ImageSet,
    digit_pair,
    load_digits_8x8,
    load_fashion_mnist,
    load_mnist,
)

__all__ = [
    "CACHE_ENV_VAR",
    "COLLINEAR_RTOL",
    "DEFAULT_TIMEOUT",
    "ENV_VAR",
    "FINGERPRINTS",
    "HOUSE_PRICES_OPENML_ID",
    "HOUSE_PRICE_COLUMNS",
    "MIRRORS",
    "MNIST_MEAN",
    "MNIST_STD",
    "SETUPS",
    "SPLITS",
    "TARGET_H",
    "TARGET_P",
    "TIMEOUT_ENV_VAR",
    "DamagedFileError",
    "Fingerprint",
    "HousePrices",
    "ImageSet",
    "cache_dir",
    "digit_pair",
    "house_price_split",
    "load_digits_8x8",
    "load_fashion_mnist",
    "load_house_prices",
    "load_mnist",
    "locate",
    "read_train_csv",
    "verify",
    "well_posed_columns",
]
