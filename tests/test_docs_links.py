"""README.md and docs/*.md: every relative link and image resolves, and README stays short.

A link ``[text](target)`` or image ``![alt](target)`` outside code is resolved against the folder
of the file that holds it; ``http(s):``, ``mailto:`` and pure ``#anchor`` links are skipped. A
``#fragment`` on a link to a markdown file must name one of its headings, slugged as GitHub does.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO

README_MAX_LINES = 220
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^ {0,3}(```|~~~)")
INLINE_CODE = re.compile(r"(`+).+?\1")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
SKIPPED = ("http://", "https://", "mailto:")


def prose(text: str, *, blank_code: bool = True) -> str:
    """Return ``text`` with fenced code blocks blanked, line for line.

    Args:
        text: Markdown source.
        blank_code: Also blank inline code spans (where a ``[x](y)`` is not a link).

    Returns:
        The text a reader sees as prose or headings, with as many lines as ``text``.
    """
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            line = ""
        elif fenced:
            line = ""
        elif blank_code:
            line = INLINE_CODE.sub("", line)
        lines.append(line)
    return "\n".join(lines)


def slug(heading: str) -> str:
    """Return GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to ``-``.

    Args:
        heading: The heading's text, without the leading ``#`` marks.

    Returns:
        The anchor, e.g. ``the-gpu-check-benchmarksgpu_checksh`` for
        ``The GPU check: `benchmarks/gpu_check.sh```.
    """
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a linked heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Return every heading anchor of a markdown file, repeats numbered as GitHub does.

    Args:
        path: A markdown file.

    Returns:
        The anchors, e.g. ``{"results", "results-1"}`` for two headings "Results".
    """
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose(path.read_text(encoding="utf-8"), blank_code=False).splitlines():
        match = HEADING.match(line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """Return the relative link targets of a markdown file with their line numbers.

    Args:
        path: A markdown file.

    Returns:
        ``(line number, target)`` pairs, external and pure-anchor links left out.
    """
    text = prose(path.read_text(encoding="utf-8"))
    return [(text.count("\n", 0, match.start()) + 1, match.group(1))
            for match in LINK.finditer(text)
            if not match.group(1).startswith((*SKIPPED, "#"))]


def test_slug_matches_github():
    assert slug("The GPU check: `benchmarks/gpu_check.sh`") == "the-gpu-check-benchmarksgpu_checksh"
    assert slug("Compiled training on the CPU: column (d) of `benchmarks/throughput.py`") == (
        "compiled-training-on-the-cpu-column-d-of-benchmarksthroughputpy")
    assert slug("One trial on many devices (DDP)") == "one-trial-on-many-devices-ddp"
    assert slug("The seed study: the blog's first recipe") == (
        "the-seed-study-the-blogs-first-recipe")


def test_links_and_anchors_are_found(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("# Results\n\nsee [the\nresults](other.md#results) and ![a](a.png)\n"
                    "```\n# not a heading [x](code.md)\n```\n`[y](inline.md)` [z](#results)\n"
                    "[w](https://example.org/x.md) [v](mailto:a@b.c)\n## Results\n")
    assert links(page) == [(3, "other.md#results"), (4, "a.png")]
    assert anchors(page) == {"results", "results-1"}


def test_the_pages_have_links():
    assert (REPO / "README.md").is_file()
    assert len(PAGES) > 1, "docs/*.md not found"
    assert links(REPO / "README.md"), "README.md has no relative links"
    assert prose("a\n```\n[x](y)\n```\nb `[c](d)` e") == "a\n\n\n\nb  e"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page: Path):
    broken = []
    for number, target in links(page):
        file_part, _, fragment = target.partition("#")
        resolved = (page.parent / file_part).resolve()
        where = f"{page.relative_to(REPO)}:{number}: {target}"
        if not resolved.exists():
            broken.append(f"{where} (no such file)")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{where} (no heading #{fragment} in {resolved.name})")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_anchor_in_the_page_exists(page: Path):
    own = anchors(page)
    missing = [target for target in LINK.findall(prose(page.read_text(encoding="utf-8")))
               if target.startswith("#") and target[1:] not in own]
    assert not missing, f"{page.relative_to(REPO)}: no heading for {missing}"


def test_readme_is_a_landing_page():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    assert any(line.startswith("make test") for line in lines), "README must name `make test`"
