"""The scenarios S1-S4. They talk to locks only through :class:`benchmarks.adapter.Adapter`.

Each scenario runs in *rounds*; the runner interleaves the rounds of all adapters (round 1 of
A, round 1 of B, round 2 of B, round 2 of A, ...), so slow drift of a shared machine hits
every adapter alike. Timestamps are ``time.perf_counter_ns``; throughput passes take time only
at their ends, and latency passes pay one clock read per sample.
"""

from __future__ import annotations

import abc
import itertools
import random
from dataclasses import dataclass, fields
from time import perf_counter_ns
from typing import Any, ClassVar

import anyio
import anyio.lowlevel

from benchmarks.adapter import Adapter, Capabilities
from benchmarks.stats import inversions, median, percentile, spread_pct

__all__ = ["SCENARIOS", "Context", "Scenario", "Settings"]

Raw = dict[str, Any]


@dataclass(frozen=True)
class Settings:
    """Every count and duration of a run; printed and saved with the results."""

    s1_rounds: int = 5
    s1_pairs: int = 10_000
    s1_warmup: int = 2_000
    s2_rounds: int = 3
    s2_tasks: int = 8
    s2_iterations: int = 100
    s2_hold_s: float = 0.002
    s2_warmup_iterations: int = 5
    s3_rounds: int = 30
    s3_waiters: int = 8
    s3_gap_s: float = 0.005
    s3_hold_s: float = 0.001
    s4_rounds: int = 3
    s4_keys: int = 1000
    s4_tasks: int = 64
    s4_ops_per_task: int = 300
    s4_warmup_ops: int = 10
    round_timeout_s: float = 120.0
    seed: int = 20240601

    @classmethod
    def quick(cls) -> Settings:
        """A few seconds in all: for CI smoke runs, not for figures."""
        return cls(
            s1_rounds=2,
            s1_pairs=500,
            s1_warmup=100,
            s2_rounds=1,
            s2_iterations=6,
            s2_warmup_iterations=1,
            s3_rounds=2,
            s4_rounds=1,
            s4_ops_per_task=10,
            s4_warmup_ops=2,
            round_timeout_s=30.0,
        )

    def override(self, pairs: dict[str, str]) -> Settings:
        """A copy with ``name=value`` overrides (``--set``), converted to each field's type."""
        kinds = {f.name: f.type for f in fields(self)}
        values: dict[str, Any] = {}
        for name, text in pairs.items():
            if name not in kinds:
                raise ValueError(f"unknown setting {name!r}; known: {', '.join(sorted(kinds))}")
            values[name] = float(text) if kinds[name] in (float, "float") else int(text)
        return type(self)(**{**vars(self), **values})


@dataclass(frozen=True)
class Context:
    """Per adapter and run: where its keys live."""

    prefix: str
    settings: Settings

    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"


class Scenario(abc.ABC):
    id: ClassVar[str]
    title: ClassVar[str]
    #: (metric, column header) in table order.
    columns: ClassVar[list[tuple[str, str]]]

    @abc.abstractmethod
    def describe(self, s: Settings) -> str:
        """One line: what runs, with the fixed counts and durations."""

    @abc.abstractmethod
    def rounds(self, s: Settings) -> int: ...

    def tasks(self, s: Settings) -> int:
        """How many tasks use the adapter at once."""
        return 1

    def skip_reason(self, caps: Capabilities, s: Settings) -> str | None:
        if self.id in caps.skip:
            return caps.skip[self.id]
        if not caps.exclusive and self.id != "S1":
            return "not a lock (a floor for S1 ratios only)"
        if caps.max_tasks is not None and self.tasks(s) > caps.max_tasks:
            return f"needs {self.tasks(s)} concurrent tasks, adapter serves {caps.max_tasks}"
        return None

    async def warmup(self, adapter: Adapter, ctx: Context) -> None:
        return None

    @abc.abstractmethod
    async def run_round(self, adapter: Adapter, ctx: Context, index: int) -> Raw:
        """One measured round; returns raw samples for :meth:`aggregate`."""

    @abc.abstractmethod
    def aggregate(self, rounds: list[Raw]) -> dict[str, float]: ...

    def round_summary(self, raw: Raw) -> dict[str, float]:
        """The few per-round numbers kept in the JSON (spread between rounds)."""
        return {k: v for k, v in raw.items() if isinstance(v, int | float)}


