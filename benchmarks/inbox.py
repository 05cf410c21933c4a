"""The inbox against the plain guard, on a burst per user: ``python -m benchmarks.inbox``.

    python -m benchmarks.inbox             # full run: benchmarks/results/inbox.{json,md}
    python -m benchmarks.inbox --quick     # a smoke run (writes only with --out)
    python -m benchmarks.inbox --backends memory,postgres

FakeOpenAI answers every ``responses.create`` after ``turn`` seconds (1 s; a sleep, so the
counts below do not depend on the machine's load). ``users`` users (20) each send ``messages``
messages (5) within ``span`` seconds (2 s; one every ~0.45 s, the users' first messages spread
over ``stagger`` s). Each message goes to a random one of ``workers`` workers (4 processes
on Redis and Postgres, each with its own lock and OpenAI client over HTTP; 4 tasks sharing
one lock on memory), as a webhook's load balancer would send it. A worker answers it with the
plain ``guard_conversation`` (one turn per message) or with ``Inbox.turns`` and a strategy,
calling the model under ``batch.lease`` and sending the reply unless ``batch.superseded()``
(see ``benchmarks/inbox_worker.py``). Every worker first runs one warm-up turn (its process's
first model, lock and inbox calls load modules and scripts: start-up cost, not counted).
Measured per run, from the workers' event logs and the fake's counters:

* model calls per burst (``POST /responses`` / users; the most any one user cost);
* from a user's last message to the reply that answers it, p50 / p99 over the users;
* messages lost (never in a completed model call) and answered twice (in two);
* backend work per message: on Redis ``INFO commandstats`` (every call, script-internal ones
  included; the scripts run; and their µs, which include what each script calls; the few
  direct reads, such as the ZRANGE of ``superseded()``, are counted as calls but their µs
  are not), on Postgres committed transactions (``pg_stat_database``);
* the kill run (``coalesce``; Redis and Postgres): one worker is SIGKILLed while a batch of
  its is in its model call, and started again with its share redelivered (same ids, as a
  webhook redelivers); every worker runs ``inbox.serve()``; lost must stay 0, and
  answered-twice counts the at-least-once redelivery. A store without ``stranded_keys()``
  (Redis until branch inboxredis lands) is reported as pending;
* the release-boundary race: a message posted at the moment its key's owner releases,
  ``race_rounds`` times per backend (16 keys at once); stranded must be 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio

from benchmarks.inbox_report import markdown
from benchmarks.inbox_worker import WorkerSpec, open_lock, read_log, release_race, run_worker
from benchmarks.report import machine_info
from threadlock import MemoryThreadLock
from threadlock.inbox import SweepableStore, store_for
from threadlock.protocol import ThreadLock
from threadlock.testing import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODES = ("plain", "queue", "coalesce", "debounce", "latest")
BACKENDS = ("memory", "redis", "postgres")
# The scripts the clients run: their usec include the commands each script calls (which
# commandstats also counts under their own names, so those are not added again).
_REDIS_SCRIPTS = {"evalsha", "eval", "evalsha_ro", "eval_ro"}


@dataclass(frozen=True)
class Settings:
    users: int = 20
    messages: int = 5
    span: float = 2.0
    stagger: float = 1.0
    turn: float = 1.0
    debounce: float = 1.5
    max_wait: float = 8.0
    workers: int = 4
    ttl: float = 30.0
    kill_ttl: float = 3.0
    serve_interval: float = 0.5
    race_rounds: int = 5000
    seed: int = 11

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            users=4,
            messages=3,
            span=0.6,
            stagger=0.2,
            turn=0.3,
            debounce=0.4,
            max_wait=2.0,
            workers=2,
            kill_ttl=1.0,
            serve_interval=0.2,
            race_rounds=100,
        )


def schedule(s: Settings, users: list[str]) -> list[list[list[Any]]]:
    """Each worker's share: ``[conversation, message id, seconds after the start]`` rows."""
    rng = random.Random(s.seed)
    gap = s.span / s.messages
    shares: list[list[list[Any]]] = [[] for _ in range(s.workers)]
    for u, user in enumerate(users):
        first = rng.uniform(0, s.stagger)
        for i in range(s.messages):
            at = first + i * gap + rng.uniform(0, gap / 10)
            shares[rng.randrange(s.workers)].append([user, f"u{u}-m{i}", round(at, 4)])
    return shares


