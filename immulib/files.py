"""Finding, verifying and downloading the book's data files.

Where files come from
---------------------
Every loader looks for its files in one order, the same everywhere:

1. the ``data_dir`` argument, if given;
2. the folder named by the ``IMMULIB_DATA`` environment variable, if set;
3. the per-user cache folder, :func:`cache_dir` (``$IMMULIB_CACHE``, else
   ``$XDG_CACHE_HOME/immulib``, else ``~/.cache/immulib``);
4. a download into that cache folder, unless ``download=False``.

In each folder a file is looked up as ``<folder>/<dataset>/<file>`` (the layout of the project's
data folder: ``house_price/train.csv``, ``mnist/train-images-idx3-ubyte.gz``, ...) and then as
``<folder>/<file>``.

What is verified, and when
--------------------------
Every file has a known fingerprint in :data:`FINGERPRINTS`: its size and its SHA-256 (for the
gzip'd image files, the size and SHA-256 of the *decompressed* bytes, which are the same on every
mirror). :func:`locate` checks the fingerprint of the file it returns every time, wherever the file
was found; the check reads the file once per process and is then remembered for that path, size
and modification time, so a file that changes on disk is checked again. A file that does not match
raises :class:`DamagedFileError` (a ``ValueError``) that names the file, says what is wrong and how
to fix it.

Downloads are written to a temporary file in the target folder and renamed into place only after
the fingerprint matched, so an interrupted download never leaves a partial file behind. Every
network call has a timeout (``timeout=`` argument, else ``$IMMULIB_TIMEOUT``, else
:data:`DEFAULT_TIMEOUT` seconds without a byte from the server) and prints what it fetches and
from where. Nothing here runs at import time.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._validate import positive

__all__ = [
    "CACHE_ENV_VAR",
    "DEFAULT_TIMEOUT",
    "ENV_VAR",
    "FINGERPRINTS",
    "TIMEOUT_ENV_VAR",
    "DamagedFileError",
    "Fingerprint",
    "cache_dir",
    "fetch",
    "install",
    "locate",
    "resolve_timeout",
    "say",
    "verify",
]

ENV_VAR = "IMMULIB_DATA"
CACHE_ENV_VAR = "IMMULIB_CACHE"
TIMEOUT_ENV_VAR = "IMMULIB_TIMEOUT"

#: Seconds a download may wait for the server (to connect, or between two reads).
DEFAULT_TIMEOUT = 20.0

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Fingerprint:
    """The size in bytes and SHA-256 of a file (of its decompressed bytes when ``gzip``).

    Chapter: {ref}`ch-condition-numbers`.
    """

    size: int
    sha256: str
    gzip: bool = False


#: The known fingerprint of every file a loader reads, by (dataset, file name).
FINGERPRINTS: dict[tuple[str, str], Fingerprint] = {
    # Kaggle's "House Prices - Advanced Regression Techniques" train.csv, byte for byte as the
    # paper's released code ships it (data/house_price/train.csv).
    ("house_price", "train.csv"): Fingerprint(
        460_676, "1e18addf81e5e4d347cc17ee6075bbe4a42b7fa26b9e5b063e8f692a5f929d41"
    ),
    ("mnist", "train-images-idx3-ubyte.gz"): Fingerprint(
        47_040_016,
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        True,
    ),
    ("mnist", "train-labels-idx1-ubyte.gz"): Fingerprint(
        60_008, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", True
    ),
    ("mnist", "t10k-images-idx3-ubyte.gz"): Fingerprint(
        7_840_016,
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        True,
    ),
    ("mnist", "t10k-labels-idx1-ubyte.gz"): Fingerprint(
        10_008, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", True
    ),
    ("fashion_mnist", "train-images-idx3-ubyte.gz"): Fingerprint(
        47_040_016,
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        True,
    ),
    ("fashion_mnist", "train-labels-idx1-ubyte.gz"): Fingerprint(
        60_008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", True
    ),
    ("fashion_mnist", "t10k-images-idx3-ubyte.gz"): Fingerprint(
        7_840_016,
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        True,
    ),
    ("fashion_mnist", "t10k-labels-idx1-ubyte.gz"): Fingerprint(
        10_008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", True
    ),
}


class DamagedFileError(ValueError):
    """A data file exists but does not match its known fingerprint (damaged, truncated, replaced).

    ``path`` is the file.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)