def _us(ns: float) -> float:
    return ns / 1000.0


# --------------------------------------------------------------------------------------------
# S1: uncontended pairs


async def _pairs_same(adapter: Adapter, key: str, n: int) -> int:
    acquire, release = adapter.acquire, adapter.release
    t0 = perf_counter_ns()
    for _ in range(n):
        await release(await acquire(key))
    return perf_counter_ns() - t0


async def _pairs_keys(adapter: Adapter, keys: list[str]) -> int:
    acquire, release = adapter.acquire, adapter.release
    t0 = perf_counter_ns()
    for key in keys:
        await release(await acquire(key))
    return perf_counter_ns() - t0


async def _latency_same(adapter: Adapter, key: str, n: int) -> list[int]:
    acquire, release = adapter.acquire, adapter.release
    samples = [0] * n
    prev = perf_counter_ns()
    for i in range(n):
        await release(await acquire(key))
        now = perf_counter_ns()
        samples[i] = now - prev
        prev = now
    return samples


async def _latency_keys(adapter: Adapter, keys: list[str]) -> list[int]:
    acquire, release = adapter.acquire, adapter.release
    samples = [0] * len(keys)
    prev = perf_counter_ns()
    for i, key in enumerate(keys):
        await release(await acquire(key))
        now = perf_counter_ns()
        samples[i] = now - prev
        prev = now
    return samples


class S1Uncontended(Scenario):
    id = "S1"
    title = "S1: uncontended acquire+release, one task"
    columns: ClassVar[list[tuple[str, str]]] = [
        ("pairs_per_s", "same key pairs/s"),
        ("pairs_per_s_spread_pct", "spread"),
        ("pair_p50_us", "p50 µs"),
        ("pair_p99_us", "p99 µs"),
        ("distinct_pairs_per_s", "distinct keys pairs/s"),
        ("distinct_pair_p50_us", "p50 µs"),
        ("distinct_pair_p99_us", "p99 µs"),
    ]

    def describe(self, s: Settings) -> str:
        return (
            f"one task, {s.s1_rounds} rounds; each round: {s.s1_pairs} pairs on one key timed as "
            f"a block (pairs/s), {s.s1_pairs} more timed one by one (p50/p99), then the same on "
            f"{s.s1_pairs} fresh keys; warm-up {s.s1_warmup} pairs"
        )

    def rounds(self, s: Settings) -> int:
        return s.s1_rounds

    async def warmup(self, adapter: Adapter, ctx: Context) -> None:
        n = ctx.settings.s1_warmup
        await _pairs_same(adapter, ctx.key("s1:warm"), n)
        await _pairs_keys(adapter, [ctx.key(f"s1:warm:{i}") for i in range(n)])

    async def run_round(self, adapter: Adapter, ctx: Context, index: int) -> Raw:
        n = ctx.settings.s1_pairs
        key = ctx.key("s1:same")
        keys_a = [ctx.key(f"s1:{index}:a:{i}") for i in range(n)]
        keys_b = [ctx.key(f"s1:{index}:b:{i}") for i in range(n)]
        same_ns = await _pairs_same(adapter, key, n)
        same_lat = await _latency_same(adapter, key, n)
        keys_ns = await _pairs_keys(adapter, keys_a)
        keys_lat = await _latency_keys(adapter, keys_b)
        return {
            "pairs_per_s": n / (same_ns / 1e9),
            "distinct_pairs_per_s": n / (keys_ns / 1e9),
            "_same_lat": same_lat,
            "_keys_lat": keys_lat,
        }

    def aggregate(self, rounds: list[Raw]) -> dict[str, float]:
        same = [r["pairs_per_s"] for r in rounds]
        distinct = [r["distinct_pairs_per_s"] for r in rounds]
        same_lat = [x for r in rounds for x in r["_same_lat"]]
        keys_lat = [x for r in rounds for x in r["_keys_lat"]]
        return {
            "pairs_per_s": median(same),
            "pairs_per_s_spread_pct": spread_pct(same),
            "pair_p50_us": _us(percentile(same_lat, 50)),
            "pair_p99_us": _us(percentile(same_lat, 99)),
            "distinct_pairs_per_s": median(distinct),
            "distinct_pairs_per_s_spread_pct": spread_pct(distinct),
            "distinct_pair_p50_us": _us(percentile(keys_lat, 50)),
            "distinct_pair_p99_us": _us(percentile(keys_lat, 99)),
        }

    def round_summary(self, raw: Raw) -> dict[str, float]:
        return {
            "pairs_per_s": raw["pairs_per_s"],
            "distinct_pairs_per_s": raw["distinct_pairs_per_s"],
            "pair_p99_us": _us(percentile(raw["_same_lat"], 99)),
        }


