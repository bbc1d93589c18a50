"""The book's chapter list, read from _toc.yml (used by the test configuration and tools)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The caption of the part that holds the appendix pages (status, performance): pages without exercises.
APPENDICES = "Appendices"


def toc_chapters_with_parts() -> list[tuple[str | None, Path]]:
    """``(part caption, chapter file)`` for every chapter in ``_toc.yml`` (root first, caption None)."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    entries: list[tuple[str | None, str]] = [(None, toc["root"])]

    def walk(caption, items):
        for entry in items or []:
            if "file" in entry:
                entries.append((caption, entry["file"]))
            walk(caption, entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("caption"), part.get("chapters"))
    walk(None, toc.get("chapters"))
    return [
        (caption, ROOT / (n if n.endswith(".md") else n + ".md"))
        for caption, n in entries
    ]


def toc_chapters() -> list[Path]:
    """The chapter files listed in ``_toc.yml`` (root first), as absolute paths."""
    return [path for _, path in toc_chapters_with_parts()]


def exercise_chapters() -> list[Path]:
    """The notebook chapters that end with exercises: every one outside the Appendices part."""
    return [
        p
        for caption, p in toc_chapters_with_parts()
        if caption != APPENDICES and is_notebook(p)
    ]


def is_notebook(path: Path) -> bool:
    """A MyST page is a notebook when its jupytext header has a kernelspec."""
    import jupytext

    return "kernelspec" in jupytext.read(path).metadata


def chapter_notebook(path: Path):
    """The chapter as a valid nbformat-4 notebook (code cells with empty outputs), for the tools."""
    import jupytext
    import nbformat

    if not Path(path).is_file():
        raise ValueError(f"chapter {path} does not exist")
    nb = nbformat.reads(jupytext.writes(jupytext.read(path), fmt="ipynb"), as_version=4)
    nb.metadata.pop("jupytext", None)
    nbformat.validate(nb)
    return nb


def write_notebooks(out_dir: str | Path, notebooks) -> list[Path]:
    """Write each ``(relative path, notebook)`` of the iterable ``notebooks`` under ``out_dir``."""
    import nbformat

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"the output {out_dir} exists and is not a folder")
    written = []
    for relative, nb in notebooks:
        path = out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, path)
        written.append(path)
    return written


def tool_main(argv: list[str], write, default_out: Path, prog: str) -> None:
    """The command line of tools/student.py and tools/colab.py: ``python PROG [OUT]``."""
    import sys

    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        sys.exit(
            f"usage: python {prog} [OUT]   (default: {default_out.relative_to(ROOT)})"
        )
    try:
        paths = write(argv[0] if argv else default_out)
    except ValueError as err:
        sys.exit(f"error: {err}")
    for path in paths:
        print(f"wrote {path}")