def say(message: str) -> None:
    """Print a line about data access (what is fetched, from where, what was saved) on stderr.

    Chapter: {ref}`ch-condition-numbers`.
    """
    print(f"immulib: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# where files are


def cache_dir() -> Path:
    """The per-user cache folder: ``$IMMULIB_CACHE``, ``$XDG_CACHE_HOME/immulib`` or ``~/.cache/immulib``.

    Chapter: {ref}`ch-condition-numbers`.
    """
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "immulib"


def resolve_timeout(timeout: float | None) -> float:
    """``timeout`` if given, else ``$IMMULIB_TIMEOUT``, else :data:`DEFAULT_TIMEOUT` (seconds > 0).

    Chapter: {ref}`ch-condition-numbers`.
    """
    if timeout is not None:
        return positive(timeout, "timeout")
    text = os.environ.get(TIMEOUT_ENV_VAR, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"${TIMEOUT_ENV_VAR} must be a number of seconds, got {text!r}"
        ) from None
    return positive(value, f"${TIMEOUT_ENV_VAR}")


def _search_roots(data_dir) -> list[tuple[str, Path]]:
    roots: list[tuple[str, Path]] = []
    if data_dir is not None:
        if not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(
                f"data_dir must be a path or None, got {type(data_dir).__name__}"
            )
        roots.append(("data_dir argument", Path(data_dir).expanduser()))
    if os.environ.get(ENV_VAR):
        roots.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR]).expanduser()))
    roots.append(("cache", cache_dir()))
    return roots


def _fingerprint_of(dataset: str, name: str) -> Fingerprint:
    try:
        return FINGERPRINTS[(dataset, name)]
    except KeyError:
        known = ", ".join(f"{d}/{n}" for d, n in FINGERPRINTS)
        raise ValueError(
            f"{dataset}/{name} is not a known data file; known: {known}"
        ) from None


# --------------------------------------------------------------------------------------------
# fingerprints

#: (resolved path, size, mtime_ns) of the files already verified in this process.
_VERIFIED: set[tuple[str, int, int]] = set()


def _how_to_fix(path: Path) -> str:
    return (
        f"Delete it (rm '{path}') so that it is downloaded again, or point ${ENV_VAR} (or "
        "data_dir=) at a folder with a good copy."
    )