# --------------------------------------------------------------------------------------------
# S2: 8 tasks on one key


class S2Contended(Scenario):
    id = "S2"
    title = "S2: tasks contending for one key, each holding 2 ms"
    columns: ClassVar[list[tuple[str, str]]] = [
        ("acquisitions_per_s", "acq/s"),
        ("handoff_p50_us", "hand-off p50 µs"),
        ("handoff_p99_us", "hand-off p99 µs"),
        ("handoff_max_us", "hand-off max µs"),
        ("self_reacquire_pct", "self re-acquire"),
        ("handoffs", "hand-offs"),
    ]

    def describe(self, s: Settings) -> str:
        return (
            f"{s.s2_tasks} tasks x {s.s2_iterations} loops of acquire, sleep "
            f"{s.s2_hold_s * 1000:g} ms, release, on one key; {s.s2_rounds} rounds; warm-up "
            f"{s.s2_warmup_iterations} loops. Hand-off = holder's release call -> another "
            f"task's acquire returning; self re-acquire = the releaser got the key next "
            f"although others were waiting"
        )

    def rounds(self, s: Settings) -> int:
        return s.s2_rounds

    def tasks(self, s: Settings) -> int:
        return s.s2_tasks

    async def warmup(self, adapter: Adapter, ctx: Context) -> None:
        await self._round(adapter, ctx, ctx.key("s2:warm"), ctx.settings.s2_warmup_iterations)

    async def run_round(self, adapter: Adapter, ctx: Context, index: int) -> Raw:
        return await self._round(adapter, ctx, ctx.key(f"s2:{index}"), ctx.settings.s2_iterations)

    async def _round(self, adapter: Adapter, ctx: Context, key: str, iterations: int) -> Raw:
        s = ctx.settings
        hold = s.s2_hold_s
        acquire, release = adapter.acquire, adapter.release
        log: list[tuple[int, int, int, int]] = []  # (t_got, t_release_call, task, others waiting)
        waiting = 0
        go = anyio.Event()

        ready = 0

        async def worker(task: int) -> None:
            nonlocal waiting, ready
            ready += 1
            await go.wait()
            for _ in range(iterations):
                waiting += 1
                handle = await acquire(key)
                t_got = perf_counter_ns()
                waiting -= 1
                await anyio.sleep(hold)
                others = waiting
                t_rel = perf_counter_ns()
                await release(handle)
                log.append((t_got, t_rel, task, others))

        async with anyio.create_task_group() as tg:
            for task in range(s.s2_tasks):
                tg.start_soon(worker, task)
            while ready < s.s2_tasks:
                await anyio.lowlevel.checkpoint()
            t0 = perf_counter_ns()
            go.set()
        elapsed = perf_counter_ns() - t0

        log.sort()
        handoffs: list[int] = []
        contended = 0
        self_again = 0
        for prev, nxt in itertools.pairwise(log):
            if prev[3] == 0:  # nobody was waiting: no hand-off to measure
                continue
            contended += 1
            if nxt[2] == prev[2]:
                self_again += 1
            else:
                handoffs.append(nxt[0] - prev[1])
        return {
            "acquisitions_per_s": len(log) / (elapsed / 1e9),
            "contended": contended,
            "self_again": self_again,
            "_handoffs": handoffs,
        }

    def aggregate(self, rounds: list[Raw]) -> dict[str, float]:
        handoffs = [x for r in rounds for x in r["_handoffs"]]
        contended = sum(r["contended"] for r in rounds)
        self_again = sum(r["self_again"] for r in rounds)
        return {
            "acquisitions_per_s": median([r["acquisitions_per_s"] for r in rounds]),
            "handoff_p50_us": _us(percentile(handoffs, 50)),
            "handoff_p99_us": _us(percentile(handoffs, 99)),
            "handoff_max_us": _us(max(handoffs)) if handoffs else float("nan"),
            "self_reacquire_pct": 100.0 * self_again / contended if contended else 0.0,
            "handoffs": float(len(handoffs)),
            "contended_releases": float(contended),
        }

    def round_summary(self, raw: Raw) -> dict[str, float]:
        return {
            "acquisitions_per_s": raw["acquisitions_per_s"],
            "handoff_p99_us": _us(percentile(raw["_handoffs"], 99)),
            "self_again": raw["self_again"],
        }


