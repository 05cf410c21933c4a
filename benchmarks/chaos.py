"""Chaos run: many holders, killed processes, restarted servers, a faulty network; then a proof.

``python -m benchmarks.chaos`` runs it (``--help`` for the knobs; the defaults are the long
run). The CI version is ``tests/chaos/`` with a short duration.

What happens
    Worker OS processes (``--workers``, 4) each run ``--tasks`` (3) asyncio tasks that loop
    over ``--keys`` (50; half of the picks go to the first 5, so keys are contended) taking
    ``hold()`` and sleeping inside for a random time (mostly milliseconds, sometimes past the
    TTL so that renewals happen). Each critical section appends three lines to the worker's own
    log file (``O_APPEND``, one ``write`` each, so they survive a SIGKILL)::

        B key fence want_ns start_ns exp_ns        section began (want = acquire called)
        R key fence sent_ns done_ns result exp_ns  a renewal (result ok, lost or error)
        X key fence end_ns                         the body ended (hold() now releases)
        E key fence end_ns outcome released exp_ns section ended (hold() returned)

    Meanwhile the controller (this process) SIGKILLs random workers and starts them again,
    restarts the server (Redis: SIGKILL, then start with its AOF kept or deleted, i.e. with
    or without data loss; Postgres: ``pg_ctl restart -m fast`` or ``-m immediate``), and
    routes every client connection through :class:`FaultProxy`, a loopback TCP proxy in this
    process that adds latency, stalls connections and resets them (RST). Restarts and proxy
    faults happen in every other ``--phase`` (4 s), so that calm phases measure hand-offs
    that no fault touched; kills happen all the time. The memory backend runs in this process
    instead: tasks instead of processes, cancellation instead of SIGKILL, blocking event-loop
    stalls instead of network faults, no server.

    The workers import a copy of ``threadlock`` taken when the run starts (its git commit and
    digest are in the report), so edits to ``src/`` during a run cannot mix two versions of
    the scripts or the SQL in one run.

Clocks
    Times are ``time.time_ns()`` (CLOCK_REALTIME), which every process of one host shares;
    ``time.monotonic()`` is only defined within a process. The run assumes the wall clock
    does not step during the run: the controller measures ``realtime - monotonic`` at the start
    and the end and reports the drift (``clock_step_ms``); the Redis and Postgres server
    clocks are the same host clock, so lease expiry times compare with section times.

What the checker proves (:func:`check`)
    a. exclusion: no two sections on one key overlap unless the earlier one was told it lost
       its lease (``hold()`` raised ``LeaseLost``) and has the lower fence (so fencing would
       refuse it); an overlap right after a Redis restart that lost its data is counted apart
       (Redis without persistence cannot keep a lease it forgot; the fences still rise).
       Fences strictly increase along each key's sections.
    b. nothing leaks: after the run and one TTL (+ grace), ``held()`` is empty (and, on Redis,
       no lease or queue key is left, and every key left has a TTL).
    c. progress: once a lock is released, the waiter behind it starts within the grace bound
       (``wait after free``; the worst is reported, and ``ChaosConfig.wait_bound`` asserted for
       hand-offs that no injected fault touched); a killed holder's key reaches the next
       waiter within the TTL plus that bound.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from benchmarks.chaos_resources import resources
from threadlock import BackendError, LeaseLost, ThreadBusy
from threadlock.hold import Hold

__all__ = [
    "ChaosConfig",
    "ChaosReport",
    "FaultProxy",
    "Section",
    "check",
    "main",
    "run_chaos",
]

ROOT = Path(__file__).resolve().parents[1]
NS = 1_000_000_000

# --------------------------------------------------------------------------------------------
# configuration and results
# --------------------------------------------------------------------------------------------


@dataclass
class ChaosConfig:
    """Every knob of one run. The defaults are the long run's; CI shortens ``duration``."""

    backend: str = "redis"  # redis | postgres | memory
    duration: float = 300.0  # seconds of chaos
    workers: int = 4  # OS processes (memory: task groups in this process)
    tasks: int = 3  # concurrent holders per worker
    keys: int = 50
    hot_keys: int = 5  # half of the picks go to these, so keys are contended
    ttl: float = 2.0
    grace: float = 1.0
    timeout: float = 10.0  # acquire timeout of each hold()
    seed: int = 1
    kill_every: tuple[float, float] = (1.5, 4.0)  # seconds between two SIGKILLs
    restart_every: tuple[float, float] = (3.0, 6.0)  # seconds between two server restarts
    fault_every: tuple[float, float] = (0.2, 0.8)  # seconds between two stalls/resets
    # Seconds a stalled connection is held. Below ttl / 2 by default: a renewal held longer
    # than that lets the lease expire under a running body (tests/chaos/test_chaos_repros.py).
    stall: tuple[float, float] = (0.1, 0.9)
    reset_share: float = 0.4  # share of the proxy faults that are resets
    latency_p: float = 0.02  # share of forwarded chunks delayed ...
    latency_max: float = 0.05  # ... by U(0, latency_max) seconds
    loop_stall: tuple[float, float] = (0.05, 0.6)  # memory: blocking stalls of the event loop
    phase: float = 4.0  # seconds; network faults and restarts only in every other phase
    # SIGSTOP of a random worker (its holders and its queued waiters alike) for longer than
    # the TTL, then SIGCONT; at any time. 0 disables.
    pause_every: tuple[float, float] = (6.0, 12.0)  # seconds between two pauses
    pause: tuple[float, float] = (3.0, 5.0)  # seconds a paused worker stays stopped
    # A partition: the proxy freezes every connection, both ways, new ones too, then heals.
    partition_every: tuple[float, float] = (10.0, 18.0)  # seconds from a heal to the next
    partition: tuple[float, float] = (3.0, 5.0)  # seconds a partition lasts
    # Sentinel (backend "redis-sentinel"): the master is SIGKILLed under load this often.
    failover_every: tuple[float, float] = (12.0, 20.0)  # seconds from a failover to the next
    out: str | None = None  # where the logs go (default: a temp dir, removed when clean)

    def describe(self) -> str:
        parts = [
            f"backend={self.backend}",
            f"duration={self.duration:g}s",
            f"workers={self.workers}",
            f"tasks={self.tasks}",
            f"keys={self.keys}",
            f"hot_keys={self.hot_keys}",
            f"ttl={self.ttl:g}s",
            f"grace={self.grace:g}s",
            f"seed={self.seed}",
            f"kill_every={self.kill_every[0]:g}-{self.kill_every[1]:g}s",
            f"phase={self.phase:g}s",
        ]
        if self.backend != "memory":
            parts += [
                f"pause_every={self.pause_every[0]:g}-{self.pause_every[1]:g}s",
                f"pause={self.pause[0]:g}-{self.pause[1]:g}s",
            ]
        if self.backend in ("redis", "postgres"):
            parts += [
                f"partition_every={self.partition_every[0]:g}-{self.partition_every[1]:g}s",
                f"partition={self.partition[0]:g}-{self.partition[1]:g}s",
            ]
        if self.backend == "redis-sentinel":
            parts.append(f"failover_every={self.failover_every[0]:g}-{self.failover_every[1]:g}s")
        if self.backend != "memory":
            parts += [
                f"restart_every={self.restart_every[0]:g}-{self.restart_every[1]:g}s",
                f"fault_every={self.fault_every[0]:g}-{self.fault_every[1]:g}s",
                f"stall={self.stall[0]:g}-{self.stall[1]:g}s",
                f"latency={self.latency_p:g}x{self.latency_max * 1000:g}ms",
            ]
        else:
            parts.append(f"loop_stall={self.loop_stall[0]:g}-{self.loop_stall[1]:g}s")
        return " ".join(parts)

    @property
    def wait_bound(self) -> float:
        """The asserted bound on a clean wait after free (generous: the machine is shared)."""
        if self.backend == "memory":
            return 2.0
        return 2 * self.grace + 3.0


