"""The chaos checker and proxy on their own: a checker that cannot fail proves nothing."""

from __future__ import annotations

import random
import time

import anyio
import anyio.abc
import pytest
from benchmarks.chaos import (
    ChaosConfig,
    ChaosReport,
    Fault,
    FaultProxy,
    Section,
    _parse_log,
    check,
    holder_loop,
)

from threadlock import Lease, MemoryThreadLock

MS = 1_000_000
T0 = 1_800_000_000 * 1_000_000_000


def section(
    key: str,
    fence: int,
    start_ms: int,
    end_ms: int,
    *,
    outcome: str = "ok",
    released: str = "1",
    want_ms: int | None = None,
    worker: str = "w",
) -> Section:
    want = T0 + (start_ms if want_ms is None else want_ms) * MS
    return Section(
        key, fence, want, T0 + start_ms * MS, T0 + end_ms * MS, outcome, released, 0, worker
    )


def run_check(sections: list[Section], faults: list[Fault] | None = None) -> ChaosReport:
    report = ChaosReport(config="unit", held_after=0)
    return check(report, sections, faults or [], {}, ChaosConfig(backend="redis"))


def test_disjoint_sections_with_rising_fences_pass() -> None:
    report = run_check([section("k", 1, 0, 10), section("k", 2, 10, 20), section("j", 1, 5, 30)])
    assert report.violations == 0
    assert report.sections == 3


def test_overlap_of_an_untold_holder_is_a_violation() -> None:
    report = run_check([section("k", 1, 0, 10), section("k", 2, 5, 20)])
    assert report.violations == 1
    assert "overlap on k" in report.violation_samples[0]


def test_overlap_of_a_holder_told_lease_lost_with_lower_fence_is_allowed() -> None:
    report = run_check([section("k", 1, 0, 10, outcome="lost"), section("k", 2, 5, 20)])
    assert report.violations == 0
    assert report.overlaps_told == 1


def test_told_holder_with_the_higher_fence_is_still_a_violation() -> None:
    report = run_check([section("k", 3, 0, 10, outcome="lost"), section("k", 2, 5, 20)])
    assert report.violations >= 1


def test_killed_holder_overlapping_is_a_violation_unless_data_was_lost() -> None:
    killed = section("k", 1, 0, 10, outcome="killed", released="-")
    assert run_check([killed, section("k", 2, 5, 20)]).violations == 1
    wipe = Fault("redis-restart-empty", T0 + 2 * MS, T0 + 3 * MS, loses_data=True)
    report = run_check([killed, section("k", 2, 5, 20)], [wipe])
    assert report.violations == 0
    assert report.overlaps_data_loss == 1


def test_fences_must_rise_along_a_key() -> None:
    report = run_check([section("k", 5, 0, 10), section("k", 4, 10, 20)])
    assert report.violations == 1
    assert "fence order" in report.violation_samples[0]


def test_waits_after_free_are_measured_and_bounded() -> None:
    fast = [section("k", 1, 0, 10), section("k", 2, 40, 50, want_ms=5)]
    report = run_check(fast)
    assert report.handoffs == 1
    assert report.clean_handoffs == 1
    assert report.worst_wait_after_free_ms == pytest.approx(30)
    assert report.violations == 0
    slow = [section("k", 1, 0, 10), section("k", 2, 10_000, 10_010, want_ms=5)]
    assert run_check(slow).violations == 1
    # The same slow hand-off under an injected stall is measured, not held against the lock.
    stall = Fault("stall", T0 + 20 * MS, T0 + 9_000 * MS)
    report = run_check(slow, [stall])
    assert report.violations == 0
    assert report.worst_wait_after_free_ms == pytest.approx(9_990)
    assert report.clean_handoffs == 0


def test_something_still_held_after_the_run_is_a_violation() -> None:
    report = ChaosReport(config="unit", held_after=2)
    assert check(report, [], [], {}, ChaosConfig()).violations == 1


async def _echo(stream: anyio.abc.SocketStream) -> None:
    async with stream:
        try:
            while True:
                await stream.send(await stream.receive())
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            pass


@pytest.mark.anyio
async def test_proxy_forwards_stalls_and_resets() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    upstream = listener.extra(anyio.abc.SocketAttribute.local_port)
    proxy = FaultProxy(upstream)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, _echo)
        port = await tg.start(proxy.serve)
        client = await anyio.connect_tcp("127.0.0.1", port)
        async with client:
            await client.send(b"ping")
            assert await client.receive() == b"ping"
            (conn_id,) = proxy.conns
            proxy.stall(conn_id, 0.5)
            began = time.monotonic()
            await client.send(b"slow")
            assert await client.receive() == b"slow"
            assert time.monotonic() - began >= 0.45
            proxy.reset(conn_id)
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
                with anyio.fail_after(5):
                    await client.send(b"x")
                    await client.receive()
        assert proxy.counts["stall"] == 1
        assert proxy.counts["reset"] == 1
        tg.cancel_scope.cancel()


