"""Keep the chapters' code at most 88 columns: ``python -m tools.format_chapters [--check] [FILE ...]``.

The book's column shows about 88 characters of code; a longer line is cut on paper and needs a
scroll bar on screen. For every ``{code-cell}`` of the MyST chapters (default: ``book/*.md``)
with a line wider than ``LIMIT``, this tool

* without ``--check``: rewrites the cell with ``ruff format --line-length 88`` (only cells that
  are too wide are touched, so the rest of a chapter's diff stays empty), then
* splits what ruff leaves too wide: a long one-line string literal inside brackets becomes two
  adjacent literals (Python joins them again, so the cell's syntax tree must stay the same, or
  the split is undone), a long comment moves above its line and is wrapped (a full-line one
  together with the lines of its comment block that follow it, as one paragraph, so that no
  word is left alone on a line), and a long one-line docstring is wrapped over several lines;
* reports every line that is still too wide (e.g. an f-string without a space outside its
  replacement fields) as
  ``file:line: N columns``: wrap it by hand.

With ``--check`` nothing is written; the exit status is 1 when any line is too wide. Cells that
use IPython magics (``%pip``, ``!cmd``) are not reformatted, only reported.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import shutil
import subprocess
import sys
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 88
FENCE_RE = re.compile(r"^(?P<fence>`{3,})\{code-cell\}")
#: comments that are instructions to a tool, never part of a paragraph to rewrap
PRAGMAS = ("fmt:", "noqa", "type:", "pragma", "ruff:")


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
        while i < len(lines) and lines[i].startswith(
            ":"
        ):  # short options (:tags: [...])
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
        input=code,
        capture_output=True,
        text=True,
    )
    return proc.stdout if proc.returncode == 0 else None


def _split_string(token: str, room: int) -> tuple[str, str] | None:
    """Split the one-line string literal ``token`` at a space, the first part at most ``room``
    characters; inside an f-string only outside replacement fields. None when impossible."""
    match = re.match(r"(?i)([rbuf]*)(['\"])", token)
    if (
        not match
        or token.endswith(match[2] * 3)
        and token.startswith(match[1] + match[2] * 3)
    ):
        return None
    prefix, quote = match[1], match[2]
    body = token[len(prefix) + 1 : -1]
    depth, best, i = 0, None, 0
    while i < len(body):
        two = body[i : i + 2]
        if "f" in prefix.lower() and two in ("{{", "}}"):
            i += 2
            continue
        if "f" in prefix.lower() and body[i] in "{}":
            depth += 1 if body[i] == "{" else -1
        elif body[i] == "\\":
            i += 2
            continue
        elif (
            body[i] == " " and depth == 0 and len(prefix) + 1 + i + 2 <= room and i > 0
        ):
            best = i
        i += 1
    if best is None:
        return None
    return prefix + quote + body[: best + 1] + quote, prefix + quote + body[
        best + 1 :
    ] + quote


def _split_once(code: str, comments_only: bool = False) -> str | None:
    """``code`` with its first too-wide line made shorter (see the module docstring), or None."""
    lines = code.split("\n")
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, SyntaxError):
        return None
    for tok in tokens:
        (row, col), (erow, ecol) = tok.start, tok.end
        line = lines[row - 1]
        if row != erow or len(line) <= LIMIT:
            continue
        if tok.type == tokenize.COMMENT:
            indent = re.match(r"\s*", line)[0]
            before = line[:col].rstrip()
            text = tok.string.lstrip("#").strip()
            end = row  # the lines[row - 1 : end] that are rewrapped together
            if not before.strip():
                # a full-line comment: the lines of the same comment block after it (same
                # indent, up to an empty "#" line) continue its sentence, so they are
                # rewrapped with it (no word left alone on a line in the middle)
                while end < len(lines):
                    match = re.fullmatch(re.escape(indent) + r"# (\S.*)", lines[end])
                    if not match or match[1].startswith(PRAGMAS):
                        break
                    text += " " + match[1].strip()
                    end += 1
            wrapped = textwrap.wrap(text, LIMIT - len(indent) - 2) or [""]
            comment = [f"{indent}# {w}" for w in wrapped]
            new = comment + ([before] if before.strip() else [])
            return "\n".join(lines[: row - 1] + new + lines[end:])
        if comments_only:
            continue
        if (
            tok.type == tokenize.STRING
            and line.strip() == tok.string
            and tok.string[-3:] in ('"""', "'''")
        ):
            quote = tok.string[-3:]  # a one-line docstring: wrap its text
            head = tok.string[: tok.string.index(quote) + 3]
            text = tok.string[len(head) : -3]
            wrapped = textwrap.wrap(text, LIMIT - col - 3, break_on_hyphens=False)
            if len(wrapped) < 2:
                return None
            new = [line[:col] + head + wrapped[0]] + [
                " " * col + w for w in wrapped[1:]
            ]
            new[-1] += quote
            return "\n".join(lines[: row - 1] + new + lines[row:])
        if tok.type == tokenize.STRING and ecol > LIMIT:
            parts = _split_string(tok.string, LIMIT - col)
            if parts:
                new = [line[:col] + parts[0], " " * col + parts[1] + line[ecol:]]
                return "\n".join(lines[: row - 1] + new + lines[row:])
    return None


def _tree(code: str) -> str:
    """The syntax tree of ``code``, with the whitespace of bare string statements (docstrings)
    normalised, so that wrapping a docstring's text keeps it."""
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            if isinstance(node.value.value, str):
                node.value.value = " ".join(node.value.value.split())
    return ast.dump(tree)


def wrap_long_lines(code: str, comments_only: bool = False) -> str:
    """Split long strings and comments of ``code`` until nothing more can be split; each step
    keeps the syntax tree, and ruff lays the result out again (not with ``comments_only``, the
    pass before ruff, which would otherwise wrap a line in brackets to fit its comment)."""
    try:
        tree = _tree(code)
    except SyntaxError:
        return code
    for _ in range(200):
        new = _split_once(code, comments_only)
        if new is None:
            break
        try:
            same = _tree(new) == tree
        except SyntaxError:
            same = False
        if not same:
            break
        code = new if comments_only else (ruff_format(new) or new)
    return code


def process(path: Path, check: bool) -> list[str]:
    """Format (unless ``check``) the wide cells of ``path``; return the remaining problems."""
    lines = path.read_text().split("\n")
    problems, new_lines, last = [], [], 0
    for cell in code_cells(lines):
        code = cell.code
        if too_wide(code) and not check:
            magic = any(line.lstrip().startswith(("%", "!")) for line in code)
            source = "\n".join(code) + "\n"
            formatted = (
                None
                if magic
                else ruff_format(wrap_long_lines(source, comments_only=True))
            )
            if formatted is not None:
                code = wrap_long_lines(formatted).rstrip("\n").split("\n")
        new_lines += lines[last : cell.start] + code
        last = cell.end
        offset = len(new_lines) - len(code)
        for k in too_wide(code):
            problems.append(
                f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:"
                f"{offset + k + 1}: {len(code[k])} columns"
            )
    new_lines += lines[last:]
    if not check and new_lines != lines:
        path.write_text("\n".join(new_lines))
        print(f"formatted {path}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.format_chapters", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--check", action="store_true", help="only report; exit 1 if a line is too wide"
    )
    parser.add_argument(
        "files", nargs="*", type=Path, help="MyST chapters (default: book/*.md)"
    )
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