# -- backends ---------------------------------------------------------------------------------


@dataclass
class Backend:
    name: str
    url: str = ""
    namespace: str = ""
    server: Any = None

    def lock(self) -> ThreadLock:
        return open_lock(self.name, self.url, self.namespace)


@contextlib.contextmanager
def start_backend(name: str) -> Iterator[Backend]:
    if name == "memory":
        yield Backend("memory")
        return
    if name == "redis":
        from tests._servers.redis_server import RedisServer

        redis_server = RedisServer().start()
        try:
            yield Backend("redis", redis_server.url, f"ib-{secrets.token_hex(3)}", redis_server)
        finally:
            redis_server.stop()
        return
    from tests._servers.postgres_server import PostgresServer

    pg = PostgresServer.create(settings={"max_connections": "300"})
    pg.start()
    try:
        backend = Backend("postgres", pg.dsn, f"ib_{secrets.token_hex(3)}", pg)

        async def schema() -> None:
            async with backend.lock() as lock:
                await lock.create_schema()  # type: ignore[attr-defined]

        anyio.run(schema)
        yield backend
    finally:
        pg.destroy()


async def _server_counters(backend: Backend) -> dict[str, float]:
    """Redis: server calls and µs so far; Postgres: committed transactions so far."""
    if backend.name == "redis":
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(backend.url)
        try:
            info: dict[str, dict[str, Any]] = await client.info("commandstats")
        finally:
            await client.aclose()
        calls = usec = scripts = 0
        for name, value in info.items():
            command = name.removeprefix("cmdstat_").split("|", 1)[0]
            if command in ("info", "config"):
                continue
            calls += int(value["calls"])
            if command in _REDIS_SCRIPTS:
                usec += int(value["usec"])
                scripts += int(value["calls"])
        return {"calls": calls, "usec": usec, "scripts": scripts}
    if backend.name == "postgres":
        import psycopg

        async with await psycopg.AsyncConnection.connect(backend.url, autocommit=True) as conn:
            await conn.execute("SELECT pg_stat_force_next_flush()")
            row = await (
                await conn.execute(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database"
                    " WHERE datname = current_database()"
                )
            ).fetchone()
        return {"xacts": float(row[0]) if row else 0.0}
    return {}


# -- one run ----------------------------------------------------------------------------------


def _spec(
    s: Settings, backend: Backend, mode: str, share: list[list[Any]], n: int, tmp: Path, **kw: Any
) -> WorkerSpec:
    return WorkerSpec(
        name=f"w{n}",
        backend=backend.name,
        url=backend.url,
        namespace=backend.namespace,
        mode=mode,
        schedule=share,
        log=str(tmp / "events.jsonl"),
        go=str(tmp / "go"),
        debounce=s.debounce,
        max_wait=s.max_wait,
        serve_interval=s.serve_interval,
        **{"ttl": s.ttl, **kw},
    )


def _start(spec: WorkerSpec, tmp: Path) -> subprocess.Popen[bytes]:
    path = tmp / f"{spec.name}-{secrets.token_hex(2)}.json"
    path.write_text(json.dumps(asdict(spec)), encoding="utf-8")
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.inbox_worker", str(path)],
        cwd=ROOT,
        stderr=(tmp / f"{spec.name}.stderr").open("ab"),
    )


async def _until(check: Any, timeout: float, what: str) -> None:
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.02)


