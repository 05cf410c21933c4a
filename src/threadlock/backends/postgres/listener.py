"""The LISTEN/NOTIFY wake-up: ONE listening connection per backend instance, and its waiters.

A release hands the key to the head live waiter in SQL and, for a waiter of another instance,
sends a ``pg_notify`` carrying the waiter's id on the table's channel. The notification only
wakes the waiter, which then confirms its grant with its own statement; a waiter also
re-checks on its own (the heartbeat), so a lost notification costs time, never the grant.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import anyio
import psycopg
from psycopg import sql

from threadlock.backends._waiting import WakeHub, inherit

__all__ = ["Listener"]

logger = logging.getLogger("threadlock")

_LISTEN_BACKOFF_MAX = 2.0


class Listener:
    """ONE listening connection per backend instance, multiplexed over all keys.

    It runs as a background task while local waiters exist (and ``idle`` seconds after the
    last one left), waking the waiter whose id a notification carries (the waiters are in
    ``hub``, a :class:`threadlock.backends._waiting.WakeHub`, by key and waiter id). After
    every (re)connection and LISTEN it wakes all local waiters, so anything sent while it was
    not listening is re-checked.

    psycopg's async connections run on asyncio only, so the task is an asyncio task; every
    wait inside it uses anyio.
    """

    def __init__(self, conninfo: Any, kwargs: dict[str, Any], channel: str, idle: float) -> None:
        self._conninfo = conninfo
        self._kwargs = kwargs
        self._channel = channel
        self._idle = idle
        self.hub = WakeHub()
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._last_used = 0.0
        self.connects = 0  # how many times LISTEN was (re)established; for tests and logs

    def ensure_listening(self) -> None:
        """Start the listening task if it is not running (a waiter is about to sleep).

        A notification sent before LISTEN took effect is not lost: every (re)connection
        wakes all local waiters to re-check.
        """
        if self._task is None or self._task.done():
            self._last_used = anyio.current_time()
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._listen(), name=f"threadlock listen {self._channel}")

    def left(self) -> None:
        """A local waiter left (the hub has dropped it): the idle period starts again."""
        if self._task is not None:
            self._last_used = anyio.current_time()

    def _wake_all(self) -> None:
        self.hub.wake_all()

    def after_fork(self) -> None:
        """In a forked child: forget the parent's task, connection and waiters without
        closing anything (the connection is the parent's, :func:`.inherit`-ed: a psycopg
        connection finalised here would end the parent's session); the child listens anew."""
        inherit(self._task, self._conn)
        self._task = None
        self._conn = None
        self.hub.forget_all()

    def backend_pid(self) -> int | None:
        """The server pid of the listening connection (for fault-injection tests)."""
        conn = self._conn
        return None if conn is None or conn.closed else conn.info.backend_pid

    async def _listen(self) -> None:
        backoff = 0.05
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(self._channel))
        while True:
            idle_for = anyio.current_time() - self._last_used
            if not self.hub.has_waiters() and idle_for >= self._idle:
                return
            try:
                conninfo = self._conninfo() if callable(self._conninfo) else self._conninfo
                if inspect.isawaitable(conninfo):
                    conninfo = await conninfo
                conn = await psycopg.AsyncConnection.connect(
                    str(conninfo), autocommit=True, **self._kwargs
                )
            except Exception as error:
                logger.warning(
                    "threadlock listener could not connect (%s); retrying in %.2fs",
                    error,
                    backoff,
                    extra={"event": "listener.connect_failed"},
                )
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, _LISTEN_BACKOFF_MAX)
                continue
            try:
                await conn.execute(listen)
                self._conn = conn
                self.connects += 1
                backoff = 0.05
                self._wake_all()  # re-check whatever was sent while we were not listening
                while True:
                    async for notify in conn.notifies(timeout=self._idle):
                        self.hub.wake_id(notify.payload)  # only a re-check: it names no key
                    idle_for = anyio.current_time() - self._last_used
                    if not self.hub.has_waiters() and idle_for >= self._idle:
                        return
            except Exception as error:
                logger.warning(
                    "threadlock listener connection lost (%s); reconnecting",
                    error,
                    extra={"event": "listener.lost"},
                )
            finally:
                self._conn = None
                with anyio.CancelScope(shield=True):
                    await conn.close()
            await anyio.sleep(backoff)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        self._wake_all()
        if task is not None and not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(task, return_exceptions=True)
