"""A sync ``openai.OpenAI`` served by a :class:`~threadlock.testing.FakeOpenAI` in-process.

The fake runs on the process's threadlock loop (the one :mod:`threadlock.sync` uses); the
sync client's transport hands each request to it there and blocks for the answer, so a
Flask view or a Celery task under test talks to the fake as it would to OpenAI. The fake
serves one process only: its copy in a forked child is the child's own.
"""

from __future__ import annotations

from typing import Any

import openai

from threadlock.sync import _runtime
from threadlock.testing import FakeOpenAI
from threadlock.testing.fake_openai import sdk_http_module

__all__ = ["sync_client", "sync_http_client"]


def _transport_class(module: Any) -> type[Any]:
    class SyncFakeTransport(module.BaseTransport):  # type: ignore[misc]
        """Serves a sync client's requests from a FakeOpenAI on the threadlock loop."""

        def __init__(self, fake: FakeOpenAI) -> None:
            self._async = fake.transport(module=module)

        def handle_request(self, request: Any) -> Any:
            content = request.read()
            forwarded = module.Request(
                request.method,
                request.url,
                headers=request.headers,
                content=content,
                extensions=request.extensions,
            )

            async def serve() -> tuple[int, Any, bytes]:
                answer = await self._async.handle_async_request(forwarded)
                return answer.status_code, answer.headers, await answer.aread()

            status, headers, body = _runtime.run(serve)
            return module.Response(status, headers=headers, content=body, request=request)

    return SyncFakeTransport


def sync_http_client(fake: FakeOpenAI, **kwargs: Any) -> Any:
    """A sync ``Client`` of the SDK's HTTP library whose requests ``fake`` serves."""
    if not isinstance(fake, FakeOpenAI):
        raise TypeError(f"fake must be a threadlock.testing.FakeOpenAI, not {type(fake).__name__}")
    module = sdk_http_module()
    kwargs.setdefault("base_url", fake.base_url)
    return module.Client(transport=_transport_class(module)(fake), **kwargs)


def sync_client(fake: FakeOpenAI, *, max_retries: int = 0, **kwargs: Any) -> openai.OpenAI:
    """A real sync :class:`openai.OpenAI` whose requests are all served by ``fake``.

    As :meth:`FakeOpenAI.client`: ``max_retries`` defaults to 0, ``api_key`` to a dummy and
    ``base_url`` to the fake's; other ``kwargs`` go to ``openai.OpenAI``.
    """
    kwargs.setdefault("api_key", "sk-fake-openai")
    kwargs.setdefault("base_url", fake.base_url)
    if "http_client" not in kwargs:
        kwargs["http_client"] = sync_http_client(fake, base_url=kwargs["base_url"])
    return openai.OpenAI(max_retries=max_retries, **kwargs)
