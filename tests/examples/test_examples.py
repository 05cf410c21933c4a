"""The examples in examples/, each driven as its framework would drive it, against FakeOpenAI.

Nothing of threadlock is mocked. Telegram is replaced by aiogram's own session hook
(``Bot(session=...)``), HTTP by httpx's ASGI transport, and Redis and Postgres are private
servers started for the test (skipped where the binaries are missing, failed under CI=true).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import procrastinate
import procrastinate.jobs
import psycopg
import pytest
from tests._servers.postgres_server import PostgresServer, ServerUnavailable

from threadlock import MemoryThreadLock
from threadlock.backends.postgres import PostgresThreadLock
from threadlock.testing import FakeOpenAI

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# Variables that would switch an example from its offline demo to real services.
_REAL_SERVICE_VARS = (
    "OPENAI_API_KEY",
    "TELEGRAM_BOT_TOKEN",
    "THREADLOCK_URL",
    "REDIS_URL",
    "UPSTASH_REDIS_URL",
    "REDIS_HOST",
    "DATABASE_URL",
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiogram, FastAPI's servers, arq and procrastinate run on asyncio


@cache
def load(name: str) -> ModuleType:
    """Import examples/<name>.py as module ``example_<name>``."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def offline_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _REAL_SERVICE_VARS}
    env.update(extra)
    return env


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and this example test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


# -- every example runs as a script ----------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "expect"),
    [
        ("asyncio_bot.py", "every user answered in order: True"),
        ("aiogram_bot.py", "chat 2: 1 reply for its burst"),
        ("fastapi_webhook.py", "user1: 1 reply for its burst"),
        ("fastapi_streaming.py", "user1 ['Reply to: message 0 from user1', 'Reply to: message 1"),
        ("arq_worker.py", "second, retried: Reply to: second"),
        ("assistants_thread.py", "run statuses: ['completed', 'completed']"),
        ("flask_webhook.py", "'reply': 'Reply to: message 2 from user1'"),
        ("celery_worker.py", "one turn at a time, each with a new fence: True"),
        ("django_view.py", "'reply': 'Reply to: message 2 from user1'"),
    ],
)
def test_example_runs_offline(script: str, expect: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=90,
        env=offline_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert expect in done.stdout
    assert "Traceback" not in done.stderr


# -- plain asyncio ---------------------------------------------------------------------------


async def test_asyncio_bot_answers_each_user_in_order() -> None:
    example = load("asyncio_bot")
    fake = FakeOpenAI(response_duration=0.02)
    replies = await example.run(fake.client(), MemoryThreadLock(), users=3, messages=5)
    assert fake.concurrency_errors == 0
    for user, pairs in replies.items():
        assert [text for text, _ in pairs] == [f"{user} message {i}" for i in range(5)]
        assert all(reply == f"Reply to: {text}" for text, reply in pairs)


# -- Assistants thread with a tool call -------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK's: Assistants is sunset
async def test_assistants_turns_wait_through_requires_action() -> None:
    example = load("assistants_thread")
    fake = FakeOpenAI(run_duration=0.1)
    statuses = await example.run(fake.client(), fake)
    assert statuses == ["completed", "completed"]
    assert fake.concurrency_errors == 0  # the second turn waited while the first run needed us
    assert fake.calls["POST /threads/{thread_id}/runs/{run_id}/submit_tool_outputs"] == 1
    assert fake.calls["POST /threads/{thread_id}/runs"] == 2


# -- aiogram ---------------------------------------------------------------------------------


async def test_aiogram_burst_gets_one_reply_per_chat_and_loses_no_message() -> None:
    example = load("aiogram_bot")
    from aiogram import Bot

    # The first update of a chat owns it and its turn takes 0.2 s on the fake's clock; the
    # others are fed in the same loop iteration, so they are pending when that turn ends.
    fake = FakeOpenAI(response_duration=0.2)
    session = example.OfflineSession()
    bot = Bot("123456:test-token", session=session)
    async with MemoryThreadLock() as lock:
        dp = example.build_dispatcher(lock, fake.client())
        updates = [
            example.text_update(chat, f"chat {chat} message {i}")
            for i in range(4)
            for chat in (11, 22)
        ]
        await asyncio.gather(*(dp.feed_update(bot, update) for update in updates))
        # a redelivered update (same update id, same message id) is a no-op
        await dp.feed_update(bot, updates[-1])
        heads = {chat: await lock.chain_head(example.chain_key(chat)) for chat in (11, 22)}
        inbox = example.Inbox(lock)
        for chat in (11, 22):
            assert await inbox.pending(example.chain_key(chat)) == []
        assert await lock.held() == []

    assert fake.concurrency_errors == 0
    assert fake.branches() == {}  # no two turns continued from the same response
    for chat in (11, 22):
        texts = [f"chat {chat} message {i}" for i in range(4)]
        replies = [text for c, text in session.sent if c == chat]
        assert len(replies) == 1  # one reply for the burst: the first turn was superseded
        # every message is in the chat's one linear chain, in arrival order, exactly once
        chain = fake.response_chain(heads[chat])
        assert [line for turn in chain for line in turn.split("\n")] == texts
        assert replies == [f"Reply to: {chain[-1]}"]


async def test_aiogram_offline_session_refuses_unknown_calls() -> None:
    example = load("aiogram_bot")
    from aiogram import Bot

    bot = Bot("123456:test-token", session=example.OfflineSession())
    with pytest.raises(NotImplementedError):
        await bot.get_me()


# -- FastAPI ---------------------------------------------------------------------------------


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[Any, httpx.AsyncClient, MemoryThreadLock, FakeOpenAI]]:
    example = load("fastapi_webhook")
    fake = FakeOpenAI(response_duration=0.05)
    lock = MemoryThreadLock()
    app = example.create_app(lock=lock, client=fake.client())
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://webhook") as http,
    ):
        yield app, http, lock, fake


