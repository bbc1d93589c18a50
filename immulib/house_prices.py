"""House Prices (Kaggle's ``train.csv``): reading it safely, the D_P/D_H split and the authors' preprocessing.

The file is found and verified (size and SHA-256 of Kaggle's ``train.csv``) by
:mod:`immulib.files`. :func:`read_train_csv` then checks that it parses as House Prices: 81 fields
on every row, the 38 numeric columns numeric, both targets present and positive, so that a damaged
copy is an error that names the file, the row and the column, never a wrong number.

When the file is nowhere, :func:`download_train_csv` rebuilds it from OpenML's copy (dataset
42165) with plain ``urllib`` and a timeout, writes it in Kaggle's format and keeps it only if its
SHA-256 is Kaggle's.

Chapters: {ref}`ch-condition-numbers` (the data's κ) and {ref}`ch-house-prices` (immunization).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._validate import choice, integer
from .files import DamagedFileError, fetch, install, locate, resolve_timeout, say

__all__ = [
    "HOUSE_PRICES_OPENML_ID",
    "HOUSE_PRICE_COLUMNS",
    "NUMERIC_COLUMNS",
    "OPENML_URL",
    "SETUPS",
    "HousePrices",
    "download_train_csv",
    "house_price_split",
    "load_house_prices",
    "read_train_csv",
    "well_posed_columns",
]

#: OpenML's copy of Kaggle's House Prices ``train.csv`` (dataset "house_prices"), and its server.
HOUSE_PRICES_OPENML_ID = 42165
OPENML_URL = "https://api.openml.org"

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

#: The columns that hold numbers in Kaggle's file (all integers; the three marked may be NA).
NUMERIC_COLUMNS: tuple[str, ...] = tuple(
    "Id,MSSubClass,LotFrontage,LotArea,OverallQual,OverallCond,YearBuilt,YearRemodAdd,MasVnrArea,"
    "BsmtFinSF1,BsmtFinSF2,BsmtUnfSF,TotalBsmtSF,1stFlrSF,2ndFlrSF,LowQualFinSF,GrLivArea,"
    "BsmtFullBath,BsmtHalfBath,FullBath,HalfBath,BedroomAbvGr,KitchenAbvGr,TotRmsAbvGrd,"
    "Fireplaces,GarageYrBlt,GarageCars,GarageArea,WoodDeckSF,OpenPorchSF,EnclosedPorch,3SsnPorch,"
    "ScreenPorch,PoolArea,MiscVal,MoSold,YrSold,SalePrice".split(",")
)
NULLABLE_NUMERIC = ("LotFrontage", "MasVnrArea", "GarageYrBlt")

#: Targets: D_P predicts LotArea, D_H predicts SalePrice (paper §5.1).
TARGET_P, TARGET_H = "LotArea", "SalePrice"
SETUPS = ("authors", "well_posed")

#: Relative residual below which a column counts as in the span of the columns kept before it.
COLLINEAR_RTOL = 1e-8

_NUMBER = re.compile(r"-?\d+(\.\d+)?")


# --------------------------------------------------------------------------------------------
# reading and checking train.csv


def _check_rows(path: Path, text: str) -> None:
    """Raise ValueError naming the file, line and column of the first thing that is not House Prices."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(header) != HOUSE_PRICE_COLUMNS:
        raise ValueError(
            f"{path}: line 1 is not the header of Kaggle's House Prices train.csv "
            f"(expected the 81 columns Id, MSSubClass, ..., SalePrice)"
        )
    numeric = [HOUSE_PRICE_COLUMNS.index(c) for c in NUMERIC_COLUMNS]
    rows = 0
    for rows, row in enumerate(reader, start=1):
        line = reader.line_num
        if len(row) != len(HOUSE_PRICE_COLUMNS):
            raise ValueError(
                f"{path}: line {line} (data row {rows}) has {len(row)} fields, expected "
                f"{len(HOUSE_PRICE_COLUMNS)}: the file is truncated or damaged"
            )
        for j in numeric:
            value, col = row[j], HOUSE_PRICE_COLUMNS[j]
            if value == "NA" and col in NULLABLE_NUMERIC:
                continue
            if value in ("", "NA") and col in (TARGET_P, TARGET_H):
                raise ValueError(
                    f"{path}: line {line} (data row {rows}): the target {col} is missing"
                )
            if not _NUMBER.fullmatch(value):
                raise ValueError(
                    f"{path}: line {line} (data row {rows}): {col} = {value!r} is not a number"
                )
            if col in (TARGET_P, TARGET_H) and not float(value) > 0:
                raise ValueError(
                    f"{path}: line {line} (data row {rows}): the target {col} = {value!r} must be > 0"
                )
    if rows == 0:
        raise ValueError(f"{path}: the file has a header but no rows")


