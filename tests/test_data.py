"""immulib.data: resolution order, checksums, errors, and the datasets' contents."""

import gzip
import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest

from immulib import data

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ------------------------------------------------------------------ resolution order and errors


def _touch(folder, dataset, name, text="x"):
    path = folder / dataset / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_resolution_order_argument_then_env_then_cache(isolated_data, monkeypatch):
    tmp = isolated_data
    fp = data.Fingerprint(1, hashlib.sha256(b"x").hexdigest())
    monkeypatch.setitem(data.FINGERPRINTS, ("mnist", "f.gz"), fp)
    in_cache = _touch(tmp / "cache", "mnist", "f.gz")
    assert data.locate("mnist", "f.gz", download=False) == in_cache
    in_env = _touch(tmp / "env", "mnist", "f.gz")
    monkeypatch.setenv(data.ENV_VAR, str(tmp / "env"))
    assert data.locate("mnist", "f.gz", download=False) == in_env
    in_arg = _touch(tmp / "arg", "mnist", "f.gz")
    assert data.locate("mnist", "f.gz", tmp / "arg", download=False) == in_arg
    # a flat folder (the file directly inside data_dir) works too
    flat = tmp / "flat"
    flat.mkdir()
    (flat / "f.gz").write_text("x")
    assert data.locate("mnist", "f.gz", flat, download=False) == flat / "f.gz"


def test_missing_and_offline_names_the_file_and_where_to_put_it(isolated_data):
    with pytest.raises(FileNotFoundError) as info:
        data.load_mnist("train", download=False)
    msg = str(info.value)
    assert "mnist/train-images-idx3-ubyte.gz" in msg and "download=False" in msg
    assert data.ENV_VAR in msg and str(isolated_data / "cache") in msg


def test_failed_download_is_reported(isolated_data, monkeypatch):
    monkeypatch.setitem(data.MIRRORS, "mnist", ("file:///nonexistent/mirror/",))
    with pytest.raises(FileNotFoundError, match="the download failed"):
        data.load_mnist("test")


