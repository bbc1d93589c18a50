"""Sphinx extension for the book's static pages (registered in ``_config.yml`` under
``sphinx: local_extensions``). It

* sets ``TQDM_DISABLE=1`` for the build (unless the variable is already set), so the kernels
  myst-nb starts inherit it and ``tqdm.auto`` bars (which render as frozen widgets) are not drawn;
* drops the ipywidgets state that an executed notebook stores in its metadata (chapter 03's
  explorer left 68 KB of it on the page) and the widget JavaScript that would load it: a static
  page cannot run a widget. Widgets still work where a kernel runs them (Jupyter, Colab), since
  the chapters themselves are unchanged;
* lets the API page (``book/14_api.md``, autodoc) build strictly from docstrings written as
  plain text with mathematical notation: ``|x − y|`` (not a substitution) and ``η_`` (not a
  link target) are escaped outside inline literals before napoleon and docutils read them.
"""

from __future__ import annotations

import os
import re

WIDGET_KEYS = ("ipywidgets_",)


def drop_widget_state(app, pagename, *args, **kwargs) -> None:
    """Remove myst-nb's per-page ipywidgets script entries before myst-nb adds them to the page."""
    metadata = getattr(app.env, "nb_metadata", {}).get(pagename, {})
    js_files = metadata.get("js_files", {})
    for key in [k for k in js_files if k.startswith(WIDGET_KEYS)]:
        del js_files[key]


LITERAL_RE = re.compile(r"(``.+?``|`[^`]+`_?)")
BAR_RE = re.compile(r"(?<!\\)\|")
TRAILING_UNDERSCORE_RE = re.compile(r"(?<=[^\W\d_])_(?=\W|$)")


def escape_plain_text(line: str) -> str:
    """``line`` with ``|`` and a word-final ``_`` escaped, except inside `` `` `` literals/roles."""
    parts = LITERAL_RE.split(line)
    for i in range(0, len(parts), 2):  # even parts are outside literals and roles
        parts[i] = TRAILING_UNDERSCORE_RE.sub(r"\\_", BAR_RE.sub(r"\\|", parts[i]))
    return "".join(parts)


def escape_docstring(app, what, name, obj, options, lines: list[str]) -> None:
    in_literal_block = False
    for i, line in enumerate(lines):
        if in_literal_block and line.strip() and not line.startswith((" ", "\t")):
            in_literal_block = False
        if not in_literal_block:
            lines[i] = escape_plain_text(line)
        if line.rstrip().endswith("::"):
            in_literal_block = True


def setup(app):
    os.environ.setdefault("TQDM_DISABLE", "1")
    # myst-nb adds the page's JS files at the default priority 500: run before it.
    app.connect("html-page-context", drop_widget_state, priority=400)
    app.connect(
        "autodoc-process-docstring", escape_docstring, priority=100
    )  # before napoleon
    return {"parallel_read_safe": True, "parallel_write_safe": True}
