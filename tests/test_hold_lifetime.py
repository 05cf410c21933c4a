"""hold() never outlives its holder (issue 19) and keeps the body's exception (issue 18.8).

An async generator that holds the lock and is dropped mid-stream, a ``Hold`` collected without
an exit, a block exited in another task: the lease is released (or expires by its TTL) and no
renewer is left running. On trio, a task that ends inside an unexited ``hold()`` is reported by
trio itself (a nursery it opened is still open); the lease is freed all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.types import Send

from threadlock import LeaseLost, MemoryThreadLock

pytestmark = pytest.mark.anyio

TTL = 2.0


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def renewers() -> list[str]:
    return [t.name for t in anyio.get_running_tasks() if t.name == "threadlock renew"]


async def settle() -> None:
    """Let finalisers scheduled on the event loop run."""
    gc.collect()
    for _ in range(5):
        await anyio.wait_all_tasks_blocked()
        await anyio.sleep(0)


async def until_free(lock: MemoryThreadLock, key: str) -> int:
    """Acquire ``key`` (the next holder), waiting at most the TTL; return its fence."""
    with anyio.fail_after(TTL * 10):  # a generous bound on a hung test, not a timing goal
        lease = await lock.acquire(key, ttl=TTL, timeout=TTL)
    assert await lock.release(lease)
    return lease.fence


async def in_a_task_that_ends_inside_the_block(fn: Callable[[], Awaitable[None]]) -> None:
    """Run ``fn`` in a child task that ends while a ``hold()`` it entered is still open.

    anyio (on asyncio) and trio both report, in that task, the cancel scopes it left open.
    """
    with pytest.RaisesGroup(
        pytest.RaisesExc(RuntimeError, match="cancel scope|stack corrupted"),
        flatten_subgroups=True,
    ):
        async with anyio.create_task_group() as tg:
            tg.start_soon(fn)


@contextlib.asynccontextmanager
async def finaliser_errors(anyio_backend: str) -> AsyncIterator[list[BaseException]]:
    """Collect what the event loop's async-generator finaliser reports."""
    errors: list[BaseException] = []
    if anyio_backend == "asyncio":
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()

        def collect(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            errors.append(context["exception"])

        loop.set_exception_handler(collect)
        try:
            yield errors
        finally:
            loop.set_exception_handler(previous)
    else:

        class Collect(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                assert record.exc_info is not None
                assert record.exc_info[1] is not None
                errors.append(record.exc_info[1])

        handler = Collect()
        logger = logging.getLogger("trio.async_generator_errors")
        logger.addHandler(handler)
        try:
            yield errors
        finally:
            logger.removeHandler(handler)


# Abandoning the generator is the point: trio warns that it was collected unexhausted.
@pytest.mark.filterwarnings("ignore:Async generator .* was garbage collected:ResourceWarning")
async def test_generator_abandoned_mid_stream_frees_the_key(anyio_backend: str) -> None:
    lock = MemoryThreadLock()
    fences: list[int] = []

    async def stream() -> AsyncIterator[int]:
        async with lock.hold("k", ttl=TTL) as lease:
            fences.append(lease.fence)
            for delta in range(100):
                yield delta

    async def handler() -> None:
        deltas = stream()
        assert await deltas.__anext__() == 0
        assert await deltas.__anext__() == 1
        # the client went away: the generator is dropped, never closed

    async with finaliser_errors(anyio_backend) as errors:
        await in_a_task_that_ends_inside_the_block(handler)
        await settle()
        assert renewers() == []
        assert await until_free(lock, "k") > fences[0]
    # the finaliser closed the generator in its own task: the error names the cause
    (error,) = errors
    assert isinstance(error, RuntimeError)
    assert "different task" in str(error)


async def test_generator_closed_with_aclose_frees_the_key_at_once(anyio_backend: str) -> None:
    lock = MemoryThreadLock()

    async def stream() -> AsyncIterator[int]:
        async with lock.hold("k", ttl=TTL):
            for delta in range(100):
                yield delta

    async with contextlib.aclosing(stream()) as deltas:
        assert await deltas.__anext__() == 0
        assert (await lock.inspect("k")) is not None
    assert await lock.inspect("k") is None
    assert renewers() == []


async def test_hold_collected_without_exit_stops_renewing_and_releases(
    anyio_backend: str,
) -> None:
    lock = MemoryThreadLock()
    fences: list[int] = []

    async def forgetful() -> None:
        hold = lock.hold("k", ttl=TTL, renew_every=TTL / 20)
        lease = await hold.__aenter__()
        fences.append(lease.fence)
        await anyio.sleep(0)
        del hold  # never exited

    await in_a_task_that_ends_inside_the_block(forgetful)
    await settle()
    assert renewers() == []
    assert await until_free(lock, "k") > fences[0]


async def test_exit_in_another_task_names_the_cause_and_stops_renewal(
    anyio_backend: str,
) -> None:
    lock = MemoryThreadLock()
    hold = lock.hold("k", ttl=TTL, renew_every=TTL / 20)
    entered = anyio.Event()
    exited = anyio.Event()
    errors: list[BaseException] = []

    async def enter() -> None:
        await hold.__aenter__()
        entered.set()
        await exited.wait()

    async def leave() -> None:
        await entered.wait()
        try:
            await hold.__aexit__(None, None, None)
        except RuntimeError as error:
            errors.append(error)
        exited.set()

    async def both() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(enter)
            tg.start_soon(leave)

    await in_a_task_that_ends_inside_the_block(both)
    (error,) = errors
    assert "different task" in str(error)
    assert "aclosing" in str(error)
    assert await lock.inspect("k") is None  # released by the exit, not by the TTL
    await settle()
    assert renewers() == []


# -- issue 18 item 8: the body's own exception comes out as itself --------------------------


async def test_body_exception_after_a_lost_lease_comes_out_as_itself(anyio_backend: str) -> None:
    lock = MemoryThreadLock()
    with pytest.raises(KeyError) as raised:
        async with lock.hold("k", ttl=TTL, renew_every=TTL / 20) as lease:
            assert await lock.release(lease)  # the lease is gone under the holder
            with anyio.fail_after(TTL * 10):
                try:
                    await anyio.sleep_forever()
                finally:  # cleanup that fails while the body is being cancelled
                    raise KeyError("cleanup")
    notes = getattr(raised.value, "__notes__", [])
    assert any("was lost" in note and f"fence {lease.fence}" in note for note in notes)


async def test_body_ending_because_of_the_loss_raises_lease_lost(anyio_backend: str) -> None:
    lock = MemoryThreadLock()
    with pytest.raises(LeaseLost) as lost:
        async with lock.hold("k", ttl=TTL, renew_every=TTL / 20) as lease:
            assert await lock.release(lease)
            with anyio.fail_after(TTL * 10):
                await anyio.sleep_forever()
    assert lost.value.fence == lease.fence
    assert lost.value.__cause__ is None


async def test_body_that_ends_by_itself_after_its_lease_expired_raises_lease_lost(
    anyio_backend: str,
) -> None:
    # A paused process (SIGSTOP, a blocked event loop) whose body ends on its own once it
    # resumes, before the lease's deadline could cancel it: it ran on a lease another holder
    # may have had meanwhile, so it is told (issue 15, found by the chaos run's pauses).
    import time

    lock = MemoryThreadLock()
    ttl = 0.3
    with pytest.raises(LeaseLost) as lost:
        async with lock.hold("k", ttl=ttl) as lease:
            time.sleep(ttl * 1.5)  # the whole event loop stops past the TTL, then resumes
    assert lost.value.fence == lease.fence
    assert "expired before the body ended" in str(lost.value)
    again = await lock.acquire("k", ttl=TTL, timeout=0)
    assert again.fence > lease.fence
    assert await lock.release(again)


async def test_body_exception_without_a_loss_has_no_note(anyio_backend: str) -> None:
    lock = MemoryThreadLock()
    with pytest.raises(KeyError) as raised:
        async with lock.hold("k", ttl=TTL):
            raise KeyError("body")
    assert not getattr(raised.value, "__notes__", [])
    assert await lock.inspect("k") is None


# -- a real ASGI server: Starlette's StreamingResponse, a client that drops the connection ----


class ClosingStreamingResponse(StreamingResponse):
    """Closes its body iterator in the task that streams it, however the stream ends."""

    async def stream_response(self, send: Send) -> None:
        assert isinstance(self.body_iterator, AsyncGenerator)
        async with contextlib.aclosing(self.body_iterator):
            await super().stream_response(send)


def streaming_app(lock: MemoryThreadLock, fences: dict[str, int]) -> Starlette:
    async def deltas(key: str) -> AsyncIterator[bytes]:
        async with lock.hold(key, ttl=TTL) as lease:
            fences[key] = lease.fence
            while True:  # a reply that outlasts the client
                yield b"delta\n"
                await anyio.sleep(0.01)

    async def plain(request: Request) -> StreamingResponse:
        return StreamingResponse(deltas("plain"))

    async def closing(request: Request) -> StreamingResponse:
        return ClosingStreamingResponse(deltas("closing"))

    return Starlette(routes=[Route("/plain", plain), Route("/closing", closing)])


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn runs on asyncio only
@pytest.mark.parametrize("path", ["plain", "closing"])
async def test_streaming_response_whose_client_disconnects_frees_the_key(
    anyio_backend: str, path: str
) -> None:
    """On disconnect Starlette cancels the streaming task. A plain StreamingResponse's
    generator is closed in that task when the cancel lands inside it, and dropped (then
    finalised in another task) when it lands in ``send``; either way the key is freed."""
    lock = MemoryThreadLock()
    fences: dict[str, int] = {}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        streaming_app(lock, fences),
        host="127.0.0.1",
        port=port,
        log_level="critical",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    async with finaliser_errors(anyio_backend) as errors, anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(TTL * 10):
            while not server.started:
                await anyio.sleep(0.01)
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
            client.stream("GET", f"/{path}") as response,
        ):
            lines = response.aiter_lines()
            assert await lines.__anext__() == "delta"
            assert (await lock.inspect(path)) is not None
        # the client has dropped the connection; the server's next send fails
        await settle()
        assert await until_free(lock, path) > fences[path]
        assert renewers() == []
        server.should_exit = True
    if path == "closing":
        assert errors == []  # closed in the streaming task: nothing to report


# -- arrival order end to end: take the lock before acknowledging the job ---------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_workers_that_lock_before_acknowledging_keep_arrival_order(
    anyio_backend: str,
) -> None:
    """Four workers share one queue. Each peeks at the oldest job, takes its conversation's
    lease, and only then acknowledges (removes) it, if it is still the oldest. So a job is
    started only after every earlier job of its conversation was acknowledged and finished."""
    lock = MemoryThreadLock()
    jobs = [(conversation, seq) for seq, conversation in enumerate("ABAAB" * 4)]
    queue = list(jobs)
    started: list[tuple[str, int]] = []
    running: set[str] = set()

    async def worker(number: int) -> None:
        while queue:
            job = queue[0]  # peek: the job stays on the queue
            conversation, seq = job
            async with lock.hold(conversation, ttl=TTL):
                if not queue or queue[0] != job:  # another worker acknowledged it meanwhile
                    continue
                queue.pop(0)  # acknowledge, under the lease
                assert conversation not in running
                running.add(conversation)
                started.append(job)
                for _ in range((number + seq) % 3):  # uneven work: workers overtake each other
                    await anyio.sleep(0)
                running.discard(conversation)

    async with anyio.create_task_group() as tg:
        for number in range(4):
            tg.start_soon(worker, number)
    for conversation in "AB":
        assert [job for job in started if job[0] == conversation] == [
            job for job in jobs if job[0] == conversation
        ]
    assert sorted(started) == sorted(jobs)
