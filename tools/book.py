"""Build the book once and reuse that execution: ``python -m tools.book``.

Every chapter is executed by one strict Jupyter Book build (``-W -n --keep-going``: Sphinx
warnings are errors; ``_config.yml`` makes a failing cell fail the build) with myst-nb's
execution cache (``execute_notebooks: cache``), kept in ``_build/.jupyter_cache``. The cache
key of a chapter is the source of its code cells, so an unchanged chapter is not executed
again: ``make book`` after ``make test`` (or a second ``make test``) only re-renders.

The cache knows nothing about the library the chapters import, so :func:`refresh_cache`
empties it whenever ``immulib/``, the configuration, the requirements or
``benchmarks/`` (whose scripts and recorded GPU figures the Performance page shows) change (a
fingerprint of their contents is stored beside the cache). A fresh checkout (CI) has no
cache and executes everything.

Sphinx reads the pages one after another, so it would execute them on one core. Before it
runs, :func:`pre_execute` executes the chapters the cache lacks in ``EXECUTION_WORKERS``
processes (the same notebook as myst-nb reads from the ``.md``, in the chapter's folder, with
the build's environment and timeout) and stores them in the cache, where the build then finds
them. A chapter whose execution fails is not stored, so the build executes it again and reports
the error as usual.

The tests read the executed chapters back from the cache (:func:`executed_chapter`) instead
of executing them again.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
#: Strict (-W -n: warnings are errors), every warning reported (--keep-going), and every page
#: read again (--all: Sphinx's saved environment would otherwise skip unchanged pages, and a
#: warning of the last, failed build would not be raised again). Executions still come from
#: the cache, so re-reading costs seconds per chapter, not its run time.
BUILD_FLAGS = ["--builder", "html", "-W", "-n", "--keep-going", "--all"]
#: What the chapters' results depend on besides their own code cells.
FINGERPRINTED = [
    "immulib",
    "_config.yml",
    "_toc.yml",
    "requirements.txt",
    "benchmarks",
]


#: Processes that execute chapters at once before the build (the project's machines have 2 cores).
EXECUTION_WORKERS = int(os.environ.get("IMMULIB_BOOK_WORKERS", "2"))


def build_dir(out: Path = ROOT) -> Path:
    return Path(out) / "_build"


def cache_dir(out: Path = ROOT) -> Path:
    """Where Jupyter Book keeps the executed notebooks (its default, under the build folder)."""
    return build_dir(out) / ".jupyter_cache"


def book_env() -> dict[str, str]:
    """The build's environment: no progress bars, figures drawn inline as on the web page."""
    return dict(
        os.environ,
        TQDM_DISABLE="1",
        MPLBACKEND="module://matplotlib_inline.backend_inline",
    )


def fingerprint(root: Path = ROOT) -> str:
    """A hash of the contents of :data:`FINGERPRINTED` (``__pycache__`` left out)."""
    digest = hashlib.sha256()
    for name in FINGERPRINTED:
        base = Path(root) / name
        files = [base] if base.is_file() else sorted(base.rglob("*"))
        for path in files:
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode() + b"\0")
                digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def refresh_cache(out: Path = ROOT, root: Path = ROOT) -> bool:
    """Empty the execution cache if the library or the configuration changed since it was
    filled; return whether it was emptied. The new fingerprint is written either way."""
    stamp = build_dir(out) / ".jupyter_cache.fingerprint"
    now = fingerprint(root)
    stale = stamp.is_file() and stamp.read_text() != now
    if stale or not stamp.is_file():
        shutil.rmtree(cache_dir(out), ignore_errors=True)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(now)
    return stale


def _read_notebook(chapter: Path):
    """The chapter as myst-nb's build reads it (the notebook whose code the cache is keyed by)."""
    from myst_nb.core.read import read_myst_markdown_notebook

    text = chapter.read_text(encoding="utf-8")
    return read_myst_markdown_notebook(text, add_source_map=True, path=str(chapter))


def _execute(chapter: str, timeout: int):
    """Run in a worker process: execute one chapter as the build would; (notebook, seconds, error)."""
    from jupyter_cache.executors.utils import single_nb_execution

    os.environ.update(book_env())
    nb = _read_notebook(Path(chapter))
    result = single_nb_execution(
        nb,
        cwd=str(Path(chapter).parent),
        allow_errors=False,
        timeout=timeout,
        meta_override=True,
    )
    return nb, result.time, None if result.err is None else result.exc_string


