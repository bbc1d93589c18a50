"""Sphinx extension: the Colab button of every notebook page opens its committed ``.ipynb``.

sphinx-book-theme links a MyST notebook to Colab as ``.../blob/<branch>/book/NN_name.md``, which
Colab cannot open. ``python -m tools.colab`` writes an ``.ipynb`` version of every page to
``colab/book/NN_name.ipynb``, committed with the chapters (a test fails when they are stale).
This extension rewrites the button to
``<colab_url>/github/ORG/REPO/blob/<branch>/colab/book/NN_name.ipynb``, where ``<branch>`` is
``repository.branch`` of ``_config.yml``; a page without a committed notebook (one that needs a
clone of the repository) gets no Colab button. It is registered in ``_config.yml`` under
``sphinx: local_extensions``.
"""

from __future__ import annotations

import re

COLAB_DIR = "colab"
GITHUB_RE = re.compile(
    r"^https://github\.com/(?P<org>[^/]+)/(?P<repo>[^/]+?)(?:\.git)?/?$"
)


def colab_notebook_url(
    repository_url: str,
    pagename: str,
    colab_url: str = "https://colab.research.google.com",
    branch: str = "main",
) -> str:
    """The Colab address of page ``pagename`` (``book/02_condition_numbers``): its notebook in
    the folder ``colab/`` of ``branch``."""
    match = GITHUB_RE.match(repository_url or "")
    if not match:
        raise ValueError(
            f"repository_url must be https://github.com/ORG/REPO, got {repository_url!r}"
        )
    if not pagename or pagename.endswith((".md", ".ipynb")):
        raise ValueError(
            f"pagename must be a Sphinx page name without suffix, got {pagename!r}"
        )
    if not branch:
        raise ValueError("branch must be a non-empty branch name")
    return (
        f"{colab_url.rstrip('/')}/github/{match['org']}/{match['repo']}/blob/{branch}/"
        f"{COLAB_DIR}/{pagename}.ipynb"
    )


def _rewrite_colab_button(app, pagename, templatename, context, doctree):
    """Point the Colab button at ``colab/<pagename>.ipynb``; drop it where there is no such
    notebook (a page that needs a clone, ``colab: false`` in its front matter)."""
    from pathlib import Path

    options = app.config.html_theme_options
    colab_url = options.get("launch_buttons", {}).get("colab_url")
    has_notebook = (Path(app.srcdir) / COLAB_DIR / f"{pagename}.ipynb").is_file()
    for group in context.get("header_buttons", []):
        if group.get("label") != "launch-buttons":
            continue
        buttons = group.get("buttons", [])
        for button in list(buttons):
            if button.get("text") != "Colab":
                continue
            if not has_notebook:
                buttons.remove(button)
                continue
            button["url"] = colab_notebook_url(
                options["repository_url"],
                pagename,
                colab_url,
                options.get("repository_branch") or "main",
            )
    # a launch group left without buttons would render as an empty menu
    context["header_buttons"] = [
        g
        for g in context.get("header_buttons", [])
        if g.get("label") != "launch-buttons" or g.get("buttons")
    ]


def setup(app):
    # sphinx-book-theme adds the launch buttons at priority 501; the template renders them later.
    app.connect("html-page-context", _rewrite_colab_button, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
