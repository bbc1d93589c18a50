"""The built book in a real browser: headless Chromium opens every page of the table of contents.

It fails on a page where

* MathJax reports an error (an undefined macro, bad TeX) or did not typeset the page's math;
* a table, code block, output or figure is wider than the content column (scrolling inside the
  column does not count as fitting: the paper's tables must be reshaped, code kept to 88 columns);
* an output shows a traceback or a warning (``Traceback (most recent call last)``, or
  ``SomethingWarning:`` as Python's warnings print it; an error message a chapter prints on
  purpose, as "→ ValueError: ...", is not one).

Setup, all local (nothing is fetched from a CDN):

* the built HTML is the strict build of this test run (the ``built_book`` fixture, which
  ``tests/test_book.py`` shares, so ``make test`` builds the book once), or ``$IMMULIB_BOOK_HTML``
  when set (e.g. ``_build/html`` after ``make book``):
  ``IMMULIB_BOOK_HTML=_build/html .venv/bin/python -m pytest tests/test_browser.py``;
* Chromium is Debian's ``chromium``; when it is missing and the tests run as root with ``CI=true``
  or ``IMMULIB_INSTALL_BROWSER=1``, they install it (``apt-get install -y chromium``), otherwise
  they skip with the reason;
* MathJax 3 comes from its npm package, installed once into ``$IMMULIB_TEST_CACHE`` (default
  ``~/.cache/immulib-tests``) with ``npm`` (Debian's ``npm`` package, installed like Chromium
  when missing); a small HTTP server on 127.0.0.1 serves the book,
  rewrites the pages' MathJax address to its local copy and adds the checking script, which
  writes its findings into the page; Chromium's ``--dump-dom`` returns them.
"""

from __future__ import annotations

import html
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from functools import partial
from pathlib import Path

import pytest

from tools.chapters import toc_chapters

ROOT = Path(__file__).resolve().parent.parent
#: A built book to test instead of this run's own build (never a stale ``_build/html`` by accident).
HTML_DIR = (
    Path(os.environ["IMMULIB_BOOK_HTML"]).resolve()
    if os.environ.get("IMMULIB_BOOK_HTML")
    else None
)
CACHE = Path(
    os.environ.get("IMMULIB_TEST_CACHE", Path.home() / ".cache" / "immulib-tests")
)
MATHJAX_VERSION = "3"
MATHJAX_CDN_RE = re.compile(r"https?://[^\"']*?mathjax@?[\d.]*/es5/")
PAGES = [p.relative_to(ROOT).with_suffix(".html").as_posix() for p in toc_chapters()]
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1400,1000",
    "--virtual-time-budget=30000",
    "--run-all-compositor-stages-before-draw",
]
RESULT_ID = "immulib-browser-check"

#: Runs in the page once it has loaded and MathJax has typeset it; the findings go into a <pre>.
CHECK_SCRIPT = """
<script>
(function () {
  function report(res) {
    var pre = document.createElement("pre");
    pre.id = "%(id)s";
    pre.style.display = "none";
    pre.textContent = JSON.stringify(res);
    document.body.appendChild(pre);
  }
  function describe(el) {
    var text = (el.innerText || el.textContent || "").trim().replace(/\\s+/g, " ");
    var section = el.closest("section");
    var heading = section ? section.querySelector("h1, h2, h3") : null;
    return (heading ? "[" + heading.textContent.trim().slice(0, 60) + "] " : "") + text.slice(0, 100);
  }
  function check() {
    var res = {mathjax: !!(window.MathJax && window.MathJax.version), math_spans: 0, typeset: 0,
               mathjax_errors: [], wide: [], problems: [], column: 0};
    // open everything a reader can open: solutions, dropdowns, toggled cells
    document.querySelectorAll("details").forEach(function (d) { d.open = true; });
    document.querySelectorAll(".toggle-hidden").forEach(function (e) { e.classList.remove("toggle-hidden"); });
    document.querySelectorAll(".toggle-details__container").forEach(function (e) { e.style.display = "block"; });
    res.math_spans = document.querySelectorAll(".math").length;
    res.typeset = document.querySelectorAll("mjx-container").length;
    document.querySelectorAll("mjx-merror, [data-mjx-error]").forEach(function (e) {
      res.mathjax_errors.push((e.getAttribute("data-mjx-error") || e.textContent).slice(0, 200));
    });
    var article = document.querySelector("article.bd-article") || document.querySelector("main");
    var style = getComputedStyle(article);
    var column = article.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    res.column = column;
    var selector = "table, div.highlight pre, .cell_output pre, .cell_output img, .cell_output svg, " +
                   "figure img, mjx-container[display='true']";
    article.querySelectorAll(selector).forEach(function (el) {
      var width = Math.max(el.scrollWidth, el.getBoundingClientRect().width);
      if (width > column + 2) {
        res.wide.push({what: el.tagName.toLowerCase(), width: Math.round(width),
                       column: Math.round(column), where: describe(el)});
      }
    });
    article.querySelectorAll(".cell_output .output, .cell_output .stderr").forEach(function (el) {
      var text = el.textContent || "";
      var stderr = el.classList.contains("stderr");
      var m = text.match(/Traceback \\(most recent call last\\)|\\b\\w*Warning\\b:/);
      if (m) { res.problems.push((stderr ? "stderr: " : "output: ") + m[0] + " in " + describe(el)); }
    });
    report(res);
  }
  window.addEventListener("load", function () {
    var mj = window.MathJax;
    if (mj && mj.startup && mj.startup.promise) {
      mj.startup.promise.then(check, function (e) { report({fatal: "MathJax failed: " + e}); });
    } else {
      setTimeout(check, 500);
    }
  });
})();
</script>
""" % {"id": RESULT_ID}  # noqa: UP031 (the JavaScript is full of braces)


