"""Colab: every page that runs without a clone has a committed, up-to-date .ipynb that reads as
the book does (no MyST, no undefined macro, solutions collapsed), its Colab button opens it, and
the short chapters' notebooks execute from a plain (non-editable) install of immulib."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from tools.book import mini_book
from tools.chapters import chapter_notebook, is_notebook, toc_chapters
from tools.colab import (
    GLUE_FALLBACK,
    GLUE_IMPORT,
    SOLUTION_TITLE,
    Book,
    book_url,
    colab_chapters,
    config_macros,
    expand_macros,
    is_install_cell,
    needs_clone,
    with_glue_fallback,
    write_colab_notebooks,
)
from tools.colab_links import COLAB_DIR, colab_notebook_url
from tools.set_repository import INSTALL_RE, configured_url

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = colab_chapters()
CLONE_ONLY = [p for p in toc_chapters() if is_notebook(p) and needs_clone(p)]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
BRANCH = CONFIG["repository"]["branch"]
COMMITTED = ROOT / COLAB_DIR
MACROS = config_macros(ROOT)
#: The short chapters, executed here; the others take minutes each (they run under nbval in
#: place) and are executed from the plain install only with IMMULIB_TEST_ALL_COLAB=1.
SHORT = {
    "01_introduction",
    "02_condition_numbers",
    "03_probe_hessian",
    "04_regularizers",
    "11_status",
}
#: LaTeX commands MathJax knows that the chapters use; a command outside this list is either a
#: macro that only the book defines or a typo, and renders as an error on Colab.
LATEX = set(
    """