@dataclass
class Section:
    """One critical section, as the worker logged it (times: CLOCK_REALTIME ns)."""

    key: str
    fence: int
    want: int
    start: int
    end: int  # for a killed worker: when the controller saw it dead
    outcome: str  # ok | lost | killed | cancelled | error:<type>
    released: str  # "1" release() returned True, "0" it returned False, "-" unknown
    expires: int  # the lease's last known expiry (backend clock) or 0
    worker: str

    @property
    def told_lost(self) -> bool:
        return self.outcome == "lost"


@dataclass
class Fault:
    """One injected fault, CLOCK_REALTIME ns. ``loses_data`` for a Redis restart without AOF."""

    kind: str
    start: int
    end: int
    loses_data: bool = False
    target: str = ""  # a pause: the worker (ident) that was stopped


@dataclass
class ChaosReport:
    """The figures of one run, and what the checker found."""

    config: str
    sections: int = 0
    lost: int = 0  # sections told LeaseLost
    acquires_busy: int = 0  # ThreadBusy (timeout ran out)
    acquires_failed: int = 0  # BackendError and others before the section began
    unexpected: dict[str, int] = field(default_factory=dict)  # exception types not expected
    kills: int = 0
    restarts: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    violations: int = 0
    violation_samples: list[str] = field(default_factory=list)
    overlaps_told: int = 0  # allowed: the earlier holder was told LeaseLost, lower fence
    overlaps_data_loss: int = 0  # after a Redis restart that lost the data, lower fence
    worst_overrun_ms: float = 0.0  # a body still running past its lease's expiry
    handoffs: int = 0
    worst_wait_after_free_ms: float = 0.0
    worst_clean_wait_after_free_ms: float = 0.0
    clean_handoffs: int = 0
    worst_takeover_after_kill_ms: float = 0.0  # killed holder -> next waiter's section
    worst_clean_takeover_after_kill_ms: float = 0.0
    held_after: int = -1  # held() after the run and one TTL + grace: must be 0
    leftover_keys: int = 0  # Redis: lease/queue keys, or keys without a TTL, still there then
    clock_step_ms: float = 0.0
    # pauses (SIGSTOP past the TTL, then SIGCONT) and partitions (frozen proxy, then heal)
    paused_holders: int = 0  # sections open in a worker when it was stopped
    paused_waiters: int = 0  # acquires in flight (queued) when their worker was stopped
    stale_after_resume: int = 0  # paused holders whose lease expired while stopped
    worst_stale_end_after_resume_ms: float = 0.0  # SIGCONT -> that stale body's end
    resumed_waiter_double_grants: int = 0  # a resumed waiter's section overlapping another
    stale_after_heal: int = 0  # sections whose lease expired during a partition
    worst_stale_end_after_heal_ms: float = 0.0  # heal -> that body's end (< 0: before the heal)
    failovers: int = 0  # Sentinel: masters killed and replaced
    # Sentinel: the most +switch-master lines one sentinel logged; more than ``failovers``
    # means the sentinels failed a live master over on their own (docs/reliability.md)
    sentinel_switches: int = 0
    fence_regressions_after_failover: int = 0  # fence order broken across a failover
    # RSS (kB) and open client connections, sampled at start, minute 2 and end
    resources: dict[str, dict[str, int]] = field(default_factory=dict)
    wall_s: float = 0.0
    log_dir: str = ""
    source: str = ""  # the threadlock source the workers ran (git commit, digest)

    def lines(self) -> list[str]:
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        return [
            f"chaos {self.config}",
            f"  sections={self.sections} lost={self.lost} busy={self.acquires_busy} "
            f"failed_acquires={self.acquires_failed} unexpected={self.unexpected or 0}",
            f"  kills={self.kills} restarts={self.restarts} injected faults: {faults}",
            f"  violations={self.violations} overlaps: told_lost={self.overlaps_told} "
            f"after_data_loss={self.overlaps_data_loss} worst_overrun_past_expiry="
            f"{self.worst_overrun_ms:.0f}ms",
            f"  hand-offs={self.handoffs} "
            f"worst_wait_after_free={self.worst_wait_after_free_ms:.0f}ms"
            f" clean={self.clean_handoffs} worst_clean={self.worst_clean_wait_after_free_ms:.0f}ms"
            f" worst_takeover_after_kill={self.worst_takeover_after_kill_ms:.0f}ms"
            f" (clean {self.worst_clean_takeover_after_kill_ms:.0f}ms)",
            f"  pauses: holders={self.paused_holders} waiters={self.paused_waiters} "
            f"stale={self.stale_after_resume} worst_stale_end_after_SIGCONT="
            f"{self.worst_stale_end_after_resume_ms:.0f}ms resumed_waiter_double_grants="
            f"{self.resumed_waiter_double_grants}; partitions: stale={self.stale_after_heal} "
            f"worst_stale_end_after_heal={self.worst_stale_end_after_heal_ms:.0f}ms; "
            f"failovers={self.failovers} sentinel_switches={self.sentinel_switches} "
            f"fence_regressions={self.fence_regressions_after_failover}",
            "  resources: "
            + (
                " ".join(
                    f"{when}[" + " ".join(f"{k}={v}" for k, v in sample.items()) + "]"
                    for when, sample in self.resources.items()
                )
                or "none"
            ),
            f"  held_after_ttl={self.held_after} leftover_keys={self.leftover_keys} "
            f"clock_step={self.clock_step_ms:.1f}ms wall={self.wall_s:.1f}s",
            f"  source={self.source}",
            *(f"  VIOLATION {sample}" for sample in self.violation_samples),
        ]

    def text(self) -> str:
        return "\n".join(self.lines())


# --------------------------------------------------------------------------------------------
# the fault-injecting proxy
# --------------------------------------------------------------------------------------------


class _Conn:
    __slots__ = ("client", "id", "scope", "stall_until", "upstream")

    def __init__(self, conn_id: int, client: anyio.abc.SocketStream) -> None:
        self.id = conn_id
        self.client = client
        self.upstream: anyio.abc.SocketStream | None = None
        self.scope = anyio.CancelScope()
        self.stall_until = 0.0


