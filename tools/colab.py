"""Colab versions of the pages: ``python -m tools.colab [OUT]`` (default ``colab/``).

Colab opens ``.ipynb`` files from GitHub, not MyST ``.md`` chapters, and renders plain Markdown
with MathJax but none of the book's Sphinx extensions. For every notebook page in ``_toc.yml``
that runs without a clone of the repository, this writes ``OUT/book/NN_name.ipynb`` (the page's
path with the suffix ``.ipynb``), a notebook that reads as the book does:

* the hidden install cell is replaced by a **visible first cell** that installs immulib from
  ``repository.url`` of ``_config.yml``, only when ``google.colab`` is loaded;
* the MathJax macros of ``_config.yml`` (``\\KP``, ``\\cond``, ...) are expanded in the Markdown;
* MyST turns into plain Markdown (:func:`myst_to_markdown`): admonitions and theorem boxes become
  headed quotes, exercises numbered headings ("Exercise 6.1", numbered as the book numbers
  them), ``{ref}`` links to the page of the rendered book, ``{cite}`` an author-year link to the
  bibliography, and ``(label)=`` targets and directive options disappear;
* ``from myst_nb import glue`` gets a fallback: Colab has no myst-nb (the book build's), so there
  ``glue`` only shows what the book would insert;
* solutions are hidden: their code cells are collapsed (Colab's ``cellView: form`` with a
  ``#@title``, JupyterLab's ``source_hidden``) and their prose sits in a "Show" block.

A page whose front matter says ``colab: false`` (e.g. the performance page, which runs the
repository's benchmark scripts) gets no notebook, and ``tools/colab_links.py`` gives it no Colab
button. The default ``colab/`` folder is committed with the chapters; tests/test_colab.py fails
when it is stale. Regenerate it with ``make colab`` after changing a chapter.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tools.chapters import (
    chapter_notebook,
    is_notebook,
    toc_chapters,
    tool_main,
    write_notebooks,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "colab"
INSTALL_RE = re.compile(r'"immulib @ git\+(?P<url>[^"]+)"')
GITHUB_RE = re.compile(
    r"^https://github\.com/(?P<org>[^/]+)/(?P<repo>[^/]+?)(?:\.git)?/?$"
)
FOLDER_README = """# Colab notebooks of the book (generated)

Written by `python -m tools.colab` (`make colab`) from the chapters in `book/`; do not edit by
hand. Each `book/NN_name.ipynb` is a chapter of the book, opened by the chapter's Colab button:
the book's macros are expanded, its MyST markup is plain Markdown, and solutions are collapsed.
"""

FENCE_RE = re.compile(
    r"^(?P<fence>`{3,}|:{3,})\{(?P<name>[^}\s]+)\}\s*(?P<arg>.*?)\s*$"
)
OPTION_RE = re.compile(r"^:(?P<key>\w[\w-]*):\s*(?P<value>.*)$")
TARGET_RE = re.compile(r"^\((?P<label>[^()\s]+)\)=\s*$")
HEADING_RE = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<title>.+?)\s*$")
ROLE_RE = re.compile(r"\{(?P<role>[a-z][\w:-]*)\}`(?P<body>[^`]+)`")
EXPLICIT_RE = re.compile(r"^(?P<text>.*?)\s*<(?P<target>[^<>]+)>$")
ADMONITIONS = {
    "note",
    "tip",
    "hint",
    "important",
    "warning",
    "caution",
    "attention",
    "danger",
    "error",
    "seealso",
}
DROPPED = {"bibliography", "nb-exec-table", "eval-rst", "toctree", "tableofcontents"}


# --------------------------------------------------------------------------------------------
# configuration: repository, macros, chapter numbers, labels, bibliography
# --------------------------------------------------------------------------------------------


def configured_url(root: Path = ROOT) -> str:
    """``repository.url`` of ``_config.yml``: where Colab installs immulib from."""
    import yaml

    return yaml.safe_load((root / "_config.yml").read_text())["repository"]["url"]


def book_url(repository_url: str) -> str:
    """The rendered book's address: GitHub Pages of the repository (``https://ORG.github.io/REPO/``)."""
    match = GITHUB_RE.match(repository_url or "")
    if not match:
        raise ValueError(
            f"repository_url must be https://github.com/ORG/REPO, got {repository_url!r}"
        )
    return f"https://{match['org']}.github.io/{match['repo']}/"