def read_train_csv(path: str | os.PathLike):
    """Read a House Prices ``train.csv`` into a DataFrame after checking that it parses as one.

    Raises ``ValueError`` naming the file, the line and the column for a wrong header, a row with
    the wrong number of fields (a truncated file), a non-number in a numeric column (such as a
    price written ``12,000``) or a missing or non-positive target. The frame is what
    ``pandas.read_csv`` returns, as in the authors' code. This does not check the fingerprint;
    :func:`load_house_prices` and :func:`immulib.files.locate` do.

    Chapter: {ref}`ch-house-prices`.
    """
    import pandas as pd

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text file ({err})") from None
    _check_rows(path, text)
    return pd.read_csv(io.StringIO(text))


def _locate_train(data_dir, download: bool, timeout) -> Path:
    try:
        return locate(
            "house_price", "train.csv", data_dir, download=download, timeout=timeout
        )
    except DamagedFileError as err:
        detail = ""
        if err.path is not None:
            try:
                _check_rows(
                    err.path, err.path.read_text(encoding="utf-8", errors="replace")
                )
            except ValueError as why:
                detail = f" First problem found: {why}."
        raise DamagedFileError(str(err) + detail, path=err.path) from None


# --------------------------------------------------------------------------------------------
# the download from OpenML


def _arff_rows(text: str) -> tuple[list[str], list[bool], list[list[str]]]:
    """Attribute names, whether each is numeric, and the data rows of a dense ARFF file."""
    names, numeric, data_at = [], [], None
    lines = text.splitlines()
    attr = re.compile(
        r"""@attribute\s+('(?:[^']*)'|"(?:[^"]*)"|\S+)\s+(.+)""", re.IGNORECASE
    )
    for i, line in enumerate(lines):
        s = line.strip()
        if not s or s.startswith("%"):
            continue
        if s.lower().startswith("@data"):
            data_at = i + 1
            break
        m = attr.match(s)
        if m:
            names.append(m.group(1).strip("'\""))
            numeric.append(m.group(2).strip().lower() in ("numeric", "real", "integer"))
    if data_at is None:
        raise OSError("OpenML's file is not an ARFF file (no @data section)")
    body = [s for s in lines[data_at:] if s.strip() and not s.lstrip().startswith("%")]
    if body and body[0].lstrip().startswith("{"):
        raise OSError("OpenML's file is a sparse ARFF file; expected a dense one")
    rows = [
        [v.strip().strip('"') for v in r]
        for r in csv.reader(body, quotechar="'", skipinitialspace=True)
    ]
    return names, numeric, rows


def _kaggle_csv(names: list[str], numeric: list[bool], rows: list[list[str]]) -> bytes:
    """The rows written as Kaggle writes train.csv: no quotes, ``NA`` for missing, integers as integers."""
    if tuple(names) != HOUSE_PRICE_COLUMNS:
        raise OSError(
            "OpenML's house_prices does not have the 81 columns of Kaggle's train.csv"
        )
    out = [",".join(names)]
    for row in rows:
        if len(row) != len(names):
            raise OSError(
                f"OpenML's house_prices has a row with {len(row)} fields, expected {len(names)}"
            )
        cells = []
        for value, is_num in zip(row, numeric, strict=True):
            if value in ("?", ""):
                cells.append("NA")
            elif is_num and float(value).is_integer():
                cells.append(str(int(float(value))))
            else:
                cells.append(value)
        out.append(",".join(cells))
    return ("\n".join(out) + "\n").encode("utf-8")


