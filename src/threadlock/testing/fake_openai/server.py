"""The transport: how the SDK's HTTP client reaches the fake, and how a request is served.

The installed ``openai`` SDK decides the HTTP library: recent SDKs use ``httpx2``, older ones
(1.x/2.x) use ``httpx``. :func:`sdk_http_module` finds it; :func:`transport_class` builds a
transport class for either library, whose ``handle_async_request`` hands the request to
:meth:`Server.serve`. Serving a request: wait ``latency``, route it, count it, apply an injected
fault if one matches, run the API's handler and turn an :class:`~.errors.APIError` into an
OpenAI error answer.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import AsyncIterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

import anyio
import openai

from threadlock.testing.fake_openai.admin import Counters
from threadlock.testing.fake_openai.errors import APIError, ClientTimeoutError
from threadlock.testing.fake_openai.faults import Faults
from threadlock.testing.fake_openai.state import Settings
from threadlock.testing.fake_openai.wire import (
    Handler,
    Reply,
    Request,
    Route,
    new_id,
    parse_body,
)

if TYPE_CHECKING:
    from threadlock.testing.fake_openai.streaming import EventStream


def sdk_http_module() -> ModuleType:
    """The HTTP library (``httpx2`` or ``httpx``) the installed ``openai`` SDK is built on."""
    client_cls = getattr(openai, "DefaultAsyncHttpxClient", None)
    if isinstance(client_cls, type):
        for klass in client_cls.__mro__:
            root = klass.__module__.partition(".")[0]
            if klass.__name__ == "AsyncClient" and root in ("httpx2", "httpx"):
                return importlib.import_module(root)
    for name in ("httpx2", "httpx"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise RuntimeError("neither httpx2 nor httpx is installed; the openai SDK needs one of them")


class Server:
    """Routes requests to the APIs' handlers, with faults, latency and the counters."""

    def __init__(
        self,
        settings: Settings,
        counters: Counters,
        faults: Faults,
        routes: list[Route],
    ) -> None:
        self._settings = settings
        self._counters = counters
        self._faults = faults
        self._routes: list[tuple[str, re.Pattern[str], str, Handler]] = []
        for method, template, handler in routes:
            regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
            self._routes.append((method, re.compile(regex), template, handler))

    def _api_path(self, raw_path: str) -> str:
        """``raw_path`` without the base URL's path (or ``/v1``), e.g. ``/threads/thread_1``."""
        path = raw_path
        base_path = re.sub(r"^[a-z]+://[^/]*", "", self._settings.base_url)
        if base_path and path.startswith(base_path + "/"):
            path = path[len(base_path) :]
        elif path.startswith("/v1/"):
            path = path[3:]
        return path.rstrip("/") or "/"

    def _route(self, method: str, path: str) -> tuple[str, Handler, dict[str, str]] | None:
        for route_method, regex, template, handler in self._routes:
            match = regex.fullmatch(path)
            if route_method == method and match:
                return template, handler, match.groupdict()
        return None

    async def serve(
        self,
        method: str,
        raw_path: str,
        query: dict[str, str],
        content: bytes,
        read_timeout: float | None,
    ) -> Reply | None:
        """Serve one request; ``None`` means the client sees a read timeout."""
        counters = self._counters
        counters.requests += 1
        counters.in_flight += 1
        counters.max_in_flight = max(counters.max_in_flight, counters.in_flight)
        try:
            if self._settings.latency:
                await anyio.sleep(self._settings.latency)
            path = self._api_path(raw_path)
            route = self._route(method, path)
            template = route[0] if route else path
            counters.calls[f"{method} {template}"] += 1
            fault = self._faults.take(method, path, template)

            reply: Reply | None = None
            if fault is None or fault.apply_effect:
                request = Request(
                    method=method,
                    path=raw_path,
                    template=template,
                    params=route[2] if route else {},
                    query=query,
                    content=content,
                    read_timeout=read_timeout,
                )
                try:
                    reply = await self._dispatch(request, route[1] if route else None)
                except ClientTimeoutError:
                    if fault is None:
                        counters.timeouts += 1
                        return None
            if fault is not None:
                if reply is not None and reply.stream is not None:
                    await reply.stream.drain()  # served in full, then the answer is lost
                if fault.timeout:
                    counters.timeouts += 1
                    return None
                reply = fault.reply()
            assert reply is not None
            if reply.status >= 400:
                counters.errors[reply.status] += 1
            stall = self._faults.take_stall(method, path, template)
            if stall is not None:
                await stall.hold()
            return reply
        finally:
            counters.in_flight -= 1

    async def _dispatch(self, request: Request, handler: Handler | None) -> Reply:
        """Run the handler; OpenAI-shaped errors become replies (and are counted)."""
        try:
            if handler is None:
                raise APIError(404, f"Invalid URL ({request.method} {request.path})")
            request.body = parse_body(request.content)
            reply = await handler(request)
        except APIError as error:
            if error.kind is not None:
                self._counters.concurrency_errors += 1
                self._counters.concurrency_errors_by_kind[error.kind] += 1
            reply = Reply(error.status, error.body())
        reply.headers.setdefault("x-request-id", new_id("req"))
        return reply


