"""Damaged files, stalled servers and bad settings for immulib.files / house_prices / images.

Every damaged file is made in a temporary folder; the stalled server is a loopback socket that
accepts connections and never answers, and every test that talks to it uses a short timeout.
"""

import contextlib
import gzip
import hashlib
import json
import shutil
import socket
import threading
import time

import pytest

from immulib import data, files, house_prices

TRAIN = "train.csv"


@contextlib.contextmanager
def stalled_server(hold_s: float = 10.0):
    """A loopback HTTP 'server' that accepts connections and never sends a byte (for hold_s at most)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()
    held = []

    def serve():
        deadline = time.monotonic() + hold_s
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = srv.accept()
                held.append(conn)  # keep it open, say nothing
            except OSError:
                pass
        for c in held:
            c.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        srv.close()


def _house_dir(tmp_path, text: str):
    folder = tmp_path / "local" / "house_price"
    folder.mkdir(parents=True)
    (folder / TRAIN).write_text(text)
    return tmp_path / "local"


def _real_train_text(project_data):
    return (project_data / "house_price" / TRAIN).read_text()


# ------------------------------------------------------------------ damaged House Prices files


def _edit_row(text, row, column, value):
    lines = text.split("\n")
    cells = lines[row].split(",")
    cells[house_prices.HOUSE_PRICE_COLUMNS.index(column)] = value
    lines[row] = ",".join(cells)
    return "\n".join(lines)


@pytest.mark.parametrize(
    "edit, detail",
    [
        (
            lambda t: _edit_row(t, 5, "SalePrice", '"12,000"'),
            r"line 6 \(data row 5\): SalePrice = '12,000' is not a number",
        ),
        (
            lambda t: _edit_row(t, 7, "SalePrice", ""),
            r"line 8 \(data row 7\): the target SalePrice is missing",
        ),
        (
            lambda t: _edit_row(t, 3, "LotArea", "NA"),
            r"line 4 \(data row 3\): the target LotArea is missing",
        ),
        (lambda t: t[: len(t) // 2], r"fields, expected 81: the file is truncated"),
        (
            lambda t: "\n".join(t.split("\n")[:-40]) + "\n",
            r"has \d+ bytes, but house_price/train.csv has 460676",
        ),
    ],
    ids=[
        "target-with-comma",
        "missing-target",
        "missing-LotArea",
        "cut-mid-row",
        "last-rows-cut",
    ],
)
def test_damaged_train_csv_is_an_error_naming_file_row_and_fix(
    project_data, isolated_data, edit, detail
):
    root = _house_dir(isolated_data, edit(_real_train_text(project_data)))
    with pytest.raises(ValueError, match=detail) as info:
        data.load_house_prices(data_dir=root, download=False)
    msg = str(info.value)
    assert str(root / "house_price" / TRAIN) in msg
    assert "Delete it" in msg and "IMMULIB_DATA" in msg


@pytest.mark.parametrize(
    "edit, detail",
    [
        (
            lambda t: _edit_row(t, 5, "SalePrice", '"12,000"'),
            r"line 6 .*SalePrice = '12,000' is not a number",
        ),
        (
            lambda t: _edit_row(t, 9, "GrLivArea", "big"),
            r"line 10 .*GrLivArea = 'big' is not a number",
        ),
        (
            lambda t: _edit_row(t, 2, "SalePrice", "-5"),
            r"line 3 .*SalePrice = '-5' must be > 0",
        ),
        (lambda t: t.replace("Id,", "Idx,", 1), r"line 1 is not the header"),
        (lambda t: t.split("\n")[0] + "\n", r"no rows"),
    ],
)
def test_read_train_csv_checks_what_it_parses(project_data, tmp_path, edit, detail):
    path = tmp_path / TRAIN
    path.write_text(edit(_real_train_text(project_data)))
    with pytest.raises(ValueError, match=detail):
        data.read_train_csv(path)


def test_read_train_csv_accepts_kaggles_file(project_data):
    frame = data.read_train_csv(project_data / "house_price" / TRAIN)
    assert frame.shape == (1460, 81) and frame["SalePrice"].dtype.kind == "i"


def test_fingerprint_is_checked_on_every_load_not_only_after_a_download(
    project_data, isolated_data
):
    root = _house_dir(isolated_data, _real_train_text(project_data))
    path = root / "house_price" / TRAIN
    assert data.locate("house_price", TRAIN, root, download=False) == path
    # the same size, one digit changed: only the hash can tell
    text = _real_train_text(project_data)
    path.write_text(text.replace(",208500\n", ",208501\n", 1))
    with pytest.raises(data.DamagedFileError, match="SHA-256"):
        data.load_house_prices(data_dir=root, download=False)


def test_verification_is_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    monkeypatch.setitem(
        data.FINGERPRINTS,
        ("t", "f.bin"),
        data.Fingerprint(3, hashlib.sha256(b"abc").hexdigest()),
    )
    calls = []
    real = files._digest
    monkeypatch.setattr(files, "_digest", lambda p, gz: calls.append(p) or real(p, gz))
    for _ in range(3):
        files.verify(path, "t")
    assert len(calls) == 1
    path.write_bytes(b"abd")  # same size, new content, new mtime
    with pytest.raises(data.DamagedFileError, match="f.bin"):
        files.verify(path, "t")


# ------------------------------------------------------------------ damaged image files


def test_truncated_gzip_names_the_file_and_the_fix(project_data, isolated_data):
    folder = isolated_data / "local" / "mnist"
    folder.mkdir(parents=True)
    src = project_data / "mnist" / "t10k-images-idx3-ubyte.gz"
    (folder / src.name).write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    shutil.copy(project_data / "mnist" / "t10k-labels-idx1-ubyte.gz", folder)
    with pytest.raises(data.DamagedFileError) as info:
        data.load_mnist("test", data_dir=isolated_data / "local", download=False)
    msg = str(info.value)
    assert str(folder / src.name) in msg and "gzip" in msg and "Delete it" in msg


def test_not_gzip_at_all(isolated_data):
    folder = isolated_data / "cache" / "fashion_mnist"
    folder.mkdir(parents=True)
    (folder / "t10k-labels-idx1-ubyte.gz").write_text("<html>404</html>")
    with pytest.raises(data.DamagedFileError, match="not a readable gzip file"):
        data.locate("fashion_mnist", "t10k-labels-idx1-ubyte.gz", download=False)


def test_interrupted_download_leaves_no_file(isolated_data, monkeypatch):
    mirror = isolated_data / "mirror"
    mirror.mkdir()
    good = gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 10004)
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(good[:-7])  # cut short
    monkeypatch.setitem(data.MIRRORS, "mnist", (mirror.as_uri() + "/",))
    with pytest.raises(FileNotFoundError, match="rejected"):
        data.locate("mnist", "t10k-labels-idx1-ubyte.gz")
    cache = isolated_data / "cache" / "mnist"
    assert not cache.exists() or list(cache.iterdir()) == []


# ------------------------------------------------------------------ stalled networks


def test_stalled_mirror_times_out_with_a_clear_error(isolated_data, monkeypatch, capfd):
    with stalled_server() as url:
        monkeypatch.setitem(data.MIRRORS, "mnist", (url + "/a/", url + "/b/"))
        start = time.monotonic()
        with pytest.raises(FileNotFoundError, match=r"no answer within 0.3 s"):
            data.load_mnist("test", timeout=0.3)
        assert time.monotonic() - start < 5
    err = capfd.readouterr().err
    # one line per attempt, naming what and from where
    assert err.count("fetching mnist/t10k-images-idx3-ubyte.gz from") == 2
    assert f"{url}/a/t10k-images-idx3-ubyte.gz" in err and "(timeout 0.3 s)" in err


def test_stalled_openml_times_out_with_a_clear_error(isolated_data, monkeypatch, capfd):
    with stalled_server() as url:
        monkeypatch.setattr(house_prices, "OPENML_URL", url)
        start = time.monotonic()
        with pytest.raises(
            FileNotFoundError,
            match=r"house_price/train.csv is missing .*no answer within 0.3 s",
        ):
            data.load_house_prices(timeout=0.3)
        assert time.monotonic() - start < 5
    assert f"from {url}/api/v1/json/data/42165" in capfd.readouterr().err
    assert not (isolated_data / "cache" / "house_price" / TRAIN).exists()


def test_timeout_from_the_environment(monkeypatch):
    monkeypatch.setenv(data.TIMEOUT_ENV_VAR, "2.5")
    assert files.resolve_timeout(None) == 2.5
    assert files.resolve_timeout(1) == 1.0
    monkeypatch.setenv(data.TIMEOUT_ENV_VAR, "soon")
    with pytest.raises(ValueError, match="IMMULIB_TIMEOUT must be a number"):
        files.resolve_timeout(None)
    monkeypatch.delenv(data.TIMEOUT_ENV_VAR)
    assert files.resolve_timeout(None) == data.DEFAULT_TIMEOUT
    with pytest.raises(ValueError, match="timeout must be > 0"):
        data.load_mnist("test", timeout=0)
    with pytest.raises(TypeError, match="timeout must be a number"):
        data.load_mnist("test", timeout="20")


# ------------------------------------------------------------------ the OpenML rebuild


def _arff_from_kaggle(text: str) -> str:
    """An ARFF file in OpenML's style (quoted nominals, '?' for missing) made from train.csv."""
    import csv
    import io

    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    numeric = set(house_prices.NUMERIC_COLUMNS)
    out = ["@relation house_prices"]
    for name in header:
        out.append(
            f"@attribute '{name}' " + ("numeric" if name in numeric else "string")
        )
    out.append("@data")
    for row in body:
        cells = []
        for name, v in zip(header, row, strict=True):
            if v == "NA":
                cells.append("?")
            elif name in numeric:
                cells.append(
                    f"{float(v)}"
                )  # 65 -> 65.0, as a float column would be written
            else:
                cells.append(f"'{v}'")
        out.append(",".join(cells))
    return "\n".join(out) + "\n"


