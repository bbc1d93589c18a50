"""Student versions of the chapters: ``python -m tools.student [OUT]`` (default ``_build/student``).

Each chapter with exercises (every notebook in ``_toc.yml`` outside the Appendices part) becomes
``OUT/NN_name.ipynb``, a notebook in which

* the code cells of every solution (between the ``{solution-start}`` and ``{solution-end}``
  markdown fences) are replaced by **one** stub cell that raises ``NotImplementedError`` naming
  the exercise in full, as the book numbers it ("Exercise 6.1"), with its first sentence;
* the solution prose and the two fences are removed;
* every markdown cell is plain Markdown, as in the Colab notebooks (``tools/colab.py``): the
  exercise statements are numbered headings with rendered text, the book's macros expanded.

Everything before the exercises is unchanged code, so a student notebook runs like the chapter
up to its first stub. Run it from the ``book/`` folder (or on Colab), as the book does.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tools.chapters import (
    chapter_notebook,
    exercise_chapters,
    tool_main,
    write_notebooks,
)
from tools.colab import (
    FENCE_RE,
    OPTION_RE,
    Book,
    Page,
    _split_solutions,
    convert_roles,
    expand_macros,
    myst_to_markdown,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "_build" / "student"
STUB_MARK = "# STUDENT STUB"
#: Abbreviations after which a full stop does not end a sentence.
ABBREVIATIONS = (
    "Eq",
    "Eqs",
    "Fig",
    "Figs",
    "Sec",
    "Thm",
    "Prop",
    "Def",
    "Tab",
    "Alg",
    "App",
    "Ch",
    "cf",
    "e.g",
    "i.e",
    "vs",
    "al",
    "approx",
    "resp",
    "No",
)


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (whitespace collapsed), not cut at "Eq." or "e.g."."""
    flat = " ".join(text.split())
    for match in re.finditer(r"[.?!](?=\s)", flat):
        word = re.search(r"([\w.]*)$", flat[: match.start()])[1]
        if match[0] == "." and (
            word in ABBREVIATIONS or word.split(".")[-1] in ABBREVIATIONS
        ):
            continue
        return flat[: match.end()]
    return flat


def exercise_statements(nb) -> dict[str, str]:
    """``label -> body`` of every ``{exercise}`` directive in the notebook's markdown."""
    statements = {}
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        lines = cell.source.splitlines()
        for i, line in enumerate(lines):
            fence = FENCE_RE.match(line)
            if not fence or fence["name"] != "exercise":
                continue
            options, j = {}, i + 1
            while j < len(lines) and OPTION_RE.match(lines[j]):
                match = OPTION_RE.match(lines[j])
                options[match["key"]] = match["value"]
                j += 1
            body = []
            while j < len(lines) and lines[j].strip() != fence["fence"]:
                body.append(lines[j])
                j += 1
            statements[options.get("label", "")] = "\n".join(body)
    return statements


def stub_source(name: str, hint: str) -> str:
    """The code of a stub cell: a comment and a ``NotImplementedError`` that names the exercise
    in full (``name`` is e.g. "Exercise 6.1")."""
    message = f"{name}: {hint}" if hint else name
    return f"{STUB_MARK}: write your solution to {name} here.\nraise NotImplementedError({message!r})"


def is_stub(cell) -> bool:
    return cell.cell_type == "code" and cell.source.startswith(STUB_MARK)


def student_notebook(nb, name: str = "chapter", page: Page | None = None):
    """A copy of the notebook ``nb`` with solutions replaced by stubs (see the module docstring).

    ``page`` numbers the exercises as the book does (default: the chapter ``name`` of the book,
    unnumbered if the book does not list it). Raises ``ValueError`` naming ``name`` when the
    solution fences are unbalanced or unlabelled.
    """
    import copy

    import nbformat

    page = page or Page(Book(), ROOT / "book" / name)
    statements = exercise_statements(nb)

    def exercise_name(label: str) -> str:
        known = page.exercise_name(label)
        return known if known.startswith("Exercise") else f"Exercise {label}"

    def hint(label: str) -> str:
        text = convert_roles(statements.get(label, ""), page)
        return first_sentence(expand_macros(text, page.book.macros))

    cells = []
    solution = None  # label of the open solution, None outside a solution
    stubbed = False  # whether the open solution already has its stub
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            if solution is None:
                cells.append(copy.deepcopy(cell))
            elif cell.cell_type == "code" and not stubbed:
                cells.append(
                    nbformat.v4.new_code_cell(
                        stub_source(exercise_name(solution), hint(solution))
                    )
                )
                stubbed = True
            continue
        kept = []
        try:
            parts = _split_solutions(cell.source)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
        for kind, text in parts:
            if kind.startswith("start:"):
                label = kind.split(":", 1)[1]
                if solution is not None:
                    raise ValueError(
                        f"{name}: solution {label!r} starts inside solution {solution!r}"
                    )
                if not label:
                    raise ValueError(
                        f"{name}: a {{solution-start}} names no exercise label"
                    )
                solution, stubbed = label, False
            elif kind == "end":
                if solution is None:
                    raise ValueError(
                        f"{name}: a {{solution-end}} without a {{solution-start}} before it"
                    )
                solution = None
            elif solution is None:
                kept.append(myst_to_markdown(text, page))
        text = "\n\n".join(k for k in kept if k.strip()).strip()
        if text:
            cells.append(
                nbformat.v4.new_markdown_cell(
                    text, metadata=copy.deepcopy(cell.metadata)
                )
            )
    if solution is not None:
        raise ValueError(
            f"{name}: the solution of {solution!r} has no {{solution-end}}"
        )
    out = nbformat.v4.new_notebook(cells=cells, metadata=copy.deepcopy(nb.metadata))
    out.metadata.pop("colab", None)
    nbformat.validate(out)
    return out


def write_student_notebooks(
    out_dir: str | Path = DEFAULT_OUT, chapters: list[Path] | None = None
) -> list[Path]:
    """Write ``OUT/NN_name.ipynb`` for every chapter (default: all chapters with exercises)."""
    chapters = exercise_chapters() if chapters is None else chapters
    book = Book()
    return write_notebooks(
        out_dir,
        (
            (
                c.with_suffix(".ipynb").name,
                student_notebook(chapter_notebook(c), c.name, Page(book, c)),
            )
            for c in chapters
        ),
    )


if __name__ == "__main__":
    tool_main(sys.argv[1:], write_student_notebooks, DEFAULT_OUT, "-m tools.student")
