"""Issue 14's goals in one run: measured value, peer, floor and PASS/MISS side by side.

    python -m benchmarks.issue14            # about 5-8 minutes on a quiet 2-core machine
    python -m benchmarks.issue14 --quick    # a smoke run (about a minute), writes nothing
    python -m benchmarks.issue14 --no-cluster   # leave the Redis Cluster runs out

One process, one private ``redis-server`` and one throwaway Postgres cluster for the whole run
(or ``--redis-url`` / ``--pg-dsn``), and in that run:

1. the scenarios of ``python -m benchmarks``: S1-S3 on the in-process and Redis adapters,
   S4 and RC on the Redis ones, S1 on the Postgres ones; fewer rounds than the default full
   run (``ISSUE14`` settings, and 1,000 pairs per S1 round on Postgres; the counts are
   printed and saved);
2. the Redis latency floor (``benchmarks.redis_latency_floor``): a bare ``PUBLISH``
   delivered to a subscriber right after a 2 ms sleep, the least a notified hand-off costs;
3. the guard's own time per turn (``benchmarks.guards.guard_overhead``);
4. unless ``--no-cluster``: the Redis Cluster runs of ``benchmarks.cluster_scale`` (3 shards
   with 10k keys, 3 shards with a simulated 1M key space, 1 shard with 10k keys; shorter
   than its own full run, which also has 100k keys).

Then one table: each goal of the issue, its measured value, the peer it is compared with,
the bound, the *floor* (the cheapest design of the same kind, measured in the same run:
``redis-script-floor``, ``memory-lease-floor``, ``pg-polling``, the bare ``PUBLISH``) and
whether the floor itself would meet the bound. A goal that the floor misses cannot be met by
any lock of that kind; the floor is the measurement that shows why.

Writes ``benchmarks/results/issue14.{json,md}`` (``--out``, ``--name``); ``--quick`` writes
only with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio

from benchmarks.adapter import Adapter, AdapterConfig, import_errors, registry
from benchmarks.report import build_document, fmt, machine_info
from benchmarks.report import markdown as scenario_markdown
from benchmarks.runner import Results, run_all
from benchmarks.scenarios import SCENARIOS, Settings

__all__ = ["GOALS", "Goal", "Val", "evaluate_goals", "main"]

RESULTS = Path(__file__).resolve().parent / "results"

#: S1-S3 run on the memory and Redis adapters, S4 and RC on the Redis ones (``REDIS``), S1
#: alone on the Postgres ones (``POSTGRES``: issue 14 has an S1 goal only there, and a durable
#: pair costs milliseconds, so it runs fewer pairs: ``POSTGRES_S1``).
IN_PROCESS = ("memory", "memory-hold", "memory-lease-floor", "asyncio-lock")
REDIS = ("redis", "redis-script-floor", "redis-setnx", "redis-py-lock", "python-redis-lock")
POSTGRES = ("postgres", "pg-advisory", "pg-polling")
ADAPTERS = IN_PROCESS + REDIS + POSTGRES
#: Peers from the ``bench`` extra (``pip install -e '.[bench]'``); without them their goals
#: are SKIP, and the run goes on.
OPTIONAL = frozenset({"python-redis-lock"})

#: Fewer rounds than ``Settings()``: the whole table in minutes, every figure from this run.
ISSUE14 = Settings(
    s1_rounds=3,
    s1_pairs=3000,
    s1_warmup=500,
    s2_rounds=2,
    s2_iterations=50,
    s3_rounds=10,
    s4_rounds=2,
    s4_ops_per_task=150,
)
POSTGRES_S1 = {"s1_pairs": 1000, "s1_warmup": 200}


@dataclass(frozen=True)
class Val:
    """A measured value: ``metrics[scenario][adapter][metric]``."""

    scenario: str
    adapter: str
    metric: str

    def get(self, metrics: Metrics) -> float | None:
        value = metrics.get(self.scenario, {}).get(self.adapter, {}).get(self.metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return float(value)

    def label(self) -> str:
        return f"{self.adapter} {self.scenario} {self.metric}"


Metrics = dict[str, dict[str, dict[str, float]]]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
}


@dataclass(frozen=True)
class Goal:
    """One goal of the issue.

    The bound is ``threshold`` times the peer when ``relative``, else ``threshold`` (the peer
    is then shown for context only). ``op`` ``None``: reported, no bound.
    """

    text: str
    measured: Val
    op: str | None
    threshold: float
    peer: Val | None = None
    relative: bool = False
    floor: Val | None = None


GOALS: tuple[Goal, ...] = (
    Goal(
        "Redis server µs / uncontended pair <= 1.5x redis-py Lock (INFO commandstats)",
        Val("RC", "redis", "pair_server_us"),
        "<=",
        1.5,
        peer=Val("RC", "redis-py-lock", "pair_server_us"),
        relative=True,
        floor=Val("RC", "redis-script-floor", "pair_server_us"),
    ),
    Goal(
        "Redis server calls / uncontended pair <= 4 (1-2 per operation)",
        Val("RC", "redis", "pair_server_calls"),
        "<=",
        4.0,
        peer=Val("RC", "redis-py-lock", "pair_server_calls"),
        floor=Val("RC", "redis-script-floor", "pair_server_calls"),
    ),
    Goal(
        "Redis server µs / hand-off cycle (reported)",
        Val("RC", "redis", "handoff_server_us"),
        None,
        0.0,
        peer=Val("RC", "redis-py-lock", "handoff_server_us"),
        floor=Val("RC", "redis-script-floor", "handoff_server_us"),
    ),
    Goal(
        "Redis S1 pairs/s >= 1.0x redis-py Lock",
        Val("S1", "redis", "pairs_per_s"),
        ">=",
        1.0,
        peer=Val("S1", "redis-py-lock", "pairs_per_s"),
        relative=True,
        floor=Val("S1", "redis-script-floor", "pairs_per_s"),
    ),
    Goal(
        "Redis S4 ops/s (1,000 keys x 64 tasks) >= 1.0x redis-py Lock",
        Val("S4", "redis", "ops_per_s"),
        ">=",
        1.0,
        peer=Val("S4", "redis-py-lock", "ops_per_s"),
        relative=True,
        floor=Val("S4", "redis-script-floor", "ops_per_s"),
    ),
    Goal(
        "Redis S3 drain of 8 waiters <= python-redis-lock",
        Val("S3", "redis", "drain_ms"),
        "<=",
        1.0,
        peer=Val("S3", "python-redis-lock", "drain_ms"),
        relative=True,
        floor=Val("S3", "asyncio-lock", "drain_ms"),
    ),
    Goal(
        "Redis S2 hand-off p99 <= 1 ms",
        Val("S2", "redis", "handoff_p99_us"),
        "<=",
        1000.0,
        peer=Val("S2", "python-redis-lock", "handoff_p99_us"),
        floor=Val("LF", "redis-publish", "publish_delivery_after_sleep_p99_us"),
    ),
    Goal(
        "Cluster: net server CPU / turn, largest / smallest key space (3 shards) <= 1.10",
        Val("CL", "redis-cluster", "net_cpu_per_turn_growth"),
        "<=",
        1.10,
    ),
    Goal(
        "Cluster: keys without a TTL at the end of every run = 0",
        Val("CL", "redis-cluster", "keys_without_ttl"),
        "<=",
        0.0,
    ),
    Goal(
        "Cluster: 1 -> 3 shards, busiest-shard capacity ratio >= 2.7 (linear within 10 %)",
        Val("CL", "redis-cluster", "capacity_ratio"),
        ">=",
        2.7,
        peer=Val("CL", "redis-cluster", "turns_per_s_ratio"),
    ),
    Goal(
        "Postgres S1 pairs/s >= 0.6x advisory lock",
        Val("S1", "postgres", "pairs_per_s"),
        ">=",
        0.6,
        peer=Val("S1", "pg-advisory", "pairs_per_s"),
        relative=True,
        floor=Val("S1", "pg-polling", "pairs_per_s"),
    ),
    Goal(
        "Memory S2 hand-off p99 <= 0.1 ms",
        Val("S2", "memory", "handoff_p99_us"),
        "<=",
        100.0,
        peer=Val("S2", "asyncio-lock", "handoff_p99_us"),
    ),
    Goal(
        "Memory S1 pairs/s >= 0.5x dict of asyncio.Locks",
        Val("S1", "memory", "pairs_per_s"),
        ">=",
        0.5,
        peer=Val("S1", "asyncio-lock", "pairs_per_s"),
        relative=True,
        floor=Val("S1", "memory-lease-floor", "pairs_per_s"),
    ),
    Goal(
        "Guard overhead p50 / turn < 1 ms (guard_conversation, FakeOpenAI)",
        Val("G", "guard", "overhead_p50_ms"),
        "<",
        1.0,
        peer=Val("G", "guard", "bare_turn_p50_ms"),
    ),
    Goal(
        "hold() overhead p50 / block < 1 ms (memory-hold - memory S1 p50)",
        Val("G", "memory-hold", "hold_overhead_p50_ms"),
        "<",
        1.0,
    ),
)


def evaluate_goals(metrics: Metrics, goals: Sequence[Goal] = GOALS) -> list[dict[str, Any]]:
    """One row per goal: measured, peer, bound, floor, result, and the floor's own verdict."""
    rows = []
    for goal in goals:
        measured = goal.measured.get(metrics)
        peer = None if goal.peer is None else goal.peer.get(metrics)
        floor = None if goal.floor is None else goal.floor.get(metrics)
        bound: float | None = goal.threshold
        reason = ""
        if goal.relative:
            bound = None if peer is None else goal.threshold * peer
            if peer is None and goal.peer is not None:
                reason = f"{goal.peer.label()} not measured in this run"
        if goal.op is None:
            status, bound = "REPORT", None
        elif measured is None:
            status, reason = "SKIP", f"{goal.measured.label()} not measured in this run"
        elif bound is None:
            status = "SKIP"
        else:
            status = "PASS" if _OPS[goal.op](measured, bound) else "MISS"
        floor_status = None
        if goal.op is not None and floor is not None and bound is not None:
            floor_status = "PASS" if _OPS[goal.op](floor, bound) else "MISS"
        rows.append(
            {
                "goal": goal.text,
                "metric": goal.measured.metric,
                "measured": measured,
                "measured_from": goal.measured.label(),
                "peer": peer,
                "peer_from": None if goal.peer is None else goal.peer.label(),
                "bound": bound,
                "floor": floor,
                "floor_from": None if goal.floor is None else goal.floor.label(),
                "floor_status": floor_status,
                "status": status,
                "reason": reason,
            }
        )
    return rows


