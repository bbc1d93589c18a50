"""The book: conventions every chapter follows, and one strict build that executes each chapter once.

The strict build (``tools.book``, also behind ``make book``) executes every chapter through
Jupyter Book's execution cache in ``_build/.jupyter_cache``; the per-chapter tests read the
executed notebooks back from that cache instead of running them again, and ``make book``
afterwards reuses them too.
"""

import re
import sys
from pathlib import Path

import jupytext
import pytest
import yaml

from tools import book
from tools.chapters import exercise_chapters, is_notebook, toc_chapters
from tools.set_repository import INSTALL_RE, configured_url

ROOT = Path(__file__).resolve().parent.parent
JB = [str(Path(sys.executable).parent / "jupyter-book")]
CHAPTERS = toc_chapters()
NOTEBOOKS = [p for p in CHAPTERS if is_notebook(p)]
EXERCISE_CHAPTERS = exercise_chapters()  # all notebooks but the Appendices part


@pytest.mark.slow
def test_strict_book_build(built_book):
    """The whole book, every chapter executed, with Sphinx warnings as errors."""
    for path in CHAPTERS:
        page = built_book / path.relative_to(ROOT).with_suffix(".html")
        assert page.is_file(), f"{page} was not built"
    assert any((built_book / "_images").glob("*.png")), "no figure was rendered"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_was_executed_without_an_error(path, built_book):
    """What nbval checked before, read from the build's execution of the chapter."""
    nb = book.executed_chapter(path)
    assert nb is not None, (
        f"the build left no execution of {path.name}'s current code in the cache"
    )
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert code and all(c.get("execution_count") for c in code), (
        "a code cell was not executed"
    )
    errors = [
        c.source[:80] for c in code if any(o.output_type == "error" for o in c.outputs)
    ]
    assert not errors, f"cells that raised: {errors}"


def test_every_toc_entry_exists_and_is_a_numbered_chapter_in_book():
    assert CHAPTERS, "the table of contents lists no chapter"
    for path in CHAPTERS:
        assert path.is_file(), f"{path} is listed in _toc.yml but missing"
        assert path.parent == ROOT / "book" and re.match(r"\d\d_\w+\.md$", path.name)


def test_config_is_strict_and_complete():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cfg["only_build_toc_files"] is True
    assert (
        cfg["execute"]["raise_on_error"] is True
        and cfg["execute"]["allow_errors"] is False
    )
    assert (
        cfg["execute"]["execute_notebooks"] == "cache"
    )  # executed once, reused (tools/book.py)
    assert cfg["execute"]["timeout"] > 0
    for folder in ("immulib", "tests", "_build", ".venv"):
        assert folder in cfg["exclude_patterns"]
    assert {"sphinx_exercise", "sphinx_proof", "sphinx_togglebutton"} <= set(
        cfg["sphinx"]["extra_extensions"]
    )
    macros = cfg["sphinx"]["config"]["mathjax3_config"]["tex"]["macros"]
    assert {"cond", "Rill", "Rwell", "HP", "HH", "DP", "DH"} <= set(macros)
    assert cfg["launch_buttons"]["colab_url"].startswith(
        "https://colab.research.google.com"
    )
    assert cfg["repository"]["url"].startswith("https://github.com/")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_follows_the_conventions(path):
    nb = jupytext.read(path)
    assert nb.metadata["kernelspec"].get("display_name"), (
        "kernelspec needs a display_name"
    )
    assert nb.metadata["jupytext"]["text_representation"]["format_name"] == "myst"
    code = [c for c in nb.cells if c.cell_type == "code"]
    first = code[0]
    assert "google.colab" in first.source and "remove-cell" in first.metadata.get(
        "tags", []
    )
    match = INSTALL_RE.search(first.source)
    assert match and match["url"] == configured_url(ROOT), "run tools/set_repository.py"
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    if path not in EXERCISE_CHAPTERS:
        return  # the pages of the Appendices part (status, performance) have no exercises
    text = path.read_text()
    assert 2 <= text.count("```{exercise}") <= 4, "a chapter ends with 2–4 exercises"
    assert text.count("```{solution-start}") == text.count("```{exercise}")


