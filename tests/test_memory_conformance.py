"""The memory backend through the whole conformance suite, on asyncio and trio."""

from threadlock import MemoryThreadLock
from threadlock.testing import backend_conformance

TestMemoryConformance = backend_conformance(MemoryThreadLock, anyio_backends=("asyncio", "trio"))
