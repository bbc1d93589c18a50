"""Rerun a chapter of the book with other parameters: jupytext (MyST → notebook) then papermill.

Command line::

    python -m immulib.rerun 02_condition_numbers -p n_problems 500 -p seed 3 -o out.ipynb

``CHAPTER`` is a chapter file (``book/02_condition_numbers.md``) or its name with or without the
number prefix (``02_condition_numbers``, ``condition_numbers``). Each ``-p NAME VALUE`` overrides
one variable of the chapter's cell tagged ``parameters``; VALUE is read as a Python literal
(``3``, ``0.5``, ``[1, 2]``, ``None``, ``True``) and otherwise as a string. An unknown name, or a
value whose type does not match the default's, is an error raised before anything runs.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

__all__ = ["chapter_parameters", "check_parameters", "find_chapter", "run_chapter"]

BOOK_DIR = Path(__file__).resolve().parent.parent / "book"


def find_chapter(chapter: str | Path, book_dir: Path = BOOK_DIR) -> Path:
    """Resolve a chapter path or name (``02_condition_numbers``, ``condition_numbers``) to its file."""
    path = Path(chapter)
    if path.suffix == ".md" and path.is_file():
        return path.resolve()
    stem = path.stem if path.suffix == ".md" else str(chapter)
    candidates = sorted(book_dir.glob("*.md"))
    matches = [p for p in candidates if p.stem == stem or p.stem.split("_", 1)[-1] == stem]
    if len(matches) != 1:
        names = ", ".join(p.stem for p in candidates)
        raise ValueError(f"chapter {chapter!r} matches {len(matches)} chapters; choose one of: {names}")
    return matches[0]


def _parameters_cell(nb):
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"a chapter needs exactly one cell tagged 'parameters', found {len(cells)}")
    return cells[0]


def chapter_parameters(path: str | Path) -> dict[str, object]:
    """The names and default values assigned in the chapter's ``parameters`` cell."""
    import jupytext

    tree = ast.parse(_parameters_cell(jupytext.read(path)).source)
    params: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            params[node.targets[0].id] = ast.literal_eval(node.value)
    return params


def _type_ok(default: object, value: object) -> bool:
    if default is None or value is None:
        return True  # None means "not set": any type may replace it, and it may be reset
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def check_parameters(path: str | Path, overrides: dict[str, object]) -> dict[str, object]:
    """Raise ``ValueError``/``TypeError`` for unknown names or mistyped values; return the overrides."""
    defaults = chapter_parameters(path)
    for name, value in overrides.items():
        if name not in defaults:
            known = ", ".join(sorted(defaults))
            raise ValueError(f"unknown parameter {name!r} for {Path(path).name}; known: {known}")
        if not _type_ok(defaults[name], value):
            raise TypeError(
                f"parameter {name!r} expects {type(defaults[name]).__name__} "
                f"(default {defaults[name]!r}), got {type(value).__name__} {value!r}"
            )
    return dict(overrides)


def parse_value(text: str) -> object:
    """A ``-p`` value: a Python literal if it parses as one, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run_chapter(chapter: str | Path, parameters: dict[str, object], output: str | Path, *, progress: bool = True):
    """Execute a chapter with overridden parameters and write the executed notebook to ``output``.

    The chapter runs with its own folder as the working directory, as in the book build.
    Returns the executed notebook (``nbformat.NotebookNode``).
    """
    import jupytext
    import papermill

    path = find_chapter(chapter)
    check_parameters(path, parameters)
    return papermill.execute_notebook(
        jupytext.read(path),
        str(output),
        parameters=parameters,
        cwd=str(path.parent),
        kernel_name="python3",
        progress_bar=progress,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m immulib.rerun", description=__doc__.split("\n\n")[0])
    parser.add_argument("chapter", help="chapter file or name, e.g. 02_condition_numbers")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("-o", "--output", required=True, help="where to write the executed .ipynb")
    args = parser.parse_args(argv)
    try:
        path = find_chapter(args.chapter)
        overrides = check_parameters(path, {n: parse_value(v) for n, v in args.parameter})
    except (ValueError, TypeError) as err:
        parser.exit(2, f"error: {err}\n")
    run_chapter(path, overrides, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
