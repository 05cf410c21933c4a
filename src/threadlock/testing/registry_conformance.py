"""The behaviour suites of the run registry and of the chain heads, one per protocol.

A backend that is a :class:`~threadlock.RunRegistry` subclasses :class:`RegistryConformance`;
one that is a :class:`~threadlock.ChainStore` subclasses :class:`ChainConformance`. Both
protocols live beside the lock (the registry shows the newest run as ``LockInfo.run_id``, a
chain head moves only under a live lease), so the ``lock`` fixture yields a backend that is a
:class:`~threadlock.ThreadLock` too::

    from threadlock.testing import ChainConformance, RegistryConformance

    class TestMyRegistry(RegistryConformance):
        @pytest.fixture
        async def lock(self, server_url, namespace):
            async with MyBackend.from_url(server_url, prefix=namespace) as backend:
                yield backend

        @pytest.fixture
        def reopen(self, server_url, namespace):
            # optional: another instance on the same store (the durability tests need it)
            return lambda: MyBackend.from_url(server_url, prefix=namespace)

Every test gets a fresh, empty ``lock``. ``reopen`` returns a callable that opens another
instance on the same store, as an async context manager. A backend that keeps its entries
in the instance, as the memory backend does, has no such store: it declares
``keeps_entries_in_instance = True`` and gives no ``reopen``. The durability tests (entries
outliving the instance that wrote them) are then not part of its suite at all, and
``test_declares_whether_it_can_reopen`` checks that the declaration and the fixture agree.
Like :class:`BackendConformance`, the suites need pytest and anyio's pytest plugin and
assert behaviour, never speed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ClassVar

import anyio
import pytest

from threadlock._lease import Lease
from threadlock.errors import BackendError, ThreadBusy
from threadlock.protocol import ChainStore, RunRecord, RunRegistry

__all__ = ["ODD_KEY", "ChainConformance", "RegistryConformance", "run_record"]

#: Opens another instance of the backend on the same store.
Reopen = Callable[[], AbstractAsyncContextManager[Any]]

#: A key with glob, brace, quote, SQL-comment and non-ASCII characters: a plain key.
ODD_KEY = "{a}b} *?[x] '; -- käse 🧀"


def run_record(key: str, run_id: str, created_at: float, **changes: Any) -> RunRecord:
    """A :class:`RunRecord` for ``key`` with plausible defaults; ``changes`` replace fields."""
    record = RunRecord(key, "run", run_id, key, created_at, 7, "host:1:task")
    return dataclasses.replace(record, **changes)


class _SharedStore:
    """The fixtures both suites share."""

    pytestmark: ClassVar[Any] = pytest.mark.anyio

    #: TTL (s) of the leases that the tests let expire.
    short_ttl: ClassVar[float] = 0.2
    #: TTL (s) that must not run out during a test.
    long_ttl: ClassVar[float] = 60.0

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def lock(self) -> AsyncIterator[Any]:
        """Override: yield a fresh, empty backend, and close it afterwards."""
        raise NotImplementedError("override the `lock` fixture")
        yield  # pragma: no cover

    #: True for a backend without a store outside the instance (no ``reopen``): its suite
    #: leaves out the tests named in ``_NEED_REOPEN``.
    keeps_entries_in_instance: ClassVar[bool] = False
    #: The tests that need a second instance on the same store.
    _NEED_REOPEN: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.keeps_entries_in_instance:
            for name in cls._NEED_REOPEN:
                setattr(cls, name, None)  # not collected: not a test of this backend

    @pytest.fixture
    def reopen(self) -> Reopen | None:
        """Override: a callable opening another instance on the same store, or ``None``."""
        return None

    async def test_declares_whether_it_can_reopen(self, reopen: Reopen | None) -> None:
        if self.keeps_entries_in_instance:
            assert reopen is None, "keeps_entries_in_instance = True, yet a `reopen` fixture"
        else:
            assert reopen is not None, (
                "no `reopen` fixture: override it, or declare keeps_entries_in_instance = True"
            )

    @staticmethod
    def _need(reopen: Reopen | None) -> Reopen:
        assert reopen is not None  # see test_declares_whether_it_can_reopen
        return reopen


class RegistryConformance(_SharedStore):
    """The :class:`~threadlock.RunRegistry` tests; subclass it and override :meth:`lock`."""

    _NEED_REOPEN = ("test_entries_survive_the_instance_that_wrote_them",)

    async def test_is_a_run_registry(self, lock: Any) -> None:
        assert isinstance(lock, RunRegistry)

    async def test_round_trip(self, lock: Any, reopen: Reopen | None) -> None:
        async with (reopen or _same(lock))() as two:
            one = lock
            first = run_record("thread_a", "run_1", 100.0)
            second = run_record("thread_a", "run_2", 50.0, kind="response", thread_id="conv_a")
            other = run_record("thread_b", "run_3", 75.0, fence=9, owner="elsewhere")
            for record in (first, second, other):
                await one.track_run(record)
            # Per key: in the order recorded. All keys: oldest created_at first.
            assert await two.tracked_runs("thread_a") == [first, second]
            assert await two.tracked_runs() == [second, other, first]
            assert await two.tracked_runs("nothing") == []
            # Recording the same key and run id again replaces it and keeps its place.
            again = run_record("thread_a", "run_1", 100.0, fence=8, owner="retry")
            await two.track_run(again)
            assert await one.tracked_runs("thread_a") == [again, second]
            await two.untrack_run("thread_a", "run_1")
            await two.untrack_run("thread_a", "run_1")  # missing: not an error
            await two.untrack_run("thread_zzz", "run_1")
            assert await one.tracked_runs() == [second, other]
            await one.untrack_run("thread_a", "run_2")
            await one.untrack_run("thread_b", "run_3")
            assert await two.tracked_runs() == []

    async def test_entries_survive_the_instance_that_wrote_them(
        self, lock: Any, reopen: Reopen | None
    ) -> None:
        fresh_instance = self._need(reopen)
        record = run_record(ODD_KEY, "run_odd", 1.5, thread_id="thread ö", owner="a b:c")
        await lock.track_run(record)
        await lock.aclose()  # as good as gone: nothing is kept in the process
        async with fresh_instance() as fresh:
            assert await fresh.tracked_runs() == [record]
            assert await fresh.tracked_runs(ODD_KEY) == [record]

    async def test_inspect_held_and_busy_show_the_newest_tracked_run(self, lock: Any) -> None:
        await lock.track_run(run_record("free", "run_free", 1.0))
        assert await lock.inspect("free") is None  # a free key has no LockInfo, runs or not
        lease = await lock.acquire("busy", ttl=self.long_ttl)
        quiet = await lock.acquire("quiet", ttl=self.long_ttl)
        info = await lock.inspect("busy")
        assert info is not None
        assert info.run_id is None
        await lock.track_run(run_record("busy", "run_1", 5.0, fence=lease.fence))
        await lock.track_run(run_record("busy", "run_2", 1.0, fence=lease.fence))
        info = await lock.inspect("busy")
        assert info is not None
        assert info.run_id == "run_2"  # the newest by recording, whatever its created_at
        assert info.fence == lease.fence
        await lock.track_run(run_record("busy", "run_1", 5.0, fence=2))  # keeps its place
        held = {i.key: i.run_id for i in await lock.held()}
        assert held == {"busy": "run_2", "quiet": None}  # "free" is tracked, not held
        with pytest.raises(ThreadBusy) as busy:
            await lock.acquire("busy", ttl=self.long_ttl, timeout=0)
        assert busy.value.holder is not None
        assert busy.value.holder.run_id == "run_2"
        await lock.untrack_run("busy", "run_2")
        info = await lock.inspect("busy")
        assert info is not None
        assert info.run_id == "run_1"
        with pytest.raises(ThreadBusy) as busy:
            await lock.acquire("busy", ttl=self.long_ttl, timeout=0)
        assert busy.value.holder is not None
        assert busy.value.holder.run_id == "run_1"
        assert await lock.release(lease)
        assert await lock.release(quiet)
        assert await lock.inspect("busy") is None  # free again: no info, whatever is tracked

    async def test_arguments_are_checked_and_name_the_argument(self, lock: Any) -> None:
        with pytest.raises(TypeError, match="record"):
            await lock.track_run(("k", "run", "r", "t", 1.0, 1, "o"))
        with pytest.raises(ValueError, match="key"):
            await lock.untrack_run("", "run_1")
        with pytest.raises(ValueError, match="run_id"):
            await lock.untrack_run("k", "")
        with pytest.raises(TypeError, match="run_id"):
            await lock.untrack_run("k", 5)
        with pytest.raises(ValueError, match="key"):
            await lock.tracked_runs("")
        with pytest.raises(ValueError, match="key"):
            await lock.tracked_runs("a\x00b")
        with pytest.raises(TypeError, match="key"):
            await lock.tracked_runs(5)
        assert await lock.tracked_runs() == []  # nothing was written

    async def test_a_closed_backend_refuses(self, lock: Any) -> None:
        await lock.aclose()
        with pytest.raises(BackendError, match="closed"):
            await lock.track_run(run_record("k", "run_1", 1.0))
        with pytest.raises(BackendError, match="closed"):
            await lock.untrack_run("k", "run_1")
        with pytest.raises(BackendError, match="closed"):
            await lock.tracked_runs()
        with pytest.raises(BackendError, match="closed"):
            await lock.tracked_runs("k")


class ChainConformance(_SharedStore):
    """The :class:`~threadlock.ChainStore` tests; subclass it and override :meth:`lock`."""

    _NEED_REOPEN = ("test_heads_survive_the_instance_that_wrote_them",)

    async def test_is_a_chain_store(self, lock: Any) -> None:
        assert isinstance(lock, ChainStore)

    async def test_advance_chain_is_a_compare_and_set_under_the_lease(self, lock: Any) -> None:
        assert await lock.chain_head("chain") is None
        lease = await lock.acquire("chain", ttl=self.long_ttl)
        assert await lock.advance_chain(lease, "resp_0", "resp_1") is False  # there is no head
        assert await lock.chain_head("chain") is None
        assert await lock.advance_chain(lease, None, "resp_1") is True
        assert await lock.chain_head("chain") == "resp_1"
        assert await lock.advance_chain(lease, None, "resp_x") is False  # a head exists now
        assert await lock.advance_chain(lease, "resp_0", "resp_x") is False  # the head moved
        forged = dataclasses.replace(lease, token="0" * len(lease.token))
        assert await lock.advance_chain(forged, "resp_1", "resp_x") is False
        assert await lock.advance_chain(lease, "resp_1", "resp_2") is True
        # A renewal keeps the token: the renewed lease still moves the head.
        lease = await lock.extend(lease)
        assert await lock.advance_chain(lease, "resp_2", "resp_3") is True
        assert await lock.chain_head("chain") == "resp_3"
        assert await lock.release(lease)
        # A released lease is stale, even with the right head.
        assert await lock.advance_chain(lease, "resp_3", "resp_x") is False
        assert await lock.chain_head("chain") == "resp_3"
        assert await lock.chain_head("other chain") is None  # chains are per key

    async def test_an_expired_or_superseded_lease_cannot_move_the_head(self, lock: Any) -> None:
        old = await lock.acquire("chain", ttl=self.short_ttl)
        assert await lock.advance_chain(old, None, "resp_1")
        await anyio.sleep(self.short_ttl * 1.5)
        # Expired, and nobody took the key since: still refused.
        assert await lock.advance_chain(old, "resp_1", "resp_x") is False
        new = await lock.acquire("chain", ttl=self.long_ttl, timeout=0)
        assert await lock.advance_chain(old, "resp_1", "resp_x") is False  # another holds it
        forged = dataclasses.replace(new, token=new.token[::-1])  # the live fence, wrong token
        assert await lock.advance_chain(forged, "resp_1", "resp_x") is False
        assert await lock.advance_chain(new, "resp_1", "resp_2") is True
        assert await lock.advance_chain(old, "resp_2", "resp_x") is False
        assert await lock.chain_head("chain") == "resp_2"
        assert await lock.release(new)

    async def test_racing_advances_have_one_winner(self, lock: Any, reopen: Reopen | None) -> None:
        # Many tasks (over two instances where the store is shared) race one CAS.
        async with (reopen or _same(lock))() as two:
            lease = await lock.acquire("chain", ttl=self.long_ttl)
            wins: list[str] = []

            async def attempt(backend: Any, index: int) -> None:
                if await backend.advance_chain(lease, None, f"resp_{index}"):
                    wins.append(f"resp_{index}")

            async with anyio.create_task_group() as tg:
                for index in range(10):
                    tg.start_soon(attempt, lock if index % 2 else two, index)
            assert len(wins) == 1
            assert await two.chain_head("chain") == wins[0]
            assert await lock.release(lease)

    async def test_heads_survive_the_instance_that_wrote_them(
        self, lock: Any, reopen: Reopen | None
    ) -> None:
        fresh_instance = self._need(reopen)
        lease = await lock.acquire(ODD_KEY, ttl=self.long_ttl)
        assert await lock.advance_chain(lease, None, "resp_1")
        await lock.aclose()  # closed without releasing, as a crashed process leaves it
        async with fresh_instance() as fresh:
            assert await fresh.chain_head(ODD_KEY) == "resp_1"

    async def test_arguments_are_checked_and_name_the_argument(self, lock: Any) -> None:
        lease = await lock.acquire("k", ttl=self.long_ttl)
        with pytest.raises(TypeError, match="key"):
            await lock.chain_head(None)
        with pytest.raises(ValueError, match="key"):
            await lock.chain_head("")
        with pytest.raises(TypeError, match="lease"):
            await lock.advance_chain("k", None, "resp_1")
        with pytest.raises(ValueError, match="new"):
            await lock.advance_chain(lease, None, "")
        with pytest.raises(TypeError, match="new"):
            await lock.advance_chain(lease, None, 5)
        assert await lock.chain_head("k") is None  # nothing was written
        assert await lock.release(lease)

    async def test_a_closed_backend_refuses(self, lock: Any) -> None:
        lease = Lease("k", "0" * 32, 1, 1.0, 0.0, 1.0)
        await lock.aclose()
        with pytest.raises(BackendError, match="closed"):
            await lock.chain_head("k")
        with pytest.raises(BackendError, match="closed"):
            await lock.advance_chain(lease, None, "resp_1")


def _same(lock: Any) -> Reopen:
    """A ``reopen`` for a backend without one: the same instance, left open on exit."""

    @asynccontextmanager
    async def same() -> AsyncIterator[Any]:
        yield lock

    return same
