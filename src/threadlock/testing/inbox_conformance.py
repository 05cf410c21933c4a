"""The behaviour suite of the inbox (:class:`threadlock.Inbox`) on a backend.

A backend with an inbox store (see :mod:`threadlock.inbox.store`) subclasses
:class:`InboxConformance` and provides the ``lock`` fixture::

    from threadlock.testing import InboxConformance

    class TestMyInbox(InboxConformance):
        @pytest.fixture
        async def lock(self, server_url, namespace):
            async with MyBackend.from_url(server_url, prefix=namespace) as backend:
                yield backend

        @pytest.fixture
        async def other_lock(self, server_url, namespace):
            # optional: a second instance on the same store, as a second worker would have
            async with MyBackend.from_url(server_url, prefix=namespace) as backend:
                yield backend

Every test uses keys of its own. The suite asserts behaviour (order, batches, what was
acknowledged, what is left pending), never speed; :attr:`InboxConformance.race_rounds` is
how many times the release-boundary race runs.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import pytest

from threadlock.errors import LeaseLost
from threadlock.inbox import Batch, Inbox, InboxFull, SummaryStore
from threadlock.inbox.types import encode_payload

__all__ = ["InboxConformance", "InboxRecoveryConformance"]

#: (keyword arguments of ``turns()`` beyond key and message, the argument the error names)
BAD_TURNS: list[tuple[dict[str, Any], str]] = [
    ({"key": ""}, "key"),
    ({"key": 5}, "key"),
    ({"message": object()}, "message"),
    ({"message": {"a": {1, 2}}}, "message"),
    ({"message": {1: "x"}}, "message"),
    ({"message": [math.nan]}, "message"),
    ({"id": ""}, "id"),
    ({"id": 3}, "id"),
    ({"strategy": "burst"}, "strategy"),
    ({"strategy": None}, "strategy"),
    ({"debounce": -1}, "debounce"),
    ({"debounce": math.nan}, "debounce"),
    ({"debounce": 2.0, "max_wait": 1.0}, "max_wait"),
    ({"max_batch": 0}, "max_batch"),
    ({"max_batch": 1.5}, "max_batch"),
    ({"ttl": 0}, "ttl"),
    ({"max_attempts": 0}, "max_attempts"),
]


class _Boom(Exception):
    pass


def _key() -> str:
    return f"inbox-{uuid.uuid4().hex}"


class InboxConformance:
    """The inbox behaviour every backend with an inbox store must show."""

    pytestmark: ClassVar[Any] = pytest.mark.anyio

    #: Rounds of the release-boundary race (posting as the owner releases).
    race_rounds: ClassVar[int] = 2000
    #: The poster of the race waits 0 to this many - 1 event-loop turns after the owner's
    #: body ends; raise it for a backend whose release takes more turns.
    race_jitter: ClassVar[int] = 12
    #: TTL (s) that must not run out during a test.
    long_ttl: ClassVar[float] = 60.0

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def lock(self) -> AsyncIterator[Any]:
        """Override: yield a fresh backend, and close it afterwards."""
        raise NotImplementedError("override the `lock` fixture")
        yield  # pragma: no cover

    @pytest.fixture
    async def other_lock(self, lock: Any) -> AsyncIterator[Any]:
        """Override: a second instance on the same store (a second worker); by default the
        same instance."""
        yield lock

    # -- helpers ------------------------------------------------------------------------------

    async def _serve(
        self, inbox: Inbox, key: str, message: object, answered: list[list[object]], **kw: Any
    ) -> list[Batch]:
        """One ``turns()`` call whose body records each batch's payloads."""
        batches: list[Batch] = []
        kw.setdefault("ttl", self.long_ttl)
        async with inbox.turns(key, message, **kw) as turns:
            async for batch in turns:
                batches.append(batch)
                answered.append([m.payload for m in batch.messages])
        return batches

    async def _burst(
        self, lock: Any, n: int, **kw: Any
    ) -> tuple[Inbox, str, list[list[object]], list[Batch]]:
        """The first of ``n`` posts owns the key and holds its first batch until the other
        ``n - 1`` are posted (their calls yield nothing); returns what was answered."""
        inbox, key = Inbox(lock), _key()
        answered: list[list[object]] = []
        batches: list[Batch] = []
        go = anyio.Event()
        kw.setdefault("ttl", self.long_ttl)

        async def owner() -> None:
            async with inbox.turns(key, 0, **kw) as turns:
                async for batch in turns:
                    batches.append(batch)
                    answered.append([m.payload for m in batch.messages])
                    await go.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(owner)
            while not batches:
                await anyio.sleep(0.001)
            for i in range(1, n):
                got = await self._serve(inbox, key, i, answered, **kw)
                assert got == [], "a post while the key is owned must not yield a batch"
            go.set()
        return inbox, key, answered, batches

    # -- basics -------------------------------------------------------------------------------

    async def test_one_message_one_batch_then_released(self, lock: Any) -> None:
        inbox, key = Inbox(lock), _key()
        answered: list[list[object]] = []
        batches = await self._serve(inbox, key, "hello", answered, id="m1")
        assert answered == [["hello"]]
        assert batches[0].messages[0].id == "m1"
        assert batches[0].attempt == 1
        assert batches[0].skipped == []
        assert await inbox.pending(key) == []
        assert await lock.inspect(key) is None

    async def test_plain_async_for_runs_to_the_end(self, lock: Any) -> None:
        inbox, key = Inbox(lock), _key()
        answered = [[m.payload for m in b.messages] async for b in inbox.turns(key, "p")]
        assert answered == [["p"]]
        assert await inbox.pending(key) == []
        assert await lock.inspect(key) is None

    async def test_payload_kinds_round_trip(self, lock: Any) -> None:
        inbox = Inbox(lock)
        for payload in ["tschüß 🧀", b"\x00\xffbin", {"a": [1, 2.5, None, True]}, [], 7, None]:
            answered: list[list[object]] = []
            await self._serve(inbox, _key(), payload, answered)
            assert answered == [[payload]]

    # -- strategies ---------------------------------------------------------------------------

    async def test_coalesce_folds_a_burst_into_one_more_batch(self, lock: Any) -> None:
        inbox, key, answered, _ = await self._burst(lock, 5, strategy="coalesce")
        assert answered == [[0], [1, 2, 3, 4]]
        assert await inbox.pending(key) == []
        assert await lock.inspect(key) is None

    async def test_coalesce_respects_max_batch(self, lock: Any) -> None:
        _, _, answered, _ = await self._burst(lock, 6, strategy="coalesce", max_batch=2)
        assert answered == [[0], [1, 2], [3, 4], [5]]

    async def test_queue_is_one_message_per_batch_in_order(self, lock: Any) -> None:
        inbox, key, answered, _ = await self._burst(lock, 5, strategy="queue")
        assert answered == [[0], [1], [2], [3], [4]]
        assert await inbox.pending(key) == []

    async def test_latest_answers_the_newest_and_skips_the_rest(self, lock: Any) -> None:
        inbox, key, answered, batches = await self._burst(lock, 5, strategy="latest")
        assert answered == [[0], [4]]
        assert [m.payload for m in batches[1].skipped] == [1, 2, 3]
        assert await inbox.pending(key) == []  # the skipped ones are acknowledged too

    async def test_debounce_owner_takes_the_burst_in_one_batch(self, lock: Any) -> None:
        inbox, key = Inbox(lock), _key()
        answered: list[list[object]] = []
        # The burst comes well within one debounce window, whatever the machine's load: the
        # first post owns the key, then the other four are posted back to back.
        kw: dict[str, Any] = {"strategy": "debounce", "debounce": 2.0, "max_wait": 30.0}
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: self._serve(inbox, key, 0, answered, **kw))
            while await lock.inspect(key) is None:  # the owner's post comes first
                await anyio.sleep(0.001)
            for i in range(1, 5):
                await self._serve(inbox, key, i, answered, **kw)
        assert answered == [[0, 1, 2, 3, 4]]

    async def test_max_wait_bounds_the_debounce(self, lock: Any) -> None:
        inbox, key = Inbox(lock), _key()
        answered: list[list[object]] = []
        # posts keep coming faster than debounce: only max_wait ends the owner's wait
        kw: dict[str, Any] = {"strategy": "debounce", "debounce": 0.5, "max_wait": 0.5}
        first = anyio.Event()

        async def keep_posting() -> None:
            while await lock.inspect(key) is None:  # the owner's post comes first
                await anyio.sleep(0.001)
            i = 1
            while not first.is_set():
                await self._serve(inbox, key, i, answered, **kw)
                i += 1
                await anyio.sleep(0.02)

        async def owner() -> None:
            async with inbox.turns(key, 0, ttl=self.long_ttl, **kw) as turns:
                async for batch in turns:
                    answered.append([m.payload for m in batch.messages])
                    first.set()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(owner)
                tg.start_soon(keep_posting)
        assert answered[0][0] == 0
        flat = [p for batch in answered for p in batch]
        assert set(flat) == set(range(len(flat)))  # none lost
        assert len(set(flat)) == len(flat)  # none twice
        assert await inbox.pending(key) == []

    async def test_superseded_sees_messages_posted_during_the_batch(self, lock: Any) -> None:
        inbox, key = Inbox(lock), _key()
        seen: list[bool] = []
        answered: list[list[object]] = []
        async with inbox.turns(key, "a", ttl=self.long_ttl) as turns:
            async for batch in turns:
                answered.append([m.payload for m in batch.messages])
                before = await batch.superseded()
                if batch.messages[0].payload == "a":
                    assert await self._serve(inbox, key, "b", answered) == []
                seen.append(before)
                seen.append(await batch.superseded())
        assert seen == [False, True, False, False]
        assert answered == [["a"], ["b"]]

    # -- dedupe, overflow, bad input ---------------------------------------------------------

    async def test_duplicate_id_is_a_no_op(self, lock: Any) -> None:
        inbox, key = Inbox(lock), _key()
        answered: list[list[object]] = []
        go = anyio.Event()

        async def owner() -> None:
            async with inbox.turns(key, "first", id="x", ttl=self.long_ttl) as turns:
                async for batch in turns:
                    answered.append([m.payload for m in batch.messages])
                    await go.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(owner)
            while not answered:
                await anyio.sleep(0.001)
            await self._serve(inbox, key, "again while pending", answered, id="x")
            await self._serve(inbox, key, "other", answered, id="y")
            go.set()
        # after the ack, a redelivery of the same ids is still a no-op
        await self._serve(inbox, key, "again after ack", answered, id="x")
        await self._serve(inbox, key, "again after ack", answered, id="y")
        assert answered == [["first"], ["other"]]
        assert await inbox.pending(key) == []

    async def test_overflow_raises_and_drops_nothing(self, lock: Any) -> None:
        inbox, key = Inbox(lock, max_pending=3), _key()
        go = anyio.Event()
        answered: list[list[object]] = []

        async def owner() -> None:
            async with inbox.turns(key, 0, ttl=self.long_ttl) as turns:
                async for batch in turns:
                    answered.append([m.payload for m in batch.messages])
                    await go.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(owner)
            while not answered:
                await anyio.sleep(0.001)
            await self._serve(inbox, key, 1, answered)
            await self._serve(inbox, key, 2, answered)
            with pytest.raises(InboxFull) as caught:
                await self._serve(inbox, key, 3, answered)
            assert caught.value.key == key
            assert [m.payload for m in await inbox.pending(key)] == [0, 1, 2]
            # a duplicate of a stored message is still a no-op, not an overflow
            go.set()
        assert answered == [[0], [1, 2]]

    @pytest.mark.parametrize(("changes", "named"), BAD_TURNS)
    async def test_bad_input_names_the_argument_and_stores_nothing(
        self, lock: Any, changes: dict[str, Any], named: str
    ) -> None:
        inbox, key = Inbox(lock), _key()
        kw: dict[str, Any] = {"key": key, "message": "m", **changes}
        with pytest.raises((ValueError, TypeError), match=named):
            inbox.turns(kw.pop("key"), kw.pop("message"), **kw)
        assert await inbox.pending(key) == []
        assert await lock.inspect(key) is None

    @pytest.mark.parametrize(
        ("changes", "named"),
        [({"max_pending": 0}, "max_pending"), ({"entry_ttl": -1}, "entry_ttl")],
    )
    async def test_bad_inbox_settings(self, lock: Any, changes: dict[str, Any], named: str) -> None:
        with pytest.raises((ValueError, TypeError), match=named):
            Inbox(lock, **changes)

    async def test_lock_without_a_store_is_refused(self) -> None:
        with pytest.raises(TypeError, match="lock"):
            Inbox(object())  # type: ignore[arg-type]

    # -- failures ------------------------------------------------------------------------------

    async def test_failed_body_counts_attempts_then_dead_letters(self, lock: Any) -> None:
        inbox, key = Inbox(lock), _key()
        attempts: list[int] = []
        for _ in range(3):
            with pytest.raises(_Boom):
                async with inbox.turns(key, "bad", id="b1", max_attempts=3) as turns:
                    async for batch in turns:
                        attempts.append(batch.attempt)
                        raise _Boom
            assert await lock.inspect(key) is None  # released on the way out
        assert attempts == [1, 2, 3]
        assert await inbox.pending(key) == []
        dead = await inbox.dead_letters(key)
        assert [(d.message.id, d.message.payload, d.attempts) for d in dead] == [("b1", "bad", 3)]

    async def test_failed_batch_stays_pending_for_the_next_owner(self, lock: Any) -> None:
        inbox, key = Inbox(lock), _key()
        with pytest.raises(_Boom):
            async with inbox.turns(key, "one") as turns:
                async for _ in turns:
                    raise _Boom
        assert [m.payload for m in await inbox.pending(key)] == ["one"]
        answered: list[list[object]] = []
        batches = await self._serve(inbox, key, "two", answered)
        assert answered == [["one", "two"]]
        assert batches[0].attempt == 2
        assert await inbox.dead_letters(key) == []

    async def test_break_leaves_the_batch_pending_without_an_attempt(self, lock: Any) -> None:
        inbox, key = Inbox(lock), _key()
        async with inbox.turns(key, "one") as turns:
            async for _ in turns:
                break
        assert await lock.inspect(key) is None
        answered: list[list[object]] = []
        batches = await self._serve(inbox, key, "two", answered)
        assert answered == [["one", "two"]]
        assert batches[0].attempt == 1

    async def test_stale_owner_does_not_ack(self, lock: Any, other_lock: Any) -> None:
        inbox, key = Inbox(lock), _key()
        rival = Inbox(other_lock)
        with pytest.raises(LeaseLost):
            async with inbox.turns(key, "m", ttl=self.long_ttl) as turns:
                async for batch in turns:
                    # the lease is lost (here: given up behind the owner's back) and the key
                    # taken by another worker before the body ends
                    await lock.release(batch.lease)
                    taken = await other_lock.acquire(key, ttl=self.long_ttl, timeout=5)
        # the stale owner's ack was refused: the message is still pending
        assert [m.payload for m in await rival.pending(key)] == ["m"]
        assert not await rival.store.ack(batch.lease, ["m"], entry_ttl=60.0)
        await other_lock.release(taken)

    # -- the release boundary -----------------------------------------------------------------

    async def test_release_boundary_race_strands_nothing(self, lock: Any, other_lock: Any) -> None:
        rng = random.Random(11)
        first, second = Inbox(lock), Inbox(other_lock)
        owners = {"first": 0, "second": 0, "folded": 0}

        async def a(key: str, answered: list[object], done: anyio.Event) -> None:
            async with first.turns(key, "a", ttl=self.long_ttl) as turns:
                async for batch in turns:
                    owners["first"] += 1
                    if done.is_set():  # "b" came before the release: a second batch
                        owners["folded"] += 1
                    answered.extend(m.payload for m in batch.messages)
                    done.set()

        async def b(key: str, answered: list[object], done: anyio.Event, jitter: int) -> None:
            await done.wait()
            for _ in range(jitter):  # land somewhere in ack / finish / release
                await anyio.lowlevel.checkpoint()
            async with second.turns(key, "b", ttl=self.long_ttl) as turns:
                async for batch in turns:
                    owners["second"] += 1
                    answered.extend(m.payload for m in batch.messages)

        for round_ in range(self.race_rounds):
            key = f"race-{uuid.uuid4().hex}"
            answered: list[object] = []
            done = anyio.Event()
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(a, key, answered, done)
                    tg.start_soon(b, key, answered, done, rng.randrange(self.race_jitter))
            assert len(answered) == 2, f"round {round_}: answered {answered}"
            assert set(answered) == {"a", "b"}, f"round {round_}: answered {answered}"
            assert await first.pending(key) == [], f"round {round_}: stranded"
            assert await lock.inspect(key) is None, f"round {round_}: still held"
        # both sides of the boundary were hit: "b" folded into the owner's next batch, and
        # "b" finding the key free and becoming the owner itself
        assert owners["folded"] > 0, owners
        assert owners["second"] > 0, owners


