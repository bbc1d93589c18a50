"""Fixtures shared by the unit tests (tests never import each other; what they share lives here)."""

import os
from pathlib import Path

import pytest

from immulib import data


def _project_data_dir() -> Path | None:
    root = os.environ.get(data.ENV_VAR)
    return Path(root) if root and Path(root).is_dir() else None


#: The development data folder (IMMULIB_DATA), read once at import, before any fixture hides
#: the environment variable.
PROJECT_DATA = _project_data_dir()


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
