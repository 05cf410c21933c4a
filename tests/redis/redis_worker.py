"""A separate OS process for the Redis tests (run as a script, not collected by pytest).

python redis_worker.py sections URL PREFIX KEY COUNT OUTFILE
    hold KEY COUNT times; append "fence start_ns end_ns" per section to OUTFILE
    (CLOCK_MONOTONIC is shared by every process on Linux, so the times compare).
python redis_worker.py wait URL PREFIX KEY GRACE
    queue for KEY (ttl 60 s, no timeout); print "GOT" if it is ever granted.
python redis_worker.py turn URL PREFIX THREAD_ID RUN_ID TTL
    a worker in the middle of a guarded turn: ``guard_thread`` (lease renewed every ttl/3)
    creates run RUN_ID on THREAD_ID through the real guard code, which records it in the
    Redis run registry; print "READY <run id>" and keep the turn open until killed. The
    OpenAI API is a canned HTTP transport answering the two calls the turn makes (the test
    process's FakeOpenAI holds the real run under the same ids).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import anyio
import openai

from threadlock.backends.redis import RedisThreadLock
from threadlock.openai import guard_thread
from threadlock.testing.fake_openai import sdk_http_module


async def sections(url: str, prefix: str, key: str, count: int, out: str) -> None:
    rows = []
    async with RedisThreadLock.from_url(url, prefix=prefix) as lock:
        for _ in range(count):
            async with lock.hold(key, ttl=30.0, timeout=120.0) as lease:
                start = time.monotonic_ns()
                await anyio.sleep(0)
                end = time.monotonic_ns()
            rows.append(f"{lease.fence} {start} {end}\n")
    with open(out, "w") as handle:
        handle.writelines(rows)


async def wait(url: str, prefix: str, key: str, grace: float) -> None:
    async with RedisThreadLock.from_url(url, prefix=prefix, grace=grace) as lock:
        print("WAITING", flush=True)
        await lock.acquire(key, ttl=60.0, timeout=None)
        print("GOT", flush=True)
        await anyio.sleep(3600)


def _canned_client(thread_id: str, run_id: str) -> openai.AsyncOpenAI:
    module = sdk_http_module()

    class Canned(module.AsyncBaseTransport):  # type: ignore[misc, name-defined]
        async def handle_async_request(self, request: Any) -> Any:
            await request.aread()
            path = str(request.url.path)
            body: dict[str, Any]
            if request.method == "GET" and path.endswith(f"/threads/{thread_id}/runs"):
                body = {"object": "list", "data": [], "has_more": False}
            elif request.method == "POST" and path.endswith(f"/threads/{thread_id}/runs"):
                sent = json.loads(request.content or b"{}")
                body = {
                    "id": run_id,
                    "object": "thread.run",
                    "thread_id": thread_id,
                    "assistant_id": sent.get("assistant_id"),
                    "status": "in_progress",
                    "created_at": int(time.time()),
                    "metadata": sent.get("metadata") or {},
                }
            else:
                return module.Response(404, json={"error": {"message": path}}, request=request)
            return module.Response(200, json=body, request=request)

    http = module.AsyncClient(transport=Canned(), base_url="http://openai.invalid/v1")
    return openai.AsyncOpenAI(
        api_key="sk-worker", base_url="http://openai.invalid/v1", http_client=http, max_retries=0
    )


async def turn(url: str, prefix: str, thread_id: str, run_id: str, ttl: float) -> None:
    client = _canned_client(thread_id, run_id)
    async with (
        RedisThreadLock.from_url(url, prefix=prefix) as lock,
        guard_thread(client, thread_id, lock=lock, ttl=ttl) as guarded,
    ):
        run = await guarded.create(assistant_id="asst_1")
        print("READY", run.id, flush=True)
        await anyio.sleep(3600)


def main(argv: list[str]) -> None:
    mode, url, prefix, key, *rest = argv
    if mode == "sections":
        anyio.run(sections, url, prefix, key, int(rest[0]), rest[1])
    elif mode == "wait":
        anyio.run(wait, url, prefix, key, float(rest[0]))
    elif mode == "turn":
        anyio.run(turn, url, prefix, key, rest[0], float(rest[1]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