def config_macros(root: Path = ROOT) -> dict[str, str]:
    """The MathJax macros of ``_config.yml`` (name without backslash -> replacement)."""
    import yaml

    config = yaml.safe_load((root / "_config.yml").read_text())
    macros = config["sphinx"]["config"]["mathjax3_config"]["tex"]["macros"]
    return {
        name: value if isinstance(value, str) else value[0]
        for name, value in macros.items()
    }


def expand_macros(text: str, macros: dict[str, str]) -> str:
    """``text`` with every ``\\name`` of ``macros`` replaced by ``{replacement}`` (braced, so that
    ``\\KP^{-1}`` stays valid), repeatedly, for macros defined through other macros."""
    if not macros:
        return text
    names = sorted(macros, key=len, reverse=True)
    pattern = re.compile(r"\\(" + "|".join(map(re.escape, names)) + r")(?![A-Za-z])")
    for _ in range(10):
        new = pattern.sub(lambda m: "{" + macros[m[1]] + "}", text)
        if new == text:
            return new
        text = new
    raise ValueError("the macros of _config.yml expand into each other without end")


def page_metadata(chapter: Path) -> dict:
    import jupytext

    return dict(jupytext.read(chapter).metadata)


def needs_clone(chapter: Path) -> bool:
    """A page whose front matter says ``colab: false`` runs only in a clone (no Colab notebook)."""
    return page_metadata(chapter).get("colab", True) is False


def chapter_numbers(root: Path = ROOT) -> dict[Path, int]:
    """The number the book gives each chapter: numbered parts of ``_toc.yml``, counted on across
    parts (``use_multitoc_numbering``); the root page is not numbered."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    default = toc.get("defaults", {}).get("numbered", False)
    numbers, n = {}, 0
    for part in toc.get("parts", []):
        for entry in part.get("chapters", []):
            if part.get("numbered", default):
                n += 1
                name = entry["file"]
                numbers[
                    (root / (name if name.endswith(".md") else name + ".md")).resolve()
                ] = n
    return numbers


class Book:
    """What a page needs to know about the others: chapter numbers, the title, page and number
    of every label, the bibliography, and the rendered book's address."""

    def __init__(self, root: Path = ROOT):
        self.root = root
        self.url = book_url(configured_url(root))
        self.macros = config_macros(root)
        self.numbers = chapter_numbers(root)
        self.labels: dict[
            str, tuple[str, str]
        ] = {}  # label -> (link text, page address)
        self.numbered: dict[
            tuple[Path, str], list[str]
        ] = {}  # (page, kind) -> labels in order
        self.citations = read_bibliography(root / "book" / "references.bib")
        for chapter in toc_chapters():
            if chapter.is_file():
                self._index(chapter.resolve())

    def page_url(self, chapter: Path, anchor: str = "") -> str:
        page = chapter.relative_to(self.root.resolve()).with_suffix(".html").as_posix()
        return f"{self.url}{page}" + (f"#{anchor}" if anchor else "")

    def number(self, chapter: Path, kind: str, k: int) -> str:
        n = self.numbers.get(chapter)
        return f"{n}.{k}" if n is not None else str(k)

    def _index(self, chapter: Path) -> None:
        lines = chapter.read_text().splitlines()
        counters: dict[str, int] = {}
        pending = None
        for i, line in enumerate(lines):
            target = TARGET_RE.match(line)
            if target:
                pending = target["label"]
                continue
            heading = HEADING_RE.match(line)
            if heading and pending:
                anchor = "" if len(heading["hashes"]) == 1 else pending
                self.labels[pending] = (
                    strip_markup(heading["title"]),
                    self.page_url(chapter, anchor),
                )
                pending = None
                continue
            fence = FENCE_RE.match(line)
            if not fence:
                continue
            kind = directive_kind(fence["name"])
            options = {}
            for opt in lines[i + 1 :]:
                match = OPTION_RE.match(opt)
                if not match:
                    break
                options[match["key"]] = match["value"]
            if kind is None:
                continue
            numbered = "nonumber" not in options
            if numbered:
                counters[kind] = counters.get(kind, 0) + 1
            label = options.get("label") or options.get(
                "name", ""
            )  # figures and tables: :name:
            if not label:
                continue
            title = fence["arg"] if kind != "figure" else ""
            text = (
                f"{kind.capitalize()} {self.number(chapter, kind, counters[kind])}"
                if numbered
                else strip_markup(title) or kind.capitalize()
            )
            self.labels[label] = (text, self.page_url(chapter, label))

    def kind_number(self, chapter: Path, kind: str, k: int) -> str:
        return f"{kind.capitalize()} {self.number(chapter, kind, k)}"


