"""The README and docs/ as a guide: links that work, a section per verb, a README kept short.

- Every relative link in README.md and docs/*.md (inline links and images, outside code) names
  a file that exists; a `#anchor` names a heading of that file, by GitHub's slugs.
- Every verb of `tailings --help` (read from the CLI's own argparse parser) has a README section
  whose heading names it as `tailings <verb>` and which links to a page for the rest.
- README.md is at most 25,600 bytes: the detail lives in docs/.
- The README's two commands are the Makefile targets `.ci/run` relies on (CI runs `make test`).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from tailings.cli import build_parser
from tests.conftest import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
DOCS = sorted((PROJECT_ROOT / "docs").glob("*.md"))
MAX_README_BYTES = 25_600

FENCE = re.compile(r"^ {0,3}(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `# comment` in a bash block is no heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: rendered text, lower case, punctuation gone, spaces -> -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "")
    text = re.sub(r"(\*\*|__|\*)", "", text)  # emphasis markers (a lone `_` in a word stays)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # keeps letters, digits, `_`, `-` and spaces
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file, repeated ones numbered -1, -2 as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def relative_links(path: Path) -> list[str]:
    """Link targets outside code spans and fenced blocks, external ones (scheme:, //) left out."""
    targets = []
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
                continue
            targets.append(target)
    return targets


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        dest = path if not file_part else (path.parent / file_part).resolve()
        if not dest.exists():
            problems.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {dest.name}")
    return problems


def verbs() -> list[str]:
    (sub,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def readme_sections() -> dict[str, str]:
    """Heading line -> the section's text up to the next heading of the same or a higher level."""
    lines = README.read_text(encoding="utf-8").splitlines()
    sections: dict[str, str] = {}
    fenced = False
    starts: list[tuple[int, int, str]] = []
    for k, line in enumerate(lines):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (match := HEADING.match(line)):
            starts.append((k, len(match.group(1)), match.group(2)))
    for i, (k, level, title) in enumerate(starts):
        end = next((s for s, lv, _ in starts[i + 1 :] if lv <= level), len(lines))
        sections[title] = "\n".join(lines[k + 1 : end])
    return sections


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_point_to_existing_files_and_headings(path):
    assert broken_links(path) == []


def test_every_verb_has_its_readme_section_with_a_link_for_the_rest():
    sections = readme_sections()
    found = set()
    for verb in verbs():
        named = [t for t in sections if re.search(rf"`tailings {re.escape(verb)}(`| )", t)]
        assert named, f"no README heading names `tailings {verb}`"
        body = sections[named[0]]
        assert re.search(r"\]\((docs|benchmarks)/", body), f"`tailings {verb}`: no link to docs/"
        found.add(verb)
    assert found == set(verbs()) and len(found) >= 11


def test_readme_stays_a_short_guide():
    size = README.stat().st_size
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes (at most {MAX_README_BYTES})"


def test_readme_two_commands_are_what_ci_and_the_makefile_run():
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## The two commands\s+```bash\n(.*?)```", text, re.S)
    assert block, "the README's two commands block is gone"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["make run", "make test"]
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert (PROJECT_ROOT / ".ci" / "run").read_text().rstrip().endswith("make test")


def test_slugs_and_links_are_read_as_github_does(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# `tailings run`: the TFX pipeline\n\n## Measured on sites (December 2026)\n\n"
        "## The study's data\n\n## Notes\n\n## Notes\n\n```bash\n# not a heading\n```\n\n"
        "[a](#notes-1) [b](page.md#the-studys-data) `[c](missing.md)` [d](https://x.org/y)\n"
        "[e](#not-a-heading) [f](missing.md)\n"
    )
    assert anchors(page) == {
        "tailings-run-the-tfx-pipeline",
        "measured-on-sites-december-2026",
        "the-studys-data",
        "notes",
        "notes-1",
    }
    assert relative_links(page) == [
        "#notes-1",
        "page.md#the-studys-data",
        "#not-a-heading",
        "missing.md",
    ]
    assert [p.split(":")[0] for p in broken_links(page)] == ["#not-a-heading", "missing.md"]