def download_train_csv(
    target: str | os.PathLike, *, timeout: float | None = None
) -> Path:
    """Rebuild Kaggle's ``train.csv`` at ``target`` from OpenML's dataset 42165, with a timeout.

    Asks ``OPENML_URL`` for the dataset's description, downloads its ARFF file (checked against
    the MD5 OpenML publishes), writes the rows in Kaggle's format to a temporary file next to
    ``target`` and renames it into place only if its size and SHA-256 are those of Kaggle's
    ``train.csv``. Every request prints its URL and gives up after ``timeout`` seconds of silence
    (``TimeoutError``); any other failure is an ``OSError`` that says what went wrong.

    Chapter: {ref}`ch-house-prices`.
    """
    timeout = resolve_timeout(timeout)
    target = Path(target)
    url = f"{OPENML_URL}/api/v1/json/data/{HOUSE_PRICES_OPENML_ID}"
    try:
        desc = json.loads(
            fetch(url, timeout=timeout, what="the description of OpenML dataset 42165")
        )
        desc = desc["data_set_description"]
        arff_url = desc["url"]
    except (ValueError, KeyError, TypeError) as err:
        raise OSError(f"{url}: not an OpenML dataset description ({err})") from None
    arff = fetch(
        arff_url, timeout=timeout, what="house_price/train.csv (OpenML's ARFF copy)"
    )
    md5 = desc.get("md5_checksum")
    if md5 and hashlib.md5(arff).hexdigest() != md5:
        raise OSError(
            f"{arff_url}: MD5 {hashlib.md5(arff).hexdigest()} != {md5} published by OpenML"
        )
    body = _kaggle_csv(*_arff_rows(arff.decode("utf-8")))
    install(target, lambda tmp: tmp.write_bytes(body), "house_price", "train.csv")
    say(f"verified and saved {target}")
    return target


# --------------------------------------------------------------------------------------------
# the immunization task


@dataclass(frozen=True)
class HousePrices:
    """The House Prices immunization task (paper §5.1), as float64 arrays.

    ``XP``/``yP``: D_P, houses with MSZoning ≠ RL, target LotArea. ``XH``/``yH``: D_H, houses
    with MSZoning = RL, target SalePrice. ``*_val`` hold the validation rows.

    Chapter: {ref}`ch-house-prices`.
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
    Chapter: {ref}`ch-house-prices`.
    """
    import pandas as pd

    if not isinstance(train, pd.DataFrame):
        raise TypeError(f"train must be a pandas DataFrame, got {type(train).__name__}")
    if "MSZoning" not in train.columns:
        raise ValueError(
            "train has no MSZoning column: it is not Kaggle's House Prices train.csv"
        )
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

    for col in (TARGET_P, TARGET_H):
        if not pd.api.types.is_numeric_dtype(frame[col]) or frame[col].isna().any():
            raise ValueError(
                f"the target column {col} must be numbers with no missing value"
            )
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
    timeout: float | None = None,
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

    ``train.csv`` is found as :func:`immulib.files.locate` says, checked against the fingerprint
    of Kaggle's file and parsed by :func:`read_train_csv`; a damaged file is a ``ValueError``
    that names it. Chapter: {ref}`ch-house-prices`.
    """
    choice(setup, "setup", SETUPS)
    n_train = integer(n_train, "n_train", minimum=1)
    n_val = integer(n_val, "n_val", minimum=0)
    train = read_train_csv(_locate_train(data_dir, download, timeout))
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


def well_posed_columns(
    XP: np.ndarray, XH: np.ndarray, *, rtol: float = COLLINEAR_RTOL
) -> list[int]:
    """Indices of the columns kept by the ``well_posed`` House Prices setup (the same for both tasks).

    The rule, applied to the training rows: (1) drop every column that is constant in X_P or in
    X_H; (2) walk the remaining columns in their order and drop a column if, in X_P or in X_H, it
    lies in the span of the columns kept before it (least-squares residual ≤ ``rtol`` times its
    norm). Rule (1) removes the all-zero columns of the per-file z-score (MSZoning, Utilities,
    PoolQC, ...); rule (2) removes exact sums such as TotalBsmtSF = BsmtFinSF1 + BsmtFinSF2 +
    BsmtUnfSF and GrLivArea = 1stFlrSF + 2ndFlrSF + LowQualFinSF, which come after their parts.
    What is left has full column rank in both tasks. Chapter: {ref}`ch-house-prices`.
    """
    XP, XH = np.asarray(XP, dtype=np.float64), np.asarray(XH, dtype=np.float64)
    if XP.ndim != 2 or XH.ndim != 2 or XP.shape[1] != XH.shape[1]:
        raise ValueError(
            f"XP and XH must be 2-d with the same columns, got {XP.shape} and {XH.shape}"
        )
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
