"""Datasets used in the book: House Prices, MNIST, Fashion-MNIST, and scikit-learn's 8×8 digits.

Where files come from
---------------------
Every loader looks for its files in one order, the same everywhere:

1. the ``data_dir`` argument, if given;
2. the folder named by the ``IMMULIB_DATA`` environment variable, if set;
3. the per-user cache folder, :func:`cache_dir` (``$IMMULIB_CACHE``, else
   ``$XDG_CACHE_HOME/immulib``, else ``~/.cache/immulib``);
4. a download into that cache folder (MNIST and Fashion-MNIST from their public mirrors,
   House Prices from OpenML through scikit-learn), unless ``download=False``.

In each folder a file is looked up as ``<folder>/<dataset>/<file>`` (the layout of the project's
data folder: ``house_price/train.csv``, ``mnist/train-images-idx3-ubyte.gz``, ...) and then as
``<folder>/<file>``. Image files are checked against the canonical MD5 of their decompressed
bytes wherever they were found, so a corrupt or truncated file is an error, never a wrong number.
When nothing is found and downloading is off or fails, the error names the missing file and the
places where it may be put.

Nothing here runs at import time.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "ENV_VAR",
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
    "well_posed_columns",
]

ENV_VAR = "IMMULIB_DATA"
CACHE_ENV_VAR = "IMMULIB_CACHE"

#: Public mirrors, tried in order. Tests replace these with ``file://`` folders.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    ),
}

#: MD5 of the *decompressed* IDX files (the canonical values; gzip bytes differ between mirrors).
RAW_MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

#: OpenML's copy of Kaggle's House Prices ``train.csv`` (dataset "house_prices").
HOUSE_PRICES_OPENML_ID = 42165

#: The 81 columns of Kaggle's ``train.csv``, in order.
HOUSE_PRICE_COLUMNS: tuple[str, ...] = tuple(
    "Id,MSSubClass,MSZoning,LotFrontage,LotArea,Street,Alley,LotShape,LandContour,Utilities,"
    "LotConfig,LandSlope,Neighborhood,Condition1,Condition2,BldgType,HouseStyle,OverallQual,"
    "OverallCond,YearBuilt,YearRemodAdd,RoofStyle,RoofMatl,Exterior1st,Exterior2nd,MasVnrType,"
    "MasVnrArea,ExterQual,ExterCond,Foundation,BsmtQual,BsmtCond,BsmtExposure,BsmtFinType1,"
    "BsmtFinSF1,BsmtFinType2,BsmtFinSF2,BsmtUnfSF,TotalBsmtSF,Heating,HeatingQC,CentralAir,"
    "Electrical,1stFlrSF,2ndFlrSF,LowQualFinSF,GrLivArea,BsmtFullBath,BsmtHalfBath,FullBath,"
    "HalfBath,BedroomAbvGr,KitchenAbvGr,KitchenQual,TotRmsAbvGrd,Functional,Fireplaces,"
    "FireplaceQu,GarageType,GarageYrBlt,GarageFinish,GarageCars,GarageArea,GarageQual,GarageCond,"
    "PavedDrive,WoodDeckSF,OpenPorchSF,EnclosedPorch,3SsnPorch,ScreenPorch,PoolArea,PoolQC,Fence,"
    "MiscFeature,MiscVal,MoSold,YrSold,SaleType,SaleCondition,SalePrice".split(",")
)
#: Fingerprint of Kaggle's train.csv, checked after a download: (rows, sum of LotArea, sum of SalePrice).
HOUSE_PRICE_FINGERPRINT = (1460, 15_354_569, 264_144_946)

#: Targets: D_P predicts LotArea, D_H predicts SalePrice (paper §5.1).
TARGET_P, TARGET_H = "LotArea", "SalePrice"
SPLITS = ("train", "test")
SETUPS = ("authors", "well_posed")

#: Relative residual below which a column counts as in the span of the columns kept before it.
COLLINEAR_RTOL = 1e-8


# --------------------------------------------------------------------------------------------
# Finding files
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The per-user cache folder: ``$IMMULIB_CACHE``, ``$XDG_CACHE_HOME/immulib`` or ``~/.cache/immulib``."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "immulib"


def _search_roots(data_dir) -> list[tuple[str, Path]]:
    roots: list[tuple[str, Path]] = []
    if data_dir is not None:
        if not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"data_dir must be a path or None, got {type(data_dir).__name__}")
        roots.append(("data_dir argument", Path(data_dir).expanduser()))
    if os.environ.get(ENV_VAR):
        roots.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR]).expanduser()))
    roots.append(("cache", cache_dir()))
    return roots


def locate(dataset: str, name: str, data_dir=None, *, download: bool = True) -> Path:
    """Find ``<dataset>/<name>`` in the search order of this module, downloading it if allowed.

    Raises ``FileNotFoundError`` naming the file and where to put it when it is nowhere and
    cannot be downloaded.
    """
    roots = _search_roots(data_dir)
    for _, root in roots:
        for candidate in (root / dataset / name, root / name):
            if candidate.is_file():
                return candidate
    target = cache_dir() / dataset / name
    problem = "downloading is off (download=False)"
    if download:
        try:
            _download(dataset, name, target)
            return target
        except OSError as err:  # URLError, timeouts and HTTP errors are OSErrors
            problem = f"the download failed ({err})"
    searched = "\n".join(f"  - {label}: {root / dataset / name}" for label, root in roots)
    raise FileNotFoundError(
        f"{dataset}/{name} is missing and {problem}.\nSearched:\n{searched}\n"
        f"Put the file at one of these places, e.g. set {ENV_VAR}=/path/to/data and copy it to "
        f"/path/to/data/{dataset}/{name}, or pass data_dir=."
    )


def _download(dataset: str, name: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if dataset == "house_price":
        _download_house_prices(target)
        return
    errors = []
    for base in MIRRORS[dataset]:
        url = base + name
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, tempfile.NamedTemporaryFile(
                dir=target.parent, delete=False
            ) as tmp:
                shutil.copyfileobj(resp, tmp)
            _check_idx_md5(Path(tmp.name), dataset, name, source=url)
            os.replace(tmp.name, target)
            return
        except (OSError, ValueError) as err:
            errors.append(f"{url}: {err}")
            if "tmp" in locals() and os.path.exists(tmp.name):
                os.unlink(tmp.name)
    raise OSError("no mirror worked: " + "; ".join(errors))


def _download_house_prices(target: Path) -> None:
    """Fetch Kaggle's train.csv from OpenML through scikit-learn and write it as CSV."""
    from sklearn.datasets import fetch_openml

    try:
        bunch = fetch_openml(
            data_id=HOUSE_PRICES_OPENML_ID,
            as_frame=True,
            parser="auto",
            data_home=str(target.parent / "openml"),
        )
    except Exception as err:  # scikit-learn wraps network errors in several types
        raise OSError(f"OpenML dataset {HOUSE_PRICES_OPENML_ID}: {err}") from err
    frame = bunch.frame
    missing = [c for c in HOUSE_PRICE_COLUMNS if c not in frame.columns]
    if missing:
        raise OSError(f"OpenML's house_prices lacks the columns {missing}")
    frame = frame[list(HOUSE_PRICE_COLUMNS)]
    fingerprint = (len(frame), int(frame[TARGET_P].sum()), int(frame[TARGET_H].sum()))
    if fingerprint != HOUSE_PRICE_FINGERPRINT:
        raise OSError(
            f"OpenML's house_prices does not match Kaggle's train.csv "
            f"(rows, ΣLotArea, ΣSalePrice) = {fingerprint}, expected {HOUSE_PRICE_FINGERPRINT}"
        )
    frame.to_csv(target, index=False)


