"""Rerunning a chapter with other parameters (jupytext → papermill), and its error handling."""

import subprocess
import sys

import pytest

from immulib import rerun

CHAPTER = "02_condition_numbers"


def test_parameters_are_read_from_the_parameters_cell():
    params = rerun.chapter_parameters(rerun.find_chapter(CHAPTER))
    assert params["n_problems"] == 100 and isinstance(params["kappas"], list)
    assert rerun.find_chapter("condition_numbers") == rerun.find_chapter(CHAPTER)


@pytest.mark.slow
def test_papermill_rerun_applies_the_override(tmp_path):
    out = tmp_path / "out.ipynb"
    nb = rerun.run_chapter(
        CHAPTER,
        {"n_problems": 3, "kappas": [1.0, 10.0], "steps": 50, "n_orders": 2},
        out,
        progress=False,
    )
    assert out.is_file()
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    text = "".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )
    assert "3 random quadratics per κ, 2 values of κ, 50 steps each" in text
    assert "100 random quadratics" not in text


def test_unknown_parameter_fails_before_running(tmp_path):
    out = tmp_path / "out.ipynb"
    with pytest.raises(
        ValueError, match="unknown parameter 'n_problem'.*known: .*n_problems"
    ):
        rerun.run_chapter(CHAPTER, {"n_problem": 3}, out)
    assert not out.exists()


@pytest.mark.parametrize(
    "name, value",
    [("n_problems", 2.5), ("kappas", 3), ("seed", "zero"), ("n_dim", True)],
)
def test_wrongly_typed_value_fails_before_running(tmp_path, name, value):
    with pytest.raises(TypeError, match=f"parameter '{name}' expects"):
        rerun.run_chapter(CHAPTER, {name: value}, tmp_path / "out.ipynb")
    assert not (tmp_path / "out.ipynb").exists()


def test_command_line_bad_call_exits_2_with_a_clear_message(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "immulib.rerun",
            CHAPTER,
            "-p",
            "steps",
            "many",
            "-o",
            str(tmp_path / "o.ipynb"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "parameter 'steps' expects int" in proc.stderr
    assert not (tmp_path / "o.ipynb").exists()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "immulib.rerun",
            "no_such_chapter",
            "-o",
            str(tmp_path / "o.ipynb"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "matches 0 chapters" in proc.stderr


def test_value_parsing():
    assert rerun.parse_value("3") == 3 and rerun.parse_value("[1, 2.5]") == [1, 2.5]
    assert (
        rerun.parse_value("None") is None and rerun.parse_value("../data") == "../data"
    )


# ------------------------------------------------------------------ nothing lost, works from anywhere

TINY = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A tiny chapter

```{code-cell} ipython3
:tags: [parameters]
x = 1
```

```{code-cell} ipython3
print("x is", x)
```
"""


@pytest.fixture
def tiny_book(tmp_path):
    book = tmp_path / "mybook"
    book.mkdir()
    (book / "01_tiny.md").write_text(TINY)
    (book / "02_other.md").write_text(TINY)
    (book / "03_nb.ipynb").write_text("{}")
    return book


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "immulib.rerun", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(
    "target", ["01_tiny.md", "02_other.md", "03_nb.ipynb", "new.md"]
)
def test_output_that_would_overwrite_a_chapter_source_is_refused(
    tiny_book, tmp_path, target
):
    before = {p.name: p.read_bytes() for p in tiny_book.iterdir()}
    proc = _cli(tiny_book / "01_tiny.md", "-o", tiny_book / target, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "error: output" in proc.stderr
    assert {
        p.name: p.read_bytes() for p in tiny_book.iterdir()
    } == before  # nothing changed


def test_missing_output_folder_fails_before_running(tiny_book, tmp_path):
    proc = _cli(
        tiny_book / "01_tiny.md",
        "-o",
        tmp_path / "no" / "such" / "out.ipynb",
        cwd=tmp_path,
    )
    assert (
        proc.returncode == 2
        and "output folder" in proc.stderr
        and "does not exist" in proc.stderr
    )
    with pytest.raises(ValueError, match="does not exist"):
        rerun.run_chapter(tiny_book / "01_tiny.md", {}, tmp_path / "no" / "out.ipynb")


def test_chapter_by_name_from_a_book_folder_outside_the_repository(tiny_book, tmp_path):
    out = tmp_path / "out.ipynb"
    proc = _cli("tiny", "--book", tiny_book, "-p", "x", "7", "-o", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "x is 7" in out.read_text()


def test_without_a_book_folder_a_name_gets_a_clear_error(tmp_path, monkeypatch):
    """As after a pip install: no ./book and no book/ next to the package."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        rerun, "__file__", str(tmp_path / "site-packages" / "immulib" / "rerun.py")
    )
    assert rerun.book_dir() is None
    with pytest.raises(ValueError, match="no book folder.*--book"):
        rerun.find_chapter("condition_numbers")
    with pytest.raises(ValueError, match="book folder .* does not exist"):
        rerun.find_chapter("condition_numbers", tmp_path / "nope")
    (tmp_path / "ch.md").write_text(TINY)
    assert rerun.find_chapter(tmp_path / "ch.md") == (tmp_path / "ch.md").resolve()


def test_existing_output_is_replaced_only_if_an_earlier_rerun_wrote_it(
    tiny_book, tmp_path
):
    mine = tmp_path / "mine.ipynb"
    mine.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    with pytest.raises(
        ValueError, match="exists and is not a notebook written by an earlier rerun"
    ):
        rerun.run_chapter(tiny_book / "01_tiny.md", {}, mine)
    out = tmp_path / "out.ipynb"
    rerun.run_chapter(tiny_book / "01_tiny.md", {"x": 2}, out, progress=False)
    rerun.run_chapter(
        tiny_book / "01_tiny.md", {"x": 3}, out, progress=False
    )  # rerun: fine
    assert "x is 3" in out.read_text()


@pytest.mark.slow
def test_works_from_a_non_editable_install(tiny_book, tmp_path):
    """pip install (not editable) into a folder: no book/ next to the package, chapters by path or --book."""
    import os
    import shutil
    from pathlib import Path

    target, src = tmp_path / "site", tmp_path / "src"
    repo = Path(__file__).resolve().parent.parent
    src.mkdir()
    for name in (
        "pyproject.toml",
        "README.md",
    ):  # a copy, so that the build writes nothing in the repo
        shutil.copy(repo / name, src / name)
    shutil.copytree(
        repo / "immulib", src / "immulib", ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = tmp_path / "elsewhere"
    run.mkdir()

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "immulib.rerun", *map(str, args)],
            cwd=run,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    proc = cli("-c", "0")  # argparse: prove the module imports from the install
    assert "usage: python -m immulib.rerun" in proc.stderr
    proc = cli("tiny", "-o", run / "o.ipynb")
    assert proc.returncode == 2 and "no book folder" in proc.stderr
    proc = cli(tiny_book / "01_tiny.md", "-p", "x", "5", "-o", run / "o.ipynb")
    assert proc.returncode == 0, proc.stderr
    assert "x is 5" in (run / "o.ipynb").read_text()
    code = "import immulib.rerun as r; print(r.__file__)"
    where = subprocess.run(
        [sys.executable, "-c", code],
        cwd=run,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(target))
