"""The book: conventions every chapter follows, and a strict build that fails on any warning."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tools.chapters import exercise_chapters, is_notebook, toc_chapters  # noqa: E402
from tools.set_repository import INSTALL_RE, configured_url  # noqa: E402

JB = [str(Path(sys.executable).parent / "jupyter-book")]
# Kernels draw figures inline as in `make book`, whatever backend this test process was given.
BOOK_ENV = dict(os.environ, MPLBACKEND="module://matplotlib_inline.backend_inline")
CHAPTERS = toc_chapters()
NOTEBOOKS = [p for p in CHAPTERS if is_notebook(p)]
EXERCISE_CHAPTERS = exercise_chapters()  # all notebooks but the Appendices part


def test_every_toc_entry_exists_and_is_a_numbered_chapter_in_book():
    assert CHAPTERS, "the table of contents lists no chapter"
    for path in CHAPTERS:
        assert path.is_file(), f"{path} is listed in _toc.yml but missing"
        assert path.parent == ROOT / "book" and re.match(r"\d\d_\w+\.md$", path.name)


def test_config_is_strict_and_complete():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cfg["only_build_toc_files"] is True
    assert cfg["execute"]["raise_on_error"] is True and cfg["execute"]["allow_errors"] is False
    assert cfg["execute"]["timeout"] > 0
    for folder in ("immulib", "tests", "_build", ".venv"):
        assert folder in cfg["exclude_patterns"]
    assert {"sphinx_exercise", "sphinx_proof", "sphinx_togglebutton"} <= set(cfg["sphinx"]["extra_extensions"])
    macros = cfg["sphinx"]["config"]["mathjax3_config"]["tex"]["macros"]
    assert {"cond", "Rill", "Rwell", "HP", "HH", "DP", "DH"} <= set(macros)
    assert cfg["launch_buttons"]["colab_url"].startswith("https://colab.research.google.com")
    assert cfg["repository"]["url"].startswith("https://github.com/")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_follows_the_conventions(path):
    nb = jupytext.read(path)
    assert nb.metadata["kernelspec"].get("display_name"), "kernelspec needs a display_name"
    assert nb.metadata["jupytext"]["text_representation"]["format_name"] == "myst"
    code = [c for c in nb.cells if c.cell_type == "code"]
    first = code[0]
    assert "google.colab" in first.source and "remove-cell" in first.metadata.get("tags", [])
    match = INSTALL_RE.search(first.source)
    assert match and match["url"] == configured_url(ROOT), "run tools/set_repository.py"
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    if path not in EXERCISE_CHAPTERS:
        return  # the pages of the Appendices part (status, performance) have no exercises
    text = path.read_text()
    assert 2 <= text.count("```{exercise}") <= 4, "a chapter ends with 2–4 exercises"
    assert text.count("```{solution-start}") == text.count("```{exercise}")


def _mini_book(tmp_path, chapter_text):
    """A one-page book with this project's _config.yml, for checking that the build is strict."""
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    extensions = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"].get("local_extensions", {})
    for name, folder in extensions.items():  # the config's local Sphinx extensions come along
        (tmp_path / folder).mkdir(exist_ok=True)
        shutil.copy(ROOT / folder / f"{name}.py", tmp_path / folder)
    (tmp_path / "book").mkdir()
    shutil.copytree(ROOT / "book" / "_static", tmp_path / "book" / "_static")  # html_static_path
    shutil.copy(ROOT / "book" / "references.bib", tmp_path / "book")  # bibtex_bibfiles
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/page\n")
    header = (NOTEBOOKS[0].read_text().split("---\n")[1])
    (tmp_path / "book" / "page.md").write_text(f"---\n{header}---\n\n# Page\n\n{chapter_text}\n")
    return subprocess.run(
        JB + ["build", str(tmp_path), "--builder", "html", "-W", "-n", "--keep-going"],
        capture_output=True, text=True, cwd=tmp_path,
    )


@pytest.mark.slow
def test_a_failing_cell_fails_the_build(tmp_path):
    proc = _mini_book(tmp_path, "```{code-cell} ipython3\nraise RuntimeError('boom')\n```\n")
    assert proc.returncode != 0 and "boom" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_broken_reference_fails_the_build(tmp_path):
    proc = _mini_book(tmp_path, "See {ref}`no-such-label`.\n\n```{code-cell} ipython3\n1 + 1\n```\n")
    assert proc.returncode != 0 and "no-such-label" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_strict_book_build(tmp_path):
    """The whole book, every chapter executed, with Sphinx warnings as errors."""
    proc = subprocess.run(
        JB + ["build", str(ROOT), "--builder", "html", "-W", "-n", "--keep-going", "--path-output", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, env=BOOK_ENV,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    html = tmp_path / "_build" / "html"
    for path in CHAPTERS:
        page = html / path.relative_to(ROOT).with_suffix(".html")
        assert page.is_file(), f"{page} was not built"
    assert any((html / "_images").glob("*.png")), "no figure was rendered"


def test_set_repository_rejects_a_non_github_url():
    from tools import set_repository

    before = (ROOT / "_config.yml").read_text()
    with pytest.raises(SystemExit, match="github.com"):
        set_repository.main(["https://gitlab.com/org/repo"])
    assert (ROOT / "_config.yml").read_text() == before