# --------------------------------------------------------------------------------------------
# S3: arrival order and drain


class S3Fairness(Scenario):
    id = "S3"
    title = "S3: one holder, waiters arriving 5 ms apart"
    columns: ClassVar[list[tuple[str, str]]] = [
        ("inversions", "inversions"),
        ("rounds_with_inversions", "rounds inverted"),
        ("drain_ms", "drain ms (median)"),
        ("drain_max_ms", "drain max ms"),
        ("gap_p50_us", "gap p50 µs"),
        ("gap_p99_us", "gap p99 µs"),
        ("gap_total_us", "gaps per drain µs"),
    ]

    def describe(self, s: Settings) -> str:
        return (
            f"a holder takes the key; {s.s3_waiters} waiters call acquire "
            f"{s.s3_gap_s * 1000:g} ms apart; {s.s3_gap_s * 1000:g} ms after the last the "
            f"holder releases; each waiter holds {s.s3_hold_s * 1000:g} ms. {s.s3_rounds} "
            f"rounds. Inversions = pairs served against arrival order (summed); drain = holder's "
            f"release call -> last waiter's release done; gap = one holder's release call -> "
            f"the next acquire returning (the lock's share of the drain)"
        )

    def rounds(self, s: Settings) -> int:
        return s.s3_rounds

    def tasks(self, s: Settings) -> int:
        return s.s3_waiters + 1

    async def warmup(self, adapter: Adapter, ctx: Context) -> None:
        await self.run_round(adapter, ctx, -1)

    async def run_round(self, adapter: Adapter, ctx: Context, index: int) -> Raw:
        s = ctx.settings
        key = ctx.key(f"s3:{index}")
        acquire, release = adapter.acquire, adapter.release
        arrived: list[int] = []
        served: list[tuple[int, int, int, int]] = []  # (t_got, t_release_call, t_done, who)

        async def waiter(who: int) -> None:
            arrived.append(who)
            handle = await acquire(key)
            t_got = perf_counter_ns()
            await anyio.sleep(s.s3_hold_s)
            t_rel = perf_counter_ns()
            await release(handle)
            served.append((t_got, t_rel, perf_counter_ns(), who))

        held = anyio.Event()
        let_go = anyio.Event()
        t0 = 0

        async def holder() -> None:
            # Its own task, so an adapter's handle may carry cancel scopes (hold()).
            nonlocal t0
            handle = await acquire(key)
            held.set()
            await let_go.wait()
            t0 = perf_counter_ns()
            await release(handle)

        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await held.wait()
            for who in range(s.s3_waiters):
                tg.start_soon(waiter, who)
                await anyio.sleep(s.s3_gap_s)
            let_go.set()
        served.sort()
        gaps = []
        prev_release = t0
        for t_got, t_rel, _, _ in served:
            gaps.append(t_got - prev_release)
            prev_release = t_rel
        return {
            "inversions": inversions([w for *_, w in served], arrived),
            "drain_ms": (max(t for _, _, t, _ in served) - t0) / 1e6,
            "gap_total_us": _us(sum(gaps)),
            "_gaps": gaps,
        }

    def aggregate(self, rounds: list[Raw]) -> dict[str, float]:
        drains = [r["drain_ms"] for r in rounds]
        gaps = [x for r in rounds for x in r["_gaps"]]
        return {
            "inversions": float(sum(r["inversions"] for r in rounds)),
            "rounds_with_inversions": float(sum(1 for r in rounds if r["inversions"])),
            "drain_ms": median(drains),
            "drain_max_ms": max(drains),
            "gap_p50_us": _us(percentile(gaps, 50)),
            "gap_p99_us": _us(percentile(gaps, 99)),
            "gap_total_us": median([r["gap_total_us"] for r in rounds]),
        }


