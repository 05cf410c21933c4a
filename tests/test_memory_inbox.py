"""The memory backend through the inbox conformance suite, on asyncio and trio."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from threadlock import MemoryThreadLock
from threadlock.testing import InboxConformance


class TestMemoryInbox(InboxConformance):
    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    async def lock(self) -> AsyncIterator[MemoryThreadLock]:
        async with MemoryThreadLock() as backend:
            yield backend