def _hard_close(stream: anyio.abc.SocketStream | None) -> None:
    """Make the coming close send RST instead of FIN (SO_LINGER 0)."""
    if stream is None:
        return
    try:
        raw = stream.extra(SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (OSError, anyio.TypedAttributeLookupError):
        pass


class FaultProxy:
    """A loopback TCP proxy (it listens on 127.0.0.1 only) injecting latency, stalls, resets.

    Every accepted connection gets its own upstream connection to
    ``127.0.0.1:upstream_port``; a refused upstream (server down) resets the client. Each
    forwarded chunk is delayed by U(0, ``latency_max``) with probability ``latency_p``.
    :meth:`stall` holds every byte of a connection (both ways) for a while, :meth:`reset`
    closes it on both sides with RST, :meth:`inject` picks a random live connection.
    Run :meth:`serve` in a task group (``port = await tg.start(proxy.serve)``).
    """

    def __init__(
        self,
        upstream_port: int,
        *,
        rng: random.Random | None = None,
        latency_p: float = 0.0,
        latency_max: float = 0.0,
    ) -> None:
        self.upstream_port = upstream_port
        self.rng = rng or random.Random()
        self.latency_p = latency_p
        self.latency_max = latency_max
        self.port = 0
        self.conns: dict[int, _Conn] = {}
        self.counts: Counter[str] = Counter()
        self.events: list[Fault] = []
        self._ids = itertools.count(1)
        self._stall_all_until = 0.0
        self._stall_replies_until = 0.0

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        async with listener:
            self.port = int(listener.extra(SocketAttribute.local_port))
            task_status.started(self.port)
            await listener.serve(self._handle)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        conn = _Conn(next(self._ids), client)
        self.conns[conn.id] = conn
        self.counts["connections"] += 1
        try:
            with conn.scope:
                try:
                    conn.upstream = await anyio.connect_tcp("127.0.0.1", self.upstream_port)
                except OSError:
                    self.counts["refused"] += 1
                    _hard_close(client)
                    return
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._pump, conn, client, conn.upstream, tg.cancel_scope, False)
                    tg.start_soon(self._pump, conn, conn.upstream, client, tg.cancel_scope, True)
        finally:
            self.conns.pop(conn.id, None)
            with anyio.CancelScope(shield=True):
                for stream in (conn.upstream, client):
                    if stream is not None:
                        with contextlib.suppress(OSError, anyio.BrokenResourceError):
                            await stream.aclose()

    def _stalled_until(self, conn: _Conn, reply: bool) -> float:
        until = max(conn.stall_until, self._stall_all_until)
        return max(until, self._stall_replies_until) if reply else until

    async def _pump(
        self,
        conn: _Conn,
        src: anyio.abc.SocketStream,
        dst: anyio.abc.SocketStream,
        scope: anyio.CancelScope,
        reply: bool,
    ) -> None:
        try:
            while True:
                data = await src.receive(65536)
                while (wait := self._stalled_until(conn, reply) - time.monotonic()) > 0:
                    await anyio.sleep(wait)
                if self.latency_p and self.rng.random() < self.latency_p:
                    self.counts["latency"] += 1
                    await anyio.sleep(self.rng.uniform(0, self.latency_max))
                await dst.send(data)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            scope.cancel()  # one side is gone: close the other side too

    def stall(self, conn_id: int | None, seconds: float, *, replies_only: bool = False) -> None:
        """Hold every byte of connection ``conn_id`` (``None``: of all) for ``seconds``.

        ``replies_only`` (with ``conn_id=None``): hold only what the server sends, so requests
        take effect on the server while their answers are late.
        """
        until = time.monotonic() + seconds
        if replies_only:
            self._stall_replies_until = max(self._stall_replies_until, until)
        elif conn_id is None:
            self._stall_all_until = max(self._stall_all_until, until)
        else:
            conn = self.conns.get(conn_id)
            if conn is None:
                return
            conn.stall_until = max(conn.stall_until, until)
        self.counts["stall"] += 1
        now = time.time_ns()
        self.events.append(Fault("stall", now, now + int(seconds * NS)))

    def partition(self, seconds: float) -> Fault:
        """Freeze every connection, both ways, new ones too, for ``seconds``; then heal."""
        self._stall_all_until = max(self._stall_all_until, time.monotonic() + seconds)
        self.counts["partition"] += 1
        now = time.time_ns()
        fault = Fault("partition", now, now + int(seconds * NS))
        self.events.append(fault)
        return fault

    def reset(self, conn_id: int) -> None:
        """Close connection ``conn_id`` on both sides with RST."""
        conn = self.conns.get(conn_id)
        if conn is None:
            return
        _hard_close(conn.client)
        _hard_close(conn.upstream)
        conn.scope.cancel()
        self.counts["reset"] += 1
        now = time.time_ns()
        self.events.append(Fault("reset", now, now))

    def inject(self, stall: tuple[float, float], reset_share: float) -> None:
        """One fault on a random live connection: a reset, or a stall of U(*stall) seconds."""
        if not self.conns:
            return
        conn_id = self.rng.choice(sorted(self.conns))
        if self.rng.random() < reset_share:
            self.reset(conn_id)
        else:
            self.stall(conn_id, self.rng.uniform(*stall))


# --------------------------------------------------------------------------------------------
# the holders (worker processes, or tasks for the memory backend)
# --------------------------------------------------------------------------------------------


class _Recorder:
    """Delegates to the backend for ``hold()``; remembers what ``release`` answered (``hold()``
    drops it) and logs every renewal (``R key fence sent_ns done_ns result expires_ns``)."""

    def __init__(self, lock: Any, write: Callable[[str], None]) -> None:
        self._lock = lock
        self._write = write
        self.released = "-"

    async def acquire(self, key: str, *, ttl: float, timeout: float | None) -> Any:
        return await self._lock.acquire(key, ttl=ttl, timeout=timeout)

    async def extend(self, lease: Any, *, ttl: float | None = None) -> Any:
        sent = time.time_ns()
        result, expires = "error", 0
        try:
            new = await self._lock.extend(lease, ttl=ttl)
            result, expires = "ok", int(new.expires_at * NS)
            return new
        except LeaseLost:
            result = "lost"
            raise
        finally:
            self._write(f"R {lease.key} {lease.fence} {sent} {time.time_ns()} {result} {expires}\n")

    async def release(self, lease: Any) -> bool:
        ok = bool(await self._lock.release(lease))
        self.released = "1" if ok else "0"
        return ok


def _pick_key(rng: random.Random, config: ChaosConfig) -> str:
    if config.hot_keys and rng.random() < 0.5:
        index = rng.randrange(min(config.hot_keys, config.keys))
    else:
        index = rng.randrange(config.keys)
    return f"k{index:03d}"


def _body_time(rng: random.Random, ttl: float) -> float:
    roll = rng.random()
    if roll < 0.85:
        return rng.uniform(0.0, 0.02)
    if roll < 0.97:
        return rng.uniform(0.02, 0.3)
    return rng.uniform(0.8, 1.6) * ttl  # long enough to need renewals


