"""FakeOpenAI over HTTP on 127.0.0.1 (uvicorn in a thread), for clients in other processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from threadlock.testing import FakeOpenAI
from threadlock.testing.fake_openai import sdk_http_module

__all__ = ["serve_over_http"]


def _asgi_app(fake: FakeOpenAI) -> Any:
    """An ASGI app that serves ``fake``'s API, for clients in other processes."""
    module = sdk_http_module()
    transport = fake.transport(module=module)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = scope["query_string"].decode()
        url = f"http://fake{scope['path']}" + (f"?{query}" if query else "")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        request = module.Request(scope["method"], url, headers=headers, content=body)
        answer = await transport.handle_async_request(request)
        content = await answer.aread()
        await send(
            {
                "type": "http.response.start",
                "status": answer.status_code,
                "headers": [
                    (k.encode("latin-1"), v.encode("latin-1"))
                    for k, v in answer.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding")
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})

    return app


@contextmanager
def serve_over_http(fake: FakeOpenAI) -> Iterator[str]:
    """Serve ``fake``'s API by uvicorn on a free loopback port; yield its base URL (``/v1``)."""
    import uvicorn

    config = uvicorn.Config(
        _asgi_app(fake), host="127.0.0.1", port=0, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fake-openai-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "the FakeOpenAI server did not start"
        assert time.monotonic() < deadline, "the FakeOpenAI server did not start in time"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)
