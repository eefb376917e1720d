"""Every link of the README and the manual resolves: files exist, anchors name a heading there.

Reads README.md, docs/*.md and infra/*.md; finds Markdown links and images (inline and reference
definitions) outside code; checks that a relative target exists, relative to the page, and that a
``#anchor`` into a Markdown page matches one of its headings, slugged as GitHub does. External
http(s) links are not fetched (no network here) but must be well-formed. No subprocess.
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "infra").glob("*.md")])

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
# [text](target) or ![alt](target); the target may hold one level of balanced parentheses and a title.
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|(?:[^()\s]|\([^()\s]*\))+)(?:\s+\"[^\"]*\")?\s*\)"
)
_REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)


def _without_code(markdown: str) -> str:
    """The page with fenced blocks and code spans blanked: a link written as code is not a link."""
    markdown = _FENCE.sub(lambda match: "\n" * match.group(0).count("\n"), markdown)
    return _CODE_SPAN.sub("", markdown)


def links(markdown: str) -> list[str]:
    """The targets of every link, image and reference definition of ``markdown``, outside code."""
    text = _without_code(markdown)
    found = [match.group(1) for match in _INLINE_LINK.finditer(text)]
    found += [match.group(1) for match in _REFERENCE_DEFINITION.finditer(text)]
    return [target[1:-1] if target.startswith("<") and target.endswith(">") else target for target in found]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lowercased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    for match in _ATX_HEADING.finditer(re.sub(_FENCE, "", markdown)):
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def problems(page: Path, *, root: Path = ROOT) -> list[str]:
    """What is wrong with the links of ``page``, one line each (empty: every link resolves)."""
    found = []
    markdown = page.read_text(encoding="utf-8")
    where = page.relative_to(root) if page.is_relative_to(root) else page
    for target in links(markdown):
        parsed = urllib.parse.urlsplit(target)
        if parsed.scheme in ("http", "https"):
            host = parsed.hostname or ""
            if re.search(r"\s", target) or not ("." in host.strip(".") or host == "localhost"):
                found.append(f"{where}: malformed URL {target!r}")
            continue
        if parsed.scheme == "mailto":
            continue
        if parsed.scheme or parsed.netloc:
            found.append(f"{where}: a link with scheme {parsed.scheme!r} is neither http(s) nor relative: {target!r}")
            continue
        path = urllib.parse.unquote(parsed.path)
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            found.append(f"{where}: {target!r} points to {path!r}, which does not exist")
            continue
        if parsed.fragment and linked.suffix == ".md":
            anchor = urllib.parse.unquote(parsed.fragment)
            known = anchors(linked.read_text(encoding="utf-8"))
            if anchor not in known:
                found.append(
                    f"{where}: {target!r}: no heading of {linked.name} has the anchor #{anchor} "
                    f"(its anchors: {', '.join(sorted(known))})"
                )
    return found


# ---- the checker itself ------------------------------------------------------------------------


def test_github_slugs() -> None:
    assert github_slug("The frontier's truth (`python bench/frontier_truth.py`)") == (
        "the-frontiers-truth-python-benchfrontier_truthpy"
    )
    assert github_slug("What a sweep-level ε covers") == "what-a-sweep-level-ε-covers"
    assert github_slug("The headline sweep: `cifar10_grid`, from a laptop to GPUs") == (
        "the-headline-sweep-cifar10_grid-from-a-laptop-to-gpus"
    )
    assert github_slug("See [the launcher](launcher.md)") == "see-the-launcher"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n### A ###\n") == {"a", "a-1", "a-2"}


def test_links_outside_code_only() -> None:
    markdown = (
        '[a](one.md) ![b](pic.png "title") `[c](code.md)` [d](<with space.md>)\n'
        "```\n[e](fenced.md)\n```\n[f]: ref.md\n[g](x_(y).md#h)\n"
    )
    assert links(markdown) == ["one.md", "pic.png", "with space.md", "x_(y).md#h", "ref.md"]


def test_the_checker_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[fine](other.md) [fine](other.md#a-section) [fine](#page) [fine](https://example.org/x)\n"
        "[missing file](nowhere.md) [missing anchor](other.md#no-such-section) [own anchor](#nope)\n"
        "[bad url](https://) ![missing image](lost.png) [odd scheme](ftp://example.org/f)\n",
        encoding="utf-8",
    )
    found = problems(page, root=tmp_path)
    assert len(found) == 6, found
    for text in ("nowhere.md", "#no-such-section", "#nope", "malformed URL 'https://'", "lost.png", "ftp"):
        assert any(text in line for line in found), (text, found)
    page.write_text("[fine](other.md#a-section)\n", encoding="utf-8")
    assert problems(page, root=tmp_path) == []


# ---- the project's pages -----------------------------------------------------------------------


def test_the_pages_are_found() -> None:
    names = {page.relative_to(ROOT).as_posix() for page in PAGES}
    assert {"README.md", "docs/README.md", "docs/benchmarks.md", "infra/README.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_link_resolves(page: Path) -> None:
    assert problems(page) == []


def test_every_manual_page_is_in_the_index() -> None:
    index = ROOT / "docs" / "README.md"
    linked = {(index.parent / urllib.parse.urlsplit(target).path).resolve() for target in links(index.read_text())}
    pages = {page.resolve() for page in (ROOT / "docs").glob("*.md") if page.name != "README.md"}
    assert pages - linked == set(), f"pages missing from docs/README.md: {sorted(p.name for p in pages - linked)}"
