"""The shared waiting machinery of the Redis and Postgres backends (backends/_waiting.py)."""

from __future__ import annotations

import os
import re

import anyio
import pytest

from threadlock.backends._waiting import TokenFactory, WakeHub


def _shared_prefix(a: str, b: str) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def test_tokens_and_waiter_ids_are_random_and_independent() -> None:
    ids = TokenFactory()
    tokens = [ids.token() for _ in range(600)]  # more than one 4 KiB buffer
    waiter_ids = [ids.waiter_id() for _ in range(100)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", token) for token in tokens)
    assert len(set(tokens)) == len(tokens)
    assert all(re.fullmatch(r"[0-9a-f]{28}", wid) for wid in waiter_ids)
    assert all(wid.startswith(ids.instance) for wid in waiter_ids)
    assert len(set(waiter_ids)) == len(waiter_ids)
    # A waiter id (public: NOTIFY) says nothing about the token drawn next to it.
    for wid in waiter_ids:
        suffix = wid[len(ids.instance) :]
        assert all(_shared_prefix(suffix, token) < 8 for token in tokens)
    assert TokenFactory().instance != ids.instance


def test_a_forked_child_draws_new_tokens_and_a_new_instance_name() -> None:
    ids = TokenFactory()
    ids.token()  # the buffer is filled before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, f"{ids.token()} {ids.waiter_id()} {ids.instance}".encode())
        os._exit(0)
    os.close(write)
    token, wid, instance = os.read(read, 200).decode().split()
    os.close(read)
    os.waitpid(pid, 0)
    assert instance != ids.instance
    assert wid.startswith(instance)
    assert token != ids.token()
    assert ids.waiter_id().startswith(ids.instance)


def test_deliver_needs_the_key_and_the_waiter_id() -> None:
    hub = WakeHub()
    one = hub.add_waiter("k", "w1")
    other = hub.add_waiter("j", "w2")
    assert not hub.deliver("j", "w1", (1, 0.0, 1.0))  # the id, but another key
    assert not hub.deliver("k", "w2", (1, 0.0, 1.0))  # the key, but another waiter
    assert not hub.deliver("k", "nobody", (1, 0.0, 1.0))
    assert (one.grant, one.woken, other.grant, other.woken) == (None, False, None, False)
    assert hub.deliver("k", "w1", (7, 0.0, 1.0))
    assert one.grant == (7, 0.0, 1.0)
    assert one.woken
    assert other.grant is None


def test_a_wake_by_id_only_makes_the_waiter_recheck() -> None:
    hub = WakeHub()
    waiter = hub.add_waiter("k", "w1")
    hub.wake_id("w1")
    hub.wake_id("unknown")
    assert waiter.woken
    assert waiter.grant is None
    waiter.clear()
    assert not waiter.woken


def test_removed_and_forgotten_waiters_are_not_reached() -> None:
    hub = WakeHub()
    gone = hub.add_waiter("k", "w1")
    hub.remove_waiter("k", gone)
    assert not hub.has_waiters("k")
    assert not hub.has_waiters()
    assert not hub.deliver("k", "w1", (1, 0.0, 1.0))
    hub.wake_id("w1")
    assert not gone.woken
    kept = hub.add_waiter("j", "w2")
    hub.forget_all()
    hub.wake_all()
    assert not kept.woken
    assert not hub.has_waiters()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_sleeping_waiter_wakes_on_delivery(anyio_backend: str) -> None:
    hub = WakeHub()
    waiter = hub.add_waiter("k", "w1")
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter.sleep, 3600.0)
        await anyio.wait_all_tasks_blocked()
        assert hub.deliver("k", "w1", (3, 1.0, 2.0))
    assert waiter.grant == (3, 1.0, 2.0)
