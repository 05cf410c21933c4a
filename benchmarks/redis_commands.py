"""Scenario RC: Redis commands per operation, for every Redis adapter of the run.

Not a timing: it counts what one operation costs the server, in the same run and against the
same server as S1-S4. Select it with ``--scenarios S1,S2,S3,S4,RC`` (``benchmarks/cli.py``
builds its default scenario list before the adapter modules, which register this one, are
imported).

Each round has three phases on fresh keys, one adapter at a time (the runner never runs two
adapters at once):

* acquire: ``n`` acquires of free keys (``rc_ops``, default 100);
* release: the ``n`` releases;
* hand-off: ``k`` cycles (``rc_handoffs``, default 20) of a holder, one task that calls
  ``acquire`` while the key is held, 20 ms later the holder's release, then the waiter's
  release. Polling locks poll during those 20 ms, as they would in production.

For each phase it reports, per operation (per cycle for the hand-off):

* ``round trips``: commands the clients sent (each one is a round trip), counted with
  ``MONITOR``, which marks the commands a script runs (``lua``) apart from those a client
  sent;
* ``server calls``: every command the server executed, script-internal ones included, and
  ``server µs``: the time it spent in them, both from ``INFO commandstats`` deltas
  (``usec`` of ``EVALSHA`` already includes the calls its script makes, so only top-level
  commands are summed for the time). Each phase runs a second time, on fresh keys and
  without MONITOR, for these: MONITOR slows every command it copies.

Before the phases, one warm-up pair (scripts loaded, connections open) and 2.5 s of quiet
(the background unsubscriptions of an adapter measured before end), so the adapter's own
connections are the only ones active during a phase; the measuring connections (``INFO``,
``ECHO`` markers, ``MONITOR``) and connection set-up (``HELLO``, ``CLIENT``) are left out
of the counts.
A hand-off's background confirmation (threadlock's ``claim``) is counted in the cycle: each
phase waits 50 ms after its last operation before it reads the counters.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import anyio
import redis.asyncio as aioredis

from benchmarks.adapter import Adapter, Capabilities
from benchmarks.scenarios import SCENARIOS, Context, Raw, Scenario, Settings

__all__ = ["RedisCapabilities", "RedisCommands", "ServerCost", "server_cost", "server_url"]

#: Commands the measuring side itself sends; never counted.
_OWN = {"info", "echo", "monitor", "client", "config", "hello"}
_TOP_LEVEL_SCRIPTS = {"evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro"}
_SETTLE_S = 0.05
_QUIET_S = 2.5
_URL: list[str] = []


@dataclass(frozen=True)
class RedisCapabilities(Capabilities):
    """Capabilities of an adapter that talks to the run's Redis server (RC measures it)."""


def server_url(url: str) -> str:
    """Remember the Redis server of this run (called by the adapters); returns ``url``."""
    if url not in _URL:
        _URL.append(url)
    return url


@dataclass(frozen=True)
class ServerCost:
    """What ``INFO commandstats`` deltas say about some work, without double counting.

    Attributes:
        calls: every command the server executed, script-internal ones included.
        usec: server time of the top-level commands only (the ones clients sent). A script's
            ``usec`` already holds the calls its script makes, so the rows of those calls are
            not added again.
        mixed: commands that clients sent *and* scripts called; their row cannot be split,
            so their ``usec`` is shared out by calls (an estimate). Empty for every lock the
            harness measures today.
    """

    calls: int
    usec: float
    mixed: tuple[str, ...] = ()


def server_cost(
    before: Mapping[str, Mapping[str, Any]],
    after: Mapping[str, Mapping[str, Any]],
    sent: Mapping[str, int],
    *,
    ignore: frozenset[str] | set[str] = frozenset(),
) -> ServerCost:
    """The :class:`ServerCost` between two ``INFO commandstats`` readings.

    ``before``/``after`` map a command (``evalsha``, ``set``, ``client|setname``; a
    ``cmdstat_`` prefix is dropped) to its ``calls`` and ``usec``; ``sent`` counts the
    commands the clients sent, by lower-case name. Commands in ``ignore`` (the measuring
    side's own) are left out.
    """
    calls = 0
    usec = 0.0
    mixed = []
    for raw, stats in after.items():
        name = raw.removeprefix("cmdstat_")
        if name.split("|", 1)[0] in ignore:
            continue
        old = before.get(raw, {})
        d_calls = int(stats["calls"]) - int(old.get("calls", 0))
        d_usec = int(stats["usec"]) - int(old.get("usec", 0))
        calls += d_calls
        top = sent.get(name, 0)
        if name in _TOP_LEVEL_SCRIPTS:
            usec += d_usec  # a script is always top level; its usec holds its calls
        elif top and d_calls > top:
            mixed.append(name)
            usec += d_usec * top / d_calls
        elif top:
            usec += d_usec
    return ServerCost(calls, usec, tuple(sorted(mixed)))