def directive_kind(name: str) -> str | None:
    """The numbered kind of a directive (exercise, theorem, figure, table), else None."""
    if name == "exercise":
        return "exercise"
    if name.startswith("prf:") and name != "prf:proof":
        return name.split(":", 1)[1]
    if name in ("figure", "glue:figure"):
        return "figure"
    if name in ("table", "list-table"):
        return "table"
    return None


def strip_markup(text: str) -> str:
    return re.sub(r"[*`]", "", text).strip()


def read_bibliography(path: Path) -> dict[str, str]:
    """``key -> "Author et al., YEAR"`` for the entries of a BibTeX file (no file: empty)."""
    if not path.is_file():
        return {}
    entries = {}
    for match in re.finditer(
        r"@\w+\{(?P<key>[^,\s]+),(?P<body>.*?)\n\}", path.read_text(), re.S
    ):
        body = match["body"]
        author = re.search(r"author\s*=\s*\{(?P<a>.*?)\},?\s*\n\s*\w+\s*=", body, re.S)
        year = re.search(r"year\s*=\s*\{?(?P<y>\d{4})", body)
        names = (
            [a.strip() for a in re.split(r"\s+and\s+", " ".join(author["a"].split()))]
            if author
            else []
        )
        surname = names[0].split(",")[0].strip("{} ") if names else match["key"]
        who = surname + (
            " et al."
            if len(names) > 2
            else f" and {names[1].split(',')[0]}"
            if len(names) == 2
            else ""
        )
        entries[match["key"]] = f"{who}, {year['y'] if year else 'n.d.'}"
    return entries


# --------------------------------------------------------------------------------------------
# MyST -> plain Markdown
# --------------------------------------------------------------------------------------------


class Page:
    """The conversion state of one chapter: its path and the numbers handed out so far."""

    def __init__(self, book: Book, chapter: Path):
        self.book, self.chapter, self.counters = book, chapter.resolve(), {}

    def next_number(self, kind: str) -> str:
        self.counters[kind] = self.counters.get(kind, 0) + 1
        return self.book.kind_number(self.chapter, kind, self.counters[kind])

    def exercise_name(self, label: str) -> str:
        return self.book.labels.get(label, (label, ""))[0]


def convert_roles(text: str, page: Page) -> str:
    book = page.book

    def role(match: re.Match) -> str:
        name, body = match["role"], match["body"]
        explicit = EXPLICIT_RE.match(body)
        text, target = (
            (explicit["text"], explicit["target"]) if explicit else ("", body)
        )
        if name in ("ref", "numref", "prf:ref", "doc", "any"):
            title, url = book.labels.get(target, (target, ""))
            if name == "doc":
                url = book.page_url(
                    (page.chapter.parent / target).with_suffix(".md").resolve()
                )
            return f"[{text or title}]({url})" if url else (text or title)
        if name == "eq":
            return f"({target})"
        if name.startswith("cite"):
            keys = [k.strip() for k in target.split(",")]
            names = "; ".join(book.citations.get(k, k) for k in keys)
            return f"([{names}]({book.url}book/13_bibliography.html))"
        if name == "math":
            return f"${body}$"
        if name.startswith("glue"):
            return f"`{target}`"
        return text or body

    return ROLE_RE.sub(role, text)


def quote(text: str) -> str:
    return "\n".join(f"> {line}".rstrip() for line in text.splitlines())


def parse_directive(
    lines: list[str], start: int
) -> tuple[re.Match, dict, list[str], int]:
    """The directive opened at ``lines[start]``: its fence match, options, body lines and the
    index after its closing fence."""
    fence = FENCE_RE.match(lines[start])
    closing = fence["fence"]
    options, i = {}, start + 1
    if i < len(lines) and lines[i].strip() == "---":  # YAML options
        i += 1
        while i < len(lines) and lines[i].strip() != "---":
            key, _, value = lines[i].partition(":")
            options[key.strip()] = value.strip()
            i += 1
        i += 1
    while i < len(lines) and OPTION_RE.match(lines[i]):
        match = OPTION_RE.match(lines[i])
        options[match["key"]] = match["value"]
        i += 1
    body, depth = [], 0
    while i < len(lines):
        line = lines[i]
        inner = FENCE_RE.match(line)
        if inner and inner["fence"][0] == closing[0]:
            depth += 1
        elif line.strip() == closing and depth == 0:
            return fence, options, body, i + 1
        elif line.strip() and set(line.strip()) == {closing[0]} and depth > 0:
            depth -= 1
        body.append(line)
        i += 1
    raise ValueError(f"the directive {lines[start]!r} is never closed with {closing!r}")