async def test_fastapi_burst_gets_one_reply_per_user_and_loses_no_message(webhook: Any) -> None:
    app, http, _lock, fake = webhook
    fake.response_duration = 0.2  # the burst is posted while the first turn runs

    async def post(user: str, text: str) -> httpx.Response:
        return await http.post("/webhook", json={"user_id": user, "text": text})

    answers = await asyncio.gather(
        *(post(f"u{u}", f"message {i}") for i in range(5) for u in range(3))
    )
    assert [a.status_code for a in answers] == [200] * 15
    assert fake.concurrency_errors == 0
    for u in range(3):
        user = f"u{u}"
        bodies = [a.json() for a in answers if a.json()["user_id"] == user]
        assert sorted(b["status"] for b in bodies) == ["answered"] + ["queued"] * 4
        assert [r for b in bodies for r in b["replies"]] == [
            reply for who, reply in app.state.outbox if who == user
        ]
        assert len([1 for who, _ in app.state.outbox if who == user]) == 1  # one reply
        conversation_id = await app.state.conversations.get(user)
        inputs = fake.conversation_inputs(conversation_id)
        lines = [line for text in inputs for line in text.split("\n")]
        assert sorted(lines) == [f"message {i}" for i in range(5)]  # each once, none lost
        assert await app.state.inbox.pending(conversation_id) == []
    assert (await http.get("/locks")).json() == []


async def test_fastapi_redelivered_message_is_answered_once(webhook: Any) -> None:
    app, http, _lock, fake = webhook
    body = {"user_id": "u5", "text": "hello", "message_id": "wamid.1"}
    first = await http.post("/webhook", json=body)
    again = await http.post("/webhook", json=body)
    assert first.json()["status"] == "answered"
    assert again.json() == {"user_id": "u5", "status": "queued", "replies": [], "fence": None}
    assert fake.calls["POST /responses"] == 1
    assert len(app.state.outbox) == 1


async def test_fastapi_full_inbox_is_429_with_retry_after(webhook: Any) -> None:
    app, http, lock, _fake = webhook
    conversation_id = await app.state.conversations.get("u1")
    app.state.inbox = load("fastapi_webhook").Inbox(lock, max_pending=2)
    async with lock.hold(conversation_id, ttl=7):  # another worker owns the conversation
        queued = [
            await http.post("/webhook", json={"user_id": "u1", "text": f"m{i}"}) for i in range(2)
        ]
        full = await http.post("/webhook", json={"user_id": "u1", "text": "m2"})
        pending = await app.state.inbox.pending(conversation_id)
    assert [q.json()["status"] for q in queued] == ["queued", "queued"]
    assert full.status_code == 429
    assert int(full.headers["Retry-After"]) >= 1
    assert [m.payload["text"] for m in pending] == ["m0", "m1"]  # nothing stored was dropped


