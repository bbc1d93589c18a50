"""Student notebooks (tools/student.py): solutions become stubs, and each runs up to its first stub.

A student notebook is not executed again: its code is the chapter's code with each solution
replaced by one stub (checked cell by cell below), the chapter's code is executed by the strict
book build (tests/test_book.py), so the cells before the first stub run as they do there; what
differs, the stub itself, is executed here and must raise NotImplementedError.
"""

import nbformat
import pytest

from tools.chapters import chapter_notebook, exercise_chapters
from tools.student import is_stub, student_notebook, write_student_notebooks

CHAPTERS = exercise_chapters()


def _code_runs(nb) -> list[tuple[int | None, str]]:
    """``(number of the solution it is in or None, source)`` for every code cell, the fences
    read independently of tools/student.py."""
    inside, count, cells = None, 0, []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("```{solution-start}"):
                    inside, count = count, count + 1
                elif line.startswith("```{solution-end}"):
                    inside = None
        elif cell.cell_type == "code":
            cells.append((inside, cell.source))
    return cells


def _solution_code(nb) -> list[str]:
    """The code cells between a {solution-start} and its {solution-end} fence."""
    return [source for inside, source in _code_runs(nb) if inside is not None]


def _expected_student_code(nb) -> list[str | None]:
    """The chapter's code cells with the code of each solution replaced by one stub (None)."""
    expected, stubbed = [], set()
    for inside, source in _code_runs(nb):
        if inside is None:
            expected.append(source)
        elif inside not in stubbed:
            expected.append(None)
            stubbed.add(inside)
    return expected


def _toy(markdown_between: str) -> nbformat.NotebookNode:
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    return nbformat.v4.new_notebook(
        cells=[
            code("x = 1"),
            md(
                "```{exercise}\n:label: ex-toy\n\nDouble x. Then print it.\n```\n\n"
                "```{solution-start} ex-toy\n:class: dropdown\n```"
            ),
            code("print(2 * x)  # SECRET CODE"),
            code("print('more SECRET CODE')"),
            md(markdown_between),
            code("y = 3"),
        ]
    )


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    written = write_student_notebooks(out)
    assert sorted(p.name for p in written) == sorted(
        c.with_suffix(".ipynb").name for c in CHAPTERS
    )
    return out


def test_a_solution_becomes_one_stub_and_its_prose_goes():
    nb = student_notebook(
        _toy("SECRET prose.\n\n```{solution-end}\n```\n\nAfter the solution.")
    )
    text = "\n".join(c.source for c in nb.cells)
    assert "SECRET" not in text and "solution-" not in text
    assert "Double x. Then print it." in text and "After the solution." in text
    stubs = [c for c in nb.cells if is_stub(c)]
    assert (
        len(stubs) == 1
        and "NotImplementedError('Exercise ex-toy: Double x.')" in stubs[0].source
    )
    assert nb.cells[-1].source == "y = 3"
    nbformat.validate(nb)


@pytest.mark.parametrize(
    "markdown, message",
    [
        ("no end here", "has no {solution-end}"),
        (
            "```{solution-end}\n```\n\n```{solution-end}\n```",
            "without a {solution-start}",
        ),
        ("```{solution-start} ex-other\n```", "starts inside solution"),
    ],
)
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
    student = nbformat.read(
        student_dir / chapter.with_suffix(".ipynb").name, as_version=4
    )
    nbformat.validate(student)
    solutions = _solution_code(chapter_notebook(chapter))
    assert solutions, f"{chapter.name} has no solution code to hide"
    sources = [c.source for c in student.cells]
    for code in solutions:
        assert not any(code.strip() in s for s in sources), (
            f"solution code left in: {code[:80]!r}"
        )
    assert not any("{solution-" in s for s in sources)
    n_exercises = chapter.read_text().count("```{exercise}")
    assert sum(is_stub(c) for c in student.cells) == n_exercises


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_student_code_is_the_chapter_code_with_stubs(chapter, student_dir):
    """So the cells before the first stub are cells the book build has executed."""
    student = nbformat.read(
        student_dir / chapter.with_suffix(".ipynb").name, as_version=4
    )
    code = [c for c in student.cells if c.cell_type == "code"]
    got = [None if is_stub(c) else c.source for c in code]
    assert got == _expected_student_code(chapter_notebook(chapter))


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_the_first_stub_raises_not_implemented_error(chapter, student_dir):
    student = nbformat.read(
        student_dir / chapter.with_suffix(".ipynb").name, as_version=4
    )
    stub = next(c for c in student.cells if is_stub(c))
    with pytest.raises(NotImplementedError, match=r"^Exercise \S+"):
        exec(compile(stub.source, f"{chapter.stem} stub", "exec"), {})
