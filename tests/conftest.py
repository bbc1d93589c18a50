"""Fixtures shared by the unit tests (tests never import each other; what they share lives here)."""

import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from immulib import data
from tools import book


def _project_data_dir() -> Path | None:
    root = os.environ.get(data.ENV_VAR)
    return Path(root) if root and Path(root).is_dir() else None


#: The development data folder (IMMULIB_DATA), read once at import, before any fixture hides
#: the environment variable.
PROJECT_DATA = _project_data_dir()


@pytest.fixture
def one_thread():
    """Batched LAPACK calls with several threads stall on a loaded machine (see immulib.pairs.sweep)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def digits():
    """A small synthetic digit set: 10 classes of 28×28 images with a class-specific blob pattern."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for c in range(10):
        n = 60 + 5 * c  # unequal counts, so balancing subsamples
        img = np.zeros((n, 28, 28))
        img[:, 11:17, 11:17] = rng.uniform(0, 255, (n, 6, 6))
        img[:, 11 + c % 3, 11:17] *= 0.3 + 0.1 * c
        images.append(img.astype(np.uint8))
        labels.append(np.full(n, c, np.uint8))
    return data.ImageSet(np.concatenate(images), np.concatenate(labels))


@pytest.fixture
def project_data() -> Path:
    """The folder with the real datasets (``IMMULIB_DATA``); the test is skipped without one."""
    if PROJECT_DATA is None:
        pytest.skip("no IMMULIB_DATA folder with the real datasets on this machine")
    return PROJECT_DATA


@pytest.fixture
def isolated_data(tmp_path, monkeypatch):
    """No IMMULIB_DATA and an empty cache: nothing is found unless a test puts it there."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv(data.CACHE_ENV_VAR, str(tmp_path / "cache"))
    return tmp_path


# --------------------------------------------------------------------------------------------
# the book: built once per test run, whichever worker asks first
# --------------------------------------------------------------------------------------------

#: Test files that read the built HTML only: collected last, so that the worker which takes them
#: finds the build (started early by tests/test_book.py) done or nearly done, instead of waiting
#: for it while the other worker could have run unit tests.
RUN_LAST = ("test_browser.py",)


def pytest_collection_modifyitems(config, items):
    # a stable sort: the others keep their order
    items.sort(key=lambda item: item.path.name in RUN_LAST)


def _test_run_id(config) -> str:
    """One id for the whole run, the same on every pytest-xdist worker."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return workerinput["testrunuid"]
    if not hasattr(config, "_immulib_run_id"):
        config._immulib_run_id = uuid.uuid4().hex
    return config._immulib_run_id


@pytest.fixture(scope="session")
def built_book(request) -> Path:
    """The strict build of the whole book into _build/ (``make book``'s folder), done once per run.

    The first worker to ask builds (under a file lock); the others wait for the lock and reuse
    that build, which a stamp naming this run's id records.
    """
    out = book.build_dir()
    out.mkdir(exist_ok=True)
    stamp = out / ".built-by-run"
    run_id = _test_run_id(request.config)
    with FileLock(str(out / ".build.lock")):
        done = stamp.read_text().split("\n", 1) if stamp.is_file() else None
        if done is None or done[0] != run_id:
            proc = book.build(capture=True)
            failed = proc.returncode != 0
            log = proc.stdout[-5000:] + proc.stderr[-5000:] if failed else ""
            stamp.write_text(f"{run_id}\n{log}")
            done = [run_id, log]
    assert not done[1], f"the strict build failed:\n{done[1]}"
    return out / "html"
