"""The run registry (``<table>_runs``) and the chain heads (``<table>_chains``).

Both tables are logged, also when the lease tables are ``UNLOGGED``: a tracked run must
survive the crash of its writer and of the server. Every operation is one statement;
``advance_chain`` checks the lease's token under the key's advisory lock (the serialisation
of acquire, release and extend) before its compare-and-set.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from threadlock._lease import Lease
from threadlock._validate import check_key
from threadlock.backends.postgres.statements import Statements
from threadlock.protocol import RunKind, RunRecord

__all__ = ["Registry", "forged"]

Execute = Callable[[bytes, "tuple[Any, ...] | None"], Awaitable[list[tuple[Any, ...]]]]


def forged(lease: Lease) -> bool:
    """A lease no acquire can have made (a NUL, which Postgres text cannot hold)."""
    return "\x00" in lease.key or not isinstance(lease.token, str) or "\x00" in lease.token


def _record(row: tuple[Any, ...]) -> RunRecord:
    key, kind, run_id, thread_id, created_at, fence, owner = row
    run_kind: RunKind = "response" if kind == "response" else "run"
    return RunRecord(
        str(key), run_kind, str(run_id), str(thread_id), float(created_at), int(fence), str(owner)
    )


class Registry:
    """The ``RunRegistry`` and ``ChainStore`` operations of one Postgres backend.

    Args:
        execute: runs one statement (the backend's :meth:`Connections.execute`).
        statements: the backend's rendered statements.
        check_open: raises if the backend is closed; called after the arguments are checked.
        registry_ttl: seconds a run row is kept after it was first tracked.
        chain_ttl: seconds a chain head is kept after its last advance.
    """

    __slots__ = ("_chain_ttl", "_check_open", "_execute", "_registry_ttl", "_sql")

    def __init__(
        self,
        execute: Execute,
        statements: Statements,
        check_open: Callable[[], None],
        *,
        registry_ttl: float,
        chain_ttl: float,
    ) -> None:
        self._execute = execute
        self._sql = statements
        self._check_open = check_open
        self._registry_ttl = registry_ttl
        self._chain_ttl = chain_ttl

    async def sweep(self) -> None:
        """Delete the run rows and chain heads past their bound (one statement)."""
        await self._execute(self._sql.sweep_registry, (self._registry_ttl, self._chain_ttl))

    async def track_run(self, record: RunRecord) -> None:
        if not isinstance(record, RunRecord):
            raise TypeError(f"record must be a RunRecord, not {type(record).__name__}")
        self._check_open()
        await self._execute(
            self._sql.track,
            (
                record.key,
                record.kind,
                record.run_id,
                record.thread_id,
                record.created_at,
                record.fence,
                record.owner,
            ),
        )

    async def untrack_run(self, key: str, run_id: str) -> None:
        check_key(key)
        check_key(run_id, "run_id")
        self._check_open()
        await self._execute(self._sql.untrack, (key, run_id))

    async def tracked_runs(self, key: str | None) -> list[RunRecord]:
        if key is not None:
            check_key(key)
        self._check_open()
        if key is None:
            rows = await self._execute(self._sql.tracked_all, (self._registry_ttl,))
        else:
            rows = await self._execute(self._sql.tracked_key, (key, self._registry_ttl))
        return [_record(row) for row in rows]

    async def chain_head(self, key: str) -> str | None:
        check_key(key)
        self._check_open()
        rows = await self._execute(self._sql.chain_head, (key, self._chain_ttl))
        return str(rows[0][0]) if rows else None

    async def advance_chain(self, lease: Lease, expected: str | None, new: str) -> bool:
        if not isinstance(lease, Lease):
            raise TypeError(f"lease must be a threadlock.Lease, not {type(lease).__name__}")
        check_key(new, "new")
        self._check_open()
        if forged(lease):
            return False
        rows = await self._execute(
            self._sql.advance_chain, (lease.key, lease.token, expected, new, self._chain_ttl)
        )
        return bool(rows[0][0])