def pre_execute(out: Path = ROOT, workers: int | None = None) -> list[str]:
    """Execute, ``workers`` at a time, the chapters whose current code the cache lacks, and
    store the successful ones in the cache; return the names of those it executed."""
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    from tools.chapters import is_notebook, toc_chapters

    workers = EXECUTION_WORKERS if workers is None else workers
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    timeout = int(config.get("execute", {}).get("timeout", 900))
    cache = get_cache(str(cache_dir(out)))
    todo = []
    for chapter in filter(is_notebook, toc_chapters()):
        try:
            cache.match_cache_notebook(_read_notebook(chapter))
        except KeyError:
            todo.append(chapter)
    if workers < 2 or len(todo) < 2:
        return []  # nothing to gain: the build executes them as usual
    todo.sort(key=lambda c: c.stat().st_size, reverse=True)  # the long ones first
    done = []
    spawn = multiprocessing.get_context(
        "spawn"
    )  # no fork of a process that has torch loaded
    with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
        runs = {c: pool.submit(_execute, str(c), timeout) for c in todo}
        for chapter, run in runs.items():
            nb, seconds, error = run.result()
            if error is None:
                uri = str(chapter.resolve())
                cache.add_nb_to_project(
                    uri, read_data={"type": "plugin", "name": "myst_nb_md"}
                )
                cache.cache_notebook_bundle(
                    CacheBundleIn(nb, uri, data={"execution_seconds": seconds}),
                    check_validity=False,
                    overwrite=True,
                )
                done.append(chapter.name)
    return done


def build(out: Path = ROOT, *, capture: bool = False) -> subprocess.CompletedProcess:
    """The strict build of the book into ``out/_build/html``, reusing the execution cache
    (filled first by :func:`pre_execute`, several chapters at a time)."""
    refresh_cache(out)
    pre_execute(out)
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jupyter_book), "build", str(ROOT), *BUILD_FLAGS]
    if Path(out).resolve() != ROOT:
        cmd += ["--path-output", str(out)]
    return subprocess.run(
        cmd, cwd=ROOT, env=book_env(), capture_output=capture, text=True, check=False
    )


def executed_chapter(chapter: Path, out: Path = ROOT):
    """The chapter as the last build executed it, or None when the cache holds no execution
    of its current code (not built yet, changed since, or its execution failed)."""
    from jupyter_cache import get_cache

    if not cache_dir(out).is_dir():
        return None
    cache = get_cache(str(cache_dir(out)))
    uri = str(Path(chapter).resolve())
    try:
        record = cache.get_cached_project_nb(uri)
    except (KeyError, OSError):
        return None
    return None if record is None else cache.get_cache_bundle(record.pk).nb


def mini_book(folder: Path, chapter_text: str) -> subprocess.CompletedProcess:
    """Build a one-page book in ``folder`` with this project's _config.yml (its local Sphinx
    extensions, stylesheet and bibliography come along), for checking that the build is strict."""
    import yaml

    folder = Path(folder)
    shutil.copy(ROOT / "_config.yml", folder / "_config.yml")
    extensions = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"].get(
        "local_extensions", {}
    )
    for name, sub in extensions.items():
        (folder / sub).mkdir(exist_ok=True)
        shutil.copy(ROOT / sub / f"{name}.py", folder / sub)
    (folder / "book").mkdir()
    shutil.copytree(
        ROOT / "book" / "_static", folder / "book" / "_static"
    )  # html_static_path
    shutil.copy(ROOT / "book" / "references.bib", folder / "book")  # bibtex_bibfiles
    (folder / "_toc.yml").write_text("format: jb-book\nroot: book/page\n")
    header = (ROOT / "book" / "01_introduction.md").read_text().split("---\n")[1]
    (folder / "book" / "page.md").write_text(
        f"---\n{header}---\n\n# Page\n\n{chapter_text}\n"
    )
    return build_mini(folder)


def build_mini(folder: Path) -> subprocess.CompletedProcess:
    """Rebuild the one-page book of :func:`mini_book` in ``folder``."""
    jb = str(Path(sys.executable).parent / "jupyter-book")
    return subprocess.run(
        [jb, "build", str(folder), *BUILD_FLAGS],
        capture_output=True,
        text=True,
        cwd=folder,
        env=book_env(),
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        sys.exit("usage: python -m tools.book   (builds the book into _build/html)")
    proc = build()
    if proc.returncode == 0:
        print(f"The book is at {build_dir() / 'html' / 'index.html'}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
