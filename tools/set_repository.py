"""Point the book at another repository: ``python -m tools.set_repository [URL]``.

The repository URL lives in ``_config.yml`` (``repository.url``; the launch and repository
buttons use it). Each chapter's hidden Colab cell installs immulib from the same URL. With a URL
argument this script writes it into ``_config.yml`` first; in both cases it then rewrites every
chapter's install cell to match ``_config.yml`` and regenerates the Colab notebooks in
``colab/`` (which install from the same URL). The test suite checks that they all agree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# tools.colab owns the install-cell pattern and the configured URL; this module only uses them
# (one direction, no import cycle).
from tools.colab import DEFAULT_OUT, INSTALL_RE, configured_url, write_colab_notebooks

ROOT = Path(__file__).resolve().parent.parent
CONFIG_RE = re.compile(r"^(  url: )(\S+)$", re.MULTILINE)
__all__ = ["INSTALL_RE", "configured_url", "main"]


def main(argv: list[str]) -> None:
    config = ROOT / "_config.yml"
    if argv:
        url = argv[0].rstrip("/")
        if not url.startswith("https://github.com/"):
            sys.exit(
                "error: the URL must be a https://github.com/ORG/REPO address (Colab needs GitHub)"
            )
        text, n = CONFIG_RE.subn(
            lambda m: m.group(1) + url, config.read_text(), count=1
        )
        if n != 1:
            sys.exit("error: no `  url:` line under `repository:` in _config.yml")
        config.write_text(text)
    url = configured_url()
    for chapter in sorted((ROOT / "book").glob("*.md")):
        text = chapter.read_text()
        new = INSTALL_RE.sub(f'"immulib @ git+{url}"', text)
        if new != text:
            chapter.write_text(new)
            print(f"updated {chapter.relative_to(ROOT)}")
    write_colab_notebooks(DEFAULT_OUT)
    print(
        f"repository: {url}; Colab notebooks regenerated in {DEFAULT_OUT.relative_to(ROOT)}/"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
