"""User pages carry no developer wording: no SPEC sections, issue numbers or "MISS" verdicts.

docs/architecture.md is for contributors and may name issues; every other page, and the
docstrings the API reference renders, are for users, who have neither the SPEC nor the
issue tracker of the team.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted(p for p in (ROOT / "docs").rglob("*.md") if p.name != "architecture.md")
SOURCES = sorted((ROOT / "src" / "threadlock").rglob("*.py"))
DEVELOPER = re.compile(
    r"SPEC §|\bSPEC\b|\(issue \d+|issue \d+\)|Targets \(issue|later issues|\bMISS\b"
)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_page_has_no_developer_wording(page: Path) -> None:
    hits = [
        f"{page.relative_to(ROOT)}:{n}: {line.strip()}"
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if DEVELOPER.search(line)
    ]
    assert hits == []


def test_rendered_docstrings_cite_no_spec_sections() -> None:
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in SOURCES
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "SPEC §" in line
    ]
    assert hits == []