@pytest.mark.slow
def test_a_failing_cell_fails_the_build_every_time(tmp_path):
    proc = book.mini_book(
        tmp_path, "```{code-cell} ipython3\nraise RuntimeError('boom')\n```\n"
    )
    assert proc.returncode != 0 and "boom" in proc.stdout + proc.stderr
    again = book.build_mini(tmp_path)  # a failure is not cached as a result
    assert again.returncode != 0 and "boom" in again.stdout + again.stderr


@pytest.mark.slow
def test_a_broken_reference_fails_the_build(tmp_path):
    proc = book.mini_book(
        tmp_path, "See {ref}`no-such-label`.\n\n```{code-cell} ipython3\n1 + 1\n```\n"
    )
    assert proc.returncode != 0 and "no-such-label" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_an_unchanged_page_is_executed_once_and_a_changed_one_again(tmp_path):
    log = tmp_path / "executions.log"
    cell = f"```{{code-cell}} ipython3\nopen({str(log)!r}, 'a').write('run\\n')\n```\n"
    for _ in range(2):
        proc = (
            book.mini_book(tmp_path, cell)
            if not log.exists()
            else book.build_mini(tmp_path)
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert log.read_text() == "run\n", (
        "the second build executed the unchanged page again"
    )
    page = tmp_path / "book" / "page.md"
    page.write_text(page.read_text().replace("'run", "'rerun"))
    assert book.build_mini(tmp_path).returncode == 0
    assert log.read_text() == "run\nrerun\n"


_HEADER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3 (ipykernel)
  language: python
  name: python3
---

"""


def test_pre_execute_caches_what_ran_and_leaves_a_failure_to_the_build(
    tmp_path, monkeypatch
):
    """The chapters the cache lacks run in worker processes, in the chapter's folder; the
    successful ones are stored under the key the build looks up, a failing one is not."""
    from jupyter_cache import get_cache

    import tools.chapters

    pages = tmp_path / "book"
    pages.mkdir()
    cells = {
        "a.md": "open('ran_a', 'w').write('a')",
        "b.md": "x = 40 + 2\nprint(x)",
        "c.md": "raise RuntimeError('boom')",
    }
    chapters = []
    for name, code in cells.items():
        path = pages / name
        path.write_text(
            _HEADER + f"# {name}\n\n```{{code-cell}} ipython3\n{code}\n```\n"
        )
        chapters.append(path)
    monkeypatch.setattr(tools.chapters, "toc_chapters", lambda: chapters)
    assert (
        book.pre_execute(tmp_path, workers=1) == []
    )  # one worker: the build runs them
    assert sorted(book.pre_execute(tmp_path, workers=2)) == ["a.md", "b.md"]
    assert (pages / "ran_a").read_text() == "a"  # executed in the chapter's folder
    cache = get_cache(str(book.cache_dir(tmp_path)))
    for path in chapters[:2]:  # found under the key the build computes from the page
        cache.match_cache_notebook(book._read_notebook(path))
    with pytest.raises(KeyError):
        cache.match_cache_notebook(book._read_notebook(chapters[2]))
    (pages / "ran_a").unlink()
    assert book.pre_execute(tmp_path, workers=2) == []  # only the failing one is left
    assert not (pages / "ran_a").exists()


def test_the_cache_is_emptied_when_the_library_changes(tmp_path, monkeypatch):
    root, out = tmp_path / "repo", tmp_path / "out"
    (root / "immulib").mkdir(parents=True)
    (root / "immulib" / "linalg.py").write_text("x = 1\n")
    monkeypatch.setattr(book, "FINGERPRINTED", ["immulib"])
    assert (
        book.refresh_cache(out, root) is False
    )  # first build: nothing to compare with
    book.cache_dir(out).mkdir(parents=True)
    assert book.refresh_cache(out, root) is False and book.cache_dir(out).is_dir()
    (root / "immulib" / "__pycache__").mkdir()
    (root / "immulib" / "__pycache__" / "linalg.pyc").write_bytes(b"compiled")
    assert book.refresh_cache(out, root) is False, (
        "bytecode is not the library's source"
    )
    (root / "immulib" / "linalg.py").write_text("x = 2\n")
    assert book.refresh_cache(out, root) is True and not book.cache_dir(out).exists()


def test_set_repository_rejects_a_non_github_url():
    from tools import set_repository

    before = (ROOT / "_config.yml").read_text()
    with pytest.raises(SystemExit, match="github.com"):
        set_repository.main(["https://gitlab.com/org/repo"])
    assert (ROOT / "_config.yml").read_text() == before