def _fake_openml(root, arff: bytes, md5: str | None = None):
    (root / "files").mkdir(parents=True)
    (root / "files" / "house_prices.arff").write_bytes(arff)
    desc = root / "api" / "v1" / "json" / "data"
    desc.mkdir(parents=True)
    body = {
        "url": (root / "files" / "house_prices.arff").as_uri(),
        "md5_checksum": md5 or hashlib.md5(arff).hexdigest(),
    }
    (desc / "42165").write_text(json.dumps({"data_set_description": body}))
    return root.as_uri()


def test_openml_rebuild_gives_kaggles_bytes(project_data, isolated_data, monkeypatch):
    arff = _arff_from_kaggle(_real_train_text(project_data)).encode()
    monkeypatch.setattr(
        house_prices, "OPENML_URL", _fake_openml(isolated_data / "openml", arff)
    )
    hp = data.load_house_prices()
    path = isolated_data / "cache" / "house_price" / TRAIN
    assert path.read_bytes() == (project_data / "house_price" / TRAIN).read_bytes()
    assert hp.XP.shape == (200, 79)


def test_openml_rebuild_that_differs_is_refused(
    project_data, isolated_data, monkeypatch
):
    arff = (
        _arff_from_kaggle(_real_train_text(project_data))
        .replace(",208500.0\n", ",208501.0\n", 1)
        .encode()
    )
    monkeypatch.setattr(
        house_prices, "OPENML_URL", _fake_openml(isolated_data / "openml", arff)
    )
    with pytest.raises(FileNotFoundError, match="rejected: its SHA-256"):
        data.load_house_prices()
    cache = isolated_data / "cache" / "house_price"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_openml_transfer_checked_against_published_md5(isolated_data, monkeypatch):
    monkeypatch.setattr(
        house_prices,
        "OPENML_URL",
        _fake_openml(isolated_data / "openml", b"@data\n", md5="0" * 32),
    )
    with pytest.raises(FileNotFoundError, match="published by OpenML"):
        data.load_house_prices()