async def test_fastapi_client_disconnect_releases_the_lock_and_the_sweeper_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = load("fastapi_webhook")
    monkeypatch.setattr(example, "SWEEP_INTERVAL", 0.05)
    fake = FakeOpenAI(response_duration=1.0)  # a slow model: the client gives up mid-turn
    lock = MemoryThreadLock()
    app = example.create_app(lock=lock, client=fake.client())
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://webhook") as http,
    ):
        conversation_id = await app.state.conversations.get("u9")
        request = asyncio.create_task(http.post("/webhook", json={"user_id": "u9", "text": "slow"}))
        deadline = time.monotonic() + 30
        while not fake.calls["POST /responses"]:  # the batch's model call is in flight
            assert time.monotonic() < deadline, "the turn never started"
            await asyncio.sleep(0.01)
        owner = await lock.inspect(conversation_id)
        assert owner is not None
        request.cancel()  # ASGITransport runs the app in the request's task: it is cancelled
        with pytest.raises(asyncio.CancelledError):
            await request
        now = await lock.inspect(conversation_id)  # released at once (or the sweeper's by now)
        assert now is None or now.fence != owner.fence
        pending = await app.state.inbox.pending(conversation_id)
        assert [m.payload["text"] for m in pending] == ["slow"]  # the batch stayed pending
        fake.response_duration = 0.01
        # The cancelled batch stayed pending; the sweeper answers it once the lease is free
        # (its guard waits out the cancelled request's response, still running at the fake).
        deadline = time.monotonic() + 60
        while not app.state.outbox:
            assert time.monotonic() < deadline, "the sweeper did not answer the pending batch"
            await asyncio.sleep(0.01)
        assert app.state.outbox == [("u9", "Reply to: slow")]
        assert await app.state.inbox.pending(conversation_id) == []


# -- FastAPI, streaming (SSE) ------------------------------------------------------------------


@pytest.fixture
async def chat() -> AsyncIterator[tuple[Any, httpx.AsyncClient, MemoryThreadLock, FakeOpenAI]]:
    example = load("fastapi_streaming")
    fake = FakeOpenAI(response_duration=0.05)
    lock = MemoryThreadLock()
    app = example.create_app(lock=lock, client=fake.client())
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://chat") as http,
    ):
        yield app, http, lock, fake


async def test_fastapi_streaming_burst_streams_each_reply_in_turn(chat: Any) -> None:
    _app, http, _lock, fake = chat
    example = load("fastapi_streaming")

    async def post(user: str, text: str) -> list[tuple[str, dict[str, Any]]]:
        answer = await http.post(f"/chat/{user}", json={"text": text})
        assert answer.headers["content-type"].startswith("text/event-stream")
        events: list[tuple[str, dict[str, Any]]] = example.parse_events(answer.text)
        return events

    answers = await asyncio.gather(*(post(f"u{u}", f"m{i}") for i in range(4) for u in range(2)))
    assert fake.concurrency_errors == 0
    for u in range(2):
        turns = sorted(
            (events[-1][1]["fence"], "".join(d["text"] for n, d in events if n == "delta"))
            for events in answers[u::2]
        )
        assert sorted(reply for _, reply in turns) == [f"Reply to: m{i}" for i in range(4)]
        assert len({fence for fence, _ in turns}) == 4  # four turns, four fences
    assert all(events[-1][0] == "done" for events in answers)
    assert (await http.get("/locks")).json() == []


