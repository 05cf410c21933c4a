"""The memory backend through the inbox conformance suite, on asyncio and trio; how the inbox
finds a lock's store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from threadlock import Inbox, MemoryThreadLock
from threadlock.inbox import InboxStore, register_store, store_for
from threadlock.inbox.memory import MemoryInboxStore
from threadlock.testing import InboxRecoveryConformance


class TestMemoryInbox(InboxRecoveryConformance):
    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    async def lock(self) -> AsyncIterator[MemoryThreadLock]:
        async with MemoryThreadLock() as backend:
            yield backend


@pytest.mark.anyio
async def test_a_backend_provides_its_store_by_inbox_store() -> None:
    class Provided(MemoryThreadLock):
        def inbox_store(self) -> InboxStore:
            return MemoryInboxStore.of(self)

    lock = Provided()
    assert store_for(lock) is MemoryInboxStore.of(lock)
    answered = [[m.payload for m in b.messages] async for b in Inbox(lock).turns("k", 1)]
    assert answered == [[1]]


def test_a_registered_store_is_used_and_checked() -> None:
    class Other(MemoryThreadLock):
        pass

    mine = MemoryInboxStore(MemoryThreadLock())
    register_store(Other, lambda lock: mine)
    assert store_for(Other()) is mine
    register_store(Other, lambda lock: object())
    with pytest.raises(TypeError, match="InboxStore"):
        store_for(Other())
    with pytest.raises(TypeError, match="lock_type"):
        register_store("Other", lambda lock: mine)  # type: ignore[arg-type]


def test_a_lock_without_a_store_is_refused() -> None:
    with pytest.raises(TypeError, match="lock"):
        Inbox(object())  # type: ignore[arg-type]
