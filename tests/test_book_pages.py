"""The book's reference pages and reading aids: API page, bibliography, numbering, stylesheet,
code width of the chapters, and the static-page extension."""

import pkgutil
import re
from pathlib import Path

import pytest
import yaml

import immulib
from tools import book_pages, format_chapters

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
API_PAGE = ROOT / "book" / "14_api.md"
BIB = ROOT / "book" / "references.bib"
#: Every chapter's code fits the book's 88 columns (python -m tools.format_chapters).
FORMATTED = sorted(p.stem for p in (ROOT / "book").glob("[0-9][0-9]_*.md"))


def test_api_page_lists_every_public_module_once():
    listed = re.findall(r"^\.\. automodule:: (\S+)\s*$", API_PAGE.read_text(), re.M)
    modules = {"immulib"} | {
        f"immulib.{m.name}"
        for m in pkgutil.iter_modules(immulib.__path__)
        if not m.name.startswith("_")
    }
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert set(listed) == modules, (
        f"add to {API_PAGE.name}: {sorted(modules - set(listed))}; remove: {sorted(set(listed) - modules)}"
    )


def test_autodoc_is_configured_strictly():
    extensions = CONFIG["sphinx"]["extra_extensions"]
    assert {"sphinx.ext.autodoc", "sphinx.ext.napoleon"} <= set(extensions)
    assert "autodoc_mock_imports" not in CONFIG["sphinx"]["config"], (
        "mock nothing that is installed"
    )


def test_every_citation_is_in_the_bibliography():
    keys = set(re.findall(r"^@\w+\{([^,\s]+),", BIB.read_text(), re.M))
    assert CONFIG["bibtex_bibfiles"] == ["book/references.bib"]
    cited = set()
    for page in sorted((ROOT / "book").glob("*.md")):
        for body in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", page.read_text()):
            cited |= {k.strip() for k in body.split(",")}
    assert cited, "the chapters cite nothing"
    assert cited <= keys, f"cited but not in {BIB.name}: {sorted(cited - keys)}"
    for short in FORMATTED[:4]:
        assert "{cite:p}`" in (ROOT / "book" / f"{short}.md").read_text(), (
            f"{short} cites nothing"
        )


def test_chapters_are_numbered_and_the_reference_part_is_not():
    assert TOC["defaults"]["numbered"] is True
    reference = [p for p in TOC["parts"] if p["caption"] == "Reference"]
    assert reference and reference[0]["numbered"] is False
    assert CONFIG["sphinx"]["config"]["numfig"] is True
    assert CONFIG["sphinx"]["config"]["numfig_secnum_depth"] == 1


@pytest.mark.parametrize("chapter", ["03_probe_hessian", "04_regularizers"])
def test_the_papers_results_are_prf_boxes(chapter):
    text = (ROOT / "book" / f"{chapter}.md").read_text()
    expected = {
        "03_probe_hessian": ["Proposition 3.2"],
        "04_regularizers": ["Theorem 4.1", "Theorem 4.2", "Theorem 4.3"],
    }[chapter]
    for name in expected:
        assert re.search(r"^```\{prf:\w+\} .*" + re.escape(name), text, re.M), (
            f"{name} is not a prf box"
        )


def test_stylesheet_pads_styled_tables_scrolls_wide_content_and_wraps_code_in_print():
    css = (ROOT / "book" / "_static" / "immulib-book.css").read_text()
    assert CONFIG["sphinx"]["config"]["html_static_path"] == ["book/_static"]
    assert "immulib-book.css" in CONFIG["sphinx"]["config"]["html_css_files"]
    assert re.search(r'table\[id\^="T_"\] td[^{]*\{[^}]*padding', css)
    assert "overflow-x: auto" in css
    print_css = css[css.index("@media print") :]
    assert "pre-wrap" in print_css


@pytest.mark.parametrize("chapter", FORMATTED)
def test_chapter_code_fits_88_columns(chapter):
    assert format_chapters.main(["--check", str(ROOT / "book" / f"{chapter}.md")]) == 0


def test_format_chapters_wraps_safely(tmp_path):
    page = tmp_path / "page.md"
    long_string = "x" * 30
    page.write_text(
        "# t\n\n```{code-cell} ipython3\n:tags: [parameters]\n\n"
        f"value = 1  # {'a comment that is far too long ' * 3}\n"
        f'print(f"{{value}} {long_string} {long_string} {long_string} {long_string}")\n```\n'
    )
    assert format_chapters.main(["--check", str(page)]) == 1
    assert format_chapters.main([str(page)]) == 0
    assert format_chapters.main(["--check", str(page)]) == 0
    text = page.read_text()
    assert ":tags: [parameters]" in text and "value = 1" in text
    code = text.split(":tags: [parameters]\n\n", 1)[1].rsplit("```", 1)[0]
    namespace = {}
    exec(compile(code.replace("print(", "out = ("), "cell", "exec"), namespace)
    assert (
        namespace["out"] == f"1 {long_string} {long_string} {long_string} {long_string}"
    )


def test_docstring_escaping_keeps_literals():
    assert (
        book_pages.escape_plain_text("|a − b| and η_ in ``x|y_``")
        == r"\|a − b\| and η\_ in ``x|y_``"
    )
    assert (
        book_pages.escape_plain_text("a_b, :data:`NAME_` ok") == "a_b, :data:`NAME_` ok"
    )


def test_format_chapters_rewraps_a_comment_block_as_one_paragraph(tmp_path):
    page = tmp_path / "page.md"
    words = [f"word{i}" for i in range(30)]
    first, rest = " ".join(words[:14]), " ".join(words[14:20])
    page.write_text(
        "# t\n\n```{code-cell} ipython3\n"
        f"# {first}\n# {rest}\n#\n#   kept as it is\nvalue = 1\n"
        f"# {first}\n# fmt: skip\nother = 2\n```\n"
    )
    assert len(f"# {first}") > format_chapters.LIMIT
    assert format_chapters.main([str(page)]) == 0
    code = page.read_text().split("ipython3\n", 1)[1].rsplit("```", 1)[0]
    lines = code.splitlines()
    block = lines[: lines.index("#")]
    comment = [line[2:] for line in block if line.startswith("# ")]
    # the sentence is kept word for word, and its lines are filled (no word left alone
    # between them), the empty "#" and what follows it untouched
    assert len(comment) == len(block) and " ".join(comment).split() == words[:20]
    assert all(len(line) > format_chapters.LIMIT - 12 for line in comment[:-1])
    assert lines[lines.index("value = 1") - 2 : lines.index("value = 1") + 1] == [
        "#",
        "#   kept as it is",
        "value = 1",
    ]
    # a tool's pragma after a long comment stays a line of its own
    assert lines[-2:] == ["# fmt: skip", "other = 2"]
