"""The book's chapter list, read from _toc.yml (used by the test configuration and tools)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def toc_chapters() -> list[Path]:
    """The chapter files listed in ``_toc.yml`` (root first), as absolute paths."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    names = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                names.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return [ROOT / (n if n.endswith(".md") else n + ".md") for n in names]


def is_notebook(path: Path) -> bool:
    """A MyST page is a notebook when its jupytext header has a kernelspec."""
    import jupytext

    return "kernelspec" in jupytext.read(path).metadata