def render_directive(fence: re.Match, options: dict, body: str, page: Page) -> str:
    name, arg = fence["name"], fence["arg"]
    body = (
        myst_to_markdown(body, page)
        if name not in ("math", "code-block", "code")
        else body
    )
    if name in DROPPED:
        return ""
    if name == "admonition":
        return quote(f"**{arg}**\n\n{body}" if arg else body)
    if name in ADMONITIONS:
        title = "See also" if name == "seealso" else name.capitalize()
        return quote(f"**{title}{': ' + arg if arg else ''}**\n\n{body}")
    if name == "exercise":
        heading = page.next_number("exercise") + (f": {arg}" if arg else "")
        return f"### {heading}\n\n{body}"
    if name == "prf:proof":
        return f"*Proof.* {body} ∎"
    if name.startswith("prf:"):
        kind = name.split(":", 1)[1]
        head = kind.capitalize() if "nonumber" in options else page.next_number(kind)
        return quote(
            f"**{head}{' (' + convert_roles(arg, page) + ')' if arg else ''}.**\n\n{body}"
        )
    if name in ("figure", "glue:figure"):
        number = page.next_number("figure")
        image = (
            f"![{options.get('alt', body.splitlines()[0] if body else number)}]({arg})\n\n"
            if name == "figure"
            else ""
        )
        where = "" if name == "figure" else " (drawn by the code cell above)"
        return f"{image}*{number}{where}: {body}*"
    if name in ("table", "list-table"):
        return f"**{page.next_number('table')}: {convert_roles(arg, page)}**\n\n{body}"
    if name == "math":
        return f"$$\n{body}\n$$"
    if name in ("code-block", "code"):
        return f"```{arg}\n{body}\n```"
    if name in ("dropdown", "toggle"):
        return f"<details><summary>{arg or 'Show'}</summary>\n\n{body}\n\n</details>"
    return quote(
        f"**{name.split(':')[-1].capitalize()}{': ' + arg if arg else ''}**\n\n{body}"
    )


def myst_to_markdown(text: str, page: Page) -> str:
    """Plain Markdown for the MyST ``text`` of one markdown cell of ``page`` (no solution fences)."""
    lines, out, i = text.splitlines(), [], 0
    in_code = None
    while i < len(lines):
        line = lines[i]
        fence = FENCE_RE.match(line)
        if in_code is None and fence:
            if fence["name"] in ("solution-start", "solution-end"):
                raise ValueError(
                    "solution fences are handled per notebook (colab_notebook)"
                )
            fence, options, body, i = parse_directive(lines, i)
            out.append(
                render_directive(fence, options, "\n".join(body).strip("\n"), page)
            )
            continue
        plain_fence = re.match(r"^(`{3,}|~{3,})", line)
        if plain_fence and in_code is None:
            in_code = plain_fence[1]
        elif in_code is not None and line.strip() == in_code:
            in_code = None
        elif in_code is None:
            if TARGET_RE.match(line):
                i += 1
                continue
            line = convert_roles(line, page)
        out.append(line)
        i += 1
    return expand_macros("\n".join(out), page.book.macros).strip("\n")


# --------------------------------------------------------------------------------------------
# the notebooks
# --------------------------------------------------------------------------------------------


def install_source(url: str) -> str:
    """The guarded install cell: immulib from the repository ``url``, only on Colab."""
    return (
        "# On Colab: install immulib from the book's repository (does nothing anywhere else).\n"
        "import sys\n\n"
        'if "google.colab" in sys.modules:\n'
        f'    %pip install -q "immulib @ git+{url}"'
    )


GLUE_IMPORT = "from myst_nb import glue"
GLUE_FALLBACK = """try:
    from myst_nb import glue
except ImportError:  # Colab has no myst-nb: glue() then only shows what the book inserts
    from IPython.display import display as _show

    def glue(name, variable, display=True):
        if display:
            _show(variable)"""


def with_glue_fallback(source: str) -> str:
    """``source`` with a top-level ``from myst_nb import glue`` replaced by :data:`GLUE_FALLBACK`."""
    lines = source.split("\n")
    return "\n".join(GLUE_FALLBACK if line == GLUE_IMPORT else line for line in lines)


def is_install_cell(cell) -> bool:
    return (
        cell.cell_type == "code"
        and "google.colab" in cell.source
        and bool(INSTALL_RE.search(cell.source))
    )


SOLUTION_RE = re.compile(
    r"^(?P<fence>`{3,}|:{3,})\{(?P<name>solution-start|solution-end)\}\s*(?P<arg>\S*)"
)
SOLUTION_TITLE = "#@title Solution of {name} (double-click or “Show code” to open it)"


