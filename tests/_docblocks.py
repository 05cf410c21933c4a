"""Finds the Python code blocks of docs/*.md and README.md, with their test markers.

A block runs as written, in a fresh namespace, unless the HTML comment right above its fence
says otherwise:

* ``<!-- test: skip REASON -->``: not run (the reason is required, e.g. a live API key);
* ``<!-- test: continue -->``: runs in the namespace the previous block of the page left;
* ``<!-- test: redis -->`` / ``<!-- test: postgres -->``: needs that server; the test starts
  the private one and sets ``REDIS_URL`` / ``THREADLOCK_URL`` (and ``DATABASE_URL``);
* ``<!-- test: compile REASON -->``: only compiled (a fragment of a larger program, an
  interface sketch), with the reason.

Markers combine: ``<!-- test: continue redis -->``.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>[A-Za-z0-9_+-]*)[^\n]*$")
_MARKER = re.compile(r"^\s*<!--\s*test:\s*(?P<body>.*?)\s*-->\s*$")
_WORDS = {"skip", "continue", "redis", "postgres", "compile"}


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    markers: set[str] = field(default_factory=set)
    reason: str = ""

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def pages() -> list[Path]:
    return [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]


def blocks(path: Path) -> list[Block]:
    """The ``python`` blocks of one page, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        lang = opening["lang"].lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            body.append(lines[j])
            j += 1
        if lang in ("python", "py"):
            block = Block(path, i + 1, textwrap.dedent("\n".join(body)) + "\n")
            k = i - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            marker = _MARKER.match(lines[k]) if k >= 0 else None
            if marker:
                words = marker["body"].split()
                while words and words[0] in _WORDS:
                    block.markers.add(words.pop(0))
                block.reason = " ".join(words)
            found.append(block)
        i = j + 1
    return found