class InboxRecoveryConformance(InboxConformance):
    """:class:`InboxConformance` plus crash recovery (:meth:`Inbox.sweep` /
    :meth:`Inbox.serve`), for a backend whose store has ``stranded_keys()``
    (:class:`~threadlock.inbox.SweepableStore`) and ``summary()``
    (:class:`~threadlock.inbox.SummaryStore`, what ``threadlock status --inbox`` and
    ``threadlock recover`` read). A crashed owner is simulated by a lease that took a batch
    and is never renewed nor released."""

    #: TTL (s) of the crashed owner's lease.
    crash_ttl: ClassVar[float] = 0.5

    async def _crashed_owner(self, lock: Any, inbox: Inbox, key: str, *ids: str) -> Any:
        for message_id in ids:
            stored = encode_payload(f"payload of {message_id}", "message")
            assert await inbox.store.append(
                key, message_id, stored, max_pending=100, entry_ttl=60.0
            )
        stale = await lock.acquire(key, ttl=self.crash_ttl)
        taken = await inbox.store.take(stale, 20)
        assert [m.id for m in taken.messages] == list(ids)
        return stale

    async def test_serve_picks_up_a_dead_owners_batch(self, lock: Any, other_lock: Any) -> None:
        key = _key()
        stale = await self._crashed_owner(lock, Inbox(lock), key, "m1", "m2")
        survivor = Inbox(other_lock)
        assert key not in await survivor.stranded()  # its lease is still live
        batches: list[Batch] = []

        async def handler(batch: Batch) -> None:
            batches.append(batch)

        with anyio.fail_after(self.crash_ttl + 10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: survivor.serve(handler, interval=0.05, ttl=self.long_ttl))
                while not batches:
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
        # at least once, with the ids the messages were posted with
        assert [[m.id for m in b.messages] for b in batches] == [["m1", "m2"]]
        assert batches[0].messages[0].payload == "payload of m1"
        assert await survivor.pending(key) == []
        assert await other_lock.inspect(key) is None
        # the dead owner's late ack is refused (fence)
        assert not await survivor.store.ack(stale, ["m1", "m2"], entry_ttl=60.0)

    async def test_sweep_skips_a_key_with_a_live_owner(self, lock: Any) -> None:
        inbox, key = Inbox(lock), _key()
        held = await self._crashed_owner(lock, inbox, key, "m1")
        held = await lock.extend(held, ttl=self.long_ttl)
        called: list[Batch] = []

        async def handler(batch: Batch) -> None:
            called.append(batch)

        assert await inbox.sweep(handler) == 0
        assert called == []
        assert [m.id for m in await inbox.pending(key)] == ["m1"]
        await lock.release(held)

    async def test_sweep_counts_failures_then_dead_letters(self, lock: Any) -> None:
        inbox, key = Inbox(lock), _key()
        stored = encode_payload("boom", "message")
        assert await inbox.store.append(key, "m1", stored, max_pending=100, entry_ttl=60.0)
        attempts: list[int] = []

        async def handler(batch: Batch) -> None:
            attempts.append(batch.attempt)
            raise _Boom

        for _ in range(3):
            assert await inbox.sweep(handler, max_attempts=3, ttl=self.long_ttl) == 0
        assert attempts == [1, 2, 3]
        assert await inbox.pending(key) == []
        assert [d.message.id for d in await inbox.dead_letters(key)] == ["m1"]
        assert key not in await inbox.stranded()
        assert await lock.inspect(key) is None

    async def test_sweep_refuses_bad_arguments(self, lock: Any) -> None:
        inbox = Inbox(lock)

        async def handler(batch: Batch) -> None:
            pass

        with pytest.raises(TypeError, match="handler"):
            await inbox.sweep(None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="strategy"):
            await inbox.sweep(handler, strategy="burst")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="interval"):
            await inbox.serve(handler, interval=0)

    async def test_summary_lists_pending_and_dead_letters(self, lock: Any) -> None:
        inbox = Inbox(lock)
        store = inbox.store
        assert isinstance(store, SummaryStore)
        tag = uuid.uuid4().hex
        dead, answered, waiting = f"sum-a-{tag}", f"sum-b-{tag}", f"sum-c-{tag}"
        for message_id in ("w1", "w2"):
            stored = encode_payload(message_id, "message")
            assert await store.append(waiting, message_id, stored, max_pending=10, entry_ttl=60)
        with pytest.raises(_Boom):
            async with inbox.turns(dead, "x", max_attempts=1) as turns:
                async for _ in turns:
                    raise _Boom
        assert len([b async for b in inbox.turns(answered, "y")]) == 1
        assert await store.summary() == [(dead, 0, 1), (waiting, 2, 0)]
        assert await store.summary(limit=1) == [(dead, 0, 1)]
