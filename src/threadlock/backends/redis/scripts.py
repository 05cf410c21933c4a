"""The Lua scripts and the one path every round trip to Redis takes.

The scripts are the package's ``lua/*.lua`` files. Each full lock script (acquire, release,
extend, abandon, inspect, advance) is sent as ``_lib.lua`` (the key layout, the server clock
and the shared helpers) followed by its own file; ``acquire`` and ``release`` first run
their fast path, ``acquire_fast.lua`` / ``release_fast.lua``, wrapped as a function ahead of
``_lib.lua``, so the uncontended case costs only the calls it makes and none of the helpers,
and anything else goes on in the same script, in the same round trip. ``track.lua`` and
``untrack.lua`` stand alone. An inbox script (``inbox_*.lua``) is sent as ``_inbox.lua``
(the inbox helpers) followed by its own file, and ``inbox_finish``, which releases the
lease, has ``_lib.lua`` in front of that too, so it releases with the lock's own helper
(``release_lease``). ``inbox_index.lua`` and ``inbox_unindex.lua`` (the prefix's index of
keys with pending messages, a key of its own slot) stand alone. One script per operation,
loaded once. Redis 7 functions would share the helpers without repeating them, but the
backend supports Redis 6.2, which has no ``FUNCTION``. Each script runs with ``EVALSHA``
and is loaded again on ``NOSCRIPT`` (``SCRIPT FLUSH``, a restart, a failover).

Every redis-py error and :class:`OSError` comes out of :class:`RedisCommands` as
:class:`~threadlock.errors.BackendError`, chained.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, TypeVar

import anyio
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from threadlock._deadline import bounded_call
from threadlock.backends.redis.cluster import SlotMap
from threadlock.backends.redis.keys import text
from threadlock.errors import BackendError

_T = TypeVar("_T")
LOCK_SCRIPTS = ("acquire", "release", "extend", "abandon", "inspect", "advance")
INBOX_SCRIPTS = (
    "inbox_post",
    "inbox_take",
    "inbox_finish",
    "inbox_ack",
    "inbox_nack",
    "inbox_read",
    "inbox_probe",
    "inbox_settle",
)
#: The inbox scripts that work on the lease itself, and so are sent with ``_lib.lua``.
INBOX_LOCK_SCRIPTS = ("inbox_finish",)
#: The scripts of the prefix's inbox index (one key of its own slot): they stand alone.
INBOX_INDEX_SCRIPTS = ("inbox_index", "inbox_unindex")
SCRIPTS = (*LOCK_SCRIPTS, "track", "untrack", *INBOX_SCRIPTS, *INBOX_INDEX_SCRIPTS)
#: script -> its fast path (a prologue that answers 0 to go on with the script)
FAST_PATHS = {"acquire": "acquire_fast", "release": "release_fast"}
_NUMKEYS = {n: str(n).encode() for n in range(1, 11)}
#: At most this many commands of one ``for_each_bounded`` run at once.
_CONCURRENCY = 32
#: ``GET`` commands per pipeline of ``get_many``.
_GET_BATCH = 1000


def load_scripts() -> dict[str, str]:
    """Script texts: [fast path as a function, run first] + ``_lib.lua`` + the script for a
    full lock script; ``_inbox.lua`` + the script for an inbox script (with ``_lib.lua``
    first for one that releases); ``track.lua``, ``untrack.lua`` and the inbox index's
    scripts alone."""
    folder = importlib.resources.files("threadlock.backends.redis") / "lua"

    def read(name: str) -> str:
        return (folder / f"{name}.lua").read_text(encoding="utf-8")

    lib = read("_lib")
    inbox = read("_inbox")
    texts = {}
    for name in SCRIPTS:
        body = read(name)
        if name in INBOX_SCRIPTS:
            texts[name] = (lib + "\n" if name in INBOX_LOCK_SCRIPTS else "") + inbox + "\n" + body
            continue
        if name not in LOCK_SCRIPTS:
            texts[name] = body
            continue
        text = lib + "\n" + body
        fast = FAST_PATHS.get(name)
        if fast is not None:
            text = (
                f"local function {fast}()\n{read(fast)}\nend\n"
                f"do\n  local done = {fast}()\n  if done ~= 0 then\n    return done\n  end\nend\n"
                + text
            )
        texts[name] = text
    return texts


#: name -> the text sent on NOSCRIPT
SCRIPT_TEXT = load_scripts()
#: name -> the SHA-1 that EVALSHA names it by
SCRIPT_SHA = {
    name: hashlib.sha1(body.encode("utf-8")).hexdigest()  # noqa: S324 - Redis's script id
    for name, body in SCRIPT_TEXT.items()
}


class RedisCommands:
    """One backend instance's way to Redis: scripts, plain commands and ``SCAN``."""

    __slots__ = ("_slot_map", "client", "command_timeout")

    def __init__(self, client: aioredis.Redis | RedisCluster, command_timeout: float) -> None:
        self.client = client
        self.command_timeout = command_timeout
        self._slot_map = SlotMap(client)

    async def script_unshielded(
        self, name: str, keys: list[bytes], *args: bytes | str | int
    ) -> Any:
        """One script, one round trip: ``EVALSHA`` straight through the client, loading the
        script on NOSCRIPT. Not shielded: a caller cancelled in flight does not know whether
        it ran (``acquire`` and ``release`` handle that themselves, see lock.py)."""
        client = self.client
        try:
            if not self._slot_map.loaded:
                await self._slot_map.load()
            try:
                return await client.execute_command(
                    "EVALSHA", SCRIPT_SHA[name], _NUMKEYS[len(keys)], *keys, *args
                )
            except redis.exceptions.NoScriptError:
                await client.script_load(SCRIPT_TEXT[name])
                return await client.execute_command(
                    "EVALSHA", SCRIPT_SHA[name], _NUMKEYS[len(keys)], *keys, *args
                )
        except (redis.exceptions.RedisError, OSError) as exc:
            raise BackendError(f"redis: {type(exc).__name__}: {exc}") from exc

    async def script_shielded(self, name: str, keys: list[bytes], *args: bytes | str | int) -> Any:
        """:meth:`script_unshielded` in a shielded scope: its outcome is always known (a
        command cancelled in flight may still reach Redis after whatever the caller does
        next). For every operation but the two hot ones. Bounded by the caller's deadline
        and ``command_timeout`` (see :mod:`threadlock._deadline`): a ``BackendError`` then."""
        async with bounded_call(self.command_timeout, "Redis"):
            return await self.script_unshielded(name, keys, *args)

    async def command(self, run: Callable[[], Awaitable[_T]], *, shield: bool = False) -> _T:
        """``await run()`` (redis-py calls), errors as BackendError; optionally shielded, and
        then bounded as :meth:`script_shielded` is."""
        bound: AbstractAsyncContextManager[None] = (
            bounded_call(self.command_timeout, "Redis") if shield else nullcontext()
        )
        try:
            async with bound:
                if not self._slot_map.loaded:
                    await self._slot_map.load()
                result = await run()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise BackendError(f"redis: {type(exc).__name__}: {exc}") from exc
        return result

    async def get_many(self, names: Sequence[str]) -> list[Any]:
        """``GET`` of every name, pipelined in batches (on Cluster, per node)."""
        values: list[Any] = []
        for start in range(0, len(names), _GET_BATCH):
            batch = names[start : start + _GET_BATCH]

            async def get(batch: Sequence[str] = batch) -> list[Any]:
                pipe = self.client.pipeline(transaction=False)
                for name in batch:
                    pipe.get(name)
                return await pipe.execute()

            values.extend(await self.command(get))
        return values

    async def scan(self, pattern: str) -> list[str]:
        """Every key name matching ``pattern`` (on every master of a Cluster)."""
        found: list[str] = []

        async def scan() -> None:
            async for name in self.client.scan_iter(match=pattern, count=1000):
                found.append(text(name))

        await self.command(scan)
        return found


async def for_each_bounded(items: Sequence[str], work: Callable[[str], Awaitable[None]]) -> None:
    """``work(item)`` for every item, at most :data:`_CONCURRENCY` at once.

    The first :class:`BackendError` comes out as itself, not inside an ``ExceptionGroup``.
    """
    limiter = anyio.CapacityLimiter(_CONCURRENCY)
    errors: list[BackendError] = []

    async def one(item: str) -> None:
        async with limiter:
            if errors:
                return
            try:
                await work(item)
            except BackendError as error:
                errors.append(error)

    async with anyio.create_task_group() as tg:
        for item in items:
            tg.start_soon(one, item)
    if errors:
        raise errors[0]
