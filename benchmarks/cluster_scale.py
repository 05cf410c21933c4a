"""A cluster-scale run of the Redis backend (issue 14): ``python -m benchmarks.cluster_scale``.

The harness starts its own Redis Cluster on loopback, in a temp dir: three masters
(``redis-server --cluster-enabled yes`` on free ports, joined by ``redis-cli --cluster create
... --cluster-replicas 0 --cluster-yes``), and a one-master cluster (every slot added to one
node) for the scaling comparison, so both run the same ``redis+cluster://`` client path.

Each run:

1. populates the idle keys: every conversation of the key space is acquired and released once
   (what a released key leaves is the free-key marker, kept for an hour); the 1M key space is
   simulated, so only its hot set is populated and the turns create the rest as they touch it;
2. measures the memory of a held key: a sample of fresh keys is acquired (not released),
   ``INFO memory`` around it, then released;
3. runs the load: 8 client processes (``multiprocessing`` spawn), each with many concurrent
   tasks, each task looping ``async with lock.hold(key): await anyio.sleep(50..500 ms)``. Half
   of the turns go to a fixed hot set of conversations, the other half uniformly to the whole
   key space. ``INFO cpu`` and ``INFO commandstats`` (after ``CONFIG RESETSTAT``) are read on
   every shard at the start and the end of the measured window;
4. checks that no key is left without a TTL: ``SCAN`` + ``PTTL`` of every key on every shard.

Results: ``benchmarks/results/cluster.{json,md}`` (``--out``/``--name`` to change);
``--quick`` is a tiny smoke run (a few seconds, small key spaces) that writes nothing unless
``--out`` is given. The load average is recorded beside every run: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio

import redis
from benchmarks.report import machine_info

RESULTS = Path(__file__).resolve().parent / "results"
PREFIX = "cs"
IGNORED = {"info", "config", "cluster", "scan", "pttl", "dbsize", "ping", "command", "hello"}


# --- the cluster ----------------------------------------------------------------------------


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _cluster_port(taken: set[int]) -> int:
    """A free port P with P + 10000 (the cluster bus port) free too."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 45000)
        if port not in taken and _is_free(port) and _is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class Cluster:
    """``shards`` masters with ``--cluster-enabled yes``, no replicas, in one temp dir."""

    def __init__(self, shards: int) -> None:
        binary = shutil.which("redis-server")
        if binary is None or shutil.which("redis-cli") is None:
            raise SystemExit("redis-server and redis-cli must be on PATH")
        self.binary = binary
        self.shards = shards
        self.dir = Path(tempfile.mkdtemp(prefix="threadlock-cluster-scale-"))
        taken: set[int] = set()
        self.ports: list[int] = []
        for _ in range(shards):
            port = _cluster_port(taken)
            taken.add(port)
            self.ports.append(port)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.admin: list[redis.Redis] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> Cluster:
        for port in self.ports:
            node_dir = self.dir / str(port)
            node_dir.mkdir()
            log = (node_dir / "redis.log").open("ab")
            self.processes.append(
                subprocess.Popen(
                    [
                        self.binary,
                        "--bind",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(node_dir),
                        "--protected-mode",
                        "no",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()
        for port in self.ports:
            client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
            deadline = time.monotonic() + 20
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            self.admin.append(client)
        if self.shards == 1:  # redis-cli --cluster create needs 3 masters
            self.admin[0].execute_command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        else:
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                check=True,
                timeout=60,
            )
        deadline = time.monotonic() + 30
        while not all(
            "cluster_state:ok" in str(c.execute_command("CLUSTER", "INFO")) for c in self.admin
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        for client in self.admin:
            client.close()
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- readings --------------------------------------------------------------------------

    def used_memory(self) -> list[int]:
        return [int(c.info("memory")["used_memory"]) for c in self.admin]

    def cpu(self) -> list[float]:
        out = []
        for c in self.admin:
            info = c.info("cpu")
            out.append(float(info["used_cpu_sys"]) + float(info["used_cpu_user"]))
        return out

    def reset_stats(self) -> None:
        for c in self.admin:
            c.config_resetstat()

    def commandstats(self) -> list[tuple[int, int]]:
        """(usec, calls) per shard, of every command but the harness's own."""
        out = []
        for c in self.admin:
            usec = calls = 0
            for name, value in c.info("commandstats").items():
                if name.removeprefix("cmdstat_").split("|", 1)[0] in IGNORED:
                    continue
                usec += int(value["usec"])
                calls += int(value["calls"])
            out.append((usec, calls))
        return out

    def dbsize(self) -> list[int]:
        return [int(c.dbsize()) for c in self.admin]

    def without_ttl(self) -> tuple[int, int]:
        """(keys scanned, keys without a TTL) over every shard: SCAN + PTTL of every key."""
        scanned = missing = 0
        for c in self.admin:
            batch: list[str] = []
            for key in c.scan_iter(count=1000):
                batch.append(key)
                if len(batch) == 1000:
                    missing += _count_no_ttl(c, batch)
                    scanned += len(batch)
                    batch = []
            missing += _count_no_ttl(c, batch)
            scanned += len(batch)
        return scanned, missing


def _count_no_ttl(client: redis.Redis, keys: list[str]) -> int:
    if not keys:
        return 0
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.pttl(key)
    return sum(1 for ttl in pipe.execute() if int(ttl) == -1)


# --- the client processes -------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    url: str
    keys: int  # the key space
    hot: int  # the hot set: keys 0..hot-1
    hot_share: float  # the share of turns that go to the hot set
    tasks: int  # concurrent tasks in this process
    start: float  # time.time() at which the measured window opens
    duration: float
    turn_min: float
    turn_max: float
    seed: int


async def _load(load: Load) -> dict[str, Any]:
    from threadlock.backends.redis import RedisThreadLock

    rng = random.Random(load.seed)
    turns = failures = 0
    waits: list[float] = []
    end = load.start + load.duration
    async with RedisThreadLock.from_url(load.url, prefix=PREFIX) as lock:
        await lock.release(await lock.acquire(f"warm-{load.seed}", ttl=5.0))

        async def task() -> None:
            nonlocal turns, failures
            while time.time() < end:
                if rng.random() < load.hot_share:
                    key = f"c{rng.randrange(load.hot)}"
                else:
                    key = f"c{rng.randrange(load.keys)}"
                asked = time.perf_counter()
                try:
                    async with lock.hold(key, ttl=10.0, timeout=60.0):
                        waited = time.perf_counter() - asked
                        await anyio.sleep(rng.uniform(load.turn_min, load.turn_max))
                except Exception:  # counted and reported, never hidden
                    failures += 1
                    continue
                if load.start <= time.time() <= end:
                    turns += 1
                    waits.append(waited)

        await anyio.sleep(max(0.0, load.start - time.time()))
        async with anyio.create_task_group() as tg:
            for _ in range(load.tasks):
                tg.start_soon(task)
    waits.sort()
    return {"turns": turns, "failures": failures, "waits": waits[:: max(1, len(waits) // 2000)]}


def _load_worker(load: Load) -> dict[str, Any]:
    return anyio.run(_load, load)


async def _populate(url: str, keys: Sequence[str], concurrency: int) -> int:
    from threadlock.backends.redis import RedisThreadLock

    it = iter(keys)
    done = 0
    async with RedisThreadLock.from_url(url, prefix=PREFIX) as lock:

        async def task() -> None:
            nonlocal done
            for key in it:
                await lock.release(await lock.acquire(key, ttl=30.0, timeout=60.0))
                done += 1

        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(task)
    return done


def _populate_worker(url: str, keys: list[str]) -> int:
    return anyio.run(_populate, url, keys, 32)


async def _hold_sample(url: str, count: int, cluster: Cluster) -> tuple[float, int]:
    """Memory per held key: (bytes per key, Redis keys per held conversation)."""
    from threadlock.backends.redis import RedisThreadLock

    async with RedisThreadLock.from_url(url, prefix=PREFIX) as lock:
        await lock.release(await lock.acquire("held-warm", ttl=5.0))
        for n in range(count):  # connections to every shard before the first reading
            await lock.release(await lock.acquire(f"held-warm-{n % 64}", ttl=5.0))
        before, keys_before = sum(cluster.used_memory()), sum(cluster.dbsize())
        leases = [await lock.acquire(f"held-{n}", ttl=120.0, timeout=10.0) for n in range(count)]
        after, keys_after = sum(cluster.used_memory()), sum(cluster.dbsize())
        for lease in leases:
            await lock.release(lease)
    return (after - before) / count, round((keys_after - keys_before) / count)


# --- one run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    shards: int
    keys: int
    simulated: bool  # the key space is not populated, only the hot set


@dataclass(frozen=True)
class Settings:
    procs: int = 8
    tasks: int = 48
    duration: float = 30.0
    hot: int = 2000
    hot_share: float = 0.5
    turn_min: float = 0.05
    turn_max: float = 0.5
    held_sample: int = 1000
    idle: float = 5.0  # seconds of idle server CPU measured before the load
    runs: tuple[RunSpec, ...] = (
        RunSpec(3, 10_000, False),
        RunSpec(3, 100_000, False),
        RunSpec(3, 1_000_000, True),
        RunSpec(1, 100_000, False),
    )

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            procs=2,
            tasks=8,
            duration=2.0,
            hot=20,
            held_sample=20,
            idle=0.5,
            runs=(RunSpec(3, 200, False), RunSpec(3, 2_000, True), RunSpec(1, 200, False)),
        )


def _load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_one(spec: RunSpec, settings: Settings, pool: Any) -> dict[str, Any]:
    cluster = Cluster(spec.shards).start()
    try:
        load_before = _load_avg()
        memory0, keys0 = sum(cluster.used_memory()), sum(cluster.dbsize())
        populated = min(settings.hot, spec.keys) if spec.simulated else spec.keys
        names = [f"c{n}" for n in range(populated)]
        started = time.perf_counter()
        chunks = [names[i :: settings.procs] for i in range(settings.procs)]
        done = sum(pool.starmap(_populate_worker, [(cluster.url, c) for c in chunks]))
        populate_s = time.perf_counter() - started
        memory1, keys1 = sum(cluster.used_memory()), sum(cluster.dbsize())
        held_bytes, held_keys = anyio.run(_hold_sample, cluster.url, settings.held_sample, cluster)
        idle0 = cluster.cpu()
        time.sleep(settings.idle)  # what the shards spend doing nothing: cron, cluster bus
        idle_rate = [(b - a) / settings.idle for a, b in zip(idle0, cluster.cpu(), strict=True)]
        start = time.time() + 3.0 + 0.5 * settings.procs  # the spawned clients warm up first
        loads = [
            Load(
                url=cluster.url,
                keys=spec.keys,
                hot=min(settings.hot, spec.keys),
                hot_share=settings.hot_share,
                tasks=settings.tasks,
                start=start,
                duration=settings.duration,
                turn_min=settings.turn_min,
                turn_max=settings.turn_max,
                seed=1000 * spec.shards + n,
            )
            for n in range(settings.procs)
        ]
        pending = pool.map_async(_load_worker, loads)
        time.sleep(max(0.0, start - time.time()))
        cluster.reset_stats()
        cpu0 = cluster.cpu()
        time.sleep(max(0.0, start + settings.duration - time.time()))
        cpu1 = cluster.cpu()
        stats = cluster.commandstats()
        load_after = _load_avg()
        outcomes = pending.get(timeout=settings.duration + 300)
        turns = sum(o["turns"] for o in outcomes)
        failures = sum(o["failures"] for o in outcomes)
        waits = [w for o in outcomes for w in o["waits"]]
        scanned, missing = cluster.without_ttl()
        per_turn = max(turns, 1)
        cpu_by_shard = [(b - a) * 1e6 / per_turn for a, b in zip(cpu0, cpu1, strict=True)]
        net_by_shard = [
            max(0.0, b - a - rate * settings.duration) * 1e6 / per_turn
            for a, b, rate in zip(cpu0, cpu1, idle_rate, strict=True)
        ]
        return {
            "shards": spec.shards,
            "keys": spec.keys,
            "simulated": spec.simulated,
            "populated": done,
            "populate_s": round(populate_s, 1),
            "hot_keys": min(settings.hot, spec.keys),
            "turns": turns,
            "failures": failures,
            "turns_per_s": round(turns / settings.duration, 1),
            "wait_p50_ms": _ms(_pct(waits, 0.5)),
            "wait_p99_ms": _ms(_pct(waits, 0.99)),
            "cpu_us_per_turn": round(sum(cpu_by_shard), 2),
            "cpu_us_per_turn_by_shard": [round(x, 2) for x in cpu_by_shard],
            "net_cpu_us_per_turn": round(sum(net_by_shard), 2),
            "net_cpu_us_per_turn_by_shard": [round(x, 2) for x in net_by_shard],
            "idle_cpu_ms_per_s_by_shard": [round(x * 1000, 2) for x in idle_rate],
            "cpu_s_by_shard": [round(b - a, 2) for a, b in zip(cpu0, cpu1, strict=True)],
            "cmd_us_per_turn": round(sum(u for u, _ in stats) / per_turn, 2),
            "cmd_us_per_turn_by_shard": [round(u / per_turn, 2) for u, _ in stats],
            "calls_per_turn": round(sum(c for _, c in stats) / per_turn, 2),
            "idle_bytes_per_key": round((memory1 - memory0) / max(done, 1), 1),
            "redis_keys_per_idle_key": round((keys1 - keys0) / max(done, 1), 2),
            "held_bytes_per_key": round(held_bytes, 1),
            "redis_keys_per_held_key": held_keys,
            "keys_at_end": sum(cluster.dbsize()),
            "keys_scanned": scanned,
            "keys_without_ttl": missing,
            "load_before": load_before,
            "load_after": load_after,
        }
    finally:
        cluster.stop()


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def _growth(runs: list[dict[str, Any]], metric: str) -> float | None:
    """Largest / smallest of ``metric`` over the 3-shard runs, as a ratio (1.0 = flat)."""
    values = [r[metric] for r in runs if r["shards"] == 3 and r[metric] > 0]
    return round(max(values) / min(values), 3) if values else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    three = [r for r in runs if r["shards"] == 3]
    one = [r for r in runs if r["shards"] == 1]
    out: dict[str, Any] = {
        "cpu_per_turn_growth": _growth(runs, "cpu_us_per_turn"),
        "net_cpu_per_turn_growth": _growth(runs, "net_cpu_us_per_turn"),
        "cmd_per_turn_growth": _growth(runs, "cmd_us_per_turn"),
        "flat_within_10pct": None,  # judged on the net server CPU
        "no_key_without_ttl": all(r["keys_without_ttl"] == 0 for r in runs),
    }
    if out["net_cpu_per_turn_growth"] is not None:
        out["flat_within_10pct"] = out["net_cpu_per_turn_growth"] <= 1.10
    if one:
        same = [r for r in three if r["keys"] == one[0]["keys"]]
        if same:
            a, b = one[0], same[0]
            out["scaling"] = {
                "keys": a["keys"],
                "turns_per_s_1_shard": a["turns_per_s"],
                "turns_per_s_3_shards": b["turns_per_s"],
                "turns_per_s_ratio": round(b["turns_per_s"] / max(a["turns_per_s"], 0.1), 2),
                "busiest_shard_cpu_us_per_turn_1": max(a["net_cpu_us_per_turn_by_shard"]),
                "busiest_shard_cpu_us_per_turn_3": max(b["net_cpu_us_per_turn_by_shard"]),
                # turns/s one busy core could serve, on the busiest shard: the capacity bound
                "capacity_turns_per_s_1": _capacity(a),
                "capacity_turns_per_s_3": _capacity(b),
            }
    return out


def _capacity(run: dict[str, Any]) -> float | None:
    busiest = max(run["net_cpu_us_per_turn_by_shard"])
    return round(1e6 / busiest) if busiest > 0 else None


# --- the report -----------------------------------------------------------------------------


def markdown(doc: dict[str, Any]) -> str:
    s = doc["settings"]
    m = doc["machine"]
    lines = [
        f"# Benchmark results: {doc['name']}",
        "",
        f"`python -m benchmarks.cluster_scale` on {m['date']}, commit {m['git_commit']}, "
        f"{m['cpu_count']} CPUs shared with other work (load average beside every run).",
        "",
        f"{s['procs']} client processes (spawn) x {s['tasks']} concurrent tasks; every turn is "
        f"`async with lock.hold(key)` around a sleep of {s['turn_min'] * 1000:.0f}-"
        f"{s['turn_max'] * 1000:.0f} ms; {s['hot_share']:.0%} of turns go to a hot set of "
        f"{s['hot']} conversations, the rest uniformly to the key space; "
        f"{s['duration']:g} s measured per run. Redis Cluster on loopback, no replicas.",
        "",
        "| shards | keys | turns/s | failures | wait p50 / p99 ms | server CPU µs/turn "
        "| net of idle (per shard) | commandstats µs/turn | calls/turn | bytes/idle key "
        "| bytes/held key | keys w/o TTL | load avg before → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        keys = f"{r['keys']:,}" + (f" (simulated; {r['populated']:,} populated)" * r["simulated"])
        shards = " + ".join(f"{x:.1f}" for x in r["net_cpu_us_per_turn_by_shard"])
        lines.append(
            f"| {r['shards']} | {keys} | {r['turns_per_s']:,.0f} | {r['failures']} | "
            f"{r['wait_p50_ms']} / {r['wait_p99_ms']} | {r['cpu_us_per_turn']:.1f} | "
            f"{r['net_cpu_us_per_turn']:.1f} ({shards}) | "
            f"{r['cmd_us_per_turn']:.1f} | {r['calls_per_turn']:.1f} | "
            f"{r['idle_bytes_per_key']:.0f} | {r['held_bytes_per_key']:.0f} | "
            f"{r['keys_without_ttl']} of {r['keys_scanned']:,} | "
            f"{r['load_before'][0]} → {r['load_after'][0]} |"
        )
    summary = doc["summary"]
    lines += [
        "",
        "## Against the goals",
        "",
        f"- Cost per turn from the smallest to the largest key space (3 shards), largest / "
        f"smallest: server CPU net of idle {summary['net_cpu_per_turn_growth']}, gross "
        f"{summary['cpu_per_turn_growth']}, commandstats {summary['cmd_per_turn_growth']} "
        f"(goal: within 1.10 on the net CPU; flat: "
        f"{summary['flat_within_10pct']}).",
        f"- No key without a TTL at the end of every run: {summary['no_key_without_ttl']}.",
    ]
    scaling = summary.get("scaling")
    if scaling:
        lines.append(
            f"- 1 vs 3 shards at {scaling['keys']:,} keys, on {m['cpu_count']} shared cores: "
            f"{scaling['turns_per_s_1_shard']:,.0f} vs {scaling['turns_per_s_3_shards']:,.0f} "
            f"turns/s ({scaling['turns_per_s_ratio']}x). The clients and every shard share "
            f"these cores, so turns/s cannot show linear scaling here; the busiest shard's CPU "
            f"per turn (net of idle) is {scaling['busiest_shard_cpu_us_per_turn_1']} µs with "
            f"1 shard and "
            f"{scaling['busiest_shard_cpu_us_per_turn_3']} µs with 3, so one core per shard "
            f"would serve about {scaling['capacity_turns_per_s_1']:,} vs "
            f"{scaling['capacity_turns_per_s_3']:,} turns/s (server CPU only, the bound)."
        )
    lines += [
        "",
        "Server CPU is `INFO cpu` used_cpu_sys + used_cpu_user over the window, divided by all "
        "turns; net of idle subtracts what each shard spent in an idle window of "
        f"{s['idle']:g} s before the load (cron, cluster bus). commandstats is the `usec` of "
        "every command the clients sent: wall time inside the command, so on an overloaded "
        "machine it also counts the time the server was descheduled. Memory is the "
        "`INFO memory` used_memory delta over the populated keys, and over a sample of fresh "
        "keys held at once.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster_scale", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    parser.add_argument("--out", type=Path, default=None, help="where to write the results")
    parser.add_argument("--name", default="cluster")
    parser.add_argument("--duration", type=float, default=None, help="seconds per run")
    args = parser.parse_args(None if argv is None else list(argv))
    settings = Settings.quick() if args.quick else Settings()
    if args.duration is not None:
        settings = Settings(
            **{**asdict(settings), "duration": args.duration, "runs": settings.runs}
        )
    out = args.out if args.out is not None else (None if args.quick else RESULTS)
    machine = machine_info("asyncio")
    runs = []
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(settings.procs) as pool:
        for spec in settings.runs:
            print(f"run: {spec.shards} shard(s), {spec.keys:,} keys ...", file=sys.stderr)
            run = run_one(spec, settings, pool)
            print(f"  {json.dumps(run)}", file=sys.stderr)
            runs.append(run)
    doc = {
        "name": args.name,
        "machine": machine,
        "settings": {
            **{k: v for k, v in asdict(settings).items() if k != "runs"},
            "runs": [asdict(r) for r in settings.runs],
        },
        "runs": runs,
        "summary": summarise(runs),
    }
    print(json.dumps(doc["summary"]), file=sys.stderr)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        (out / f"{args.name}.md").write_text(markdown(doc), encoding="utf-8")
        print(f"wrote {out / args.name}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