def derive(metrics: Metrics) -> None:
    """Values computed from measured ones (server calls per pair, the hold() overhead)."""
    for values in metrics.get("RC", {}).values():
        if "acquire_server_calls" in values and "release_server_calls" in values:
            values["pair_server_calls"] = (
                values["acquire_server_calls"] + values["release_server_calls"]
            )
    s1 = metrics.get("S1", {})
    if "memory-hold" in s1 and "memory" in s1:
        overhead_us = s1["memory-hold"]["pair_p50_us"] - s1["memory"]["pair_p50_us"]
        metrics.setdefault("G", {}).setdefault("memory-hold", {})["hold_overhead_p50_ms"] = (
            overhead_us / 1000
        )


def _metrics(results: Results) -> Metrics:
    return {
        sc: {a: dict(cell.metrics) for a, cell in cells.items() if cell.status == "ok"}
        for sc, cells in results.items()
    }


def _cell(metric: str, value: float | None) -> str:
    if metric.endswith(("growth", "ratio")):
        return "n/a" if value is None else f"{value:.3g}"
    return fmt(metric, value)


def goals_markdown(rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| goal | measured | peer | bound | floor | floor meets bound | result |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        m = r["metric"]
        result = r["status"] + (f" ({r['reason']})" if r["reason"] else "")
        lines.append(
            f"| {r['goal']} | {_cell(m, r['measured'])} | {_cell(m, r['peer'])} | "
            f"{_cell(m, r['bound'])} | {_cell(m, r['floor'])} | {r['floor_status'] or 'n/a'} "
            f"| {result} |"
        )
    lines += ["", "Where each value comes from (adapter, scenario, metric):", ""]
    for r in rows:
        parts = [f"measured {r['measured_from']}"]
        if r["peer_from"]:
            parts.append(f"peer {r['peer_from']}")
        if r["floor_from"]:
            parts.append(f"floor {r['floor_from']}")
        lines.append(f"- {r['goal']}: " + "; ".join(parts))
    return lines


async def _latency_floor(url: str, samples: int) -> dict[str, float]:
    from benchmarks.redis_latency_floor import measure

    return await measure(url, samples)


def _cluster(quick: bool, duration: float | None) -> dict[str, Any]:
    from benchmarks import cluster_scale as cs

    base = cs.Settings.quick() if quick else cs.Settings()
    runs = base.runs
    if not quick:
        runs = (
            cs.RunSpec(3, 10_000, False),
            cs.RunSpec(3, 1_000_000, True),
            cs.RunSpec(1, 10_000, False),
        )
    settings = cs.Settings(
        procs=base.procs,
        tasks=base.tasks,
        duration=duration if duration is not None else (base.duration if quick else 15.0),
        hot=base.hot,
        hot_share=base.hot_share,
        turn_min=base.turn_min,
        turn_max=base.turn_max,
        held_sample=base.held_sample,
        idle=base.idle if quick else 3.0,
        runs=runs,
    )
    out = []
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(settings.procs) as pool:
        for spec in settings.runs:
            print(f"cluster run: {spec.shards} shard(s), {spec.keys:,} keys ...", file=sys.stderr)
            run = cs.run_one(spec, settings, pool)
            print(f"  {json.dumps(run)}", file=sys.stderr)
            out.append(run)
    return {"settings": vars(settings) | {"runs": [vars(r) for r in runs]}, "runs": out}


def _cluster_metrics(cluster: dict[str, Any]) -> dict[str, float]:
    from benchmarks.cluster_scale import summarise

    summary = summarise(cluster["runs"])
    cluster["summary"] = summary
    values: dict[str, float] = {
        "keys_without_ttl": float(sum(r["keys_without_ttl"] for r in cluster["runs"])),
    }
    if summary.get("net_cpu_per_turn_growth") is not None:
        values["net_cpu_per_turn_growth"] = float(summary["net_cpu_per_turn_growth"])
    scaling = summary.get("scaling")
    if scaling and scaling.get("capacity_turns_per_s_1") and scaling.get("capacity_turns_per_s_3"):
        values["capacity_ratio"] = (
            scaling["capacity_turns_per_s_3"] / scaling["capacity_turns_per_s_1"]
        )
        values["turns_per_s_ratio"] = float(scaling["turns_per_s_ratio"])
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.issue14", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny counts: a smoke run, not figures")
    p.add_argument("--no-cluster", action="store_true", help="leave the Redis Cluster runs out")
    p.add_argument("--cluster-duration", type=float, help="seconds of load per cluster run")
    p.add_argument("--redis-url", help="an idle Redis server (default: a private one)")
    p.add_argument("--pg-dsn", help="an idle Postgres (default: a throwaway cluster)")
    p.add_argument("--out", type=Path, help=f"results directory (default {RESULTS})")
    p.add_argument("--name", default="issue14")
    p.add_argument("--no-save", action="store_true", help="print only")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(args_list)
    settings = Settings.quick() if args.quick else ISSUE14
    options: dict[str, str] = {}
    if args.redis_url:
        options["redis_url"] = args.redis_url
    if args.pg_dsn:
        options["pg_dsn"] = args.pg_dsn
    known = registry()
    if missing := [n for n in ADAPTERS if n not in known and n not in OPTIONAL]:
        raise SystemExit(f"adapters not loaded: {missing}; {dict(import_errors())}")
    absent = [n for n in ADAPTERS if n not in known]
    for name in absent:
        print(
            f"{name}: not installed (pip install -e '.[bench]'); its goals are SKIP",
            file=sys.stderr,
        )
    names = [n for n in ADAPTERS if n in known]
    run_id = secrets.token_hex(4)
    config = AdapterConfig(options=options, loop="asyncio", run_id=run_id)
    machine = machine_info("asyncio")
    started = time.perf_counter()
    print(f"settings: {vars(settings)}", file=sys.stderr)

    first = [SCENARIOS[s] for s in ("S1", "S2", "S3")]
    second = [SCENARIOS[s] for s in ("S4", "RC")]
    pg_settings = settings if args.quick else replace(settings, **POSTGRES_S1)

    def make(group: Sequence[str]) -> list[Adapter]:
        return [known[n].factory(config) for n in group if n in known]

    adapters_1 = make(IN_PROCESS + REDIS)
    adapters_2 = make(REDIS)
    adapters_3 = make(POSTGRES)

    async def scenarios() -> tuple[Results, dict[str, float]]:
        one = await run_all(adapters_1, first, settings, run_id=run_id)
        two = await run_all(adapters_2, second, settings, run_id=run_id + "b")
        three = await run_all(adapters_3, first[:1], pg_settings, run_id=run_id + "c")
        from benchmarks.redis_commands import _URL

        latency = await _latency_floor(_URL[-1], 50 if args.quick else 500)
        merged: Results = {**one, **two}
        for adapter, cell in three["S1"].items():
            merged["S1"][adapter] = cell
        return merged, latency

    results, latency = anyio.run(scenarios, backend="asyncio")
    metrics = _metrics(results)
    metrics["LF"] = {"redis-publish": latency}

    from benchmarks.guards import guard_overhead

    print("guard overhead ...", file=sys.stderr)
    guard = anyio.run(guard_overhead, 30 if args.quick else 300)
    metrics.setdefault("G", {})["guard"] = {k: float(v) for k, v in guard.items()}

    cluster = None
    if not args.no_cluster:
        cluster = _cluster(args.quick, args.cluster_duration)
        metrics["CL"] = {"redis-cluster": _cluster_metrics(cluster)}
    derive(metrics)
    rows = evaluate_goals(metrics)
    elapsed = time.perf_counter() - started

    descriptions = {n: known[n].description for n in names}
    doc = build_document(
        name=args.name,
        argv=args_list,
        machine=machine,
        settings=settings,
        adapters=adapters_1 + adapters_3,
        descriptions=descriptions,
        scenarios=first + second,
        results=results,
        outcomes=[],
        elapsed_s=elapsed,
    )
    doc["command"] = " ".join(["python -m benchmarks.issue14", *args_list])
    doc["postgres_s1_settings"] = {k: getattr(pg_settings, k) for k in POSTGRES_S1}
    doc["goals"] = rows
    doc["not_installed"] = absent
    doc["latency_floor"] = latency
    doc["guard_overhead"] = guard
    doc["cluster"] = cluster
    text = "\n".join(
        [
            scenario_markdown(doc, first + second).replace(
                "# Benchmark results:", "# Issue 14 goals:", 1
            ),
            "## Issue 14 goals, side by side",
            "",
            *goals_markdown(rows),
            "",
            *(
                [f"Not installed, so their goals are SKIP: {', '.join(absent)}.", ""]
                if absent
                else []
            ),
            "Floors: `redis-script-floor` (EVALSHA GET + SET PX with a fence, EVALSHA "
            "GET + SET of a fence marker), `memory-lease-floor` (a dict of asyncio.Lock plus "
            "one Lease built per acquire), `pg-polling` (a plain lease table), the bare "
            "PUBLISH delivered after a 2 ms sleep, and the in-process drain of asyncio-lock.",
            f"The Postgres adapters ran S1 only, with s1_pairs={pg_settings.s1_pairs} and "
            f"s1_warmup={pg_settings.s1_warmup}.",
            "",
        ]
    )
    if latency:
        text += "\nRedis latency floor: " + ", ".join(f"{k} {v:.0f}" for k, v in latency.items())
        text += "\n"
    print(text)
    out = args.out if args.out is not None else (None if args.quick else RESULTS)
    if out is not None and not args.no_save:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.name}.json").write_text(
            json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8"
        )
        (out / f"{args.name}.md").write_text(text, encoding="utf-8")
        print(f"wrote {out / args.name}.json and .md", file=sys.stderr)
    print(f"issue 14 run took {elapsed:.0f} s", file=sys.stderr)
    for r in rows:
        print(f"{r['status']}: {r['goal']} (floor: {r['floor_status'] or 'n/a'})", file=sys.stderr)
    errors = [c for cells in results.values() for c in cells.values() if c.status == "error"]
    return 2 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