theta sigma top min eta lambda nabla frac mathcal big max tilde le ast mu mathbf log text qquad ge
omega gamma sqrt varepsilon cdot Big to sum mathrm infty in Sigma triangleq tfrac mapsto dots
dagger times Gamma underbrace texttt rangle quad propto pm otimes neq langle varphi subseteq right
rho operatorname ne ln left gg approx mathbb kappa alpha beta delta epsilon phi psi pi tau xi zeta
nu chi Delta Lambda Phi Psi Omega Theta partial prod int lim sup inf exp det tr operatorname
boldsymbol hat bar vec dot ddot overline underline widetilde widehat ldots cdots vdots ddots
colon mid vert Vert lVert rVert lvert rvert lfloor rfloor lceil rceil Bigg bigg Bigl Bigr bigl bigr
leq geq ll equiv sim simeq cong subset supset cup cap setminus emptyset forall exists neg land lor
Rightarrow Leftarrow rightarrow leftarrow iff implies quad qquad hspace vspace displaystyle
textstyle scriptstyle mathit mathsf mathtt boxed tag label begin end cases matrix pmatrix bmatrix
vmatrix aligned align split star circ bullet diamond oplus odot perp parallel angle prime
arg argmin argmax limits nolimits overset underset stackrel not checkmark textbf textit emph
""".split()
)
MATH_RE = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$", re.S)
RAW_MYST = [
    (
        re.compile(r"^\s*(?:>\s*)*(`{3,}|:{3,})\{[^}]+\}", re.M),
        "a MyST directive fence",
    ),
    (re.compile(r"\{[a-z][\w:-]*\}`[^`]*`"), "a MyST role"),
    (re.compile(r"^\s*\([^()\s]+\)=\s*$", re.M), "a (label)= target"),
    (
        re.compile(r"^\s*(?:>\s*)*:(label|class|tags|nonumber|name|alt|width):", re.M),
        "a directive option",
    ),
]


def _name(path):
    return path.stem


@pytest.fixture(scope="module")
def colab_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("colab")
    written = write_colab_notebooks(out)
    assert sorted(written) == sorted(
        out / p.relative_to(ROOT).with_suffix(".ipynb") for p in NOTEBOOKS
    )
    return out


def _read(colab_dir, chapter):
    return nbformat.read(
        colab_dir / chapter.relative_to(ROOT).with_suffix(".ipynb"), as_version=4
    )


def test_pages_that_need_a_clone_get_no_notebook():
    assert CLONE_ONLY, (
        "the performance page runs the repository's benchmarks: it needs a clone"
    )
    assert all(
        not (COMMITTED / p.relative_to(ROOT).with_suffix(".ipynb")).exists()
        for p in CLONE_ONLY
    )
    assert set(NOTEBOOKS).isdisjoint(CLONE_ONLY)


@pytest.mark.parametrize("chapter", NOTEBOOKS, ids=_name)
def test_colab_notebook_is_valid_and_installs_immulib_first(chapter, colab_dir):
    nb = _read(colab_dir, chapter)
    nbformat.validate(nb)
    first = nb.cells[0]
    assert (
        first.cell_type == "code"
        and 'if "google.colab" in sys.modules:' in first.source
    )
    assert INSTALL_RE.search(first.source)["url"] == configured_url(ROOT)
    assert "remove-cell" not in first.metadata.get("tags", []), (
        "the install cell must be visible"
    )
    assert sum(is_install_cell(c) for c in nb.cells) == 1
    original = [
        with_glue_fallback(c.source)
        for c in chapter_notebook(chapter).cells
        if c.cell_type == "code" and not is_install_cell(c)
    ]
    code = [c.source for c in nb.cells[1:] if c.cell_type == "code"]
    code = [s.split("\n", 1)[1] if s.startswith("#@title") else s for s in code]
    assert code == original, (
        "the code is the chapter's (glue's import with its fallback), in order"
    )


@pytest.mark.parametrize("chapter", NOTEBOOKS, ids=_name)
def test_colab_markdown_has_no_myst_and_no_undefined_macro(chapter, colab_dir):
    markdown = "\n\n".join(
        c.source for c in _read(colab_dir, chapter).cells if c.cell_type == "markdown"
    )
    for pattern, what in RAW_MYST:
        found = pattern.search(markdown)
        assert not found, f"{what} is left in the Colab notebook: {found[0]!r}"
    math = " ".join(a or b for a, b in MATH_RE.findall(markdown))
    assert math or "$" not in chapter.read_text(), (
        "the chapter's formulas are in the notebook"
    )
    left = {m for m in re.findall(r"\\([A-Za-z]+)", math) if m in MACROS}
    assert not left, f"macros of _config.yml not expanded: {sorted(left)}"
    unknown = set(re.findall(r"\\([A-Za-z]+)", math)) - LATEX
    assert not unknown, (
        f"LaTeX commands MathJax may not know (add real ones to LATEX): {sorted(unknown)}"
    )


def test_macro_expansion_is_braced_and_recursive():
    macros = {"KP": r"\mathbf{K}_{P}", "cond": r"\kappa", "C2": r"\cond^2"}
    assert expand_macros(r"$\KP^{-1} \cond(\KP) \C2 \condition$", macros) == (
        r"${\mathbf{K}_{P}}^{-1} {\kappa}({\mathbf{K}_{P}}) {{\kappa}^2} \condition$"
    )
    with pytest.raises(ValueError, match="without end"):
        expand_macros(r"\a", {"a": r"\b", "b": r"\a"})


@pytest.mark.parametrize(
    "chapter", [c for c in NOTEBOOKS if c.read_text().count("```{exercise}")], ids=_name
)
def test_exercises_are_numbered_and_solutions_collapsed(chapter, colab_dir):
    nb = _read(colab_dir, chapter)
    number = Book(ROOT).numbers[chapter.resolve()]
    n = chapter.read_text().count("```{exercise}")
    headings = re.findall(
        r"^### (Exercise [\d.]+)",
        "\n".join(c.source for c in nb.cells if c.cell_type == "markdown"),
        re.M,
    )
    assert headings == [f"Exercise {number}.{k}" for k in range(1, n + 1)]
    titled = [
        c for c in nb.cells if c.cell_type == "code" and c.source.startswith("#@title")
    ]
    assert titled and all(
        c.metadata["cellView"] == "form" and c.metadata["jupyter"]["source_hidden"]
        for c in titled
    )
    names = {
        re.match(r"#@title Solution of (Exercise [\d.]+)", c.source)[1] for c in titled
    }
    assert names <= set(headings)
    assert SOLUTION_TITLE.startswith("#@title")


@pytest.mark.parametrize("chapter", NOTEBOOKS, ids=_name)
def test_committed_notebook_is_up_to_date(chapter, colab_dir):
    """colab/ is what the chapters generate now: run `make colab` and commit it after an edit."""
    relative = chapter.relative_to(ROOT).with_suffix(".ipynb")
    committed = COMMITTED / relative
    assert committed.is_file(), f"{committed} is missing: run `make colab`"
    assert json.loads(committed.read_text()) == json.loads(
        (colab_dir / relative).read_text()
    ), f"{committed} is stale: run `make colab` and commit colab/"


def test_no_stale_extra_notebooks_are_committed():
    expected = {p.relative_to(ROOT).with_suffix(".ipynb") for p in NOTEBOOKS}
    assert {p.relative_to(COMMITTED) for p in COMMITTED.rglob("*.ipynb")} == expected


@pytest.mark.parametrize("chapter", NOTEBOOKS, ids=_name)
def test_colab_url_opens_the_committed_notebook(chapter):
    pagename = chapter.relative_to(ROOT).with_suffix("").as_posix()
    url = colab_notebook_url(
        configured_url(ROOT), pagename, CONFIG["launch_buttons"]["colab_url"], BRANCH
    )
    if configured_url(ROOT) == "https://github.com/immulib/model-immunization-book":
        prefix = f"https://colab.research.google.com/github/immulib/model-immunization-book/blob/{BRANCH}/"
        assert url.startswith(prefix)
    assert url.endswith(".ipynb")
    path_in_repo = url.split(f"/blob/{BRANCH}/", 1)[1]
    assert (ROOT / path_in_repo).is_file(), (
        "the button must open a file the repository has"
    )


@pytest.mark.parametrize(
    "repository_url, pagename",
    [
        ("https://gitlab.com/a/b", "book/01_x"),
        ("https://github.com/a", "book/01_x"),
        ("https://github.com/a/b", "book/01_x.md"),
        ("https://github.com/a/b", ""),
    ],
)
def test_colab_url_rejects_bad_input(repository_url, pagename):
    with pytest.raises(ValueError):
        colab_notebook_url(repository_url, pagename)
    with pytest.raises(ValueError, match="branch"):
        colab_notebook_url("https://github.com/a/b", "book/01_x", branch="")


@pytest.mark.parametrize(
    "repository_url", ["https://gitlab.com/a/b", "https://github.com/a", ""]
)
def test_book_url_rejects_a_non_github_repository(repository_url):
    with pytest.raises(ValueError, match="repository_url"):
        book_url(repository_url)
    assert book_url("https://github.com/org/repo.git") == "https://org.github.io/repo/"


def test_the_extensions_are_registered():
    assert CONFIG["sphinx"]["local_extensions"] == {
        "colab_links": "tools/",
        "book_pages": "tools/",
    }
    assert (ROOT / "tools" / "colab_links.py").is_file() and (
        ROOT / "tools" / "book_pages.py"
    ).is_file()


def test_tools_import_without_a_cycle_or_path_edits():
    """Each tool imports on its own in a fresh interpreter, run as ``python -m tools.X``."""
    for module in (
        "tools.colab",
        "tools.set_repository",
        "tools.student",
        "tools.format_chapters",
    ):
        proc = subprocess.run(
            [sys.executable, "-c", f"import {module}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
    for path in ("colab.py", "set_repository.py", "student.py"):
        assert "sys.path" not in (ROOT / "tools" / path).read_text()


@pytest.mark.slow
def test_built_page_links_colab_to_the_committed_ipynb(tmp_path):
    (tmp_path / COLAB_DIR / "book").mkdir(parents=True)
    (tmp_path / COLAB_DIR / "book" / "page.ipynb").write_text("{}")
    proc = mini_book(tmp_path, "```{code-cell} ipython3\n1 + 1\n```\n")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    html = (tmp_path / "_build" / "html" / "book" / "page.html").read_text()
    expected = colab_notebook_url(
        configured_url(ROOT), "book/page", CONFIG["launch_buttons"]["colab_url"], BRANCH
    )
    assert set(
        re.findall(r'href="(https://colab\.research\.google\.com/[^"]*)"', html)
    ) == {expected}
    assert "ipywidgets" not in html and "widget-state" not in html


# --------------------------------------------------------------------------------------------
# executing the Colab notebooks as Colab would: immulib installed (not editable), another folder
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_install(tmp_path_factory):
    """immulib installed from the repository into a folder of its own, as pip does on Colab."""
    import shutil

    source, target = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("site")
    for name in (
        "pyproject.toml",
        "README.md",
    ):  # a copy, so the build leaves no build/ in the repo
        shutil.copy(ROOT / name, source)
    shutil.copytree(
        ROOT / "immulib",
        source / "immulib",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (target / "immulib" / "__init__.py").is_file()
    return target


def _colab_params():
    params = []
    for chapter in NOTEBOOKS:
        marks = [pytest.mark.slow]
        if chapter.stem not in SHORT and not os.environ.get("IMMULIB_TEST_ALL_COLAB"):
            marks.append(
                pytest.mark.skip(
                    reason="long chapter (minutes): nbval runs it in place; "
                    "set IMMULIB_TEST_ALL_COLAB=1 to run its Colab notebook too"
                )
            )
        params.append(pytest.param(chapter, marks=marks, id=chapter.stem))
    return params


@pytest.mark.parametrize("chapter", _colab_params())
def test_colab_notebook_runs_from_a_plain_install(
    chapter, colab_dir, plain_install, tmp_path
):
    from nbclient import NotebookClient

    nb = _read(colab_dir, chapter)
    check = nbformat.v4.new_code_cell(
        "import immulib, pathlib\n"
        f"assert pathlib.Path(immulib.__file__).is_relative_to({str(plain_install)!r}), immulib.__file__"
    )
    nb.cells.insert(1, check)
    # Colab has no myst-nb (the book build's): the notebook must run without it
    nb.cells.insert(
        1, nbformat.v4.new_code_cell('import sys\nsys.modules["myst_nb"] = None')
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JUPYTER_PATH")
    }
    env.update(
        PYTHONPATH=str(plain_install),
        TQDM_DISABLE="1",
        HF_HUB_OFFLINE="1",
        MPLBACKEND="agg",
    )
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=600,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=env)
    errors = [
        o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors


def test_colab_notebooks_import_glue_with_a_fallback(colab_dir):
    """Colab has no myst-nb: a notebook imports ``glue`` only inside the fallback, and the
    fallback defines a ``glue`` that shows a value where the book would display it."""
    for chapter in NOTEBOOKS:
        nb = _read(colab_dir, chapter)
        for cell in nb.cells:
            if cell.cell_type == "code" and GLUE_IMPORT in cell.source:
                assert GLUE_FALLBACK in cell.source, chapter.stem
    shown = []
    namespace = {}
    import sys

    saved = sys.modules.get("myst_nb")
    sys.modules["myst_nb"] = None  # as on Colab: the import fails
    try:
        exec(with_glue_fallback("x = 1\nfrom myst_nb import glue"), namespace)
    finally:
        if saved is None:
            del sys.modules["myst_nb"]
        else:
            sys.modules["myst_nb"] = saved
    namespace["_show"] = shown.append
    namespace["glue"]("a", 2, display=False)
    namespace["glue"]("b", 3)
    assert shown == [3]