# --------------------------------------------------------------------------------------------
# Image datasets
# --------------------------------------------------------------------------------------------


class ImageSet(NamedTuple):
    """Images (N × H × W, uint8) and their labels (N, uint8)."""

    images: np.ndarray
    labels: np.ndarray


def _read_gz(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable gzip file ({err})") from err


def _check_idx_md5(path: Path, dataset: str, name: str, *, source=None) -> bytes:
    raw = _read_gz(path)
    digest = hashlib.md5(raw).hexdigest()
    expected = RAW_MD5[dataset][name]
    if digest != expected:
        raise ValueError(
            f"{source or path}: decompressed MD5 {digest} != expected {expected} for "
            f"{dataset}/{name}; the file is corrupt or not the canonical one. Delete it and retry."
        )
    return raw


def _parse_idx(raw: bytes, name: str) -> np.ndarray:
    magic = int.from_bytes(raw[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise ValueError(f"{name}: not an unsigned-byte IDX file (magic {magic})")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _load_idx_pair(dataset: str, split: str, data_dir, download: bool) -> ImageSet:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    arrays = []
    for kind in ("images-idx3", "labels-idx1"):
        name = f"{prefix}-{kind}-ubyte.gz"
        path = locate(dataset, name, data_dir, download=download)
        arrays.append(_parse_idx(_check_idx_md5(path, dataset, name), name))
    images, labels = arrays
    if len(images) != len(labels):
        raise ValueError(f"{dataset} {split}: {len(images)} images but {len(labels)} labels")
    return ImageSet(images, labels)


def load_mnist(split: str = "train", *, data_dir=None, download: bool = True) -> ImageSet:
    """MNIST digits: 60,000 training or 10,000 test images, 28×28 uint8, labels 0–9."""
    return _load_idx_pair("mnist", split, data_dir, download)


def load_fashion_mnist(split: str = "train", *, data_dir=None, download: bool = True) -> ImageSet:
    """Fashion-MNIST: 60,000 training or 10,000 test images, 28×28 uint8, labels 0–9."""
    return _load_idx_pair("fashion_mnist", split, data_dir, download)


def load_digits_8x8() -> ImageSet:
    """scikit-learn's 1,797 handwritten digits (8×8, values 0–16 as uint8): tiny and offline."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return ImageSet(d.images.astype(np.uint8), d.target.astype(np.uint8))


def digit_pair(data: ImageSet, a: int, b: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images of class ``a`` (for D_P) and of class ``b`` (for D_H), balanced in count.

    As in the authors' code, both classes are subsampled at random to the smaller class's count.
    Returns two uint8 arrays of equal length; ``seed`` makes the subsample reproducible.
    """
    if not isinstance(data, ImageSet):
        raise TypeError(f"data must be an ImageSet, got {type(data).__name__}")
    classes = set(np.unique(data.labels).tolist())
    for arg, c in (("a", a), ("b", b)):
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise TypeError(f"{arg} must be an int class label, got {type(c).__name__}")
        if int(c) not in classes:
            raise ValueError(f"{arg}={c} is not a label of this dataset ({sorted(classes)})")
    if a == b:
        raise ValueError(f"a and b must be different classes, got a = b = {a}")
    idx_a = np.flatnonzero(data.labels == a)
    idx_b = np.flatnonzero(data.labels == b)
    n = min(len(idx_a), len(idx_b))
    rng = np.random.default_rng(seed)
    idx_a = np.sort(rng.choice(idx_a, n, replace=False))
    idx_b = np.sort(rng.choice(idx_b, n, replace=False))
    return data.images[idx_a], data.images[idx_b]


# --------------------------------------------------------------------------------------------
# House Prices
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HousePrices:
    """The House Prices immunization task (paper §5.1), as float64 arrays.

    ``XP``/``yP``: D_P, houses with MSZoning ≠ RL, target LotArea. ``XH``/``yH``: D_H, houses
    with MSZoning = RL, target SalePrice. ``*_val`` hold the validation rows.
    """

    XP: np.ndarray
    yP: np.ndarray
    XH: np.ndarray
    yH: np.ndarray
    XP_val: np.ndarray
    yP_val: np.ndarray
    XH_val: np.ndarray
    yH_val: np.ndarray
    feature_names: tuple[str, ...]
    setup: str


def house_price_split(train):
    """Split Kaggle's ``train.csv`` frame into (D1, D2): MSZoning ≠ "RL" and MSZoning == "RL".

    Row order and index follow ``train``; these are the authors' ``D1.csv`` and ``D2.csv``.
    """
    import pandas as pd

    if not isinstance(train, pd.DataFrame):
        raise TypeError(f"train must be a pandas DataFrame, got {type(train).__name__}")
    if "MSZoning" not in train.columns:
        raise ValueError("train has no MSZoning column: it is not Kaggle's House Prices train.csv")
    rl = train["MSZoning"] == "RL"
    return train[~rl].reset_index(drop=True), train[rl].reset_index(drop=True)


def _authors_preprocess(frame, target: str):
    """The authors' preprocessing of one file: NaN → 0, label-encode text, z-score (ddof=1).

    Every text column is encoded with its own sorted category list *within this file* (so a
    category's code can differ between D_P and D_H), exactly as scikit-learn's LabelEncoder
    on ``astype(str)`` does. Features and target are z-scored with this file's mean and sample
    standard deviation (a zero std is replaced by 1), over all rows of the file.
    """
    import pandas as pd

    frame = frame.copy()
    for col in frame.columns:
        if pd.api.types.is_numeric_dtype(frame[col]):
            frame[col] = frame[col].fillna(0)
        else:  # NaN becomes the text "0", as fillna(0).astype(str) does in the authors' code
            text = frame[col].astype(object).where(frame[col].notna(), 0).astype(str)
            _, codes = np.unique(text.to_numpy(), return_inverse=True)
            frame[col] = codes
    features = [c for c in frame.columns if c not in (TARGET_P, TARGET_H)]
    X = frame[features].to_numpy(dtype=np.float64)
    mean, std = X.mean(axis=0), X.std(axis=0, ddof=1)
    std[std == 0] = 1.0
    y = frame[target].to_numpy(dtype=np.float64)
    y_std = y.std(ddof=1) or 1.0
    return (X - mean) / std, (y - y.mean()) / y_std, tuple(features)


def load_house_prices(
    *,
    setup: str = "authors",
    n_train: int = 200,
    n_val: int = 100,
    data_dir=None,
    download: bool = True,
) -> HousePrices:
    """House Prices as D_P (MSZoning ≠ RL, target LotArea) and D_H (MSZoning = RL, target SalePrice).

    ``setup="authors"`` reproduces the preprocessing of the authors' released code (paper_notes
    §4.2): per file, NaN → 0, label encoding of every text column, z-score of the 79 features
    (all columns except LotArea and SalePrice, Id and MSZoning included) and of the target with
    that file's statistics; rows 0 … n_train−1 of each file are the training set and the next
    ``n_val`` rows the validation set (200 and 100 in the paper's code).

    ``setup="well_posed"``: the same rows and values, with the columns chosen by
    :func:`well_posed_columns` on the training rows removed from both tasks, so that K_P and K_H
    are full rank (rank = number of columns) and the κ conventions agree.
    """
    import pandas as pd

    if setup not in SETUPS:
        raise ValueError(f"setup must be one of {SETUPS}, got {setup!r}")
    for arg, v in (("n_train", n_train), ("n_val", n_val)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{arg} must be an int, got {type(v).__name__}")
    if n_train < 1 or n_val < 0:
        raise ValueError(f"need n_train >= 1 and n_val >= 0, got {n_train} and {n_val}")
    train = pd.read_csv(locate("house_price", "train.csv", data_dir, download=download))
    if tuple(train.columns) != HOUSE_PRICE_COLUMNS:
        raise ValueError("train.csv does not have the 81 columns of Kaggle's House Prices train.csv")
    d1, d2 = house_price_split(train)
    if n_train + n_val > min(len(d1), len(d2)):
        raise ValueError(
            f"n_train + n_val = {n_train + n_val} exceeds the {min(len(d1), len(d2))} rows of D_P"
        )
    XP, yP, names = _authors_preprocess(d1, TARGET_P)
    XH, yH, _ = _authors_preprocess(d2, TARGET_H)
    tr, va = slice(0, n_train), slice(n_train, n_train + n_val)
    if setup == "well_posed":
        keep = well_posed_columns(XP[tr], XH[tr])
        XP, XH, names = XP[:, keep], XH[:, keep], tuple(names[j] for j in keep)
    return HousePrices(
        XP[tr], yP[tr], XH[tr], yH[tr], XP[va], yP[va], XH[va], yH[va], names, setup
    )


def well_posed_columns(XP: np.ndarray, XH: np.ndarray, *, rtol: float = COLLINEAR_RTOL) -> list[int]:
    """Indices of the columns kept by the ``well_posed`` House Prices setup (the same for both tasks).

    The rule, applied to the training rows: (1) drop every column that is constant in X_P or in
    X_H; (2) walk the remaining columns in their order and drop a column if, in X_P or in X_H, it
    lies in the span of the columns kept before it (least-squares residual ≤ ``rtol`` times its
    norm). Rule (1) removes the all-zero columns of the per-file z-score (MSZoning, Utilities,
    PoolQC, ...); rule (2) removes exact sums such as TotalBsmtSF = BsmtFinSF1 + BsmtFinSF2 +
    BsmtUnfSF and GrLivArea = 1stFlrSF + 2ndFlrSF + LowQualFinSF, which come after their parts.
    What is left has full column rank in both tasks. Chapter: "Immunizing a linear model: House Prices".
    """
    XP, XH = np.asarray(XP, dtype=np.float64), np.asarray(XH, dtype=np.float64)
    if XP.ndim != 2 or XH.ndim != 2 or XP.shape[1] != XH.shape[1]:
        raise ValueError(f"XP and XH must be 2-d with the same columns, got {XP.shape} and {XH.shape}")
    keep: list[int] = []
    for j in range(XP.shape[1]):
        if any(np.ptp(X[:, j]) == 0 for X in (XP, XH)):
            continue
        if keep and any(_in_span(X[:, keep], X[:, j], rtol) for X in (XP, XH)):
            continue
        keep.append(j)
    return keep


def _in_span(A: np.ndarray, x: np.ndarray, rtol: float) -> bool:
    resid = x - A @ np.linalg.lstsq(A, x, rcond=None)[0]
    return bool(np.linalg.norm(resid) <= rtol * np.linalg.norm(x))