# --------------------------------------------------------------------------------------------
# S4: many keys, many tasks


class S4ManyKeys(Scenario):
    id = "S4"
    title = "S4: many tasks on many keys"
    columns: ClassVar[list[tuple[str, str]]] = [
        ("ops_per_s", "ops/s"),
        ("ops_per_s_spread_pct", "spread"),
    ]

    def describe(self, s: Settings) -> str:
        return (
            f"{s.s4_tasks} tasks x {s.s4_ops_per_task} ops on keys drawn at random (seeded) from "
            f"{s.s4_keys}; op = acquire, one checkpoint (yield) while holding, release; "
            f"{s.s4_rounds} rounds; warm-up {s.s4_warmup_ops} ops per task"
        )

    def rounds(self, s: Settings) -> int:
        return s.s4_rounds

    def tasks(self, s: Settings) -> int:
        return s.s4_tasks

    async def warmup(self, adapter: Adapter, ctx: Context) -> None:
        await self._round(adapter, ctx, -1, ctx.settings.s4_warmup_ops)

    async def run_round(self, adapter: Adapter, ctx: Context, index: int) -> Raw:
        return await self._round(adapter, ctx, index, ctx.settings.s4_ops_per_task)

    async def _round(self, adapter: Adapter, ctx: Context, index: int, ops: int) -> Raw:
        s = ctx.settings
        keys = [ctx.key(f"s4:{i}") for i in range(s.s4_keys)]
        plans = [
            [
                keys[i]
                for i in random.Random(s.seed * 7919 + index * 131 + task).choices(
                    range(s.s4_keys), k=ops
                )
            ]
            for task in range(s.s4_tasks)
        ]
        acquire, release = adapter.acquire, adapter.release
        checkpoint = anyio.lowlevel.checkpoint
        go = anyio.Event()
        ready = 0

        async def worker(plan: list[str]) -> None:
            nonlocal ready
            ready += 1
            await go.wait()
            for key in plan:
                handle = await acquire(key)
                await checkpoint()
                await release(handle)

        async with anyio.create_task_group() as tg:
            for plan in plans:
                tg.start_soon(worker, plan)
            while ready < s.s4_tasks:
                await anyio.lowlevel.checkpoint()
            t0 = perf_counter_ns()
            go.set()
        elapsed = perf_counter_ns() - t0
        return {"ops_per_s": s.s4_tasks * ops / (elapsed / 1e9)}

    def aggregate(self, rounds: list[Raw]) -> dict[str, float]:
        ops = [r["ops_per_s"] for r in rounds]
        return {"ops_per_s": median(ops), "ops_per_s_spread_pct": spread_pct(ops)}


SCENARIOS: dict[str, Scenario] = {
    s.id: s for s in (S1Uncontended(), S2Contended(), S3Fairness(), S4ManyKeys())
}