async def holder_loop(
    lock: Any,
    config: ChaosConfig,
    rng: random.Random,
    write: Callable[[str], None],
) -> None:
    """Take ``hold()`` on random keys forever, logging every section through ``write``."""
    while True:
        key = _pick_key(rng, config)
        recorder = _Recorder(lock, write)
        hold = Hold(
            recorder,  # type: ignore[arg-type]
            key,
            ttl=config.ttl,
            timeout=config.timeout,
            release_timeout=2.0,
        )
        want = time.time_ns()
        fence: int | None = None
        outcome = "ok"
        end = 0
        try:
            async with hold as lease:
                start = time.time_ns()
                fence = lease.fence
                write(f"B {key} {fence} {want} {start} {int(lease.expires_at * NS)}\n")
                try:
                    await anyio.sleep(_body_time(rng, config.ttl))
                finally:
                    end = time.time_ns()
                    # The body's end, before hold() releases: a SIGKILL during the release
                    # (up to release_timeout on a dead connection) leaves no E line.
                    write(f"X {key} {fence} {end}\n")
        except LeaseLost:
            if fence is None:  # a grant that arrived after it expired (after a pause): no body
                write("F lost\n")
                continue
            outcome = "lost"
        except ThreadBusy:
            write("F busy\n")
            continue
        except BackendError:
            if fence is None:
                write("F backend\n")
                await anyio.sleep(rng.uniform(0.02, 0.2))
                continue
            outcome = "error:BackendError"
        except anyio.get_cancelled_exc_class():
            if fence is not None:
                expires = int(hold.lease.expires_at * NS)
                write(
                    f"E {key} {fence} {end or time.time_ns()} cancelled {recorder.released} "
                    f"{expires}\n"
                )
            raise
        except Exception as error:
            name = type(error).__name__
            if fence is None:
                write(f"F unexpected:{name}\n")
                await anyio.sleep(0.05)
                continue
            outcome = f"error:{name}"
        expires = int(hold.lease.expires_at * NS)
        write(f"E {key} {fence} {end} {outcome} {recorder.released} {expires}\n")


def _build_lock(config: ChaosConfig, url: str, namespace: str) -> Any:
    if config.backend in ("redis", "redis-sentinel"):
        from threadlock.backends.redis import RedisThreadLock

        return RedisThreadLock.from_url(
            url, prefix=namespace, grace=config.grace, release_timeout=2.0
        )
    if config.backend == "postgres":
        from threadlock.backends.postgres import PostgresThreadLock

        return PostgresThreadLock.from_url(
            url,
            table=namespace,
            grace=config.grace,
            release_timeout=2.0,
            max_size=config.tasks + 1,
            pool_timeout=5.0,
        )
    from threadlock.backends.memory import MemoryThreadLock

    return MemoryThreadLock(release_timeout=2.0)


async def _worker_main(
    config: ChaosConfig, url: str, namespace: str, log: str, stop_ns: int, ident: str
) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(line: str) -> None:
        os.write(fd, line.encode())

    seed = f"{config.seed}:{ident}"
    lock = _build_lock(config, url, namespace)
    try:
        async with lock:
            with anyio.move_on_after(max(0.0, (stop_ns - time.time_ns()) / NS)):
                async with anyio.create_task_group() as tg:
                    for index in range(config.tasks):
                        rng = random.Random(f"{seed}:{index}")
                        tg.start_soon(holder_loop, lock, config, rng, write)
    finally:
        os.close(fd)