async def test_fastapi_streaming_busy_conversation_is_an_error_event(
    chat: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, http, lock, _fake = chat
    monkeypatch.setattr(load("fastapi_streaming"), "TURN_TIMEOUT", 0.2)
    await http.post("/chat/u1", json={"text": "first"})
    conversation_id = app.state.conversations["u1"]
    async with lock.hold(conversation_id, ttl=7):  # another worker's turn
        answer = await http.post("/chat/u1", json={"text": "hi"})
    events = load("fastapi_streaming").parse_events(answer.text)
    assert [name for name, _ in events] == ["error"]
    assert 1 <= events[0][1]["retry_after"] <= 7


async def test_fastapi_streaming_browser_disconnect_releases_at_once() -> None:
    import socket

    import uvicorn

    example = load("fastapi_streaming")
    fake = FakeOpenAI(response_duration=30.0)  # a reply that outlasts the browser
    lock = MemoryThreadLock()
    app = example.create_app(lock=lock, client=fake.client())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    serving = asyncio.create_task(server.serve())
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            await asyncio.sleep(0.01)
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
            http.stream("POST", "/chat/u1", json={"text": "a long story"}) as answer,
        ):
            lines = answer.aiter_lines()
            assert await anext(lines) == "event: delta"
            conversation_id = app.state.conversations["u1"]
            streamed = fake.active_response(conversation_id)
            assert streamed is not None
            assert [info.key for info in await lock.held()] == [conversation_id]
        # The browser went away: the server notices, cancels the handler, closes the stream.
        deadline = time.monotonic() + 10
        while await lock.held():
            assert time.monotonic() < deadline, "the lease was not released"
            await asyncio.sleep(0.01)
        assert fake.response_status(streamed) == "cancelled"
        assert fake.active_response(conversation_id) is None
    finally:
        server.should_exit = True
        await serving


# -- arq -------------------------------------------------------------------------------------


async def test_arq_job_turns_thread_busy_into_retry() -> None:
    example = load("arq_worker")
    from arq import Retry

    fake = FakeOpenAI(response_duration=0.01)
    lock = MemoryThreadLock()
    ctx: dict[str, Any] = {"lock": lock, "openai": fake.client()}
    conversation_id = fake.add_conversation()
    async with lock.hold(conversation_id, ttl=12):  # another job's turn
        with pytest.raises(Retry) as retry:
            await example.answer_message(ctx, conversation_id, "hello")
    assert retry.value.defer_score is not None
    assert 0 < retry.value.defer_score <= 12_000  # the holder's remaining lease, in ms
    assert fake.conversation_inputs(conversation_id) == []  # nothing was sent while busy
    assert await example.answer_message(ctx, conversation_id, "hello") == "Reply to: hello"
    assert fake.conversation_inputs(conversation_id) == ["hello"]


@pytest.fixture
def redis_url() -> Iterator[str]:
    from tests._servers.redis_server import RedisServer, require_redis_server

    require_redis_server()
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")  # arq 0.25
async def test_arq_worker_retries_busy_jobs_until_all_are_answered(redis_url: str) -> None:
    example = load("arq_worker")
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker

    fake = FakeOpenAI(response_duration=0.1)
    conversation_id = fake.add_conversation()
    settings = RedisSettings.from_dsn(redis_url)
    pool = await create_pool(settings)
    texts = [f"message {i}" for i in range(4)]
    jobs = [await pool.enqueue_job("answer_message", conversation_id, t) for t in texts]
    ctx = {"lock": MemoryThreadLock(), "openai": fake.client(), "turn_ttl": 0.6}
    worker = Worker(
        functions=[example.answer_message],
        redis_settings=settings,
        burst=True,
        max_jobs=4,
        max_tries=100,
        poll_delay=0.05,
        ctx=ctx,
        handle_signals=False,
    )
    try:
        await asyncio.wait_for(worker.main(), timeout=60)
        results = [await job.result(timeout=5) for job in jobs]  # type: ignore[union-attr]
        infos = [await job.result_info() for job in jobs]  # type: ignore[union-attr]
    finally:
        await worker.close()
        await pool.aclose()
    assert results == [f"Reply to: {t}" for t in texts]
    assert fake.concurrency_errors == 0
    assert sorted(fake.conversation_inputs(conversation_id)) == texts  # each sent exactly once
    assert max(info.job_try for info in infos if info) > 1  # busy jobs were retried by arq


# -- Flask and Celery (threadlock.sync) ------------------------------------------------------
# The Flask app on Redis with real threads and a real prefork Celery worker are in tests/sync.


