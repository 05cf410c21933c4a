"""The Postgres lock: acquire, release and extend, each one statement, with FIFO hand-off.

How it keeps its promises (the SQL is in ``sql/``, the statements in
``statements.py``):

* ``<table>`` holds one row per held key (key, token, fence, owner, ttl, acquired_at,
  expires_at); rows of free keys are deleted. ``<table>_waiters`` is the FIFO queue, one row
  per waiting acquire ordered by a sequence number, with a heartbeat deadline
  (``alive_until``). ``<table>_fence_seq`` is a logged sequence: fences rise across restarts,
  also when the tables are ``UNLOGGED``.
* acquire attempt, release and extend are each ONE statement (a call of a plpgsql function
  that ``create_schema`` installed), in its own transaction on a pooled connection
  (``pool.py``). Each function first takes a transaction-scoped advisory lock on the key, so
  operations on one key are serialised, and decides expiry with the server's
  ``clock_timestamp()``.
* release deletes the lease and makes the head *live* waiter the holder in the same statement
  (direct hand-off). A waiter of another instance (another process) gets a provisional grant
  and a ``pg_notify``; the grant lives until the waiter's heartbeat deadline until the waiter
  confirms it, which starts its full ttl, so a waiter whose process died is skipped within
  about the grace. A waiter of the releasing instance itself (its id carries the instance's
  prefix) gets its full lease in the release statement, handed over in-process: the process is
  alive, as it is the one releasing, so no notification and no confirmation are needed.
* every backend instance has ONE listening connection (``listener.py``), multiplexed over all
  keys: notifications carry a waiter id.
* a waiter re-checks on its own at least every ``grace / 3`` seconds (its heartbeat) and, at
  the head of the queue, when the holder's TTL runs out; a lost notification costs at most
  that. The notification is the wake-up; these re-checks are only the fallback.
* an acquire that is cancelled or times out runs one shielded statement that withdraws its
  waiter row or, if the key was granted to it in the meantime, releases and hands it on.
* every statement commits with the server's ``synchronous_commit`` by default, so a release
  that returned survives a server crash. With ``relaxed_commit=True`` (opt-in), statements
  that hand nobody a fence or an expiry (release, withdrawal, a waiter's heartbeat) commit with
  ``synchronous_commit = off``; grants, confirmations and extends still commit synchronously,
  and WAL is flushed in order, so fences stay monotonic and exclusion holds across a server
  crash, while a release just before one may be undone (see ``sql/functions.sql`` and the
  docs).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel
import psycopg
from psycopg_pool import AsyncConnectionPool

from threadlock._lease import Lease, LockInfo
from threadlock._validate import check_positive
from threadlock.backends._waiting import Grant, TokenFactory, on_fork
from threadlock.backends.base import (
    DEFAULT_CHAIN_TTL,
    DEFAULT_GRACE,
    DEFAULT_REGISTRY_TTL,
    BaseThreadLock,
    check_registry_ttls,
)
from threadlock.backends.postgres import schema as _schema
from threadlock.backends.postgres.listener import Listener
from threadlock.backends.postgres.pool import Connections
from threadlock.backends.postgres.registry import Registry, forged
from threadlock.backends.postgres.statements import (
    SCHEMA_RE,
    TABLE_RE,
    Statements,
    check_identifier,
    lock_class,
)
from threadlock.errors import BackendError, LeaseLost, ThreadBusy
from threadlock.hold import DEFAULT_RELEASE_TIMEOUT
from threadlock.observe import Observer
from threadlock.protocol import RunRecord

__all__ = ["PostgresThreadLock"]

logger = logging.getLogger("threadlock")

_MIN_RETRY_AFTER = 0.001
# The longest ttl a Postgres interval/timestamptz can carry from now (about 3,000 years; the
# types reach 294276 AD); anything longer is refused as a ValueError before any SQL runs.
_MAX_TTL = 1e11
_SCHEMES = ("postgresql", "postgres")
#: One uncontended grant in this many starts a sweep (a statement of its own, in the
#: background): expired leases of keys nobody touches again, dead waiter rows, and run rows
#: and chain heads past registry_ttl / chain_ttl go away.
_SWEEP_EVERY = 16


@dataclass(frozen=True, slots=True)
class _Attempt:
    status: str
    fence: int | None
    acquired_at: float | None
    expires_at: float | None
    seq: int | None
    ahead: int
    holder: LockInfo | None
    left: float | None

    @classmethod
    def from_row(cls, key: str, row: tuple[Any, ...]) -> _Attempt:
        (status, fence, acquired_at, expires_at, seq, ahead) = row[:6]
        (h_fence, h_owner, h_acquired_at, h_expires_at, waiters, left, h_run_id) = row[6:13]
        holder = None
        if h_fence is not None:
            holder = LockInfo(
                key=key,
                fence=int(h_fence),
                owner=str(h_owner),
                acquired_at=float(h_acquired_at),
                expires_at=float(h_expires_at),
                waiters=int(waiters),
                run_id=None if h_run_id is None else str(h_run_id),
            )
        return cls(
            status=str(status),
            fence=None if fence is None else int(fence),
            acquired_at=None if acquired_at is None else float(acquired_at),
            expires_at=None if expires_at is None else float(expires_at),
            seq=None if seq is None else int(seq),
            ahead=int(ahead or 0),
            holder=holder,
            left=None if left is None else float(left),
        )

    def lease(self, key: str, token: str, ttl: float) -> Lease:
        assert self.fence is not None
        assert self.acquired_at is not None
        assert self.expires_at is not None
        return Lease(key, token, self.fence, ttl, self.acquired_at, self.expires_at)

    def busy(self, key: str) -> ThreadBusy:
        left = self.left if self.left is not None else _MIN_RETRY_AFTER
        return ThreadBusy(key, max(left, _MIN_RETRY_AFTER), self.holder)


def _lease(key: str, token: str, ttl: float, grant: Grant) -> Lease:
    """The lease a release of this instance handed a local waiter in-process."""
    fence, acquired_at, expires_at = grant
    return Lease(key, token, fence, ttl, acquired_at, expires_at)


class PostgresThreadLock(BaseThreadLock):
    """The Postgres backend. How it works: docs/backends/postgres.md.

    Args:
        pool: a ``psycopg_pool.AsyncConnectionPool``. Its connections are switched to
            autocommit (each operation is one statement, one transaction). It may point at
            PgBouncer in transaction mode; then pass ``listen_conninfo`` for a direct
            connection, which LISTEN needs.
        table: the lease table's name (a plain identifier of at most 48 characters); the
            waiter table, sequence and functions are named after it.
        schema: the schema of every object, or ``None`` for the connection's ``search_path``.
        unlogged: ``create_schema`` makes the two tables ``UNLOGGED`` (faster writes; after a
            Postgres crash they come back empty, so leases are lost, while fences keep rising
            because the sequence stays logged).
        owner: the owner prefix stored with each lease (``host:pid`` by default).
        grace: seconds after which a waiter whose process died is skipped.
        release_timeout: the bound on shielded releases (end of ``hold()``, abandon).
        listen_conninfo: the connection string of the listening connection (default: the
            pool's).
        listen_idle: seconds the listening connection stays open after the last local waiter.
        statement_timeout: the bound on one statement; a statement runs shielded from
            cancellation (for at most this long), so its outcome is always known.
        relaxed_commit: ``False`` (the default): every statement uses the server's
            ``synchronous_commit``, so a release that returned is durable. ``True`` (opt-in):
            statements that hand nobody a fence or an expiry (release, withdrawing a waiter,
            a waiter's heartbeat) commit with ``synchronous_commit = off``, saving one WAL
            flush per release. Grants, confirmations, extends, chain advances and registry
            writes always commit synchronously, so fences and exclusion are unaffected; but a
            server crash may undo a release that nothing synchronous followed, and the key
            then stays held until its TTL. It has no effect on ``UNLOGGED`` lease tables (see
            the docs).
        registry_ttl: seconds a run row is kept after it was first tracked (at least 600,
            the longest an OpenAI run lives; one day by default), as on Redis and memory.
        chain_ttl: seconds a chain head is kept after its last ``advance_chain`` (30 days
            by default). Reads skip rows past their bound; the background sweep deletes them.
        observer: where this lock reports what it does (see :mod:`threadlock.observe`).
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        table: str = "threadlock_leases",
        schema: str | None = None,
        *,
        unlogged: bool = False,
        owner: str | None = None,
        grace: float = DEFAULT_GRACE,
        release_timeout: float = DEFAULT_RELEASE_TIMEOUT,
        listen_conninfo: str | None = None,
        listen_idle: float = 60.0,
        statement_timeout: float = 30.0,
        relaxed_commit: bool = False,
        registry_ttl: float = DEFAULT_REGISTRY_TTL,
        chain_ttl: float = DEFAULT_CHAIN_TTL,
        observer: Observer | None = None,
        owns_pool: bool = False,
    ) -> None:
        self._table = check_identifier(table, "table", TABLE_RE, 48)
        self._schema = None if schema is None else check_identifier(schema, "schema", SCHEMA_RE, 63)
        if not isinstance(pool, AsyncConnectionPool):
            raise TypeError(
                f"pool must be a psycopg_pool.AsyncConnectionPool, not {type(pool).__name__}"
            )
        if listen_conninfo is not None and not isinstance(listen_conninfo, str):
            raise TypeError("listen_conninfo must be a str or None")
        super().__init__(
            owner=owner, grace=grace, release_timeout=release_timeout, observer=observer
        )
        if not isinstance(listen_idle, (int, float)) or not listen_idle > 0:
            raise ValueError(f"listen_idle must be a number > 0, got {listen_idle!r}")
        self._statement_timeout = check_positive(statement_timeout, "statement_timeout")
        self._registry_ttl, self._chain_ttl = check_registry_ttls(registry_ttl, chain_ttl)
        self._db = Connections(
            pool,
            owns_pool=owns_pool,
            statement_timeout=self._statement_timeout,
            missing=self._missing(),
        )
        self._execute = self._db.execute
        self._unlogged = bool(unlogged)
        self._relaxed = bool(relaxed_commit)
        self._heartbeat = self._grace / 3
        self._channel = f"{self._table}_grants"
        self._lockclass = lock_class(self._table)
        # Tokens are 128 random bits; a waiter id (published by NOTIFY) is the instance's
        # random prefix and 64 more random bits, so it tells nothing of any token. The prefix
        # tells a release which waiters are this instance's own, to hand them their lease
        # in-process; it is new in a forked child (see _waiting.py).
        self._ids = TokenFactory()
        pool_kwargs = pool.kwargs if isinstance(pool.kwargs, dict) else {}
        kwargs = {k: v for k, v in pool_kwargs.items() if k not in ("autocommit", "row_factory")}
        kwargs.setdefault("keepalives", 1)
        kwargs.setdefault("keepalives_idle", 10)
        kwargs.setdefault("keepalives_interval", 5)
        kwargs.setdefault("keepalives_count", 3)
        self._listener = Listener(
            listen_conninfo if listen_conninfo is not None else pool.conninfo,
            kwargs,
            self._channel,
            float(listen_idle),
        )
        self._sql = Statements(self._table, self._schema)
        self._registry = Registry(
            self._execute,
            self._sql,
            self._check_open,
            registry_ttl=self._registry_ttl,
            chain_ttl=self._chain_ttl,
        )
        self._grants = 0
        self._sweeping: asyncio.Task[None] | None = None
        on_fork(self)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        pool_timeout: float = 10.0,
        **options: Any,
    ) -> PostgresThreadLock:
        """Build from a ``postgresql://`` or ``postgres://`` URL, without connecting.

        The pool (``min_size``..``max_size`` connections, ``pool_timeout`` seconds to get one)
        opens on first use and closes with the backend. ``options`` go to the constructor
        (``table=``, ``schema=``, ``unlogged=``, ``owner=``, ``grace=``, ...).
        """
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        scheme = urlsplit(url).scheme.lower()
        if scheme not in _SCHEMES:
            raise ValueError(f"url: expected a postgresql:// or postgres:// URL, got {url!r}")
        # Check the identifiers before building anything.
        check_identifier(options.get("table", "threadlock_leases"), "table", TABLE_RE, 48)
        if options.get("schema") is not None:
            check_identifier(options["schema"], "schema", SCHEMA_RE, 63)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url,
            open=False,
            min_size=min_size,
            max_size=max_size,
            timeout=pool_timeout,
            kwargs={"autocommit": True},
            name="threadlock",
        )
        return cls(pool, owns_pool=True, **options)

    # -- names -------------------------------------------------------------------------------

    @property
    def table(self) -> str:
        """The lease table's name."""
        return self._table

    @property
    def schema(self) -> str | None:
        """The schema of the backend's objects, or ``None`` for the ``search_path``."""
        return self._schema

    @property
    def registry_ttl(self) -> float:
        """Seconds a run row is kept after it was first tracked."""
        return self._registry_ttl

    @property
    def chain_ttl(self) -> float:
        """Seconds a chain head is kept after its last ``advance_chain``."""
        return self._chain_ttl

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel of this table."""
        return self._channel

    def _missing(self) -> str:
        where = f"{self._schema}.{self._table}" if self._schema else self._table
        return (
            f"the threadlock tables ({where}) are missing or outdated: run "
            "`await lock.create_schema()` or `threadlock create-schema --url ...` once"
        )

    def _after_fork(self) -> None:
        """In a forked child: a new listener state and, for a pool the backend owns and had
        opened, a new pool (the parent's connections and tasks are left to the parent)."""
        self._listener.after_fork()
        self._db.after_fork()
        self._sweeping = None

    # -- schema ------------------------------------------------------------------------------

    async def create_schema(self) -> None:
        """Create (or upgrade) the tables, sequence and functions; idempotent.

        Safe to run from several processes at once (an advisory lock serialises it). The
        installed version is recorded in ``threadlock_schema_version``; an older version is
        upgraded in place, keeping every lease, waiter and fence.
        """
        self._check_open()
        pool = await self._db.ready()
        try:
            async with pool.connection() as conn:
                if not conn.autocommit:
                    await conn.set_autocommit(True)
                await _schema.create_schema(
                    conn,
                    table=self._table,
                    schema=self._schema,
                    unlogged=self._unlogged,
                    channel=self._channel,
                    lockclass=self._lockclass,
                )
        except (BackendError, ValueError):
            raise
        except psycopg.Error as error:
            raise BackendError(f"create_schema failed: {error}") from error

    # -- statements ----------------------------------------------------------------------------

    async def _release_or_withdraw(self, key: str, token: str) -> bool:
        """Release the lease of ``token``, or withdraw its waiter; one unshielded statement.

        Whether a live lease was released is returned. A full lease the statement handed to a
        waiter of this instance is passed to that waiter in-process.
        """
        rows = await self._execute(
            self._sql.release, (key, token, self._relaxed, self._ids.instance)
        )
        released, wid, fence, acquired_at, expires_at = rows[0]
        self._hand_over(key, wid, fence, acquired_at, expires_at)
        return bool(released)

    def _hand_over(
        self, key: str, wid: object, fence: object, acquired_at: object, expires_at: object
    ) -> None:
        """Pass on what a release statement returned: a full lease it handed to a waiter of
        this instance (``wid`` not ``None``) goes to that waiter in-process. Also used by the
        inbox's release boundary (``threadlock.inbox.postgres``), which calls the same
        release function."""
        if wid is not None:  # a waiter of this instance, on this key (the hub checks both)
            grant = (int(str(fence)), float(str(acquired_at)), float(str(expires_at)))
            self._listener.hub.deliver(key, str(wid), grant)

    async def _attempt(
        self,
        key: str,
        token: str,
        wid: str,
        owner: str,
        ttl: float,
        *,
        enqueue: bool,
        seq: int | None,
    ) -> _Attempt:
        rows = await self._execute(
            self._sql.acquire,
            (key, token, wid, owner, ttl, self._grace, enqueue, seq, self._relaxed),
            past_caller_deadline=True,
        )
        attempt = _Attempt.from_row(key, rows[0])
        if seq is None and attempt.status == "granted":  # a free key: count towards a sweep
            self._grants += 1
            if self._grants % _SWEEP_EVERY == 0:
                self._start_sweep()
        return attempt

    def _start_sweep(self) -> None:
        """Run the sweep in the background, unless one is running: its own statement, so it
        never runs while an acquire holds the key's advisory lock, and never delays one."""
        if self._closed or (self._sweeping is not None and not self._sweeping.done()):
            return
        self._sweeping = asyncio.get_running_loop().create_task(
            self._sweep(), name="threadlock postgres sweep"
        )

    async def _sweep(self) -> None:
        """Expired leases and dead waiters, then run rows and chain heads past their bound."""
        try:
            await self._execute(self._sql.sweep)
            await self._registry.sweep()
        except Exception:  # the next sweep tries again; nothing waits for this one
            logger.debug("threadlock postgres sweep failed", exc_info=True)

    async def _withdraw_shielded(self, key: str, token: str) -> None:
        """:meth:`_release_or_withdraw` for an acquire that was cancelled or timed out.

        Shielded and bounded by ``release_timeout``: it withdraws the waiter row or, if the key
        was granted to the caller meanwhile, releases it to the next waiter. A failure is
        logged, not raised (the waiter row is skipped after the grace, a grant expires).
        """
        with anyio.move_on_after(self._release_timeout, shield=True) as scope:
            try:
                await self._release_or_withdraw(key, token)
            except Exception:
                logger.warning(
                    "could not withdraw an abandoned acquire of %r; its waiter entry is "
                    "skipped after the grace and any grant expires",
                    key,
                    exc_info=True,
                    extra={"event": "lock.abandon_failed", "key": key},
                )
        if scope.cancelled_caught:
            logger.warning(
                "withdrawing an abandoned acquire of %r timed out",
                key,
                extra={"event": "lock.abandon_failed", "key": key},
            )

    # -- primitives -------------------------------------------------------------------------

    @staticmethod
    def _check_ttl(ttl: float) -> None:
        if ttl > _MAX_TTL:
            raise ValueError(f"ttl must be at most {_MAX_TTL:g} seconds on Postgres, got {ttl!r}")

    async def _acquire(self, key: str, ttl: float, timeout: float | None) -> Lease:
        self._check_ttl(ttl)
        owner = self._task_owner()
        token = self._ids.token()
        await anyio.lowlevel.checkpoint_if_cancelled()
        if timeout == 0:
            try:
                attempt = await self._attempt(key, token, "", owner, ttl, enqueue=False, seq=None)
                await anyio.lowlevel.checkpoint_if_cancelled()  # cancelled at the grant: give back
            except BaseException:
                await self._withdraw_shielded(key, token)
                raise
            if attempt.status == "granted":
                return attempt.lease(key, token, ttl)
            raise attempt.busy(key)

        # Registered before the first attempt (a dict entry), so that a release by this
        # instance can hand it the key from then on; the listening connection is only started
        # once the attempt says we have to wait.
        hub = self._listener.hub
        waiter = hub.add_waiter(key, self._ids.waiter_id())
        deadline = None if timeout is None else anyio.current_time() + timeout
        seq: int | None = None
        try:
            while True:
                waiter.clear()  # a wake-up from now on means "re-check"
                attempt = await self._attempt(
                    key, token, waiter.id, owner, ttl, enqueue=True, seq=seq
                )
                await anyio.lowlevel.checkpoint_if_cancelled()  # cancelled at the grant: give back
                if attempt.status == "granted":
                    return attempt.lease(key, token, ttl)
                if waiter.grant is not None:  # handed over while our statement ran
                    return _lease(key, token, ttl, waiter.grant)
                if self._closed:
                    raise BackendError("PostgresThreadLock was closed while waiting")
                self._listener.ensure_listening()
                seq = attempt.seq
                now = anyio.current_time()
                if deadline is not None and now >= deadline:
                    raise attempt.busy(key)
                # The notification is the wake-up; the fallback re-check comes at the next
                # heartbeat, or when the holder's TTL runs out if we are next in line.
                wait = self._heartbeat
                if attempt.ahead == 0 and attempt.left is not None:
                    wait = min(wait, max(attempt.left, 0.0) + 0.002)
                if deadline is not None:
                    wait = min(wait, deadline - now)
                await waiter.sleep(wait)
                if waiter.grant is not None:  # a release by this instance handed it over
                    await anyio.lowlevel.checkpoint_if_cancelled()  # cancelled: give back
                    return _lease(key, token, ttl, waiter.grant)
        except BaseException:
            await self._withdraw_shielded(key, token)
            raise
        finally:
            hub.remove_waiter(key, waiter)
            self._listener.left()

    async def _release(self, lease: Lease) -> bool:
        if forged(lease):
            return False
        return await self._release_or_withdraw(lease.key, lease.token)

    async def _extend(self, lease: Lease, ttl: float) -> Lease:
        self._check_ttl(ttl)
        if forged(lease):
            raise LeaseLost(lease.key, lease.fence, "no such lease")
        rows = await self._execute(self._sql.extend, (lease.key, lease.token, ttl))
        if not rows:
            raise LeaseLost(lease.key, lease.fence, "expired or taken before extend")
        fence, acquired_at, expires_at = rows[0]
        return Lease(lease.key, lease.token, int(fence), ttl, float(acquired_at), float(expires_at))

    @staticmethod
    def _info(row: tuple[Any, ...]) -> LockInfo:
        key, fence, owner, acquired_at, expires_at, waiters, run_id = row
        return LockInfo(
            key=str(key),
            fence=int(fence),
            owner=str(owner),
            acquired_at=float(acquired_at),
            expires_at=float(expires_at),
            waiters=int(waiters),
            run_id=None if run_id is None else str(run_id),
        )

    async def _inspect(self, key: str) -> LockInfo | None:
        rows = await self._execute(self._sql.inspect, (key,))
        return self._info(rows[0]) if rows else None

    async def _held(self) -> list[LockInfo]:
        return [self._info(row) for row in await self._execute(self._sql.held)]

    # -- run registry and chain heads (RunRegistry, ChainStore): see registry.py ------------

    async def track_run(self, record: RunRecord) -> None:
        """Record a run or background response; see :class:`threadlock.RunRegistry`.

        One statement (an upsert): recording the same ``key`` and ``run_id`` again replaces
        the entry and keeps its place. Committed synchronously, so the entry survives a crash
        of this process and of the server.
        """
        await self._registry.track_run(record)

    async def untrack_run(self, key: str, run_id: str) -> None:
        """Forget a run; see :class:`threadlock.RunRegistry`. A missing entry is no error."""
        await self._registry.untrack_run(key, run_id)

    async def tracked_runs(self, key: str | None = None) -> list[RunRecord]:
        """The recorded runs of ``key`` (or of every key), oldest first."""
        return await self._registry.tracked_runs(key)

    async def chain_head(self, key: str) -> str | None:
        """The last response id of chain ``key``; see :class:`threadlock.ChainStore`."""
        return await self._registry.chain_head(key)

    async def advance_chain(self, lease: Lease, expected: str | None, new: str) -> bool:
        """Compare-and-set the chain head while ``lease`` is held; one statement.

        It checks the lease's token (and that it has not expired) under the key's advisory
        lock, the same serialisation as acquire, release and extend, then moves the head from
        ``expected`` (``None``: no head yet) to ``new``.
        """
        return await self._registry.advance_chain(lease, expected, new)

    async def _aclose(self) -> None:
        sweeping, self._sweeping = self._sweeping, None
        if sweeping is not None and not sweeping.done():
            with anyio.move_on_after(self._release_timeout, shield=True):
                await asyncio.gather(sweeping, return_exceptions=True)
        await self._listener.aclose()
        await self._db.aclose()
