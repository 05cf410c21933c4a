"""The memory backend through the conformance suites (lock, run registry, chain heads), on
asyncio and trio."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from threadlock import MemoryThreadLock
from threadlock.testing import ChainConformance, RegistryConformance, backend_conformance

TestMemoryConformance = backend_conformance(MemoryThreadLock, anyio_backends=("asyncio", "trio"))


class _Memory:
    """A fresh memory backend; it keeps entries in the instance, so there is no ``reopen``."""

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    async def lock(self) -> AsyncIterator[MemoryThreadLock]:
        async with MemoryThreadLock() as backend:
            yield backend


class TestMemoryRegistry(_Memory, RegistryConformance):
    pass


class TestMemoryChains(_Memory, ChainConformance):
    pass