def _split_solutions(source: str) -> list[tuple[str, str]]:
    """Cut a markdown cell at its solution fences: ``[(kind, text)]`` with kind ``text``,
    ``start:<label>`` or ``end``; the fences' options are dropped."""
    parts, current, lines, i = [], [], source.splitlines(), 0
    while i < len(lines):
        match = SOLUTION_RE.match(lines[i])
        if not match:
            current.append(lines[i])
            i += 1
            continue
        parts.append(("text", "\n".join(current)))
        current = []
        _, _, _, i = parse_directive(lines, i)
        parts.append(
            (
                f"start:{match['arg']}" if match["name"] == "solution-start" else "end",
                "",
            )
        )
    parts.append(("text", "\n".join(current)))
    return [(k, t) for k, t in parts if k != "text" or t.strip()]


def colab_notebook(chapter: Path, url: str, book: Book | None = None):
    """The Colab notebook of ``chapter`` (see the module docstring)."""
    import nbformat

    book = book or Book()
    page = Page(book, chapter)
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    cells = [code(install_source(url))]
    solution = None  # the exercise whose solution is open
    hidden: list[str] = []  # the open solution's prose

    def close_prose():
        if hidden:
            text = "\n\n".join(hidden)
            cells.append(
                md(
                    f"<details><summary>Show the explanation</summary>\n\n{text}\n\n</details>"
                )
            )
            hidden.clear()

    for cell in chapter_notebook(chapter).cells:
        if cell.cell_type == "code":
            if is_install_cell(cell):
                continue
            new = code(with_glue_fallback(cell.source), metadata=dict(cell.metadata))
            if solution is not None:
                close_prose()
                new.source = (
                    SOLUTION_TITLE.format(name=page.exercise_name(solution))
                    + "\n"
                    + new.source
                )
                new.metadata["cellView"] = "form"
                new.metadata["jupyter"] = {"source_hidden": True}
            cells.append(new)
            continue
        if cell.cell_type != "markdown":
            cells.append(cell)
            continue
        for kind, text in _split_solutions(cell.source):
            if kind.startswith("start:"):
                if solution is not None:
                    raise ValueError(
                        f"{chapter.name}: a solution starts inside the solution of {solution!r}"
                    )
                solution = kind.split(":", 1)[1]
                name = page.exercise_name(solution)
                cells.append(
                    md(
                        f"#### Solution of {name}\n\nTry the exercise first: the solution's "
                        "cells below are collapsed."
                    )
                )
            elif kind == "end":
                if solution is None:
                    raise ValueError(
                        f"{chapter.name}: a {{solution-end}} without a {{solution-start}}"
                    )
                close_prose()
                solution = None
            elif solution is not None:
                hidden.append(myst_to_markdown(text, page))
            else:
                converted = myst_to_markdown(text, page)
                if converted.strip():
                    cells.append(md(converted))
    if solution is not None:
        raise ValueError(
            f"{chapter.name}: the solution of {solution!r} has no {{solution-end}}"
        )
    nb = nbformat.v4.new_notebook(
        cells=cells, metadata=chapter_notebook(chapter).metadata
    )
    nb.metadata.pop("colab", None)
    for i, cell in enumerate(
        nb.cells
    ):  # stable ids, so that regenerating changes nothing
        cell.id = f"cell-{i:03d}"
    nbformat.validate(nb)
    return nb


def colab_chapters() -> list[Path]:
    """The pages that get a Colab notebook: every notebook page in ``_toc.yml`` that runs
    without a clone."""
    chapters = []
    for chapter in toc_chapters():
        if not chapter.is_file():
            raise ValueError(f"{chapter} is listed in _toc.yml but does not exist")
        if is_notebook(chapter) and not needs_clone(chapter):
            chapters.append(chapter)
    return chapters


def write_colab_notebooks(out_dir: str | Path = DEFAULT_OUT) -> list[Path]:
    """Write the Colab notebook of every page of :func:`colab_chapters` under ``out_dir``."""
    url, book = configured_url(ROOT), Book()
    notebooks = (
        (c.relative_to(ROOT).with_suffix(".ipynb"), colab_notebook(c, url, book))
        for c in colab_chapters()
    )
    written = write_notebooks(out_dir, notebooks)
    (Path(out_dir) / "README.md").write_text(FOLDER_README)
    return written


if __name__ == "__main__":
    tool_main(sys.argv[1:], write_colab_notebooks, DEFAULT_OUT, "-m tools.colab")
