"""Fixtures for the synchronous face: FakeOpenAI over HTTP (Redis comes from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests._servers.fake_openai_http import serve_over_http

from threadlock.testing import FakeOpenAI


@pytest.fixture
def fake_server() -> Iterator[tuple[FakeOpenAI, str]]:
    """A FakeOpenAI served over HTTP on 127.0.0.1 by uvicorn; yields it and its base URL."""
    fake = FakeOpenAI(response_duration=0.3)
    with serve_over_http(fake) as url:
        yield fake, url
