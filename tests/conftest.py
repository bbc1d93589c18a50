"""Fixtures for the unit tests."""

import pytest

from immulib import data


@pytest.fixture
def isolated_data(tmp_path, monkeypatch):
    """No IMMULIB_DATA and an empty cache: nothing is found unless a test puts it there."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv(data.CACHE_ENV_VAR, str(tmp_path / "cache"))
    return tmp_path
