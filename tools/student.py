"""Student versions of the chapters: ``python tools/student.py [OUT]`` (default ``_build/student``).

Each chapter with exercises (every notebook in ``_toc.yml`` outside the Appendices part) becomes
``OUT/NN_name.ipynb``, a notebook in which

* the code cells of every solution (between the ``{solution-start}`` and ``{solution-end}``
  markdown fences) are replaced by **one** stub cell that raises ``NotImplementedError`` with a
  hint: the exercise's label and its first sentence;
* the solution prose and the two fences are removed; the exercise itself stays.

Everything before the exercises is unchanged, so a student notebook runs like the chapter up to
its first stub. Run it from the ``book/`` folder (or on Colab), as the book does.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.chapters import chapter_notebook, exercise_chapters, tool_main, write_notebooks  # noqa: E402

DEFAULT_OUT = ROOT / "_build" / "student"
FENCE_RE = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<name>exercise|solution-start|solution-end)\}\s*(?P<arg>\S*)")
STUB_MARK = "# STUDENT STUB"


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    return re.split(r"(?<=[.?!])\s", flat, maxsplit=1)[0]


def _directive(lines: list[str], start: int, fence: str) -> tuple[dict[str, str], str, int]:
    """Parse the directive opened at ``lines[start]``: its options, its body, the index after it."""
    options, body, i = {}, [], start + 1
    while i < len(lines) and lines[i].strip() != fence:
        line = lines[i]
        match = re.match(r"^:(\w[\w-]*):\s*(.*)$", line)
        if match and not body:
            options[match[1]] = match[2]
        else:
            body.append(line)
        i += 1
    if i == len(lines):
        raise ValueError(f"directive opened with {lines[start]!r} is never closed with {fence!r}")
    return options, "\n".join(body).strip(), i + 1


def stub_source(label: str, hint: str) -> str:
    """The code of a stub cell: a comment and a ``NotImplementedError`` that names the exercise."""
    message = f"Exercise {label}: {hint}" if hint else f"Exercise {label}"
    return f"{STUB_MARK}: write your solution to exercise {label} here.\nraise NotImplementedError({message!r})"


def is_stub(cell) -> bool:
    return cell.cell_type == "code" and cell.source.startswith(STUB_MARK)


def student_notebook(nb, name: str = "chapter"):
    """A copy of the notebook ``nb`` with solutions replaced by stubs (see the module docstring).

    Raises ``ValueError`` naming ``name`` when the solution fences are unbalanced or unlabelled.
    """
    import copy

    import nbformat

    cells, hints = [], {}
    solution = None  # label of the open solution, None outside a solution
    stubbed = False  # whether the open solution already has its stub
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            if solution is None:
                cells.append(copy.deepcopy(cell))
            elif cell.cell_type == "code" and not stubbed:
                cells.append(nbformat.v4.new_code_cell(stub_source(solution, hints.get(solution, ""))))
                stubbed = True
            continue
        lines, kept, i = cell.source.splitlines(), [], 0
        while i < len(lines):
            match = FENCE_RE.match(lines[i])
            if not match:
                if solution is None:
                    kept.append(lines[i])
                i += 1
                continue
            kind, start = match["name"], i
            options, body, i = _directive(lines, i, match["fence"])
            if kind == "exercise":
                if solution is not None:
                    raise ValueError(f"{name}: an exercise starts inside the solution of {solution!r}")
                hints[options.get("label", "")] = _first_sentence(body)
                kept.extend(lines[start:i])
            elif kind == "solution-start":
                if solution is not None:
                    raise ValueError(f"{name}: solution {match['arg']!r} starts inside solution {solution!r}")
                if not match["arg"]:
                    raise ValueError(f"{name}: {lines[start]!r} names no exercise label")
                solution, stubbed = match["arg"], False
            else:
                if solution is None:
                    raise ValueError(f"{name}: a {{solution-end}} without a {{solution-start}} before it")
                solution = None
        text = "\n".join(kept).strip()
        if text:
            cells.append(nbformat.v4.new_markdown_cell(text, metadata=copy.deepcopy(cell.metadata)))
    if solution is not None:
        raise ValueError(f"{name}: the solution of {solution!r} has no {{solution-end}}")
    out = nbformat.v4.new_notebook(cells=cells, metadata=copy.deepcopy(nb.metadata))
    nbformat.validate(out)
    return out


def write_student_notebooks(out_dir: str | Path = DEFAULT_OUT, chapters: list[Path] | None = None) -> list[Path]:
    """Write ``OUT/NN_name.ipynb`` for every chapter (default: all chapters with exercises)."""
    chapters = exercise_chapters() if chapters is None else chapters
    return write_notebooks(
        out_dir,
        ((c.with_suffix(".ipynb").name, student_notebook(chapter_notebook(c), c.name)) for c in chapters),
    )


if __name__ == "__main__":
    tool_main(sys.argv[1:], write_student_notebooks, DEFAULT_OUT, "tools/student.py")
