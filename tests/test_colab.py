"""Colab: every notebook page has a committed, up-to-date .ipynb version, and its Colab button opens it."""

import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from test_book import _mini_book  # noqa: E402
from tools.chapters import chapter_notebook, is_notebook, toc_chapters  # noqa: E402
from tools.colab import is_install_cell, write_colab_notebooks  # noqa: E402
from tools.colab_links import COLAB_DIR, colab_notebook_url  # noqa: E402
from tools.set_repository import INSTALL_RE, configured_url  # noqa: E402

NOTEBOOKS = [p for p in toc_chapters() if is_notebook(p)]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
BRANCH = CONFIG["repository"]["branch"]
COMMITTED = ROOT / COLAB_DIR


@pytest.fixture(scope="module")
def colab_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("colab")
    written = write_colab_notebooks(out)
    assert sorted(written) == sorted(out / p.relative_to(ROOT).with_suffix(".ipynb") for p in NOTEBOOKS)
    return out


@pytest.mark.parametrize("chapter", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_notebook_is_valid_and_installs_immulib_first(chapter, colab_dir):
    nb = nbformat.read(colab_dir / chapter.relative_to(ROOT).with_suffix(".ipynb"), as_version=4)
    nbformat.validate(nb)
    first = nb.cells[0]
    assert first.cell_type == "code" and 'if "google.colab" in sys.modules:' in first.source
    assert INSTALL_RE.search(first.source)["url"] == configured_url(ROOT)
    assert "remove-cell" not in first.metadata.get("tags", []), "the install cell must be visible"
    assert sum(is_install_cell(c) for c in nb.cells) == 1
    original = [c.source for c in chapter_notebook(chapter).cells if not is_install_cell(c)]
    assert [c.source for c in nb.cells[1:]] == original, "everything else is the chapter, unchanged"


@pytest.mark.parametrize("chapter", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_up_to_date(chapter, colab_dir):
    """colab/ is what the chapters generate now: run `make colab` and commit it after an edit."""
    relative = chapter.relative_to(ROOT).with_suffix(".ipynb")
    committed = COMMITTED / relative
    assert committed.is_file(), f"{committed} is missing: run `make colab`"
    assert json.loads(committed.read_text()) == json.loads((colab_dir / relative).read_text()), (
        f"{committed} is stale: run `make colab` and commit colab/"
    )


def test_no_stale_extra_notebooks_are_committed():
    expected = {p.relative_to(ROOT).with_suffix(".ipynb") for p in NOTEBOOKS}
    assert {p.relative_to(COMMITTED) for p in COMMITTED.rglob("*.ipynb")} == expected


@pytest.mark.parametrize("chapter", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_url_opens_the_committed_notebook(chapter):
    pagename = chapter.relative_to(ROOT).with_suffix("").as_posix()
    url = colab_notebook_url(configured_url(ROOT), pagename, CONFIG["launch_buttons"]["colab_url"], BRANCH)
    if configured_url(ROOT) == "https://github.com/immulib/model-immunization-book":
        prefix = f"https://colab.research.google.com/github/immulib/model-immunization-book/blob/{BRANCH}/"
        assert url.startswith(prefix)
    assert url.endswith(".ipynb")
    path_in_repo = url.split(f"/blob/{BRANCH}/", 1)[1]
    assert (ROOT / path_in_repo).is_file(), "the button must open a file the repository has"


@pytest.mark.parametrize("repository_url, pagename", [
    ("https://gitlab.com/a/b", "book/01_x"), ("https://github.com/a", "book/01_x"),
    ("https://github.com/a/b", "book/01_x.md"), ("https://github.com/a/b", ""),
])
def test_colab_url_rejects_bad_input(repository_url, pagename):
    with pytest.raises(ValueError):
        colab_notebook_url(repository_url, pagename)
    with pytest.raises(ValueError, match="branch"):
        colab_notebook_url("https://github.com/a/b", "book/01_x", branch="")


def test_the_extension_is_registered():
    assert CONFIG["sphinx"]["local_extensions"] == {"colab_links": "tools/"}
    assert (ROOT / "tools" / "colab_links.py").is_file()


@pytest.mark.slow
def test_built_page_links_colab_to_the_committed_ipynb(tmp_path):
    proc = _mini_book(tmp_path, "```{code-cell} ipython3\n1 + 1\n```\n")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    html = (tmp_path / "_build" / "html" / "book" / "page.html").read_text()
    expected = colab_notebook_url(configured_url(ROOT), "book/page", CONFIG["launch_buttons"]["colab_url"], BRANCH)
    assert set(re.findall(r'href="(https://colab\.research\.google\.com/[^"]*)"', html)) == {expected}
