"""Shared helpers for the unit tests (imported as `helpers`; pytest puts tests/ on sys.path)."""

import os
from pathlib import Path

import pytest

from immulib import data


def project_data_dir() -> Path | None:
    """The development data folder (IMMULIB_DATA), if this machine has one."""
    root = os.environ.get(data.ENV_VAR)
    return Path(root) if root and Path(root).is_dir() else None


#: Read once at import, before any fixture hides the environment variable.
PROJECT_DATA = project_data_dir()

needs_data = pytest.mark.skipif(
    PROJECT_DATA is None, reason="no IMMULIB_DATA folder with the real datasets on this machine"
)