def test_flask_webhook_burst_through_the_test_client() -> None:
    import threading

    import threadlock.sync
    from threadlock.sync.testing import sync_client

    example = load("flask_webhook")
    fake = FakeOpenAI(response_duration=0.02)
    app = example.create_app(lock=threadlock.sync.from_url("memory://"), client=sync_client(fake))
    answers: list[Any] = []

    def post(user: str, text: str) -> None:
        answers.append(app.test_client().post("/webhook", json={"user_id": user, "text": text}))

    threads = [
        threading.Thread(target=post, args=(f"u{u}", f"message {i}"))
        for i in range(3)
        for u in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [a.status_code for a in answers] == [200] * 6
    assert fake.concurrency_errors == 0
    for u in range(2):
        bodies = [a.get_json() for a in answers if a.get_json()["user_id"] == f"u{u}"]
        assert sorted(b["reply"] for b in bodies) == [f"Reply to: message {i}" for i in range(3)]
    assert app.test_client().get("/locks").get_json() == []


def test_celery_task_turns_thread_busy_into_a_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery.exceptions import Retry

    from threadlock.sync.testing import sync_client

    example = load("celery_worker")
    fake = FakeOpenAI(response_duration=0.01)
    monkeypatch.setattr(example, "openai_client", lambda: sync_client(fake))
    monkeypatch.setattr(example, "TURN_TIMEOUT", 0.2)
    conversation_id = fake.add_conversation()
    with example.lock.hold(conversation_id, ttl=12):  # another task's turn
        with pytest.raises(Retry) as retry:
            example.answer_message.apply(args=(conversation_id, "hello"), throw=True).get()
    assert retry.value.when is not None
    assert 0 < float(retry.value.when) <= 12  # the holder's remaining lease, in seconds
    assert fake.conversation_inputs(conversation_id) == []  # nothing was sent while busy
    done = example.answer_message.apply(args=(conversation_id, "hello"), throw=True).get()
    assert done["reply"] == "Reply to: hello"
    assert fake.conversation_inputs(conversation_id) == ["hello"]


# -- Postgres job queue (procrastinate) -------------------------------------------------------


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer.create()
    except ServerUnavailable as error:
        _unavailable(str(error))
        raise  # unreachable
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def queue_dsn(pg_server: PostgresServer) -> str:
    """A fresh database per test: procrastinate's, threadlock's and the inbox's tables."""
    name = f"queue_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg_server.dsn.rsplit("/", 1)[0] + f"/{name}"


async def _send_burst(example: ModuleType, dsn: str, contacts: int, messages: int) -> None:
    app = example.make_app(dsn)
    async with app.open_async():
        for i in range(messages):
            for c in range(contacts):
                await example.receive(app, dsn, f"contact{c}", f"message {i}")


async def test_pg_queue_serialises_contacts_and_bounds_concurrency(queue_dsn: str) -> None:
    example = load("pg_job_queue")
    await example.setup(queue_dsn)
    await example.setup(queue_dsn)  # idempotent
    await _send_burst(example, queue_dsn, contacts=5, messages=4)
    await asyncio.wait_for(
        example.run_worker(queue_dsn, concurrency=2, reply_seconds=0.05, until_done=True), 90
    )
    report = await example.report(queue_dsn)
    assert report["answered"] == report["messages"] == 20
    assert report["out_of_order"] == 0
    assert report["overlapping_turns"] == 0
    assert 1 <= report["max_contacts_at_once"] <= 2


def test_pg_queue_script_demo(queue_dsn: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "pg_job_queue.py"), "--dsn", queue_dsn, "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        env=offline_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert '"answered": 20' in done.stdout
    assert '"out_of_order": 0' in done.stdout
    assert "Traceback" not in done.stderr


async def test_pg_queue_busy_drain_ends_beside_a_waiting_one(queue_dsn: str) -> None:
    """A drain that finds its contact held, while another drain of the contact waits (the
    sweep or a webhook deferred it meanwhile), ends and leaves that one waiting: it must not
    go back to 'todo' itself, which the queueing_lock index refuses (UniqueViolation)."""
    example = load("pg_job_queue")
    await example.setup(queue_dsn)
    app = example.make_app(queue_dsn)
    async with (
        app.open_async(),
        PostgresThreadLock.from_url(queue_dsn) as lock,
        await psycopg.AsyncConnection.connect(queue_dsn, autocommit=True) as conn,
    ):
        holder = await lock.acquire("contact:alice", ttl=30)
        await example.defer_drain(app, "alice")  # the drain that waits: status 'todo'
        worker_id = await app.job_manager.register_worker()
        running = await app.job_manager.fetch_job(queues=None, worker_id=worker_id)
        assert running is not None  # it runs now: status 'doing'
        await example.defer_drain(app, "alice")  # deferred while it runs
        bot = example.Bot(queue_dsn, lock, None, 10.0, "test")
        context = procrastinate.JobContext(
            app=app,
            job=running,
            start_timestamp=time.time(),
            additional_context={"bot": bot},
            abort_reason=lambda: None,
        )
        assert await example.drain(context, "alice") == 0  # busy: ends, no exception
        await app.job_manager.finish_job(
            running, procrastinate.jobs.Status.SUCCEEDED, delete_job=False
        )
        await app.job_manager.unregister_worker(worker_id)
        cur = await conn.execute(
            "SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY 1 ORDER BY 1"
        )
        assert await cur.fetchall() == [("succeeded", 1), ("todo", 1)]
        assert await lock.release(holder)


def _worker(dsn: str, *, concurrency: int, ttl: float) -> subprocess.Popen[str]:
    command = [sys.executable, str(EXAMPLES / "pg_job_queue.py"), "--dsn", dsn, "worker"]
    command += ["--concurrency", str(concurrency), "--ttl", str(ttl)]
    command += ["--sweep-every", "0.5", "--reply-seconds", "0.3"]
    return subprocess.Popen(
        command, env=offline_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


async def _wait_for(dsn: str, query: str, *, timeout: float) -> tuple[Any, ...]:
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            row = await (await conn.execute(query)).fetchone()
            if row is not None and row[0]:
                return tuple(row)
            assert time.monotonic() < deadline, f"timed out waiting for: {query}"
            await asyncio.sleep(0.05)


async def test_pg_queue_loses_no_message_across_sigkill_and_restart(queue_dsn: str) -> None:
    example = load("pg_job_queue")
    await example.setup(queue_dsn)
    await _send_burst(example, queue_dsn, contacts=4, messages=5)

    first = _worker(queue_dsn, concurrency=3, ttl=2.0)
    try:
        # Kill it in the middle of a turn: some answered, one started and not answered.
        await _wait_for(
            queue_dsn,
            "SELECT count(*) FILTER (WHERE answered_at IS NOT NULL) >= 4"
            " AND bool_or(started_at IS NOT NULL AND answered_at IS NULL) FROM bot_inbox",
            timeout=60,
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)  # reads and closes its pipe
    async with await psycopg.AsyncConnection.connect(queue_dsn) as conn:
        cur = await conn.execute(
            "SELECT id FROM bot_inbox WHERE started_at IS NOT NULL AND answered_at IS NULL"
        )
        cut_short = [row[0] for row in await cur.fetchall()]
        cur = await conn.execute("SELECT count(*) FROM threadlock_leases")
        leases_left = (await cur.fetchone())[0]  # type: ignore[index]
    assert cut_short
    assert leases_left >= 1  # the dead worker's leases are still there, until their TTL

    second = _worker(queue_dsn, concurrency=3, ttl=2.0)
    try:
        await _wait_for(
            queue_dsn, "SELECT bool_and(answered_at IS NOT NULL) FROM bot_inbox", timeout=60
        )
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            second.kill()
            second.communicate()

    report = await example.report(queue_dsn)
    assert report["answered"] == report["messages"] == 20
    assert report["out_of_order"] == 0
    assert report["overlapping_turns"] == 0
    assert report["max_contacts_at_once"] <= 3
    assert len(report["workers"]) == 2  # both processes answered some
    async with await psycopg.AsyncConnection.connect(queue_dsn) as conn:
        cur = await conn.execute("SELECT worker FROM bot_inbox WHERE id = ANY(%s)", (cut_short,))
        answered_by = {row[0] for row in await cur.fetchall()}
    assert all(w.endswith(f":{second.pid}") for w in answered_by)
