"""Rerun a chapter of the book with other parameters: jupytext (MyST → notebook) then papermill.

Command line (needs the ``rerun`` extra: ``pip install "immulib[rerun]"``, i.e. jupytext and
papermill)::

    python -m immulib.rerun book/02_condition_numbers.md -p n_problems 500 -p seed 3 -o out.ipynb
    python -m immulib.rerun 02_condition_numbers --book path/to/book -o out.ipynb

``CHAPTER`` is a chapter file (``book/02_condition_numbers.md``) or its name with or without the
number prefix (``02_condition_numbers``, ``condition_numbers``), looked up in the book folder:
``--book`` if given, else ``./book`` if it exists, else the ``book/`` folder next to the package
when immulib runs from a checkout of the repository. Each ``-p NAME VALUE`` overrides one
variable of the chapter's cell tagged ``parameters``; VALUE is read as a Python literal (``3``,
``0.5``, ``[1, 2]``, ``None``, ``True``) and otherwise as a string. An unknown name, a value whose
type does not match the default's, an output that is not a new ``.ipynb`` outside the chapter
sources, or an output folder that does not exist is an error raised before anything runs.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path

__all__ = [
    "book_dir",
    "chapter_parameters",
    "check_output",
    "check_parameters",
    "find_chapter",
    "run_chapter",
]


def book_dir(book: str | os.PathLike | None = None) -> Path | None:
    """The folder holding the chapters: ``book`` if given (it must exist), else ``./book``, else
    the repository's ``book/`` next to the package (a checkout), else None.

    Chapter: {ref}`ch-introduction`.
    """
    if book is not None:
        if not isinstance(book, (str, os.PathLike)):
            raise TypeError(f"book must be a path or None, got {type(book).__name__}")
        path = Path(book).expanduser()
        if not path.is_dir():
            raise ValueError(f"book folder {str(path)!r} does not exist")
        return path.resolve()
    for path in (Path.cwd() / "book", Path(__file__).resolve().parent.parent / "book"):
        if path.is_dir() and any(path.glob("*.md")):
            return path.resolve()
    return None


def find_chapter(
    chapter: str | os.PathLike, book: str | os.PathLike | None = None
) -> Path:
    """Resolve a chapter path or name (``02_condition_numbers``, ``condition_numbers``) to its file.

    Chapter: {ref}`ch-introduction`.
    """
    if not isinstance(chapter, (str, os.PathLike)):
        raise TypeError(
            f"chapter must be a path or a name, got {type(chapter).__name__}"
        )
    path = Path(chapter).expanduser()
    if path.suffix == ".md" and path.is_file():
        return path.resolve()
    if path.suffix == ".md" and len(path.parts) > 1:
        raise ValueError(f"chapter file {str(path)!r} does not exist")
    folder = book_dir(book)
    if folder is None:
        raise ValueError(
            f"chapter {str(chapter)!r} is not a file and there is no book folder to look it up in; "
            "pass the chapter's path (book/02_condition_numbers.md) or --book FOLDER"
        )
    stem = path.stem if path.suffix == ".md" else str(chapter)
    candidates = sorted(folder.glob("*.md"))
    matches = [
        p for p in candidates if p.stem == stem or p.stem.split("_", 1)[-1] == stem
    ]
    if len(matches) != 1:
        names = ", ".join(p.stem for p in candidates)
        raise ValueError(
            f"chapter {str(chapter)!r} matches {len(matches)} chapters in {folder}; choose one of: {names}"
        )
    return matches[0].resolve()


def check_output(
    output: str | os.PathLike, chapter: Path, book: str | os.PathLike | None = None
) -> Path:
    """Refuse an output that would overwrite a chapter source or that cannot be written.

    The output must end in ``.ipynb``, must not be the chapter itself nor any ``.md``/``.ipynb``
    in the chapter's folder or the book folder, and its folder must exist. An existing file is
    replaced only if it is an executed notebook written by an earlier rerun (papermill metadata).

    Chapter: {ref}`ch-introduction`.
    """
    if not isinstance(output, (str, os.PathLike)):
        raise TypeError(f"output must be a path, got {type(output).__name__}")
    out = Path(output).expanduser().resolve()
    chapter = Path(chapter).resolve()
    if out == chapter:
        raise ValueError(
            f"output {str(output)!r} is the chapter itself; writing it would destroy the chapter"
        )
    if out.suffix != ".ipynb":
        raise ValueError(
            f"output must be a .ipynb file (papermill writes a notebook), got {str(output)!r}"
        )
    folders = {chapter.parent}
    folder = book_dir(book)
    if folder is not None:
        folders.add(folder)
    if out.parent in folders and (out.exists() or out.with_suffix(".md").exists()):
        raise ValueError(
            f"output {str(output)!r} is a chapter source in {out.parent}; write the executed "
            "notebook somewhere else"
        )
    if not out.parent.is_dir():
        raise ValueError(
            f"the output folder {str(out.parent)!r} does not exist; create it first"
        )
    if out.exists() and not _written_by_rerun(out):
        raise ValueError(
            f"output {str(output)!r} exists and is not a notebook written by an earlier rerun; "
            "delete it or choose another path"
        )
    return out


def _written_by_rerun(path: Path) -> bool:
    """Whether ``path`` is an executed notebook papermill wrote (safe to replace)."""
    import json

    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return (
        isinstance(nb, dict)
        and isinstance(nb.get("metadata"), dict)
        and "papermill" in nb["metadata"]
    )


def _parameters_cell(nb):
    cells = [
        c
        for c in nb.cells
        if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])
    ]
    if len(cells) != 1:
        raise ValueError(
            f"a chapter needs exactly one cell tagged 'parameters', found {len(cells)}"
        )
    return cells[0]


def chapter_parameters(path: str | Path) -> dict[str, object]:
    """The names and default values assigned in the chapter's ``parameters`` cell.

    Chapter: {ref}`ch-introduction`.
    """
    import jupytext

    tree = ast.parse(_parameters_cell(jupytext.read(path)).source)
    params: dict[str, object] = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            params[node.targets[0].id] = ast.literal_eval(node.value)
    return params


def _type_ok(default: object, value: object) -> bool:
    if default is None or value is None:
        return (
            True  # None means "not set": any type may replace it, and it may be reset
        )
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def check_parameters(
    path: str | Path, overrides: dict[str, object]
) -> dict[str, object]:
    """Raise ``ValueError``/``TypeError`` for unknown names or mistyped values; return the overrides.

    Chapter: {ref}`ch-introduction`.
    """
    defaults = chapter_parameters(path)
    for name, value in overrides.items():
        if name not in defaults:
            known = ", ".join(sorted(defaults))
            raise ValueError(
                f"unknown parameter {name!r} for {Path(path).name}; known: {known}"
            )
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


def _need_extra():
    try:
        import jupytext  # noqa: F401
        import papermill  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"rerunning a chapter needs jupytext and papermill ({err}); "
            'install them with: pip install "immulib[rerun]"'
        ) from None


def run_chapter(
    chapter: str | Path,
    parameters: dict[str, object],
    output: str | Path,
    *,
    progress: bool | None = None,
    book: str | os.PathLike | None = None,
):
    """Execute a chapter with overridden parameters and write the executed notebook to ``output``.

    Everything is checked before anything runs: the chapter (:func:`find_chapter`), the
    parameters (:func:`check_parameters`) and the output (:func:`check_output`). The chapter runs
    with its own folder as the working directory, as in the book build. Returns the executed
    notebook (``nbformat.NotebookNode``).

    Chapter: {ref}`ch-introduction`.
    """
    from ._validate import progress as resolve_progress

    progress = resolve_progress(progress)
    path = find_chapter(chapter, book)
    out = check_output(output, path, book)
    _need_extra()
    import jupytext
    import papermill

    check_parameters(path, parameters)
    return papermill.execute_notebook(
        jupytext.read(path),
        str(out),
        parameters=parameters,
        cwd=str(path.parent),
        kernel_name="python3",
        progress_bar=progress,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m immulib.rerun", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "chapter", help="chapter file or name, e.g. book/02_condition_numbers.md"
    )
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
    )
    parser.add_argument(
        "-o", "--output", required=True, help="where to write the executed .ipynb"
    )
    parser.add_argument(
        "--book", default=None, help="the folder holding the chapters (default: ./book)"
    )
    args = parser.parse_args(argv)
    try:
        path = find_chapter(args.chapter, args.book)
        check_output(args.output, path, args.book)
        _need_extra()
        overrides = check_parameters(
            path, {n: parse_value(v) for n, v in args.parameter}
        )
    except (ValueError, TypeError, ImportError) as err:
        parser.exit(2, f"error: {err}\n")
    run_chapter(path, overrides, args.output, book=args.book)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