def test_a_paused_holder_and_a_resumed_waiter_are_counted_and_a_double_grant_caught() -> None:
    # worker "p" is stopped from 100 to 3100 ms: its holder (lease to 2000 ms) is stale and
    # ends 5 ms after SIGCONT, told LeaseLost; its waiter (acquire called at 50 ms) is
    # granted after SIGCONT, while "q" still holds the key without being told: caught.
    def at(ms: int) -> int:
        return T0 + ms * MS

    holder = Section("k", 1, at(0), at(10), at(3105), "lost", "0", at(2000), "p")
    taker = Section("k", 2, at(2100), at(2100), at(2200), "ok", "1", 0, "q")
    other = Section("j", 1, at(3000), at(3000), at(3500), "ok", "1", 0, "q")
    waiter = Section("j", 2, at(50), at(3200), at(3300), "ok", "1", 0, "p")
    pause = Fault("pause", at(100), at(3100), target="p")
    report = run_check([holder, taker, other, waiter], [pause])
    assert (report.paused_holders, report.paused_waiters, report.stale_after_resume) == (1, 1, 1)
    assert report.worst_stale_end_after_resume_ms == 5.0
    assert report.resumed_waiter_double_grants == 1
    assert report.violations >= 1


def test_a_partition_stale_body_is_timed_from_the_heal() -> None:
    def at(ms: int) -> int:
        return T0 + ms * MS

    body = Section("k", 1, at(0), at(0), at(2500), "lost", "0", at(2000), "w")
    partition = Fault("partition", at(500), at(4000))
    report = run_check([body], [partition])
    assert report.stale_after_heal == 1
    assert report.worst_stale_end_after_heal_ms == -1500.0  # cancelled before the heal
    assert report.violations == 0


def test_a_killed_worker_whose_body_had_ended_ends_its_section_there() -> None:
    # Issue 15 (second Postgres soak): a worker SIGKILLed while hold() was releasing (the
    # release waits up to release_timeout on a dead connection) has no E line; its body had
    # ended (cancelled at the lease's deadline) before the next holder began. The section
    # ends at the body's end (its X line), not at the kill.
    def at(ms: int) -> int:
        return T0 + ms * MS

    log = f"B k 1 {at(0)} {at(0)} {at(2000)}\nX k 1 {at(1990)}\n"
    report = ChaosReport(config="unit", held_after=0)
    sections: list[Section] = []
    _parse_log(log, "w-1", at(3500), sections, report)
    assert [(s.end, s.outcome) for s in sections] == [(at(1990), "killed")]
    later = Section("k", 2, at(100), at(2100), at(2200), "ok", "1", 0, "q")
    assert check(report, [*sections, later], [], {}, ChaosConfig()).violations == 0
    # Without an X line the section ran, for the checker, until the kill: an overlap.
    sections = []
    _parse_log(f"B k 1 {at(0)} {at(0)} {at(2000)}\n", "w-1", at(3500), sections, report)
    assert sections[0].end == at(3500)
    report = ChaosReport(config="unit", held_after=0)
    assert check(report, [*sections, later], [], {}, ChaosConfig()).violations == 1


class _StuckRelease:
    """A memory lock whose release does not answer until told to (a dead connection)."""

    def __init__(self) -> None:
        self.inner = MemoryThreadLock()
        self.releasing = anyio.Event()
        self.answer = anyio.Event()

    async def acquire(self, key: str, *, ttl: float, timeout: float | None) -> Lease:
        return await self.inner.acquire(key, ttl=ttl, timeout=timeout)

    async def extend(self, lease: Lease, *, ttl: float | None = None) -> Lease:
        return await self.inner.extend(lease, ttl=ttl)

    async def release(self, lease: Lease) -> bool:
        self.releasing.set()
        await self.answer.wait()
        return await self.inner.release(lease)


@pytest.mark.anyio
async def test_a_section_logs_its_body_end_before_hold_releases() -> None:
    # What a SIGKILL during the release leaves in the log must say when the body ended.
    lock = _StuckRelease()
    lines: list[str] = []
    config = ChaosConfig(backend="memory", keys=1, hot_keys=1)
    with anyio.fail_after(30):  # a bound on a hung test, not a timing goal
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder_loop, lock, config, random.Random(1), lines.append)
            await lock.releasing.wait()
            kinds = [line.split()[0] for line in lines]
            tg.cancel_scope.cancel()
    assert kinds == ["B", "X"], lines
    began, ended = lines[0].split(), lines[1].split()
    assert ended[1:3] == began[1:3]  # same key, same fence
    assert int(ended[3]) >= int(began[4])


def test_resource_samples_split_rss_and_count_the_processes() -> None:
    import os

    from benchmarks.chaos_resources import resources

    sample = resources([os.getpid()], [os.getpid()], 3)
    assert sample["server_procs"] >= 1
    assert sample["worker_procs"] == 1
    assert 0 < sample["workers_anon_kb"] <= sample["workers_rss_kb"]
    assert 0 < sample["workers_pss_kb"] <= sample["workers_rss_kb"]
    assert sample["connections"] == 3
