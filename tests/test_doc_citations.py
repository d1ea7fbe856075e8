"""Citations of the repository's own docs resolve: code, tests and docs cite `docs/design.md §N` and
`docs/methods.md#<anchor>`, never the design notes that live outside the repository, and every
cited section, in-page anchor and relative link of the two pages exists."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCANNED = ("kdbench", "methods", "tests", "docs", "scripts", "benchmarks")
SUFFIXES = (".py", ".md", ".yaml", ".toml")
# the two out-of-repository notes, spelled so that this file does not cite them itself
OUTSIDE = re.compile(r"\b(" + "DESIGN" + r"|" + "METHODS" + r")\.md\b")
SECTION = re.compile(r"docs/design\.md §(\d+)")
ANCHOR = re.compile(r"docs/(design|methods)\.md#([A-Za-z0-9_-]+)")


def files() -> list[Path]:
    out = [ROOT / "README.md"]
    for top in SCANNED:
        out += [p for p in (ROOT / top).rglob("*") if p.suffix in SUFFIXES and p.is_file() and ".venv" not in p.parts]
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"\s", "-", text)


def headings(page: Path) -> list[str]:
    return [m.group(2) for m in re.finditer(r"^(#{1,6})\s+(.+?)\s*$", page.read_text(encoding="utf-8"), re.M)]


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in headings(page)}


def design_sections() -> set[str]:
    return {m.group(1) for h in headings(DOCS / "design.md") if (m := re.match(r"(\d+)\.\s", h))}


def test_no_citation_of_notes_outside_the_repository() -> None:
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in files()
            for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1) if OUTSIDE.search(line)]
    assert not hits, "cite docs/design.md or docs/methods.md instead: " + ", ".join(hits)


def test_cited_sections_and_anchors_exist() -> None:
    sections, pages = design_sections(), {"design": anchors(DOCS / "design.md"), "methods": anchors(DOCS / "methods.md")}
    assert {"2", "3", "4", "6", "7"} <= sections  # the sections the code cites by number
    bad = []
    for p in files():
        text = p.read_text(encoding="utf-8", errors="replace")
        bad += [f"{p.relative_to(ROOT)}: §{n}" for n in SECTION.findall(text) if n not in sections]
        bad += [f"{p.relative_to(ROOT)}: {page}.md#{a}" for page, a in ANCHOR.findall(text) if a not in pages[page]]
    assert not bad, "citations of missing sections: " + ", ".join(bad)


@pytest.mark.parametrize("name", ["design.md", "methods.md"])
def test_links_of_the_pages_resolve(name: str) -> None:
    page = DOCS / name
    own = anchors(page)
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            bad.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in (own if not path else anchors(linked)):
            bad.append(target)
    assert not bad, f"docs/{name} links to what does not exist: {', '.join(bad)}"


def test_slug_follows_github() -> None:
    assert slug("TCN student budgets") == "tcn-student-budgets"
    assert slug("4. Measurements") == "4-measurements"
    assert slug("student, kd") == "student-kd"
