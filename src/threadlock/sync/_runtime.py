"""The process's event loop for the synchronous face: one daemon thread, started lazily.

Every blocking call of :mod:`threadlock.sync` is run by an anyio
:class:`~anyio.from_thread.BlockingPortal` on an asyncio loop in a thread named
``threadlock-sync``. The thread starts at the first call that needs it (never at import or
at ``from_url``), so a process that forks after import (Celery prefork, gunicorn) forks
without it. A child of a fork starts its own thread at its first call:
:func:`os.register_at_fork` drops the parent's portal in the child and moves the
:func:`generation` on, which makes every sync lock build a fresh backend (fresh connections)
in the child.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

__all__ = ["generation", "keep", "mutex", "portal", "run"]

T = TypeVar("T")

_mutex = threading.Lock()
_portal: BlockingPortal | None = None
_generation = 0
_loop: asyncio.AbstractEventLoop | None = None
# Objects of a parent process that a child must neither use nor close (their sockets are
# the parent's too): kept here so garbage collection in the child never touches them.
_kept: list[object] = []


def _start() -> BlockingPortal:
    started: Future[BlockingPortal] = Future()

    async def serve() -> None:
        global _loop  # noqa: PLW0603 - the loop of this process's portal
        _loop = asyncio.get_running_loop()
        async with BlockingPortal() as new:
            started.set_result(new)
            await new.sleep_until_stopped()

    def main() -> None:
        try:
            anyio.run(serve, backend="asyncio")
        except BaseException as error:  # pragma: no cover - the loop failed to start
            if not started.done():
                started.set_exception(error)

    threading.Thread(target=main, name="threadlock-sync", daemon=True).start()
    return started.result()


def portal() -> BlockingPortal:
    """The process's portal, started on first use (thread-safe)."""
    current = _portal
    if current is not None:
        return current
    return _locked_portal()


def _locked_portal() -> BlockingPortal:
    global _portal  # noqa: PLW0603 - one loop per process
    with _mutex:
        if _portal is None:
            _portal = _start()
        return _portal


def generation() -> int:
    """A number that changes in the child of every fork."""
    return _generation


def mutex() -> threading.Lock:
    """A process-wide lock for rare set-up work (re-created in a forked child)."""
    return _mutex


def keep(obj: object) -> None:
    """Keep ``obj`` alive for the life of the process (see ``_kept``)."""
    _kept.append(obj)


def run(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``await func(*args)`` on the loop and return its result to the calling thread.

    The task is named after the calling thread, so a lease's owner reads
    ``host:pid:<thread name>``. If the calling thread is interrupted while it waits
    (``KeyboardInterrupt``), the task on the loop is cancelled.
    """
    portal()  # started, so _loop is set
    assert _loop is not None
    name = threading.current_thread().name
    # Straight onto the asyncio loop: a portal task (task group, cancel scope) costs about
    # a third of an uncontended Redis acquire+release here; the backends need neither.
    future = asyncio.run_coroutine_threadsafe(_named(name, func, args), _loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


async def _named(name: str, func: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
    task = asyncio.current_task()
    if task is not None:
        task.set_name(name)  # the lease's owner reads host:pid:<thread name>
    return await func(*args)


def _after_fork_in_child() -> None:
    global _portal, _generation, _mutex, _loop  # noqa: PLW0603 - reset for the child process
    # The parent's loop thread does not exist here, and its lock may have been held by
    # another thread at the fork. Its loop and portal are kept, never finalised here: their
    # transports and selector are the parent's (see threadlock.backends._waiting.inherit).
    _kept.extend(obj for obj in (_loop, _portal) if obj is not None)
    _mutex = threading.Lock()
    _portal = None
    _loop = None
    _generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)
