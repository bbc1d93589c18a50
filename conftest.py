"""Test configuration shared by the unit tests and the notebook tests.

- Points ``IMMULIB_DATA`` at ``../shared/data`` when that folder exists and the variable is unset
  (the project's development data; immulib itself knows nothing about it).
- Sets ``HF_HUB_OFFLINE=1`` so that timm never waits on the network in tests, and
  ``TQDM_DISABLE=1`` so that the library draws no progress bars (as in the book build).
- Lets nbval collect the book's chapters in place, for ``make chapter CHAPTER=book/NN_name.md``
  (``make test`` checks the chapters from the strict build's execution instead): every
  notebook listed in ``_toc.yml`` is a jupytext MyST ``.md`` file, which nbval cannot read, so
  its reader is given jupytext's (conversion in memory, nothing written next to the chapters).
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest

from tools.chapters import is_notebook, toc_chapters

ROOT = Path(__file__).resolve().parent
SHARED_DATA = ROOT.parent / "shared" / "data"

if SHARED_DATA.is_dir():
    os.environ.setdefault("IMMULIB_DATA", str(SHARED_DATA))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def _install_myst_reader() -> None:
    import jupytext
    import nbformat
    import nbval.plugin

    def read(fp, as_version=4, **kwargs):
        if str(fp).endswith(".md"):
            return jupytext.read(fp)
        return nbformat.read(fp, as_version, **kwargs)

    proxy = types.SimpleNamespace(
        **{k: getattr(nbformat, k) for k in dir(nbformat) if not k.startswith("__")}
    )
    proxy.read = read
    nbval.plugin.nbformat = proxy


def pytest_collect_file(file_path: Path, parent):
    opt = parent.config.option
    if file_path.suffix != ".md" or not (
        getattr(opt, "nbval", False) or getattr(opt, "nbval_lax", False)
    ):
        return None
    if file_path.resolve() not in {
        p.resolve() for p in toc_chapters()
    } or not is_notebook(file_path):
        return None
    from nbval.plugin import IPyNbFile

    _install_myst_reader()
    return IPyNbFile.from_parent(parent, path=file_path)


def pytest_collection_modifyitems(items):
    for item in items:
        if str(getattr(item, "path", "")).endswith(".md"):
            item.add_marker(pytest.mark.notebook)
