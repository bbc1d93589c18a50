"""Keep the chapters' code at most 88 columns: ``python -m tools.format_chapters [--check] [FILE ...]``.

The book's column shows about 88 characters of code; a longer line is cut on paper and needs a
scroll bar on screen. For every ``{code-cell}`` of the MyST chapters (default: ``book/*.md``)
with a line wider than ``LIMIT``, this tool

* without ``--check``: rewrites the cell with ``ruff format --line-length 88`` (only cells that
  are too wide are touched, so the rest of a chapter's diff stays empty), then
* reports every line that is still too wide (a long string or comment, which a formatter does
  not split: wrap it by hand), as ``file:line: N columns``.

With ``--check`` nothing is written; the exit status is 1 when any line is too wide. Cells that
use IPython magics (``%pip``, ``!cmd``) are not reformatted, only reported.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 88
FENCE_RE = re.compile(r"^(?P<fence>`{3,})\{code-cell\}")


@dataclass
class Cell:
    start: int  # index of the first code line in the file's lines
    end: int  # index of the closing fence
    code: list[str]


def code_cells(lines: list[str]) -> list[Cell]:
    """The code cells of a MyST notebook, as line ranges of its text (options skipped)."""
    cells, i = [], 0
    while i < len(lines):
        match = FENCE_RE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, i = match["fence"], i + 1
        if i < len(lines) and lines[i].strip() == "---":  # YAML options block
            i += 1
            while i < len(lines) and lines[i].strip() != "---":
                i += 1
            i += 1
        while i < len(lines) and lines[i].startswith(":"):  # short options (:tags: [...])
            i += 1
        if i < len(lines) and not lines[i].strip():
            i += 1
        start = i
        while i < len(lines) and lines[i].rstrip() != fence:
            i += 1
        if i == len(lines):
            raise ValueError(f"a {{code-cell}} opened at line {start} is never closed")
        cells.append(Cell(start, i, lines[start:i]))
        i += 1
    return cells


def too_wide(code: list[str]) -> list[int]:
    return [k for k, line in enumerate(code) if len(line) > LIMIT]


def ruff_format(code: str) -> str | None:
    """``code`` formatted by ruff at ``LIMIT`` columns, or None when ruff cannot parse it."""
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    proc = subprocess.run(
        [ruff, "format", f"--line-length={LIMIT}", "--stdin-filename=cell.py", "-"],
        input=code, capture_output=True, text=True,
    )
    return proc.stdout if proc.returncode == 0 else None


def process(path: Path, check: bool) -> list[str]:
    """Format (unless ``check``) the wide cells of ``path``; return the remaining problems."""
    lines = path.read_text().split("\n")
    problems, new_lines, last = [], [], 0
    for cell in code_cells(lines):
        code = cell.code
        if too_wide(code) and not check:
            magic = any(line.lstrip().startswith(("%", "!")) for line in code)
            formatted = None if magic else ruff_format("\n".join(code) + "\n")
            if formatted is not None:
                code = formatted.rstrip("\n").split("\n")
        new_lines += lines[last:cell.start] + code
        last = cell.end
        offset = len(new_lines) - len(code)
        for k in too_wide(code):
            problems.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:"
                            f"{offset + k + 1}: {len(code[k])} columns")
    new_lines += lines[last:]
    if not check and new_lines != lines:
        path.write_text("\n".join(new_lines))
        print(f"formatted {path}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.format_chapters", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if a line is too wide")
    parser.add_argument("files", nargs="*", type=Path, help="MyST chapters (default: book/*.md)")
    args = parser.parse_args(argv)
    files = args.files or sorted((ROOT / "book").glob("*.md"))
    problems = []
    for path in files:
        if not path.is_file():
            parser.error(f"{path} is not a file")
        problems += process(path.resolve(), args.check)
    for problem in problems:
        print(f"{problem} (limit {LIMIT})")
    return 1 if problems and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
