"""A separate OS process for the crash-recovery tests (run as a script, never collected).

python _turn_worker.py BACKEND URL NAMESPACE THREAD_ID RUN_ID TTL
    BACKEND is ``redis`` (NAMESPACE is the key prefix) or ``postgres`` (NAMESPACE is the
    table). A worker in the middle of a guarded turn: ``guard_thread`` (lease renewed every
    ttl/3) creates run RUN_ID on THREAD_ID through the real guard code, which records it in
    the backend's run registry; print "READY <run id>" and keep the turn open until killed.
    The OpenAI API is a canned HTTP transport answering the two calls the turn makes (the
    test process's FakeOpenAI holds the real run under the same ids).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import anyio
import openai

from threadlock import ThreadLock
from threadlock.openai import guard_thread
from threadlock.testing.fake_openai import sdk_http_module


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


def open_backend(backend: str, url: str, namespace: str) -> ThreadLock:
    """The backend ``backend`` on ``url``, in ``namespace`` (a Redis prefix, a Postgres table)."""
    if backend == "redis":
        from threadlock.backends.redis import RedisThreadLock

        return RedisThreadLock.from_url(url, prefix=namespace)
    if backend == "postgres":
        from threadlock.backends.postgres import PostgresThreadLock

        return PostgresThreadLock.from_url(url, table=namespace)
    raise SystemExit(f"unknown backend {backend!r}")


async def turn(
    backend: str, url: str, namespace: str, thread_id: str, run_id: str, ttl: float
) -> None:
    client = _canned_client(thread_id, run_id)
    # The SDK builds its models on first use (about a second on a loaded machine, with the
    # event loop blocked); pay that before the lease exists, so the renewal is never starved.
    await client.beta.threads.runs.list(thread_id, limit=1)
    async with (
        open_backend(backend, url, namespace) as lock,
        guard_thread(client, thread_id, lock=lock, ttl=ttl) as guarded,
    ):
        run = await guarded.create(assistant_id="asst_1")
        print("READY", run.id, flush=True)
        await anyio.sleep(3600)


if __name__ == "__main__":
    name, url, namespace, thread_id, run_id, ttl = sys.argv[1:]
    anyio.run(turn, name, url, namespace, thread_id, run_id, float(ttl))