def test_download_from_a_mirror_is_verified_and_cached(
    project_data, isolated_data, monkeypatch
):
    mirror = project_data / "mnist"
    monkeypatch.setitem(
        data.MIRRORS, "mnist", ("file:///nonexistent/", mirror.as_uri() + "/")
    )
    test = data.load_mnist("test")
    assert test.images.shape == (10000, 28, 28)
    assert (isolated_data / "cache" / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()


def test_corrupt_download_is_rejected(isolated_data, monkeypatch):
    mirror = isolated_data / "mirror"
    mirror.mkdir()
    with gzip.open(mirror / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + b"\x00" * 20)
    monkeypatch.setitem(data.MIRRORS, "mnist", (mirror.as_uri() + "/",))
    with pytest.raises(
        FileNotFoundError, match="rejected: it holds 24 bytes once decompressed"
    ):
        data.locate("mnist", "t10k-labels-idx1-ubyte.gz")
    assert not (
        isolated_data / "cache" / "mnist" / "t10k-labels-idx1-ubyte.gz"
    ).exists()
    assert (
        list((isolated_data / "cache" / "mnist").iterdir()) == []
    )  # no temporary file left


def test_corrupt_local_file_is_an_error_not_a_wrong_number(project_data, isolated_data):
    folder = isolated_data / "local" / "mnist"
    folder.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(project_data / "mnist" / name, folder / name)
    raw = gzip.open(folder / "t10k-labels-idx1-ubyte.gz").read()
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(raw[:-1] + bytes([(raw[-1] + 1) % 10]))  # one label changed
    with pytest.raises(
        data.DamagedFileError, match="t10k-labels-idx1-ubyte.gz.*SHA-256"
    ):
        data.load_mnist("test", data_dir=isolated_data / "local", download=False)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        data.load_mnist("validation")
    with pytest.raises(TypeError, match="data_dir"):
        data.load_fashion_mnist("test", data_dir=3)
    with pytest.raises(ValueError, match="setup"):
        data.load_house_prices(setup="mine")
    with pytest.raises(TypeError, match="n_train"):
        data.load_house_prices(n_train=1.5)
    with pytest.raises(ValueError, match="n_train"):
        data.load_house_prices(n_train=0)


# ------------------------------------------------------------------ contents


def test_mnist_contents(project_data):
    train, test = data.load_mnist("train"), data.load_mnist("test")
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == np.uint8
    assert np.bincount(train.labels).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(test.labels).tolist() == MNIST_TEST_COUNTS
    assert train.images.mean() / 255 == pytest.approx(0.13066, abs=1e-5)
    # the normalisation constants are these statistics, rounded to 4 digits
    x = train.images.astype(np.float64) / 255
    assert round(x.mean(), 4) == data.MNIST_MEAN and round(x.std(), 4) == data.MNIST_STD


def test_fashion_mnist_contents(project_data):
    train, test = data.load_fashion_mnist("train"), data.load_fashion_mnist("test")
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (
        10000,
        28,
        28,
    )
    assert np.bincount(train.labels).tolist() == [6000] * 10


def test_digits_8x8_and_digit_pair():
    digits = data.load_digits_8x8()
    assert digits.images.shape == (1797, 8, 8) and digits.images.max() == 16
    a, b = data.digit_pair(digits, 3, 8, seed=1)
    n = min(np.sum(digits.labels == 3), np.sum(digits.labels == 8))
    assert a.shape == b.shape == (n, 8, 8)
    # every returned image really is an image of its class
    by_bytes = {
        img.tobytes(): lab
        for img, lab in zip(digits.images, digits.labels, strict=True)
    }
    assert {by_bytes[i.tobytes()] for i in a} == {3} and {
        by_bytes[i.tobytes()] for i in b
    } == {8}
    a2, b2 = data.digit_pair(digits, 3, 8, seed=1)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)
    with pytest.raises(ValueError, match="different"):
        data.digit_pair(digits, 3, 3)
    with pytest.raises(ValueError, match="not a label"):
        data.digit_pair(digits, 3, 11)
    with pytest.raises(TypeError, match="a must be an int"):
        data.digit_pair(digits, "3", 8)
    with pytest.raises(TypeError, match="ImageSet"):
        data.digit_pair(digits.images, 3, 8)


def test_house_price_split_reproduces_the_authors_files(project_data):
    root = project_data / "house_price"
    d1, d2 = data.house_price_split(pd.read_csv(root / "train.csv"))
    pd.testing.assert_frame_equal(d1, pd.read_csv(root / "D1.csv"), check_dtype=False)
    pd.testing.assert_frame_equal(d2, pd.read_csv(root / "D2.csv"), check_dtype=False)
    assert (len(d1), len(d2)) == (309, 1151)


def _authors_reference(frame, label):
    """An independent transcription of the released preprocessing (LabelEncoder, pandas std)."""
    from sklearn.preprocessing import LabelEncoder

    frame = frame.copy()
    for col in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[col]):
            frame[col] = LabelEncoder().fit_transform(
                frame[col].astype(object).fillna(0).astype(str)
            )
        else:
            frame[col] = frame[col].fillna(0)
    feats = [c for c in frame.columns if c not in ("LotArea", "SalePrice")]
    std = frame[feats].std().replace(0, 1)
    X = ((frame[feats] - frame[feats].mean()) / std).to_numpy(float)
    y = ((frame[label] - frame[label].mean()) / (frame[label].std() or 1)).to_numpy(
        float
    )
    return X, y


