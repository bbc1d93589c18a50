"""Student notebooks (tools/student.py): solutions become stubs, and each runs up to its first stub."""

import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tools.chapters import chapter_notebook, exercise_chapters  # noqa: E402
from tools.student import is_stub, student_notebook, write_student_notebooks  # noqa: E402

CHAPTERS = exercise_chapters()


def _solution_code(nb) -> list[str]:
    """The code cells between a {solution-start} and its {solution-end} fence, read independently."""
    inside, code = False, []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("```{solution-start}"):
                    inside = True
                elif line.startswith("```{solution-end}"):
                    inside = False
        elif inside:
            code.append(cell.source)
    return code


def _toy(markdown_between: str) -> nbformat.NotebookNode:
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    return nbformat.v4.new_notebook(cells=[
        code("x = 1"),
        md("```{exercise}\n:label: ex-toy\n\nDouble x. Then print it.\n```\n\n"
           "```{solution-start} ex-toy\n:class: dropdown\n```"),
        code("print(2 * x)  # SECRET CODE"),
        code("print('more SECRET CODE')"),
        md(markdown_between),
        code("y = 3"),
    ])


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    written = write_student_notebooks(out)
    assert sorted(p.name for p in written) == sorted(c.with_suffix(".ipynb").name for c in CHAPTERS)
    return out


def test_a_solution_becomes_one_stub_and_its_prose_goes():
    nb = student_notebook(_toy("SECRET prose.\n\n```{solution-end}\n```\n\nAfter the solution."))
    text = "\n".join(c.source for c in nb.cells)
    assert "SECRET" not in text and "solution-" not in text
    assert "Double x. Then print it." in text and "After the solution." in text
    stubs = [c for c in nb.cells if is_stub(c)]
    assert len(stubs) == 1 and "NotImplementedError('Exercise ex-toy: Double x.')" in stubs[0].source
    assert nb.cells[-1].source == "y = 3"
    nbformat.validate(nb)


@pytest.mark.parametrize("markdown, message", [
    ("no end here", "has no {solution-end}"),
    ("```{solution-end}\n```\n\n```{solution-end}\n```", "without a {solution-start}"),
    ("```{solution-start} ex-other\n```", "starts inside solution"),
])
def test_unbalanced_solution_fences_are_clear_errors(markdown, message):
    with pytest.raises(ValueError, match="toy.md") as err:
        student_notebook(_toy(markdown), "toy.md")
    assert message in str(err.value)


def test_the_command_line_rejects_a_file_as_output(tmp_path):
    target = tmp_path / "file"
    target.write_text("")
    with pytest.raises(ValueError, match="not a folder"):
        write_student_notebooks(target)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_student_notebook_has_stubs_and_no_solution_code(chapter, student_dir):
    student = nbformat.read(student_dir / chapter.with_suffix(".ipynb").name, as_version=4)
    nbformat.validate(student)
    solutions = _solution_code(chapter_notebook(chapter))
    assert solutions, f"{chapter.name} has no solution code to hide"
    sources = [c.source for c in student.cells]
    for code in solutions:
        assert not any(code.strip() in s for s in sources), f"solution code left in: {code[:80]!r}"
    assert not any("{solution-" in s for s in sources)
    n_exercises = chapter.read_text().count("```{exercise}")
    assert sum(is_stub(c) for c in student.cells) == n_exercises


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_student_notebook_runs_up_to_its_first_stub(chapter, student_dir):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(student_dir / chapter.with_suffix(".ipynb").name, as_version=4)
    first = next(i for i, c in enumerate(nb.cells) if is_stub(c))
    nb.cells = nb.cells[: first + 1]  # nothing after the first stub is run
    client = NotebookClient(
        nb, kernel_name="python3", timeout=900, resources={"metadata": {"path": str(chapter.parent)}}
    )
    with pytest.raises(CellExecutionError) as err:
        client.execute()
    assert err.value.ename == "NotImplementedError"
    errors = [i for i, c in enumerate(nb.cells) if any(o.output_type == "error" for o in c.get("outputs", []))]
    assert errors == [first], "a cell before the first stub failed"