def _worker_entry(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--stop-ns", type=int, required=True)
    parser.add_argument("--ident", required=True)
    args = parser.parse_args(argv)
    config = _config_from_json(args.config)
    anyio.run(_worker_main, config, args.url, args.namespace, args.log, args.stop_ns, args.ident)
    return 0


def _config_from_json(text: str) -> ChaosConfig:
    data = json.loads(text)
    for name in ("kill_every", "restart_every", "fault_every", "stall", "loop_stall"):
        data[name] = tuple(data[name])
    return ChaosConfig(**data)


# --------------------------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------------------------


class _RedisTarget:
    """A private redis-server with AOF (appendfsync always); restarts may drop the AOF."""

    def __init__(self) -> None:
        from tests._servers.redis_server import RedisServer

        self.server = RedisServer(args=["--appendonly", "yes", "--appendfsync", "always"])

    def start(self) -> None:
        self.server.start()

    @property
    def port(self) -> int:
        return int(self.server.port)

    def url(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}/0"

    def restart(self, count: int) -> tuple[str, bool]:
        lose = count % 2 == 1  # alternately with and without the AOF
        self.server.kill()
        if lose:
            shutil.rmtree(self.server.dir / "appendonlydir", ignore_errors=True)
        self.server.start()
        return ("redis-restart-empty" if lose else "redis-restart-aof"), lose

    async def prepare(self, namespace: str) -> None:
        return None

    def pids(self) -> list[int]:
        process = self.server.process
        return [] if process is None else [process.pid]

    def stop(self) -> None:
        self.server.stop()


class _SentinelTarget:
    """A master, a replica and 3 sentinels (``tests/_servers/sentinel.py``); the backend
    connects through a ``redis+sentinel://`` URL, so its data connections bypass the proxy.
    A "restart" is a failover: the master is SIGKILLed under load, the sentinels promote the
    replica (replication is asynchronous, so the last writes may be lost: ``loses_data``),
    and the killed server comes back as the new master's replica."""

    def __init__(self) -> None:
        from tests._servers.sentinel import SentinelSet

        self.set = SentinelSet()

    def start(self) -> None:
        self.set.start()

    @property
    def port(self) -> int:
        return self.set.master_port()

    def url(self, port: int) -> str:
        return self.set.url

    def restart(self, count: int) -> tuple[str, bool]:
        self.set.failover()
        return "failover", True

    def save_logs(self, into: Path) -> None:
        self.set.save_logs(into)

    async def prepare(self, namespace: str) -> None:
        return None

    def pids(self) -> list[int]:
        return self.set.pids()

    def stop(self) -> None:
        self.set.stop()


class _PostgresTarget:
    """A private Postgres cluster; restarts are ``pg_ctl restart -m fast`` or ``immediate``."""

    def __init__(self) -> None:
        from tests._servers.postgres_server import PostgresServer

        self.server = PostgresServer.create(settings={"max_connections": "300"})

    def start(self) -> None:
        self.server.start()

    @property
    def port(self) -> int:
        return int(self.server.port)

    def url(self, port: int) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def restart(self, count: int) -> tuple[str, bool]:
        mode = ("fast", "immediate")[count % 2]
        self.server.restart(mode)
        return f"postgres-restart-{mode}", False

    async def prepare(self, namespace: str) -> None:
        from threadlock.backends.postgres import PostgresThreadLock

        async with PostgresThreadLock.from_url(self.server.dsn, table=namespace) as lock:
            await lock.create_schema()

    def pids(self) -> list[int]:
        try:
            return [int((self.server.data / "postmaster.pid").read_text().split()[0])]
        except (OSError, ValueError, IndexError):
            return []

    def stop(self) -> None:
        self.server.destroy()


# --------------------------------------------------------------------------------------------
# the controller
# --------------------------------------------------------------------------------------------


@dataclass
class _Incarnation:
    slot: int
    number: int
    log: Path
    proc: subprocess.Popen[bytes]
    killed_ns: int = 0  # when SIGKILL was sent (the process runs no Python code after it)
    born: float = field(default_factory=time.monotonic)  # when it was started


def _interval(rng: random.Random, bounds: tuple[float, float]) -> float:
    return rng.uniform(*bounds)


async def run_chaos(
    config: ChaosConfig, *, echo: Callable[[str], None] | None = None
) -> ChaosReport:
    """Run the chaos described by ``config``, check the logs, return the figures."""
    started = time.monotonic()
    offset0 = time.time_ns() - time.monotonic_ns()
    keep = config.out is not None
    out = Path(config.out) if config.out else Path(tempfile.mkdtemp(prefix="threadlock-chaos-"))
    out.mkdir(parents=True, exist_ok=True)
    say = echo or (lambda line: None)
    say(f"chaos: {config.describe()} logs={out}")
    if config.backend == "memory":
        report, sections, faults, kills = await _run_memory(config, out)
    elif config.backend in ("redis", "postgres", "redis-sentinel"):
        report, sections, faults, kills = await _run_servers(config, out, say)
    else:
        raise ValueError(
            f"backend must be redis, postgres, redis-sentinel or memory, got {config.backend!r}"
        )
    check(report, sections, faults, kills, config)
    report.clock_step_ms = abs((time.time_ns() - time.monotonic_ns()) - offset0) / 1e6
    report.wall_s = time.monotonic() - started
    report.log_dir = str(out)
    if not keep and report.violations == 0:
        shutil.rmtree(out, ignore_errors=True)
        report.log_dir = ""
    return report


async def _run_servers(
    config: ChaosConfig, out: Path, say: Callable[[str], None]
) -> tuple[ChaosReport, list[Section], list[Fault], dict[str, int]]:
    rng = random.Random(f"{config.seed}:controller")
    report = ChaosReport(config=config.describe())
    target: _RedisTarget | _PostgresTarget | _SentinelTarget
    if config.backend == "redis":
        target = _RedisTarget()
    elif config.backend == "redis-sentinel":
        target = _SentinelTarget()
    else:
        target = _PostgresTarget()
    sentinel = config.backend == "redis-sentinel"
    restart_every = config.failover_every if sentinel else config.restart_every
    namespace = f"chaos_{secrets.token_hex(6)}"
    faults: list[Fault] = []
    incarnations: list[_Incarnation] = []
    restarts: Counter[str] = Counter()
    # The workers run a snapshot of the library taken now, so that edits to src/ during a run
    # cannot mix two versions of the scripts or the SQL in one run.
    snapshot = out / "src"
    report.source = _snapshot(snapshot)
    target.start()
    try:
        await target.prepare(namespace)
        proxy = FaultProxy(
            target.port,
            rng=random.Random(f"{config.seed}:proxy"),
            latency_p=config.latency_p,
            latency_max=config.latency_max,
        )
        async with anyio.create_task_group() as tg:
            port = await tg.start(proxy.serve)
            url = target.url(port)
            t0 = time.time_ns()
            stop_ns = t0 + int(config.duration * NS)
            counters = itertools.count()

            def spawn(slot: int) -> _Incarnation:
                number = next(counters)
                log = out / f"worker-{slot}-{number}.log"
                env = {
                    **os.environ,
                    "PYTHONPATH": os.pathsep.join(
                        [str(snapshot), str(ROOT), os.environ.get("PYTHONPATH", "")]
                    ),
                }
                cfg = json.dumps(asdict(config))
                err = (out / f"worker-{slot}-{number}.err").open("wb")
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.chaos",
                        "worker",
                        "--config",
                        cfg,
                        "--url",
                        url,
                        "--namespace",
                        namespace,
                        "--log",
                        str(log),
                        "--stop-ns",
                        str(stop_ns),
                        "--ident",
                        f"{slot}-{number}",
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=err,
                    stderr=subprocess.STDOUT,
                )
                err.close()
                inc = _Incarnation(slot, number, log, proc)
                incarnations.append(inc)
                return inc

            live = {slot: spawn(slot) for slot in range(config.workers)}
            now = time.monotonic()
            next_kill = now + _interval(rng, config.kill_every)
            next_restart = now + _interval(rng, restart_every)
            next_fault = now + _interval(rng, config.fault_every)
            next_pause = now + _interval(rng, config.pause_every)
            next_partition = now + _interval(rng, config.partition_every)
            end_at = now + config.duration - min(3.0, config.duration / 10)
            phase0 = now
            # slot -> (the stopped incarnation, when to resume it (monotonic), SIGSTOP ns)
            paused: dict[int, tuple[_Incarnation, float, int]] = {}
            # slot -> when it was resumed (monotonic): it runs 1 s before it may be killed, so
            # that a stale holder can be told; a SIGKILL right after SIGCONT would end, for
            # the checker, a section that ran no code since SIGSTOP
            resumed_at: dict[int, float] = {}
            samples = _sample_points(config)

            def sample(when: str) -> None:
                report.resources[when] = resources(
                    target.pids(), [i.proc.pid for i in live.values()], len(proxy.conns)
                )
                # Workers are killed and started again all the time: their RSS is that of
                # the incarnations alive at this instant, of this mean age (seconds).
                ages = [time.monotonic() - i.born for i in live.values()]
                report.resources[when]["workers_mean_age_s"] = round(sum(ages) / len(ages))

            def resume(slot: int) -> None:
                inc, _, begin = paused.pop(slot)
                inc.proc.send_signal(signal.SIGCONT)
                resumed_at[slot] = time.monotonic()
                ident = f"{inc.slot}-{inc.number}"
                faults.append(Fault("pause", begin, time.time_ns(), target=ident))

            while (now := time.monotonic()) < end_at:
                storm = int((now - phase0) / config.phase) % 2 == 1
                if samples and now - phase0 >= samples[0][0]:
                    sample(samples.pop(0)[1])
                for slot in [s for s, (_, until, _) in paused.items() if now >= until]:
                    resume(slot)
                if config.pause_every[1] > 0 and now >= next_pause:
                    free = [s for s in range(config.workers) if s not in paused]
                    seconds = _interval(rng, config.pause)
                    if free and now + seconds < end_at:
                        slot = rng.choice(free)
                        live[slot].proc.send_signal(signal.SIGSTOP)
                        paused[slot] = (live[slot], now + seconds, time.time_ns())
                    next_pause = now + _interval(rng, config.pause_every)
                if not sentinel and config.partition_every[1] > 0 and now >= next_partition:
                    seconds = _interval(rng, config.partition)
                    if now + seconds < end_at:
                        proxy.partition(seconds)
                    next_partition = now + seconds + _interval(rng, config.partition_every)
                if now >= next_kill:
                    running = [
                        s
                        for s in range(config.workers)
                        if s not in paused and now - resumed_at.get(s, -10.0) >= 1.0
                    ]
                    if running:  # a stopped worker is not killed: its pause must end
                        slot = rng.choice(running)
                        inc = live[slot]
                        inc.killed_ns = time.time_ns()
                        inc.proc.send_signal(signal.SIGKILL)
                        await anyio.to_thread.run_sync(inc.proc.wait)
                        report.kills += 1
                        await anyio.sleep(rng.uniform(0.0, 0.3))
                        live[slot] = spawn(slot)
                    next_kill = time.monotonic() + _interval(rng, config.kill_every)
                if now >= next_restart and (storm or sentinel):
                    begin = time.time_ns()
                    kind, loses = await anyio.to_thread.run_sync(target.restart, report.restarts)
                    faults.append(Fault(kind, begin, time.time_ns(), loses))
                    restarts[kind] += 1
                    report.restarts += 1
                    if sentinel:
                        report.failovers += 1
                    next_restart = time.monotonic() + _interval(rng, restart_every)
                if now >= next_fault and storm:
                    proxy.inject(config.stall, config.reset_share)
                    next_fault = time.monotonic() + _interval(rng, config.fault_every)
                await anyio.sleep(0.02)
            for slot in list(paused):
                resume(slot)
            sample("end")
            # The workers stop by themselves at stop_ns; give them their release time.
            limit = (stop_ns - time.time_ns()) / NS + 15.0

            def join() -> None:
                deadline = time.monotonic() + limit
                for inc in live.values():
                    try:
                        inc.proc.wait(max(0.1, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        inc.killed_ns = time.time_ns()
                        inc.proc.kill()
                        inc.proc.wait()
                        report.unexpected["worker_hung_at_stop"] = (
                            report.unexpected.get("worker_hung_at_stop", 0) + 1
                        )

            await anyio.to_thread.run_sync(join)
            for inc in live.values():
                if inc.proc.returncode not in (0, -signal.SIGKILL):
                    key = f"worker_exit_{inc.proc.returncode}"
                    report.unexpected[key] = report.unexpected.get(key, 0) + 1
            tg.cancel_scope.cancel()
        faults.extend(proxy.events)
        report.faults = dict(restarts) | {
            k: v for k, v in proxy.counts.items() if k in ("stall", "reset", "latency", "partition")
        }
        pauses = sum(1 for f in faults if f.kind == "pause")
        if pauses:
            report.faults["pause"] = pauses
        # (b) nothing is held once every lease has had its TTL to run out.
        await anyio.sleep(config.ttl + config.grace + 1.0)
        report.held_after, report.leftover_keys = await _leftovers(
            config, target.url(target.port), namespace
        )
    finally:
        for inc in incarnations:
            if inc.proc.poll() is None:
                inc.proc.kill()
                inc.proc.wait()
        if isinstance(target, _SentinelTarget):
            target.save_logs(out / "sentinel")
            report.sentinel_switches = max(
                (
                    log.read_text(errors="replace").count("+switch-master")
                    for log in (out / "sentinel").glob("sentinel-*.log")
                ),
                default=0,
            )
        target.stop()
    (out / "controller.json").write_text(
        json.dumps(
            {
                "faults": [asdict(f) for f in faults],
                "kills": {f"{i.slot}-{i.number}": i.killed_ns for i in incarnations},
            },
            indent=1,
        )
    )
    sections: list[Section] = []
    kills: dict[str, int] = {}
    for inc in incarnations:
        ident = f"{inc.slot}-{inc.number}"
        if inc.killed_ns:
            kills[ident] = inc.killed_ns
        _parse_log(
            inc.log.read_text() if inc.log.exists() else "", ident, inc.killed_ns, sections, report
        )
    return report, sections, faults, kills


def _sample_points(config: ChaosConfig) -> list[tuple[float, str]]:
    """When to sample RSS and connections (seconds into the run): start, minute 2 (if any)."""
    points = [(min(10.0, config.duration / 4), "start")]
    if config.duration > 150:
        points.append((120.0, "minute2"))
    return points


def _snapshot(dest: Path) -> str:
    """Copy the imported ``threadlock`` package to ``dest``; describe what was copied."""
    import hashlib

    import threadlock

    package = Path(threadlock.__file__).parent
    shutil.copytree(package, dest / "threadlock", ignore=shutil.ignore_patterns("__pycache__"))
    digest = hashlib.sha256()
    for path in sorted((dest / "threadlock").rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(dest).as_posix().encode())
            digest.update(path.read_bytes())
    commit = "?"
    try:
        git = ["git", "-C", str(package)]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        commit = head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{commit}:{digest.hexdigest()[:12]}"


def _lease_end_us(fields: list[bytes]) -> int:
    """When a Redis lease value ("<t> <w> <fence> <acquired> <expires> <claim by> ...") ends."""
    expires, claim_by = int(fields[4]), int(fields[5])
    return min(expires, claim_by) if claim_by > 0 else expires


async def _leftovers(config: ChaosConfig, url: str, namespace: str) -> tuple[int, int]:
    lock = _build_lock(config, url, namespace)
    async with lock:
        held = await lock.held()
        leftover = 0
        if config.backend in ("redis", "redis-sentinel"):
            # A free key keeps only TTL-bounded keys (its lease key as a free-key marker
            # "F <fence>" or an ended lease, tombstones of abandoned acquires); its queue
            # keys must be gone, and nothing may lack a TTL.
            seconds, micros = await lock.client.time()
            now_us = int(seconds) * 1_000_000 + int(micros)
            async for name in lock.client.scan_iter(match=f"{namespace}:*", count=1000):
                text = name.decode() if isinstance(name, bytes) else str(name)
                part = text.rpartition(":")[2]
                if part == "lease":
                    value = await lock.client.get(name) or b"F "
                    fields = value.split(b" ", 6)
                    ended = value.startswith(b"F ") or (
                        len(fields) > 5 and _lease_end_us(fields) <= now_us
                    )
                    if not ended:
                        leftover += 1
                        continue
                if part in ("queue", "beat", "meta") or await lock.client.pttl(name) < 0:
                    leftover += 1
        return len(held), leftover


async def _run_memory(
    config: ChaosConfig, out: Path
) -> tuple[ChaosReport, list[Section], list[Fault], dict[str, int]]:
    """In-process: tasks instead of processes, cancellation instead of SIGKILL, loop stalls."""
    from threadlock.backends.memory import MemoryThreadLock

    rng = random.Random(f"{config.seed}:controller")
    report = ChaosReport(config=config.describe())
    report.source = _snapshot(out / "src")  # what this process imported, for the record
    faults: list[Fault] = []
    logs: dict[str, list[str]] = defaultdict(list)
    cancelled: dict[str, int] = {}
    lock = MemoryThreadLock(release_timeout=2.0)
    scopes: dict[int, tuple[str, anyio.CancelScope]] = {}
    counters = itertools.count()

    async def run_holder(slot: int) -> None:
        while True:
            ident = f"{slot}-{next(counters)}"
            seed = random.Random(f"{config.seed}:{ident}")
            with anyio.CancelScope() as scope:
                scopes[slot] = (ident, scope)
                await holder_loop(lock, config, seed, logs[ident].append)
            cancelled[ident] = time.time_ns()

    async with anyio.create_task_group() as tg:
        for slot in range(config.workers * config.tasks):
            tg.start_soon(run_holder, slot)
        now = phase0 = time.monotonic()
        end_at = now + config.duration
        next_kill = now + _interval(rng, config.kill_every) / config.tasks
        next_stall = now + _interval(rng, config.fault_every) * 5
        samples = _sample_points(config)
        while (now := time.monotonic()) < end_at:
            storm = int((now - phase0) / config.phase) % 2 == 1
            if samples and now - phase0 >= samples[0][0]:
                report.resources[samples.pop(0)[1]] = resources([], [], 0)
            if now >= next_kill:
                _, scope = scopes[rng.randrange(len(scopes))]
                scope.cancel()
                report.kills += 1
                next_kill = now + _interval(rng, config.kill_every) / config.tasks
            if now >= next_stall and storm:
                seconds = rng.uniform(*config.loop_stall)
                begin = time.time_ns()
                time.sleep(seconds)
                faults.append(Fault("loop-stall", begin, time.time_ns()))
                next_stall = time.monotonic() + _interval(rng, config.fault_every) * 5
            await anyio.sleep(0.01)
        report.resources["end"] = resources([], [], 0)
        tg.cancel_scope.cancel()
    report.faults = {"loop-stall": len(faults)}
    await anyio.sleep(config.ttl + 0.5)
    report.held_after = len(await lock.held())
    report.leftover_keys = lock.active_keys
    await lock.aclose()
    sections: list[Section] = []
    for ident, lines in logs.items():
        if config.out:
            (out / f"task-{ident}.log").write_text("".join(lines))
        _parse_log("".join(lines), ident, 0, sections, report)
    return report, sections, faults, {}


def _parse_log(
    text: str, ident: str, killed_ns: int, sections: list[Section], report: ChaosReport
) -> None:
    open_: dict[tuple[str, int], tuple[int, int, int]] = {}
    body_ended: dict[tuple[str, int], int] = {}  # X lines: the body ended, hold() releasing
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "B" and len(parts) == 6:
            open_[(parts[1], int(parts[2]))] = (int(parts[3]), int(parts[4]), int(parts[5]))
        elif parts[0] == "R" and len(parts) == 7 and parts[5] == "ok":
            key, fence = parts[1], int(parts[2])
            if (key, fence) in open_:
                want, start, _ = open_[(key, fence)]
                open_[(key, fence)] = (want, start, int(parts[6]))
        elif parts[0] == "X" and len(parts) == 4 and parts[2].isdigit():
            body_ended[(parts[1], int(parts[2]))] = int(parts[3])
        elif parts[0] == "E" and len(parts) == 7:
            if not parts[2].isdigit() or (parts[1], int(parts[2])) not in open_:
                continue  # no section began (cannot happen since "F lost"; old logs)
            key, fence = parts[1], int(parts[2])
            want, start, _ = open_.pop((key, fence))
            sections.append(
                Section(
                    key, fence, want, start, int(parts[3]), parts[4], parts[5], int(parts[6]), ident
                )
            )
        elif parts[0] == "F" and len(parts) == 2:
            if parts[1] == "busy":
                report.acquires_busy += 1
            else:
                report.acquires_failed += 1
                if parts[1].startswith("unexpected:"):
                    name = parts[1].partition(":")[2]
                    report.unexpected[name] = report.unexpected.get(name, 0) + 1
        # anything else is a line cut by SIGKILL in the middle of a write: ignored
    for (key, fence), (want, start, expires) in open_.items():
        # Began, never ended: the worker was killed inside the section; it ran until then,
        # unless its body had ended (X) and hold() was still releasing when the kill came.
        end = body_ended.get((key, fence)) or killed_ns or start
        sections.append(Section(key, fence, want, start, end, "killed", "-", expires, ident))


# --------------------------------------------------------------------------------------------
# the checker
# --------------------------------------------------------------------------------------------


def _touches(faults: list[Fault], start: int, end: int, slack: int) -> bool:
    return any(f.start - slack <= end and f.end + slack >= start for f in faults)


def _pauses_and_partitions(
    report: ChaosReport, sections: list[Section], faults: list[Fault]
) -> set[int]:
    """Fill the pause and partition figures; return the ids of resumed waiters' sections.

    A pause's holder is a section open in the stopped worker when SIGSTOP was sent; it is
    stale when its lease expired before SIGCONT, and the time from SIGCONT to its end is how
    long the stale body ran on. A pause's waiter is a section of that worker whose acquire was
    called before SIGSTOP and granted after SIGCONT. A partition's stale body is a section open
    when the proxy froze whose lease expired before the heal.
    """
    by_worker: dict[str, list[Section]] = defaultdict(list)
    for s in sections:
        by_worker[s.worker].append(s)
    resumed: set[int] = set()
    worst_resume: float | None = None
    worst_heal: float | None = None
    for f in faults:
        if f.kind == "pause":
            for s in by_worker.get(f.target, []):
                if s.start <= f.start < s.end:
                    report.paused_holders += 1
                    if s.expires and s.expires < f.end:
                        report.stale_after_resume += 1
                        took = (s.end - f.end) / 1e6
                        worst_resume = took if worst_resume is None else max(worst_resume, took)
                elif s.want <= f.start and s.start >= f.end:
                    report.paused_waiters += 1
                    resumed.add(id(s))
        elif f.kind == "partition":
            for s in sections:
                if s.start <= f.start < s.end and s.expires and s.expires < f.end:
                    report.stale_after_heal += 1
                    took = (s.end - f.end) / 1e6
                    worst_heal = took if worst_heal is None else max(worst_heal, took)
    report.worst_stale_end_after_resume_ms = worst_resume or 0.0
    report.worst_stale_end_after_heal_ms = worst_heal or 0.0
    return resumed


def check(
    report: ChaosReport,
    sections: list[Section],
    faults: list[Fault],
    kills: dict[str, int],
    config: ChaosConfig,
) -> ChaosReport:
    """Prove (a) exclusion with fencing and (c) progress from the sections; fill ``report``."""
    report.sections = len(sections)
    report.lost = sum(1 for s in sections if s.told_lost)
    for s in sections:
        if s.outcome.startswith("error:"):
            name = s.outcome.partition(":")[2]
            report.unexpected[name] = report.unexpected.get(name, 0) + 1
    losses = [f for f in faults if f.loses_data]
    by_key: dict[str, list[Section]] = defaultdict(list)
    for s in sections:
        by_key[s.key].append(s)

    def violation(text: str) -> None:
        report.violations += 1
        if len(report.violation_samples) < 10:
            report.violation_samples.append(text)

    resumed = _pauses_and_partitions(report, sections, faults)
    slack = int(0.25 * NS)
    for key, items in by_key.items():
        items.sort(key=lambda s: (s.start, s.fence))
        # (a) every pair of overlapping sections: the earlier one was told, lower fence.
        active: list[Section] = []
        for b in items:
            active = [a for a in active if a.end > b.start]
            for a in active:
                if a.fence < b.fence and a.told_lost:
                    report.overlaps_told += 1
                elif a.fence < b.fence and any(
                    a.want <= f.end and f.start <= b.start for f in losses
                ):
                    report.overlaps_data_loss += 1
                else:
                    expired = ""
                    if a.expires and a.expires <= b.start:
                        expired = (
                            f"; its lease had expired {(b.start - a.expires) / 1e6:.0f} ms "
                            "before (last successful renewal) while its body still ran"
                        )
                    if id(a) in resumed or id(b) in resumed:
                        report.resumed_waiter_double_grants += 1
                    violation(
                        f"overlap on {key}: {a.worker} fence {a.fence} [{a.start}, {a.end}] "
                        f"{a.outcome}/release={a.released} vs {b.worker} fence {b.fence} "
                        f"[{b.start}, {b.end}] for {(min(a.end, b.end) - b.start) / 1e6:.1f} ms"
                        f"{expired}"
                    )
            active.append(b)
        # fences rise along the key's sections (sections that did not overlap)
        for a, b in itertools.pairwise(items):
            if a.end <= b.start and a.fence >= b.fence and not b.told_lost:
                if any(
                    f.kind == "failover" and a.start <= f.end and f.start <= b.start for f in losses
                ):
                    report.fence_regressions_after_failover += 1
                violation(
                    f"fence order on {key}: {a.worker} fence {a.fence} ended before "
                    f"{b.worker} fence {b.fence} began"
                )
        for s in items:
            if s.expires and s.told_lost and s.end > s.expires:
                report.worst_overrun_ms = max(report.worst_overrun_ms, (s.end - s.expires) / 1e6)
        # (c) a released lock: the waiter behind it starts within the bound.
        for a, b in itertools.pairwise(items):
            if a.outcome == "killed" and b.want <= a.end <= b.start:
                took = (b.start - a.end) / 1e6
                report.worst_takeover_after_kill_ms = max(report.worst_takeover_after_kill_ms, took)
                if not _touches(faults, a.start, b.start, slack):
                    report.worst_clean_takeover_after_kill_ms = max(
                        report.worst_clean_takeover_after_kill_ms, took
                    )
            if a.released != "1" or b.want >= a.end or b.start < a.end:
                continue
            wait = (b.start - a.end) / 1e6
            report.handoffs += 1
            report.worst_wait_after_free_ms = max(report.worst_wait_after_free_ms, wait)
            if not _touches(faults, a.end, b.start, slack):
                report.clean_handoffs += 1
                report.worst_clean_wait_after_free_ms = max(
                    report.worst_clean_wait_after_free_ms, wait
                )
    if report.clean_handoffs and report.worst_clean_wait_after_free_ms > config.wait_bound * 1000:
        violation(
            f"a clean hand-off took {report.worst_clean_wait_after_free_ms:.0f} ms "
            f"(bound {config.wait_bound * 1000:.0f} ms)"
        )
    takeover_bound = (config.ttl + config.wait_bound) * 1000
    if report.worst_clean_takeover_after_kill_ms > takeover_bound:
        violation(
            f"a killed holder's key took {report.worst_clean_takeover_after_kill_ms:.0f} ms "
            f"to reach its next waiter (bound ttl + {config.wait_bound:g} s)"
        )
    if report.held_after != 0:
        violation(f"held() after the run and one TTL: {report.held_after} keys")
    if report.leftover_keys:
        violation(f"{report.leftover_keys} lease/queue keys (or keys without TTL) left")
    return report


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def _range(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    return float(low), float(high or low)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return _worker_entry(argv[1:])
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.chaos",
        description="Chaos run: kills, restarts and network faults, then a check of the logs.",
    )
    add = parser.add_argument
    add("--backends", default="redis,postgres,memory", help="comma-separated (default: all)")
    add("--duration", type=float, default=defaults.duration, help="seconds of chaos per backend")
    add("--workers", type=int, default=defaults.workers, help="worker processes")
    add("--tasks", type=int, default=defaults.tasks, help="holders per worker")
    add("--keys", type=int, default=defaults.keys, help="keys (half the picks go to 5 of them)")
    add("--ttl", type=float, default=defaults.ttl, help="lease ttl, seconds")
    add("--grace", type=float, default=defaults.grace, help="the backends' grace, seconds")
    add("--seed", type=int, default=defaults.seed, help="seed of every random choice")
    add(
        "--kill-every",
        type=_range,
        default=defaults.kill_every,
        metavar="LOW-HIGH",
        help="seconds between two SIGKILLs (memory: task cancellations)",
    )
    add(
        "--restart-every",
        type=_range,
        default=defaults.restart_every,
        metavar="LOW-HIGH",
        help="seconds between two server restarts (fault phases only)",
    )
    add(
        "--failover-every",
        type=_range,
        default=defaults.failover_every,
        metavar="LOW-HIGH",
        help="redis-sentinel: seconds from a failover (master SIGKILLed) to the next",
    )
    add(
        "--fault-every",
        type=_range,
        default=defaults.fault_every,
        metavar="LOW-HIGH",
        help="seconds between two proxy stalls/resets (fault phases only)",
    )
    add(
        "--stall",
        type=_range,
        default=defaults.stall,
        metavar="LOW-HIGH",
        help="seconds a stalled connection is held (keep below ttl/2, see docs/reliability.md)",
    )
    add(
        "--phase",
        type=float,
        default=defaults.phase,
        help="seconds per phase; faults and restarts only in every other phase",
    )
    parser.add_argument("--out", help="keep the logs here (default: a temp dir, removed)")
    parser.add_argument("--json", help="also write the reports to this file")
    args = parser.parse_args(argv)
    reports = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        config = ChaosConfig(
            backend=backend,
            duration=args.duration,
            workers=args.workers,
            tasks=args.tasks,
            keys=args.keys,
            ttl=args.ttl,
            grace=args.grace,
            seed=args.seed,
            kill_every=args.kill_every,
            restart_every=args.restart_every,
            failover_every=args.failover_every,
            fault_every=args.fault_every,
            stall=args.stall,
            phase=args.phase,
            out=None if args.out is None else str(Path(args.out) / backend),
        )
        report = anyio.run(functools.partial(run_chaos, config, echo=print))
        print(report.text(), flush=True)
        reports.append(report)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in reports], indent=2) + "\n")
    return 1 if any(r.violations for r in reports) else 0


if __name__ == "__main__":
    raise SystemExit(main())