def test_house_prices_authors_preprocessing(project_data):
    hp = data.load_house_prices()
    assert hp.XP.shape == hp.XH.shape == (200, 79) and hp.XP_val.shape == (100, 79)
    assert hp.XP.dtype == np.float64 and len(hp.feature_names) == 79
    assert "Id" in hp.feature_names and "MSZoning" in hp.feature_names
    assert "LotArea" not in hp.feature_names and "SalePrice" not in hp.feature_names
    root = project_data / "house_price"
    XP, yP = _authors_reference(pd.read_csv(root / "D1.csv"), "LotArea")
    XH, yH = _authors_reference(pd.read_csv(root / "D2.csv"), "SalePrice")
    np.testing.assert_allclose(hp.XP, XP[:200], atol=1e-12)
    np.testing.assert_allclose(hp.yP, yP[:200], atol=1e-12)
    np.testing.assert_allclose(hp.XH_val, XH[200:300], atol=1e-12)
    np.testing.assert_allclose(hp.yH_val, yH[200:300], atol=1e-12)
    with pytest.raises(ValueError, match="exceeds"):
        data.load_house_prices(n_train=300, n_val=100)


# ------------------------------------------------------------------ the well-posed House Prices setup


def test_well_posed_columns_rule_on_synthetic_data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 5))
    X[:, 1] = 0.0  # constant
    X[:, 4] = X[:, 0] + X[:, 2]  # an exact sum of earlier columns
    Y = rng.standard_normal((30, 5))
    assert data.well_posed_columns(X, Y) == [0, 2, 3]
    Y[:, 3] = 7.0  # constant in the other task removes it from both
    assert data.well_posed_columns(X, Y) == [0, 2]
    with pytest.raises(ValueError, match="same columns"):
        data.well_posed_columns(X, Y[:, :3])


def test_house_prices_well_posed_setup(project_data):
    from immulib import linalg

    authors = data.load_house_prices(setup="authors", data_dir=project_data)
    wp = data.load_house_prices(setup="well_posed", data_dir=project_data)
    removed = [n for n in authors.feature_names if n not in wp.feature_names]
    assert {"TotalBsmtSF", "GrLivArea", "MSZoning", "Utilities", "PoolQC"} <= set(
        removed
    )
    keep = [authors.feature_names.index(n) for n in wp.feature_names]
    for a, b in ((authors.XP, wp.XP), (authors.XH, wp.XH), (authors.XP_val, wp.XP_val)):
        assert np.array_equal(a[:, keep], b)  # same rows and values, columns removed
    assert np.array_equal(authors.yP, wp.yP) and wp.setup == "well_posed"
    d = len(wp.feature_names)
    for X in (wp.XP, wp.XH):
        K = linalg.gram(X)
        assert linalg.numerical_rank(K) == d
        pinv, shifted = (
            linalg.condition_number(K, convention=c) for c in ("pinv", "shifted")
        )
        # the shifted convention adds 1e-6·I: exactly that, and nothing else, separates them
        lam = np.linalg.eigvalsh(K.numpy())
        assert shifted == pytest.approx((lam[-1] + 1e-6) / (lam[0] + 1e-6), rel=1e-9)
        assert (
            abs(shifted - pinv) / pinv <= 1e-6 / lam[0] * 1.01
            and abs(shifted - pinv) / pinv < 1e-5
        )


def test_every_public_function_names_an_existing_chapter_label():
    import inspect
    import re
    from pathlib import Path

    from immulib import house_prices, images

    book = Path(__file__).resolve().parent.parent / "book"
    labels = set(
        re.findall(
            r"^\(([\w-]+)\)=", "\n".join(p.read_text() for p in book.glob("*.md")), re.M
        )
    )
    for module in (house_prices, images):
        for name in module.__all__:
            obj = getattr(module, name)
            if (
                not (inspect.isfunction(obj) or inspect.isclass(obj))
                or obj.__module__ != module.__name__
            ):
                continue
            found = re.findall(r"\{ref\}`([\w-]+)`", obj.__doc__ or "")
            assert found and set(found) <= labels, (
                f"{module.__name__}.{name}: {found} vs the book's labels"
            )
