"""Every Python block of docs/ and README.md runs (see tests/_docblocks.py for the markers).

A block is compiled with top-level ``await`` allowed and run on asyncio; the ``test_*``
functions it defines are then called (coroutines awaited), so a test shown in the docs runs
as a test. Blocks marked ``redis``/``postgres`` get the private servers through the
environment (``REDIS_URL``, ``THREADLOCK_URL``, ``DATABASE_URL``).
"""

from __future__ import annotations

import ast
import builtins
import inspect
import re
import types
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from _docblocks import Block, blocks, pages

# the docs show guard_thread and recovery, which drive the SDK's Assistants API (it warns)
pytestmark = pytest.mark.filterwarnings(
    "ignore:The Assistants API is deprecated:DeprecationWarning"
)

_ALL = [block for page in pages() for block in blocks(page)]
_ENV = ("REDIS_URL", "THREADLOCK_URL", "DATABASE_URL", "OPENAI_API_KEY")


def _chain(block: Block) -> list[Block]:
    """``block`` and the blocks it continues, first to last."""
    page = [b for b in _ALL if b.path == block.path]
    index = page.index(block)
    chain = [block]
    while "continue" in chain[0].markers and index > 0:
        index -= 1
        chain.insert(0, page[index])
    return chain


def _free_names(source: str) -> set[str]:
    """Names read but never bound anywhere in ``source``, nor builtins (scopes merged)."""
    tree = ast.parse(source)
    bound: set[str] = set(dir(builtins)) | {"__name__"}
    loaded: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound


def _declared(chain: list[Block]) -> set[str]:
    """The names a marker's reason declares as the reader's own (in backticks)."""
    return {name for b in chain for name in re.findall(r"`([A-Za-z_]\w*)`", b.reason)}


def _needs(chain: list[Block]) -> set[str]:
    return {m for b in chain for m in b.markers if m in ("redis", "postgres")}


@pytest.fixture
def servers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-docs-test")  # never used: no block calls OpenAI
    needs: set[str] = request.param
    started: list[Any] = []
    try:
        if "redis" in needs:
            from _servers.redis_server import RedisServer

            server = RedisServer().start()
            started.append(server)
            monkeypatch.setenv("REDIS_URL", server.url)
            monkeypatch.setenv("THREADLOCK_URL", server.url)
        if "postgres" in needs:
            from _servers.postgres_server import PostgresServer

            pg = PostgresServer.create()
            started.append(pg)
            pg.start()
            monkeypatch.setenv("DATABASE_URL", pg.dsn)
            monkeypatch.setenv("THREADLOCK_URL", pg.dsn)
        yield
    finally:
        for server in reversed(started):
            getattr(server, "destroy", server.stop)()


def _run(code: types.CodeType, namespace: dict[str, Any]) -> None:
    result = eval(code, namespace)  # the docs' own code
    if inspect.iscoroutine(result):

        async def main() -> None:
            with anyio.fail_after(60):
                await result

        anyio.run(main)


def _call_tests(namespace: dict[str, Any], before: set[str]) -> int:
    called = 0
    for name, value in list(namespace.items()):
        if name.startswith("test_") and name not in before and callable(value):
            if inspect.iscoroutinefunction(value):
                anyio.run(value)
            else:
                value()
            called += 1
    return called


_CASES = [
    pytest.param(block, _needs(_chain(block)), id=block.id)
    for block in _ALL
    if "skip" not in block.markers
]


@pytest.mark.parametrize(
    ("block", "servers"),
    [c.values for c in _CASES],
    indirect=["servers"],
    ids=[c.id for c in _CASES],
)
def test_docs_block_runs(block: Block, servers: None) -> None:
    chain = _chain(block)
    # Every name a block uses is imported or defined on the page, or declared as the
    # reader's own in its marker: a missing import fails here even in an uncalled function.
    free = _free_names("".join(part.code for part in chain)) - _declared(chain)
    assert not free, f"{block.id}: undefined names {sorted(free)}"
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for part in chain:
        code = compile(part.code, part.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        if "compile" in part.markers:
            continue
        before = set(namespace)
        _run(code, namespace)
        _call_tests(namespace, before)


def test_every_skip_and_compile_marker_has_a_reason() -> None:
    for block in _ALL:
        if block.markers & {"skip", "compile"}:
            assert block.reason, f"{block.id}: say why it is not run"


def test_the_name_check_catches_a_missing_import() -> None:
    source = (
        "async def f(client, key):\n"
        "    async with guard_thread(client, key) as turn:\n"
        "        pass\n"
    )
    assert _free_names(source) == {"guard_thread"}
    assert _free_names("from threadlock.openai import guard_thread\n" + source) == set()


def test_the_extractor_finds_the_blocks() -> None:
    # Indented blocks (inside tabs) are found too, and every page with Python has some.
    assert len(_ALL) >= 40
    quickstart = [b for b in _ALL if b.path.name == "quickstart.md"]
    assert any(b.code.startswith(("import", "from")) for b in quickstart)
