"""The pooled connections every statement runs on, and the one way a statement is run.

Every lease, registry and chain operation is ONE statement in its own transaction on a
connection from the pool (autocommit), so nothing is pinned per held lock and it works behind
PgBouncer in transaction mode.
"""

from __future__ import annotations

from typing import Any

import anyio
import psycopg
import psycopg.errors
from psycopg_pool import AsyncConnectionPool

from threadlock._deadline import bounded_call
from threadlock.backends._waiting import inherit
from threadlock.errors import BackendError

__all__ = ["Connections"]


class Connections:
    """A pool, opened on first use if the backend owns it, and the statement runner.

    Args:
        pool: the ``AsyncConnectionPool``; its connections are switched to autocommit.
        owns_pool: the pool was built by the backend (``from_url``): opened on first use and
            closed with the backend. Otherwise the caller opens and closes it.
        statement_timeout: the bound on one statement (see :meth:`execute`).
        missing: the message of the ``BackendError`` raised when the schema is missing.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        owns_pool: bool,
        statement_timeout: float,
        missing: str,
    ) -> None:
        self.pool = pool
        self.owns_pool = owns_pool
        self.statement_timeout = statement_timeout
        self._missing = missing
        self._opened = not owns_pool
        self._open_lock: anyio.Lock | None = None

    async def ready(self) -> AsyncConnectionPool[Any]:
        """The pool, opened first if the backend owns it and it is not open yet."""
        if not self._opened:
            if self._open_lock is None:
                self._open_lock = anyio.Lock()
            async with self._open_lock:
                if not self._opened:
                    try:
                        await self.pool.open(wait=False)
                    except psycopg.Error as error:
                        raise BackendError(f"could not open the Postgres pool: {error}") from error
                    self._opened = True
        return self.pool

    async def execute(
        self,
        query: bytes,
        params: tuple[Any, ...] | None = None,
        *,
        past_caller_deadline: bool = False,
    ) -> list[tuple[Any, ...]]:
        """Run one statement, shielded from cancellation, until the caller's deadline.

        Cancelling a statement in flight would leave it to commit or not, unknown to us, after
        we gave up on it; so the statement runs to its end, and a cancellation is delivered
        right after it. It never runs past the caller's deadline (the lease's expiry for an
        extend, ``release_timeout`` for a release, see :mod:`threadlock._deadline`) nor past
        ``statement_timeout``: then it is a ``BackendError``. An acquire attempt passes
        ``past_caller_deadline=True``: it runs to its end (``statement_timeout`` at most)
        whatever the caller's deadline, because a grant committed after the caller gave up and
        withdrew would leave a lease that nobody holds until its TTL. A missing table or
        function is a ``BackendError`` telling the caller to run ``create_schema``.
        """
        pool = self.pool if self._opened else await self.ready()
        try:
            # getconn/putconn rather than pool.connection(): the same checks on return, with
            # less machinery on the path every operation takes.
            conn = await pool.getconn()
            try:
                if not conn.autocommit:
                    await conn.set_autocommit(True)
                end = (
                    anyio.current_time() + self.statement_timeout if past_caller_deadline else None
                )
                async with bounded_call(self.statement_timeout, "Postgres", deadline=end):
                    # Prepared from the first call (unless the pool's connections disable
                    # prepared statements with prepare_threshold=None, as for PgBouncer).
                    cursor = await conn.execute(query, params, prepare=True)
                    rows = await cursor.fetchall() if cursor.description is not None else []
            finally:
                with anyio.CancelScope(shield=True):
                    await pool.putconn(conn)
            return rows
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction) as error:
            raise BackendError(self._missing) from error
        except psycopg.Error as error:
            raise BackendError(f"Postgres error: {error}") from error

    def after_fork(self) -> None:
        """In a forked child: a pool the backend owns and had opened is replaced by a new,
        unopened one with the same settings (opened on first use); the parent's is left as
        it is. A pool the caller passed in is the caller's to build after the fork."""
        self._open_lock = None
        if not (self.owns_pool and self._opened):
            return
        old = self.pool
        inherit(old)  # never closed nor finalised here: that would end the parent's sessions
        self.pool = AsyncConnectionPool(
            old.conninfo,
            open=False,
            min_size=old.min_size,
            max_size=old.max_size,
            timeout=old.timeout,
            kwargs=old.kwargs,
            name=old.name,
        )
        self._opened = False

    async def aclose(self) -> None:
        """Close the pool if the backend owns it and opened it (shielded)."""
        if self.owns_pool and self._opened:
            with anyio.CancelScope(shield=True):
                await self.pool.close()