class _TransportMixin:
    """Turns an ``httpx``/``httpx2`` request into a call to :meth:`Server.serve`."""

    def __init__(self, server: Server, module: ModuleType) -> None:
        self._server = server
        self._module = module

    async def handle_async_request(self, request: Any) -> Any:
        await request.aread()
        module = self._module
        timeout = request.extensions.get("timeout")
        read_timeout = timeout.get("read") if isinstance(timeout, Mapping) else None
        reply = await self._server.serve(
            str(request.method).upper(),
            str(request.url.path),
            dict(request.url.params.multi_items()),
            bytes(request.content),
            float(read_timeout) if isinstance(read_timeout, int | float) else None,
        )
        if reply is None:
            raise module.ReadTimeout("Read timed out (FakeOpenAI)", request=request)
        headers = {"content-type": "application/json", **reply.headers}
        if reply.stream is not None:
            return module.Response(
                reply.status,
                headers=headers,
                stream=_byte_stream_class(module)(reply.stream, module, request),
                request=request,
            )
        return module.Response(
            reply.status,
            headers=headers,
            content=json.dumps(reply.body).encode(),
            request=request,
        )


class _ByteStreamMixin:
    """A streamed answer's body: the events as the client reads them; closing it is a
    disconnect. A client read timeout while the fake generates is the library's
    ``ReadTimeout``."""

    def __init__(self, events: EventStream, module: ModuleType, request: Any) -> None:
        self._events = events
        self._module = module
        self._request = request

    def __aiter__(self) -> AsyncIterator[bytes]:
        # An iterator object, not an async generator: one the client abandons holds nothing
        # that trio's finaliser would have to warn about; aclose() closes the events.
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._events.__aiter__().__anext__()
        except ClientTimeoutError:
            raise self._module.ReadTimeout(
                "Read timed out (FakeOpenAI)", request=self._request
            ) from None

    async def aclose(self) -> None:
        await self._events.aclose()


_TRANSPORT_CLASSES: dict[str, type[Any]] = {}
_BYTE_STREAM_CLASSES: dict[str, type[Any]] = {}


def _byte_stream_class(module: ModuleType) -> type[Any]:
    """The ``AsyncByteStream`` class for ``module``, built once per library."""
    cls = _BYTE_STREAM_CLASSES.get(module.__name__)
    if cls is None:
        base: type[Any] = module.AsyncByteStream
        cls = type("FakeOpenAIEventStream", (_ByteStreamMixin, base), {"__module__": __name__})
        _BYTE_STREAM_CLASSES[module.__name__] = cls
    return cls


def transport_class(module: ModuleType) -> type[Any]:
    """The transport class for ``module`` (``httpx2`` or ``httpx``), built once per library."""
    cls = _TRANSPORT_CLASSES.get(module.__name__)
    if cls is None:
        base: type[Any] = module.AsyncBaseTransport
        cls = type(
            "FakeOpenAITransport",
            (_TransportMixin, base),
            {"__module__": __name__, "__doc__": "Serves requests from a FakeOpenAI."},
        )
        _TRANSPORT_CLASSES[module.__name__] = cls
    return cls