class _Counts:
    """What the server saw while ``work`` ran.

    ``work`` runs twice: once under MONITOR, which tells client commands from those a script
    runs (``sent``), and once without it, for the commandstats deltas (``calls``, ``usec``):
    MONITOR slows every command it copies, script-internal ones included, so it must not be
    on while the server's time is measured.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self.sent: Counter[str] = Counter()  # by command, sent by clients
        self.calls = 0  # every call the server executed (commandstats)
        self.usec = 0.0  # server time in the commands clients sent (commandstats)

    @staticmethod
    async def _stats(client: aioredis.Redis) -> dict[str, dict[str, Any]]:
        info: dict[str, dict[str, Any]] = await client.info("commandstats")
        return {name.removeprefix("cmdstat_"): value for name, value in info.items()}

    async def run(self, work: Callable[[str], Awaitable[None]]) -> None:
        client = aioredis.Redis.from_url(self._url)
        try:
            await self._monitored(client, work)
            before = await self._stats(client)
            await work("b")
            await anyio.sleep(_SETTLE_S)
            after = await self._stats(client)
        finally:
            await client.aclose()
        cost = server_cost(before, after, self.sent, ignore=_OWN)
        self.calls, self.usec = cost.calls, cost.usec

    async def _monitored(
        self, client: aioredis.Redis, work: Callable[[str], Awaitable[None]]
    ) -> None:
        marker = f"rc-{secrets.token_hex(6)}"
        started = anyio.Event()
        async with client.monitor() as monitor, anyio.create_task_group() as tg:

            async def read() -> None:
                counting = False
                while True:
                    event = await monitor.next_command()
                    command = str(event.get("command", ""))
                    name = command.split(" ", 1)[0].lower()
                    if name == "echo" and marker in command:
                        if counting:
                            return
                        counting = True
                        started.set()
                        continue
                    if counting and event.get("client_type") != "lua" and name not in _OWN:
                        self.sent[name] += 1

            tg.start_soon(read)
            while not started.is_set():  # MONITOR is on once it shows our marker
                await client.echo(marker)
                with anyio.move_on_after(0.05):
                    await started.wait()
            await work("a")
            await anyio.sleep(_SETTLE_S)
            await client.echo(marker)

    @property
    def round_trips(self) -> int:
        return sum(self.sent.values())


class RedisCommands(Scenario):
    id = "RC"
    title = "RC: Redis commands per operation"
    columns: ClassVar[list[tuple[str, str]]] = [
        ("acquire_round_trips", "round trips / acquire"),
        ("release_round_trips", "round trips / release"),
        ("handoff_round_trips", "round trips / hand-off cycle"),
        ("acquire_server_calls", "server calls / acquire"),
        ("release_server_calls", "server calls / release"),
        ("pair_server_us", "server µs / pair"),
        ("handoff_server_us", "server µs / hand-off cycle"),
    ]
    ops = 100
    handoffs = 20

    def describe(self, s: Settings) -> str:
        return (
            f"one adapter at a time: {self.ops} acquires of free keys, their {self.ops} "
            f"releases, then {self.handoffs} hand-off cycles (holder, a waiter that calls "
            f"acquire while the key is held, the holder's release 20 ms later, the waiter's "
            f"release); round trips counted with MONITOR (script-internal calls apart), "
            f"server calls and time from INFO commandstats deltas"
        )

    def rounds(self, s: Settings) -> int:
        return 1

    def skip_reason(self, caps: Capabilities, s: Settings) -> str | None:
        if not isinstance(caps, RedisCapabilities):
            return "not a Redis adapter"
        if self.id in caps.skip:
            return caps.skip[self.id]
        return None

    async def run_round(self, adapter: Adapter, ctx: Context, index: int) -> Raw:
        if not _URL:
            raise RuntimeError("no Redis server was recorded for this run")
        url = _URL[-1]
        # Warm (scripts loaded, connections open), then let the background work of the
        # adapter measured before (threadlock unsubscribes idle channels about a second
        # later) end before counting: MONITOR sees every client of the server.
        await adapter.release(await adapter.acquire(ctx.key(f"rc:{index}:warm")))
        await anyio.sleep(_QUIET_S)
        handles: dict[str, list[Any]] = {}

        async def acquire_all(run: str) -> None:
            handles[run] = [
                await adapter.acquire(ctx.key(f"rc:{index}:{run}:{i}")) for i in range(self.ops)
            ]

        async def release_all(run: str) -> None:
            for handle in handles.pop(run):
                await adapter.release(handle)

        acquired = _Counts(url)
        await acquired.run(acquire_all)
        released = _Counts(url)
        await released.run(release_all)
        raw: Raw = {
            "acquire_round_trips": acquired.round_trips / self.ops,
            "release_round_trips": released.round_trips / self.ops,
            "acquire_server_calls": acquired.calls / self.ops,
            "release_server_calls": released.calls / self.ops,
            "pair_server_us": (acquired.usec + released.usec) / self.ops,
            "acquire_commands": dict(acquired.sent),
            "release_commands": dict(released.sent),
        }
        if adapter.capabilities.exclusive:

            async def handoffs(run: str) -> None:
                for n in range(self.handoffs):
                    key = ctx.key(f"rc:{index}:{run}:handoff:{n}")
                    holder = await adapter.acquire(key)
                    got = anyio.Event()

                    async def waiter(key: str = key, got: anyio.Event = got) -> None:
                        handle = await adapter.acquire(key)
                        got.set()
                        await adapter.release(handle)

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(waiter)
                        await anyio.sleep(0.02)
                        await adapter.release(holder)
                        await got.wait()

            cycles = _Counts(url)
            await cycles.run(handoffs)
            raw["handoff_round_trips"] = cycles.round_trips / self.handoffs
            raw["handoff_server_us"] = cycles.usec / self.handoffs
            raw["handoff_commands"] = dict(cycles.sent)
        return raw

    def aggregate(self, rounds: list[Raw]) -> dict[str, float]:
        last = rounds[-1]
        return {
            name: float(value) for name, value in last.items() if isinstance(value, int | float)
        }

    def round_summary(self, raw: Raw) -> dict[str, float]:
        summary: dict[str, float] = {}
        for name, value in raw.items():
            if isinstance(value, int | float):
                summary[name] = float(value)
            elif isinstance(value, dict):  # e.g. acquire_commands: per command, per op
                per = self.handoffs if name.startswith("handoff") else self.ops
                for command, count in value.items():
                    summary[f"{name}.{command}"] = count / per
        return summary


if "RC" not in SCENARIOS:
    SCENARIOS["RC"] = RedisCommands()
