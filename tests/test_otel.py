"""OtelObserver: spans read back from the SDK's in-memory exporter."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from tests._inbox_burst import burst_with_a_dead_letter

from threadlock import LeaseLost, LoggingObserver, MemoryThreadLock, ThreadBusy, combine
from threadlock.openai import guard_conversation
from threadlock.otel import OtelObserver
from threadlock.testing import FakeOpenAI

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
async def lock(provider: TracerProvider) -> AsyncIterator[MemoryThreadLock]:
    async with MemoryThreadLock() as backend:
        backend.observer = OtelObserver(tracer_provider=provider)
        yield backend


def spans(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        by_name.setdefault(span.name, []).append(span)
    return by_name


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


async def test_hold_span_contains_acquire_and_the_body(
    lock: MemoryThreadLock, exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    tracer = provider.get_tracer("app")
    async with lock.hold("k", ttl=5) as lease:
        with tracer.start_as_current_span("body"):
            await anyio.sleep(0.01)
    found = spans(exporter)
    (hold,) = found["threadlock.hold"]
    (acquire,) = found["threadlock.acquire"]
    (body,) = found["body"]
    assert parent_of(acquire) == span_id(hold)
    assert parent_of(body) == span_id(hold)  # the hold span is current inside the block
    assert hold.attributes is not None
    assert acquire.attributes is not None
    assert hold.attributes["threadlock.key"] == "k"
    assert hold.attributes["threadlock.backend"] == "memory"
    assert acquire.attributes["threadlock.fence"] == lease.fence
    assert acquire.attributes["threadlock.outcome"] == "acquired"
    assert hold.status.status_code is StatusCode.UNSET
    assert hold.start_time is not None
    assert acquire.start_time is not None
    assert hold.end_time is not None
    assert body.end_time is not None
    assert hold.start_time <= acquire.start_time
    assert hold.end_time >= body.end_time


async def test_a_failing_body_marks_the_hold_span(
    lock: MemoryThreadLock, exporter: InMemorySpanExporter
) -> None:
    with pytest.raises(KeyError):
        async with lock.hold("k"):
            raise KeyError("boom")
    (hold,) = spans(exporter)["threadlock.hold"]
    assert hold.status.status_code is StatusCode.ERROR
    assert [e.name for e in hold.events] == ["exception"]


async def test_a_cancelled_hold_is_marked_not_failed(
    lock: MemoryThreadLock, exporter: InMemorySpanExporter
) -> None:
    with anyio.move_on_after(0.05):
        async with lock.hold("k"):
            await anyio.sleep(5)
    (hold,) = spans(exporter)["threadlock.hold"]
    assert hold.attributes is not None
    assert hold.attributes["threadlock.cancelled"] is True
    assert hold.status.status_code is StatusCode.UNSET


async def test_busy_acquire_has_a_span_with_its_wait(
    lock: MemoryThreadLock, exporter: InMemorySpanExporter
) -> None:
    await lock.acquire("k", ttl=10)
    with pytest.raises(ThreadBusy):
        async with lock.hold("k", timeout=0.1):
            pass
    found = spans(exporter)
    busy = [s for s in found["threadlock.acquire"] if s.attributes["threadlock.outcome"] == "busy"]  # type: ignore[index]
    assert len(busy) == 1
    assert busy[0].end_time is not None
    assert busy[0].start_time is not None
    assert busy[0].end_time - busy[0].start_time >= 90_000_000  # ns: the 0.1 s it waited
    (hold,) = found["threadlock.hold"]
    assert hold.status.status_code is StatusCode.ERROR  # the block never ran
    assert parent_of(busy[0]) == span_id(hold)


async def test_lost_lease_is_an_event_on_the_hold_span(
    lock: MemoryThreadLock, exporter: InMemorySpanExporter
) -> None:
    with pytest.raises(LeaseLost):
        async with lock.hold("k", ttl=0.3, renew_every=0.05) as lease:
            await lock.release(lease)
            await anyio.sleep(5)
    (hold,) = spans(exporter)["threadlock.hold"]
    names = [e.name for e in hold.events]
    assert "threadlock.lease_lost" in names


async def test_waiting_is_an_event_on_the_hold_span(
    lock: MemoryThreadLock, exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    lock.observer = OtelObserver(tracer_provider=provider, waiting_interval=0.05)
    first = await lock.acquire("k", ttl=10)

    async def release_later() -> None:
        await anyio.sleep(0.2)
        await lock.release(first)

    async with anyio.create_task_group() as tg:
        tg.start_soon(release_later)
        async with lock.hold("k"):
            pass
    (hold,) = spans(exporter)["threadlock.hold"]
    assert [e.name for e in hold.events].count("threadlock.waiting") >= 2


async def test_turn_span_is_the_parent_of_the_hold(
    lock: MemoryThreadLock, exporter: InMemorySpanExporter
) -> None:
    fake = FakeOpenAI()
    client = fake.client()
    conversation = fake.add_conversation()
    async with guard_conversation(client, conversation, lock=lock) as turn:
        await turn.create(model="m", input="hi")
    found = spans(exporter)
    (turn_span,) = found["threadlock.turn"]
    (hold,) = found["threadlock.hold"]
    assert parent_of(hold) == span_id(turn_span)
    assert turn_span.attributes is not None
    assert turn_span.attributes["threadlock.api"] == "conversation"
    assert turn_span.attributes["threadlock.key"] == conversation


async def test_inbox_signals_are_span_events(
    lock: MemoryThreadLock, exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    with provider.get_tracer("bot").start_as_current_span("bot"):
        await burst_with_a_dead_letter(lock)
    found: dict[str, list[dict[str, object]]] = {}
    for span in exporter.get_finished_spans():
        for event in span.events:
            found.setdefault(event.name, []).append(dict(event.attributes or {}))
    assert len(found["threadlock.inbox_posted"]) == 5
    sizes = [e["threadlock.batch_size"] for e in found["threadlock.inbox_batch"]]
    assert sizes == [1, 2, 1]
    assert [e["threadlock.key"] for e in found["threadlock.inbox_superseded"]] == ["chat"]
    (dead,) = found["threadlock.inbox_dead_letter"]
    assert (dead["threadlock.message_id"], dead["threadlock.attempts"]) == ("x", 1)
    assert found["threadlock.inbox_pending"][-1]["threadlock.pending"] == 0


async def test_combined_with_logging(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with MemoryThreadLock() as lock:
        lock.observer = combine(LoggingObserver(), OtelObserver(provider.get_tracer("x")))
        async with lock.hold("k"):
            pass
    assert set(spans(exporter)) == {"threadlock.hold", "threadlock.acquire"}


async def test_without_an_sdk_spans_are_no_ops() -> None:
    async with MemoryThreadLock() as lock:
        lock.observer = OtelObserver()  # the global provider: none configured here
        async with lock.hold("k"):
            pass
        assert await lock.inspect("k") is None


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    with pytest.raises(ImportError, match=r"threadlock\[otel\]"):
        OtelObserver()


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="waiting_interval"):
        OtelObserver(waiting_interval=0)
    assert OtelObserver(waiting_interval=None).waiting_interval is None
