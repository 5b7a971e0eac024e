"""The README and the docs site hold together: short README, no dead link, every page in the nav.

Plain text checks, fast and without mkdocs; ``.ci/run`` builds the site itself with
``mkdocs build --strict``.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MAX_README_LINES = 300

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)(?:::([\w*]+))?`")


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _prose(text: str) -> str:
    """The text with fenced code blocks and inline code removed (links in code are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _slugs(text: str) -> set[str]:
    """Heading anchors as mkdocs (Python-Markdown's toc) and GitHub both spell them."""
    found: set[str] = set()
    for counter, style in ((dict[str, int](), "mkdocs"), (dict[str, int](), "github")):
        for match in HEADING.finditer(FENCE.sub("", text)):
            title = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", match.group(2))
            slug = _slugify(title, style)
            n = counter.get(slug, 0)
            counter[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}{'_' if style == 'mkdocs' else '-'}{n}")
    return found


def _slugify(title: str, style: str) -> str:
    if style == "mkdocs":
        ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
        return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", ascii_title).strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title.strip().lower()))


def _links(path: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(_prose(path.read_text(encoding="utf-8")))]


def _dead_links(path: Path) -> list[str]:
    dead = []
    for target in _links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.is_file():
            dead.append(f"{target}: no such file")
        elif path.is_relative_to(DOCS) and not dest.is_relative_to(DOCS):
            dead.append(f"{target}: outside docs/, so not part of the site")
        elif anchor and dest.suffix == ".md" and anchor not in _slugs(dest.read_text("utf-8")):
            dead.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    return dead


def test_the_readme_is_at_most_300_lines() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail to docs/"


@pytest.mark.parametrize("path", [README, *_pages()], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_to_a_file_and_heading(path: Path) -> None:
    assert _dead_links(path) == []


def test_the_link_checker_catches_a_dead_file_and_a_dead_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## A `code` heading: yes\n")
    page.write_text(
        "[ok](other.md#a-code-heading-yes) [gone](missing.md) [bad](other.md#nope)\n"
        "`[in code](missing.md)`\n```\n[in a fence](missing.md)\n```\n"
    )
    assert _dead_links(page) == [
        "missing.md: no such file",
        "other.md#nope: no heading with anchor #nope in other.md",
    ]


def test_the_mkdocs_nav_lists_every_docs_page_and_only_existing_ones() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = config[config.index("\nnav:") :]
    listed = set(re.findall(r"[\w./-]+\.md\b", nav))
    pages = {str(p.relative_to(DOCS)) for p in _pages()}
    assert sorted(pages - listed) == [], "pages missing from the nav in mkdocs.yml"
    assert sorted(listed - pages) == [], "nav entries with no page under docs/"


def test_snippets_included_in_docs_pages_exist() -> None:
    for page in _pages():
        for included in re.findall(r'^--8<-- "([^"]+)"', page.read_text("utf-8"), re.M):
            assert (ROOT / included).is_file(), f"{page.name} includes missing {included}"


def test_test_files_and_test_names_cited_in_the_docs_exist() -> None:
    missing = []
    for page in [README, *_pages()]:
        for file, name in TEST_REF.findall(page.read_text(encoding="utf-8")):
            test_file = ROOT / file
            if not test_file.is_file():
                missing.append(f"{page.name}: {file}")
            elif name and f"def {name.rstrip('*')}" not in test_file.read_text("utf-8"):
                missing.append(f"{page.name}: {file}::{name}")
    assert missing == []


def test_the_readme_gives_the_test_command_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = re.search(r"^\s*(pip install .*\[test\].*&& pytest)\s*$", ci, re.M)
    assert command, ".ci/run no longer installs the test extra and runs pytest in one line"
    quiet_free = command.group(1).replace(" -q", "")
    assert f"\n{quiet_free}\n" in README.read_text(encoding="utf-8")
