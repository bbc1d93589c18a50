"""Colab versions of the pages: ``python tools/colab.py [OUT]`` (default ``colab/``).

Colab opens ``.ipynb`` files from GitHub, not MyST ``.md`` chapters. For every notebook page in
``_toc.yml`` this writes ``OUT/book/NN_name.ipynb`` (the page's path in the repository, with the
suffix ``.ipynb``): the chapter unchanged, except that its hidden Colab install cell is replaced
by a **visible** first cell that installs immulib from ``repository.url`` of ``_config.yml``, only
when ``google.colab`` is loaded. The default ``colab/`` folder is committed with the chapters;
the book's Colab buttons point there (``tools/colab_links.py``), and tests/test_colab.py fails
when it is stale. Regenerate it with ``make colab`` after changing a chapter.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.chapters import (  # noqa: E402
    chapter_notebook, is_notebook, toc_chapters, tool_main, write_notebooks,
)
from tools.set_repository import INSTALL_RE, configured_url  # noqa: E402

DEFAULT_OUT = ROOT / "colab"
FOLDER_README = """# Colab notebooks of the book (generated)

Written by `tools/colab.py` (`make colab`) from the chapters in `book/`; do not edit by hand.
Each `book/NN_name.ipynb` is a chapter of the book, opened by the chapter's Colab button.
"""


def install_source(url: str) -> str:
    """The guarded install cell: immulib from the repository ``url``, only on Colab."""
    return (
        "# On Colab: install immulib from the book's repository (does nothing anywhere else).\n"
        "import sys\n\n"
        'if "google.colab" in sys.modules:\n'
        f'    %pip install -q "immulib @ git+{url}"'
    )


def is_install_cell(cell) -> bool:
    return cell.cell_type == "code" and "google.colab" in cell.source and bool(INSTALL_RE.search(cell.source))


def colab_notebook(chapter: Path, url: str):
    """The Colab notebook of ``chapter``: its install cell first and visible, the rest unchanged."""
    import nbformat

    nb = chapter_notebook(chapter)
    nb.cells = [nbformat.v4.new_code_cell(install_source(url))] + [c for c in nb.cells if not is_install_cell(c)]
    for i, cell in enumerate(nb.cells):  # stable ids, so that regenerating changes nothing
        cell.id = f"cell-{i:03d}"
    nbformat.validate(nb)
    return nb


def write_colab_notebooks(out_dir: str | Path = DEFAULT_OUT) -> list[Path]:
    """Write the Colab notebook of every notebook page in ``_toc.yml`` under ``out_dir``."""
    url = configured_url(ROOT)

    def notebooks():
        for chapter in toc_chapters():
            if not chapter.is_file():
                raise ValueError(f"{chapter} is listed in _toc.yml but does not exist")
            if is_notebook(chapter):
                yield chapter.relative_to(ROOT).with_suffix(".ipynb"), colab_notebook(chapter, url)

    written = write_notebooks(out_dir, notebooks())
    (Path(out_dir) / "README.md").write_text(FOLDER_README)
    return written


if __name__ == "__main__":
    tool_main(sys.argv[1:], write_colab_notebooks, DEFAULT_OUT, "tools/colab.py")