def _digest(path: Path, gz: bool) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    opener = gzip.open if gz else open
    with opener(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _problem(path: Path, fp: Fingerprint, what: str, size_on_disk: int) -> str | None:
    """What is wrong with ``path`` (a sentence), or None if it matches ``fp``."""
    if not fp.gzip and size_on_disk != fp.size:
        return f"it has {size_on_disk} bytes, but {what} has {fp.size}"
    try:
        size, digest = _digest(path, fp.gzip)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        return f"it is not a readable gzip file ({err})"
    if size != fp.size:
        return f"it holds {size} bytes once decompressed, but {what} has {fp.size}"
    if digest != fp.sha256:
        of = "of its decompressed bytes " if fp.gzip else ""
        return f"its SHA-256 {of}is {digest}, but {what}'s is {fp.sha256}"
    return None


def verify(path: str | os.PathLike, dataset: str, name: str | None = None) -> Path:
    """Check ``path`` against the known fingerprint of ``dataset/name`` (``name``: the file's name).

    Reads the file at most once per process for a given (path, size, modification time).
    Returns the path; raises :class:`DamagedFileError` naming the file, what is wrong and how
    to fix it.

    Chapter: {ref}`ch-condition-numbers`.
    """
    path = Path(path)
    name = name or path.name
    fp = _fingerprint_of(dataset, name)
    try:
        st = path.stat()
    except OSError as err:
        raise FileNotFoundError(f"{path}: cannot read it ({err})") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return path
    problem = _problem(path, fp, f"{dataset}/{name}", st.st_size)
    if problem:
        raise DamagedFileError(
            f"{path} is damaged, incomplete or not the canonical {dataset}/{name}: {problem}. "
            + _how_to_fix(path),
            path=path,
        )
    _VERIFIED.add(key)
    return path


# --------------------------------------------------------------------------------------------
# downloads


def fetch(url: str, *, timeout: float | None = None, what: str = "") -> bytes:
    """The body at ``url``, with a timeout; prints what it fetches and from where.

    Raises ``OSError`` (``TimeoutError`` when the server does not answer within ``timeout``
    seconds) whose message names the URL.

    Chapter: {ref}`ch-condition-numbers`.
    """
    timeout = resolve_timeout(timeout)
    say(f"fetching {what + ' ' if what else ''}from {url} (timeout {timeout:g} s)")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            chunks = []
            while chunk := resp.read(_CHUNK):
                chunks.append(chunk)
            return b"".join(chunks)
    except TimeoutError as err:
        raise TimeoutError(f"{url}: no answer within {timeout:g} s ({err})") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            raise TimeoutError(
                f"{url}: no answer within {timeout:g} s ({err.reason})"
            ) from None
        raise OSError(f"{url}: {err}") from None
    except OSError as err:
        raise OSError(f"{url}: {err}") from None


def install(
    target: Path, write: Callable[[Path], None], dataset: str, name: str
) -> None:
    """Write a file through ``write(tmp)`` next to ``target``, verify it, then rename it into place.

    Chapter: {ref}`ch-condition-numbers`.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        fp = _fingerprint_of(dataset, name)
        problem = _problem(tmp, fp, f"{dataset}/{name}", tmp.stat().st_size)
        if problem:
            raise OSError(f"the downloaded {dataset}/{name} was rejected: {problem}")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _download(dataset: str, name: str, target: Path, timeout: float) -> None:
    if dataset == "house_price":
        from .house_prices import download_train_csv

        download_train_csv(target, timeout=timeout)
        return
    from .images import MIRRORS

    errors = []
    for base in MIRRORS[dataset]:
        url = base + name
        try:
            body = fetch(url, timeout=timeout, what=f"{dataset}/{name}")
            install(target, lambda tmp, body=body: tmp.write_bytes(body), dataset, name)
            say(f"verified and saved {target}")
            return
        except OSError as err:
            say(f"failed: {err}")
            errors.append(str(err))
    raise OSError("no mirror worked: " + "; ".join(errors))


def locate(
    dataset: str,
    name: str,
    data_dir=None,
    *,
    download: bool = True,
    timeout: float | None = None,
) -> Path:
    """Find ``<dataset>/<name>`` in the search order of this module, verified, downloading it if allowed.

    The file found is checked against its fingerprint (:func:`verify`); a damaged one raises
    :class:`DamagedFileError`. Raises ``FileNotFoundError`` naming the file and where to put it
    when it is nowhere and cannot be downloaded. ``timeout``: seconds a download may wait for
    the server (default ``$IMMULIB_TIMEOUT``, else 20).

    Chapter: {ref}`ch-condition-numbers`.
    """
    _fingerprint_of(dataset, name)
    timeout = resolve_timeout(timeout)
    roots = _search_roots(data_dir)
    for _, root in roots:
        for candidate in (root / dataset / name, root / name):
            if candidate.is_file():
                return verify(candidate, dataset, name)
    target = cache_dir() / dataset / name
    problem = "downloading is off (download=False)"
    if download:
        try:
            _download(dataset, name, target, timeout)
            return verify(target, dataset, name)
        except OSError as err:  # URLError, timeouts and HTTP errors are OSErrors
            problem = f"the download failed ({err})"
    searched = "\n".join(
        f"  - {label}: {root / dataset / name}" for label, root in roots
    )
    raise FileNotFoundError(
        f"{dataset}/{name} is missing and {problem}.\nSearched:\n{searched}\n"
        f"Put the file at one of these places, e.g. set {ENV_VAR}=/path/to/data and copy it to "
        f"/path/to/data/{dataset}/{name}, or pass data_dir=."
    )