async def _processes(
    s: Settings,
    backend: Backend,
    specs: list[WorkerSpec],
    tmp: Path,
    kill: bool,
    fake: FakeOpenAI,
) -> dict[str, Any]:
    """Run the workers as processes; with ``kill``, SIGKILL one mid-batch and restart it."""
    procs = {spec.name: _start(spec, tmp) for spec in specs}
    log = Path(specs[0].log)
    extra: dict[str, Any] = {}
    try:
        await _until(
            lambda: sum(e["ev"] == "ready" for e in read_log(log)) >= len(specs), 120, "ready"
        )
        fake.reset_counters()  # the warm-up turns are not the run's
        before = await _server_counters(backend)
        start = time.time() + 0.3
        Path(specs[0].go).write_text(f"{start}\n", encoding="utf-8")
        ids = {row[1] for spec in specs for row in spec.schedule}
        if not kill:
            with anyio.fail_after(300):
                while any(p.poll() is None for p in procs.values()):
                    await anyio.sleep(0.05)
        else:
            by_pid = {p.pid: name for name, p in procs.items()}
            victim: dict[str, Any] = {}

            def mid_batch() -> bool:
                for e in read_log(log):
                    if e["ev"] == "start" and e["t"] > start + s.stagger and e["pid"] in by_pid:
                        victim.update(e)
                        return True
                return False

            await _until(mid_batch, 120, "a batch to kill")
            name = by_pid[victim["pid"]]
            procs[name].send_signal(signal.SIGKILL)
            killed_at = time.time()
            procs[name].wait()
            spec = next(sp for sp in specs if sp.name == name)
            spec.warm = ""  # a restarted process is cold, as in production
            procs[name + "-restarted"] = _start(spec, tmp)

            def all_answered() -> bool:
                done = {i for e in read_log(log) if e["ev"] == "batch" for i in e["ids"]}
                return ids <= done

            with contextlib.suppress(TimeoutError):
                await _until(all_answered, 30 + 4 * s.kill_ttl, "recovery")
            recovered = [
                e["t"]
                for e in read_log(log)
                if e["ev"] == "batch" and set(e["ids"]) & set(victim["ids"])
            ]
            extra = {
                "killed_batch": len(victim["ids"]),
                "recovered_after_s": round(min(recovered) - killed_at, 3) if recovered else None,
            }
        after = await _server_counters(backend)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
    extra["server"] = {k: after[k] - before.get(k, 0.0) for k in after}
    extra["start"] = start
    return extra


async def _in_process(specs: list[WorkerSpec], fake: FakeOpenAI) -> dict[str, Any]:
    lock = MemoryThreadLock()
    client = fake.client()
    log = Path(specs[0].log)
    async with lock, anyio.create_task_group() as tg:
        for spec in specs:
            tg.start_soon(run_worker, spec, lock, client)
        await _until(
            lambda: sum(e["ev"] == "ready" for e in read_log(log)) >= len(specs), 120, "ready"
        )
        fake.reset_counters()  # the warm-up turns are not the run's
        start = time.time() + 0.1
        Path(specs[0].go).write_text(f"{start}\n", encoding="utf-8")
    await client.close()
    return {"start": start, "server": {}}


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(
    s: Settings, shares: list[list[list[Any]]], events: list[dict[str, Any]], fake: FakeOpenAI
) -> dict[str, Any]:
    rows = [row for share in shares for row in share]
    ids = {row[1] for row in rows}
    last: dict[str, tuple[str, float]] = {}
    for user, message_id, at in rows:
        if user not in last or at > last[user][1]:
            last[user] = (message_id, at)
    posted: dict[str, float] = {}
    for e in events:
        if e["ev"] == "post":
            posted.setdefault(e["id"], e["t"])
    answered: dict[str, int] = {}
    starts: dict[str, int] = {}
    for e in events:
        if e["ev"] == "batch":
            for i in e["ids"]:
                answered[i] = answered.get(i, 0) + 1
        elif e["ev"] == "start":
            starts[e["user"]] = starts.get(e["user"], 0) + 1
    waits = []
    batches = [e for e in events if e["ev"] == "batch"]
    for user, (message_id, _at) in last.items():
        # Its reply: the first reply sent to the user once a model call included it (a
        # superseded turn sends nothing; the next reply of the conversation covers it).
        covered = [e["t"] for e in batches if message_id in e["ids"]]
        if not covered or message_id not in posted:
            continue
        replies = [e["t"] for e in batches if e["user"] == user and e["sent"]]
        replies = [t for t in replies if t >= min(covered)]
        if replies:
            waits.append(min(replies) - posted[message_id])
    calls = fake.calls["POST /responses"]
    messages = len(ids)
    return {
        "messages": messages,
        "model_calls": calls,
        "calls_per_burst": calls / s.users,
        "calls_per_burst_max": max(starts.values(), default=0),
        "last_reply_p50_s": _pct(waits, 0.5),
        "last_reply_p99_s": _pct(waits, 0.99),
        "bursts_with_a_reply": len(waits),
        "lost": len(ids - set(answered)),
        "answered_twice": sum(1 for n in answered.values() if n > 1),
        "concurrency_errors": fake.concurrency_errors,
    }


