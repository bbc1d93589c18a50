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
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "3 random quadratics per κ, 2 values of κ, 50 steps each" in text
    assert "100 random quadratics" not in text


def test_unknown_parameter_fails_before_running(tmp_path):
    out = tmp_path / "out.ipynb"
    with pytest.raises(ValueError, match="unknown parameter 'n_problem'.*known: .*n_problems"):
        rerun.run_chapter(CHAPTER, {"n_problem": 3}, out)
    assert not out.exists()


@pytest.mark.parametrize("name, value", [("n_problems", 2.5), ("kappas", 3), ("seed", "zero"), ("n_dim", True)])
def test_wrongly_typed_value_fails_before_running(tmp_path, name, value):
    with pytest.raises(TypeError, match=f"parameter '{name}' expects"):
        rerun.run_chapter(CHAPTER, {name: value}, tmp_path / "out.ipynb")
    assert not (tmp_path / "out.ipynb").exists()


def test_command_line_bad_call_exits_2_with_a_clear_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "immulib.rerun", CHAPTER, "-p", "steps", "many", "-o", str(tmp_path / "o.ipynb")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "parameter 'steps' expects int" in proc.stderr
    assert not (tmp_path / "o.ipynb").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "immulib.rerun", "no_such_chapter", "-o", str(tmp_path / "o.ipynb")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2 and "matches 0 chapters" in proc.stderr


def test_value_parsing():
    assert rerun.parse_value("3") == 3 and rerun.parse_value("[1, 2.5]") == [1, 2.5]
    assert rerun.parse_value("None") is None and rerun.parse_value("../data") == "../data"
