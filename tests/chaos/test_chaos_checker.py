"""The chaos checker and proxy on their own: a checker that cannot fail proves nothing."""

from __future__ import annotations

import time

import anyio
import anyio.abc
import pytest
from benchmarks.chaos import ChaosConfig, ChaosReport, Fault, FaultProxy, Section, check

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