async def run_one(s: Settings, backend: Backend, mode: str, kill: bool = False) -> dict[str, Any]:
    fake = FakeOpenAI(response_duration=s.turn)
    users = [fake.add_conversation() for _ in range(s.users)]
    shares = schedule(s, users)
    with tempfile.TemporaryDirectory(prefix="threadlock-inbox-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "events.jsonl").touch()
        kw: dict[str, Any] = {"serve": True, "ttl": s.kill_ttl} if kill else {}
        warm = [fake.add_conversation() for _ in shares]
        if backend.name == "memory":
            specs = [
                _spec(s, backend, mode, sh, n, tmp, **{**kw, "warm": warm[n]})
                for n, sh in enumerate(shares)
            ]
            extra = await _in_process(specs, fake)
        else:
            from tests._servers.fake_openai_http import serve_over_http

            with serve_over_http(fake) as url:
                specs = [
                    _spec(s, backend, mode, sh, n, tmp, openai_url=url, **{**kw, "warm": warm[n]})
                    for n, sh in enumerate(shares)
                ]
                extra = await _processes(s, backend, specs, tmp, kill, fake)
        events = read_log(tmp / "events.jsonl")
    row = {
        "backend": backend.name,
        "mode": mode,
        "kill": kill,
        **summarise(s, shares, events, fake),
    }
    server = extra.pop("server")
    extra.pop("start")
    per = row["messages"] or 1
    if "calls" in server:
        row["redis_calls_per_message"] = server["calls"] / per
        row["redis_us_per_message"] = server["usec"] / per
        row["redis_scripts_per_message"] = server["scripts"] / per
    if "xacts" in server:
        row["pg_xacts_per_message"] = server["xacts"] / per
    return {**row, **extra}


async def _sweepable(backend: Backend) -> bool:
    if backend.name == "memory":
        return True
    async with backend.lock() as lock:
        return isinstance(store_for(lock), SweepableStore)


async def _race(s: Settings, backend: Backend) -> dict[str, Any]:
    if backend.name == "memory":
        memory = MemoryThreadLock()
        async with memory:
            result = await release_race(memory, memory, s.race_rounds)
    else:
        async with backend.lock() as lock, backend.lock() as other:
            result = await release_race(lock, other, s.race_rounds)
    return {"backend": backend.name, **asdict(result)}


async def run_backend(s: Settings, backend: Backend, modes: list[str]) -> dict[str, Any]:
    runs = []
    for mode in modes:
        print(f"  {backend.name} {mode} ...", file=sys.stderr, flush=True)
        runs.append(await run_one(s, backend, mode))
        print(f"    {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
    kill: dict[str, Any] | None = None
    if backend.name != "memory" and "coalesce" in modes:
        if await _sweepable(backend):
            print(f"  {backend.name} kill run ...", file=sys.stderr, flush=True)
            kill = await run_one(s, backend, "coalesce", kill=True)
            print(f"    {json.dumps(kill)}", file=sys.stderr, flush=True)
        else:
            kill = {
                "backend": backend.name,
                "pending": "the store has no stranded_keys() yet (sweep/serve need it; "
                "branch inboxredis adds it)",
            }
    print(f"  {backend.name} release-boundary race ...", file=sys.stderr, flush=True)
    race = await _race(s, backend)
    print(f"    {json.dumps(race)}", file=sys.stderr, flush=True)
    return {"runs": runs, "kill": kill, "race": race}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inbox", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated")
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated: plain and/or strategies"
    )
    parser.add_argument("--out", type=Path, default=None, help="where to write inbox.{json,md}")
    args = parser.parse_args(argv)
    s = Settings.quick() if args.quick else Settings()
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    modes = [n.strip() for n in args.modes.split(",") if n.strip()]
    unknown = (set(names) - set(BACKENDS)) | (set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown backend(s) or mode(s): {', '.join(sorted(unknown))}")
    machine = machine_info("asyncio")
    started = time.perf_counter()
    results: dict[str, Any] = {}
    for name in names:
        print(f"{name}:", file=sys.stderr, flush=True)
        with start_backend(name) as backend:
            results[name] = anyio.run(run_backend, s, backend, modes)
    command = " ".join(["python -m benchmarks.inbox", *(sys.argv[1:] if argv is None else argv)])
    doc = {
        "name": "inbox",
        "command": command,
        "machine": machine,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "settings": asdict(s),
        "backends": results,
    }
    text = markdown(doc)
    print(text)
    out = args.out if args.out is not None else (None if args.quick else RESULTS)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "inbox.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        (out / "inbox.md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