# --------------------------------------------------------------------------------------------
# setup: the built book, Chromium, MathJax, the local server
# --------------------------------------------------------------------------------------------


def _allowed_to_install() -> bool:
    return (
        hasattr(os, "geteuid")
        and os.geteuid() == 0
        and (
            os.environ.get("CI") == "true"
            or os.environ.get("IMMULIB_INSTALL_BROWSER") == "1"
        )
    )


def _find_chromium() -> str | None:
    for name in (
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def built_html(request) -> Path:
    """``$IMMULIB_BOOK_HTML`` when set, else this run's strict build (``built_book``)."""
    if HTML_DIR is None:
        return request.getfixturevalue("built_book")
    if not (HTML_DIR / "index.html").is_file():
        pytest.skip(f"no built book at {HTML_DIR}: run `make book` first")
    return HTML_DIR


def _apt_install(package: str) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", package],
    ):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}"


@pytest.fixture(scope="session")
def chromium() -> str:
    path = _find_chromium()
    if path:
        return path
    if not _allowed_to_install():
        pytest.skip(
            "Chromium is not installed; install Debian's `chromium`, or run as root with "
            "CI=true or IMMULIB_INSTALL_BROWSER=1 to let this test install it"
        )
    _apt_install("chromium")
    path = _find_chromium()
    assert path, "apt-get installed chromium but no chromium executable is on PATH"
    return path


@pytest.fixture(scope="session")
def mathjax() -> Path:
    """The folder of MathJax 3's es5 bundles (tex-mml-chtml.js, ...), from its npm package."""
    folder = CACHE / f"mathjax{MATHJAX_VERSION}"
    es5 = folder / "node_modules" / "mathjax" / "es5"
    if (es5 / "tex-mml-chtml.js").is_file():
        return es5
    npm = shutil.which("npm")
    if not npm and _allowed_to_install():
        _apt_install("npm")
        npm = shutil.which("npm")
    if not npm:
        pytest.skip(
            "npm is not installed: it is needed once to fetch MathJax's npm package "
            "(run as root with CI=true or IMMULIB_INSTALL_BROWSER=1 to let this test install it)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(folder),
            "--no-audit",
            "--no-fund",
            "--no-save",
            f"mathjax@{MATHJAX_VERSION}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"npm install mathjax@{MATHJAX_VERSION} failed:\n{proc.stderr[-2000:]}"
    )
    assert (es5 / "tex-mml-chtml.js").is_file(), (
        f"the npm package has no {es5 / 'tex-mml-chtml.js'}"
    )
    return es5


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the book; ``/_mathjax/...`` from the local MathJax; HTML pages rewritten."""

    mathjax_dir: Path

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if path.startswith("/_mathjax/"):
            return self._send(
                self.mathjax_dir / path[len("/_mathjax/") :], "application/javascript"
            )
        if path.endswith(".html"):
            file = Path(self.translate_path(path))
            if file.is_file():
                text = MATHJAX_CDN_RE.sub(
                    "/_mathjax/", file.read_text(encoding="utf-8")
                )
                text = text.replace("</body>", CHECK_SCRIPT + "</body>", 1)
                return self._send_bytes(
                    text.encode("utf-8"), "text/html; charset=utf-8"
                )
        return super().do_GET()

    def _send(self, file: Path, ctype: str):
        if not file.is_file():
            return self.send_error(404)
        return self._send_bytes(file.read_bytes(), ctype)

    def _send_bytes(self, data: bytes, ctype: str):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="session")
def server(built_html, mathjax):
    handler = type("Handler", (_Handler,), {"mathjax_dir": mathjax})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(handler, directory=str(built_html))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def open_page(chromium: str, url: str) -> dict:
    """Load ``url`` in a fresh headless Chromium and return what the check script found."""
    with tempfile.TemporaryDirectory(prefix="immulib-chromium-") as profile:
        proc = subprocess.run(
            [chromium, *BROWSER_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=180,
        )
    match = re.search(rf'<pre id="{RESULT_ID}"[^>]*>(.*?)</pre>', proc.stdout, re.S)
    assert match, (
        f"the check script did not report on {url} (rc {proc.returncode}):\n"
        f"{proc.stderr[-2000:]}"
    )
    return json.loads(html.unescape(match[1]))


# --------------------------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_server_serves_mathjax_locally(server, built_html):
    import urllib.request

    page = next(p for p in PAGES if (built_html / p).is_file())
    text = urllib.request.urlopen(f"{server}/{page}", timeout=10).read().decode()
    assert (
        "cdn.jsdelivr.net/npm/mathjax" not in text
        and "/_mathjax/" in text
        and RESULT_ID in text
    )
    script = urllib.request.urlopen(
        f"{server}/_mathjax/tex-mml-chtml.js", timeout=10
    ).read()
    assert len(script) > 100_000


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_page_reads_well_in_a_browser(page, chromium, mathjax, built_html, server):
    # chromium and mathjax first: they are installed while another worker may still build
    assert (built_html / page).is_file(), f"{page} was not built"
    res = open_page(chromium, f"{server}/{page}")
    assert "fatal" not in res, res.get("fatal")
    failures = [f"MathJax error: {e}" for e in res["mathjax_errors"]]
    if res["math_spans"] and not (res["mathjax"] and res["typeset"] > 0):
        failures.append("MathJax did not typeset the page's math")
    failures += [
        f"{w['what']} {w['width']} px wide (column {w['column']} px): {w['where']}"
        for w in res["wide"]
    ]
    failures += [f"traceback or warning in an {p}" for p in res["problems"]]
    assert not failures, f"{page}:\n  " + "\n  ".join(failures)
