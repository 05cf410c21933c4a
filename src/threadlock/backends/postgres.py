"""Postgres backend: a lease table, a FIFO waiter table, LISTEN/NOTIFY hand-off, fences, and
the run registry and chain heads of the OpenAI guards.

Install with ``pip install 'threadlock[postgres]'`` (psycopg 3 and psycopg-pool). The schema
is created only by an explicit :meth:`PostgresThreadLock.create_schema` (or
``threadlock create-schema --url ...``), never on import or first use.

How it keeps its promises (the SQL is in ``postgres_sql/schema.sql``):

* ``<table>`` holds one row per held key (key, token, fence, owner, ttl, acquired_at,
  expires_at); rows of free keys are deleted. ``<table>_waiters`` is the FIFO queue, one row
  per waiting acquire ordered by a sequence number, with a heartbeat deadline
  (``alive_until``). ``<table>_fence_seq`` is a logged sequence: fences rise across restarts,
  also when the tables are ``UNLOGGED``.
* acquire attempt, release and extend are each ONE statement (a call of a plpgsql function
  that ``create_schema`` installed), in its own transaction on a pooled connection: nothing is
  pinned per held lock and it works behind PgBouncer in transaction mode. Each function first
  takes a transaction-scoped advisory lock on the key, so operations on one key are serialised,
  and decides expiry with the server's ``clock_timestamp()``.
* release deletes the lease and makes the head *live* waiter the holder in the same statement
  (direct hand-off). A waiter of another instance (another process) gets a provisional grant
  and a ``pg_notify``; the grant lives until the waiter's heartbeat deadline until the waiter
  confirms it, which starts its full ttl, so a waiter whose process died is skipped within
  about the grace. A waiter of the releasing instance itself (its id carries the instance's
  prefix) gets its full lease in the release statement, handed over in-process: the process is
  alive, as it is the one releasing, so no notification and no confirmation are needed.
* every backend instance has ONE listening connection (a direct connection, not from the
  pool), multiplexed over all keys: notifications carry a waiter id. It is started when a
  waiter first has to wait, reconnects, re-listens and wakes every local waiter to re-check
  after a drop.
* a waiter re-checks on its own at least every ``grace / 3`` seconds (its heartbeat) and, at
  the head of the queue, when the holder's TTL runs out; a lost notification costs at most
  that. The notification is the wake-up; these re-checks are only the fallback.
* an acquire that is cancelled or times out runs one shielded statement that withdraws its
  waiter row or, if the key was granted to it in the meantime, releases and hands it on.
* statements that hand nobody a fence or an expiry (release, withdrawal, a waiter's heartbeat)
  commit with ``synchronous_commit = off`` (``relaxed_commit=True``, the default); grants,
  confirmations and extends commit synchronously, and WAL is flushed in order, so fences stay
  monotonic and exclusion holds across a server crash (see ``schema.sql`` and the docs).
* the run registry (``<table>_runs``) and the chain heads (``<table>_chains``) are logged
  tables; every registry operation is one statement, and ``advance_chain`` is one statement
  that checks the lease's token under the key's advisory lock before its compare-and-set.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import re
import secrets
import zlib
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel

from threadlock._lease import Lease, LockInfo
from threadlock._optional import require
from threadlock._validate import check_key, check_positive
from threadlock.backends.base import DEFAULT_GRACE, BaseThreadLock
from threadlock.errors import BackendError, LeaseLost, ThreadBusy
from threadlock.hold import DEFAULT_RELEASE_TIMEOUT
from threadlock.protocol import RunKind, RunRecord

require("psycopg", "postgres")
require("psycopg_pool", "postgres")

import psycopg  # noqa: E402
import psycopg.errors  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg_pool import AsyncConnectionPool  # noqa: E402

__all__ = ["SCHEMA_VERSION", "PostgresThreadLock"]

logger = logging.getLogger("threadlock")

#: The schema version ``create_schema`` installs; stored in ``threadlock_schema_version``.
#: Version 2 added the run registry, the chain heads and the leaner lease functions; an
#: existing version-1 schema is upgraded in place by ``create_schema``.
SCHEMA_VERSION = 2

_VERSION_TABLE = "threadlock_schema_version"
# One advisory lock (the bigint key space) serialises every create_schema on a database.
_SCHEMA_LOCK_ID = 0x7468726561646C6B  # "threadlk"
_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")
_SCHEMA_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_MIN_RETRY_AFTER = 0.001
# The longest ttl a Postgres interval/timestamptz can carry from now (about 3,000 years; the
# types reach 294276 AD); anything longer is refused as a ValueError before any SQL runs.
_MAX_TTL = 1e11
_LISTEN_BACKOFF_MAX = 2.0
_SCHEMES = ("postgresql", "postgres")


def _check_identifier(value: object, name: str, pattern: re.Pattern[str], most: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if pattern.fullmatch(value) is None:
        raise ValueError(
            f"{name} must be a plain identifier (ASCII letters, digits and '_', not starting "
            f"with a digit, at most {most} characters), got {value!r}"
        )
    return value


def _signed32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def _load_statements() -> list[str]:
    text = (
        resources.files("threadlock.backends")
        .joinpath("postgres_sql/schema.sql")
        .read_text(encoding="utf-8")
    )
    chunks = [chunk.strip() for chunk in re.split(r"^--;$", text, flags=re.MULTILINE)]
    statements = []
    for chunk in chunks:
        lines = chunk.splitlines()
        while lines and lines[0].startswith("--"):  # leading comments only
            lines.pop(0)
        if lines:
            statements.append("\n".join(lines))
    return statements


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


class _Waiter:
    """A local waiting acquire; the listener wakes it by its public id ``wid``.

    A release by this same backend instance may hand it its lease directly (``granted``:
    fence, acquired_at, expires_at), with no notification and no confirmation statement.
    """

    __slots__ = ("event", "granted", "wid", "woken")

    def __init__(self, wid: str) -> None:
        self.wid = wid
        self.event: anyio.Event | None = None  # made when first waited on
        self.woken = False
        self.granted: tuple[int, float, float] | None = None

    def wake(self) -> None:
        self.woken = True
        if self.event is not None:
            self.event.set()

    def grant(self, fence: int, acquired_at: float, expires_at: float) -> None:
        self.granted = (fence, acquired_at, expires_at)
        self.wake()

    def clear(self) -> None:
        if self.woken:
            self.woken = False
            self.event = None

    async def wait(self, seconds: float) -> None:
        if self.woken or seconds <= 0:
            return
        if self.event is None:
            self.event = anyio.Event()
        with anyio.move_on_after(seconds):
            await self.event.wait()

    def lease(self, key: str, token: str, ttl: float) -> Lease:
        assert self.granted is not None
        fence, acquired_at, expires_at = self.granted
        return Lease(key, token, fence, ttl, acquired_at, expires_at)


class _Listener:
    """ONE listening connection per backend instance, multiplexed over all keys.

    It runs as a background task while local waiters exist (and ``idle`` seconds after the
    last one left), dispatching each notification to the waiter whose id it carries. After
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
        self._waiters: dict[str, _Waiter] = {}
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._last_used = 0.0
        self.connects = 0  # how many times LISTEN was (re)established; for tests and logs

    def register(self, waiter: _Waiter) -> None:
        """Make ``waiter`` reachable by its wid; cheap (no listening yet)."""
        self._waiters[waiter.wid] = waiter

    def ensure_listening(self) -> None:
        """Start the listening task if it is not running (a waiter is about to sleep).

        A notification sent before LISTEN took effect is not lost: every (re)connection
        wakes all local waiters to re-check.
        """
        if self._task is None or self._task.done():
            self._last_used = anyio.current_time()
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._run(), name=f"threadlock listen {self._channel}")

    def unregister(self, waiter: _Waiter) -> None:
        if self._waiters.pop(waiter.wid, None) is not None and self._task is not None:
            self._last_used = anyio.current_time()

    def deliver(self, wid: str, fence: int, acquired_at: float, expires_at: float) -> None:
        """A release by this instance handed the lease of waiter ``wid`` over in-process."""
        waiter = self._waiters.get(wid)
        if waiter is not None:
            waiter.grant(fence, acquired_at, expires_at)

    def _wake_all(self) -> None:
        for waiter in list(self._waiters.values()):
            waiter.wake()

    def backend_pid(self) -> int | None:
        """The server pid of the listening connection (for fault-injection tests)."""
        conn = self._conn
        return None if conn is None or conn.closed else conn.info.backend_pid

    async def _run(self) -> None:
        backoff = 0.05
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(self._channel))
        while True:
            if not self._waiters and anyio.current_time() - self._last_used >= self._idle:
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
                        waiter = self._waiters.get(notify.payload)
                        if waiter is not None:
                            waiter.wake()
                    idle_for = anyio.current_time() - self._last_used
                    if not self._waiters and idle_for >= self._idle:
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


class PostgresThreadLock(BaseThreadLock):
    """The Postgres backend. See the module docstring for how it works.

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
        relaxed_commit: statements that hand nobody a fence or an expiry (release,
            withdrawing a waiter, a waiter's heartbeat) commit with ``synchronous_commit =
            off``. Grants, confirmations, extends, chain advances and registry writes always
            commit synchronously, so fences and exclusion are unaffected; a server crash may
            undo a release that nothing synchronous followed (the key then stays held until
            its TTL). ``False`` makes every statement use the server's setting. It has no
            effect on ``UNLOGGED`` lease tables (see the docs).
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
        relaxed_commit: bool = True,
        owns_pool: bool = False,
    ) -> None:
        self._table = _check_identifier(table, "table", _TABLE_RE, 48)
        self._schema = (
            None if schema is None else _check_identifier(schema, "schema", _SCHEMA_RE, 63)
        )
        if not isinstance(pool, AsyncConnectionPool):
            raise TypeError(
                f"pool must be a psycopg_pool.AsyncConnectionPool, not {type(pool).__name__}"
            )
        if listen_conninfo is not None and not isinstance(listen_conninfo, str):
            raise TypeError("listen_conninfo must be a str or None")
        super().__init__(owner=owner, grace=grace, release_timeout=release_timeout)
        if not isinstance(listen_idle, (int, float)) or not listen_idle > 0:
            raise ValueError(f"listen_idle must be a number > 0, got {listen_idle!r}")
        self._statement_timeout = check_positive(statement_timeout, "statement_timeout")
        self._pool = pool
        self._owns_pool = owns_pool
        self._unlogged = bool(unlogged)
        self._relaxed = bool(relaxed_commit)
        self._pool_opened = not owns_pool
        self._open_lock: anyio.Lock | None = None
        self._heartbeat = self._grace / 3
        self._channel = f"{self._table}_grants"
        self._lockclass = _signed32(zlib.crc32(self._table.encode()))
        # Tokens and waiter ids: a random per-instance prefix and a counter (unique, and one
        # getrandom() per instance rather than per acquire). The prefix also tells a release
        # which waiters are this instance's own, to hand them their lease in-process.
        self._instance = secrets.token_hex(8)
        self._counter = itertools.count()
        pool_kwargs = pool.kwargs if isinstance(pool.kwargs, dict) else {}
        kwargs = {k: v for k, v in pool_kwargs.items() if k not in ("autocommit", "row_factory")}
        kwargs.setdefault("keepalives", 1)
        kwargs.setdefault("keepalives_idle", 10)
        kwargs.setdefault("keepalives_interval", 5)
        kwargs.setdefault("keepalives_count", 3)
        self._listener = _Listener(
            listen_conninfo if listen_conninfo is not None else pool.conninfo,
            kwargs,
            self._channel,
            float(listen_idle),
        )
        leases, waiters, runs = self._name(""), self._name("_waiters"), self._name("_runs")
        # Rendered once: the identifiers are validated ASCII, so no connection is needed to
        # quote them, and psycopg caches the parsing of a bytes query.
        self._q_acquire = self._render(
            sql.SQL(
                "SELECT * FROM {}(%s::text, %s::text, %s::text, %s::text, %s::float8,"
                " %s::float8, %s::boolean, %s::bigint, %s::boolean)"
            ).format(self._name("_acquire"))
        )
        self._q_release = self._render(
            sql.SQL("SELECT * FROM {}(%s::text, %s::text, %s::boolean, %s::text)").format(
                self._name("_release")
            )
        )
        self._q_extend = self._render(
            sql.SQL("SELECT * FROM {}(%s::text, %s::text, %s::float8)").format(
                self._name("_extend")
            )
        )
        info = sql.SQL(
            "SELECT l.key, l.fence, l.owner, date_part('epoch', l.acquired_at),"
            " date_part('epoch', l.expires_at),"
            " (SELECT count(*) FROM {waiters} w"
            "   WHERE w.key = l.key AND w.alive_until > clock_timestamp()),"
            " (SELECT r.run_id FROM {runs} r WHERE r.key = l.key ORDER BY r.seq DESC LIMIT 1)"
            " FROM {leases} l WHERE l.expires_at > clock_timestamp()"
        ).format(leases=leases, waiters=waiters, runs=runs)
        self._q_inspect = self._render(info + sql.SQL(" AND l.key = %s::text"))
        self._q_held = self._render(info + sql.SQL(" ORDER BY l.acquired_at, l.key"))
        record = sql.SQL("key, kind, run_id, thread_id, created_at, fence, owner")
        self._q_track = self._render(
            sql.SQL(
                "INSERT INTO {runs} ({record}) VALUES (%s::text, %s::text, %s::text, %s::text,"
                " %s::float8, %s::bigint, %s::text) ON CONFLICT (key, run_id) DO UPDATE SET"
                " kind = excluded.kind, thread_id = excluded.thread_id,"
                " created_at = excluded.created_at, fence = excluded.fence,"
                " owner = excluded.owner"
            ).format(runs=runs, record=record)
        )
        self._q_untrack = self._render(
            sql.SQL("DELETE FROM {} WHERE key = %s::text AND run_id = %s::text").format(runs)
        )
        self._q_tracked_key = self._render(
            sql.SQL("SELECT {} FROM {} WHERE key = %s::text ORDER BY seq").format(record, runs)
        )
        self._q_tracked_all = self._render(
            sql.SQL("SELECT {} FROM {} ORDER BY created_at, seq").format(record, runs)
        )
        self._q_chain_head = self._render(
            sql.SQL("SELECT head FROM {} WHERE key = %s::text").format(self._name("_chains"))
        )
        self._q_advance_chain = self._render(
            sql.SQL("SELECT {}(%s::text, %s::text, %s::text, %s::text)").format(
                self._name("_advance_chain")
            )
        )

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
        _check_identifier(options.get("table", "threadlock_leases"), "table", _TABLE_RE, 48)
        if options.get("schema") is not None:
            _check_identifier(options["schema"], "schema", _SCHEMA_RE, 63)
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

    # -- names and plumbing -----------------------------------------------------------------

    @property
    def table(self) -> str:
        """The lease table's name."""
        return self._table

    @property
    def schema(self) -> str | None:
        """The schema of the backend's objects, or ``None`` for the ``search_path``."""
        return self._schema

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel of this table."""
        return self._channel

    @staticmethod
    def _render(query: sql.Composable) -> bytes:
        return query.as_bytes(None)

    def _name(self, suffix: str, schema: str | None = None) -> sql.Identifier:
        schema = schema or self._schema
        name = self._table + suffix
        return sql.Identifier(schema, name) if schema else sql.Identifier(name)

    def _missing(self) -> str:
        where = f"{self._schema}.{self._table}" if self._schema else self._table
        return (
            f"the threadlock tables ({where}) are missing or outdated: run "
            "`await lock.create_schema()` or `threadlock create-schema --url ...` once"
        )

    async def _ready_pool(self) -> AsyncConnectionPool[Any]:
        if not self._pool_opened:
            if self._open_lock is None:
                self._open_lock = anyio.Lock()
            async with self._open_lock:
                if not self._pool_opened:
                    try:
                        await self._pool.open(wait=False)
                    except psycopg.Error as error:
                        raise BackendError(f"could not open the Postgres pool: {error}") from error
                    self._pool_opened = True
        return self._pool

    async def _execute(
        self, query: bytes, params: tuple[Any, ...] | None = None
    ) -> list[tuple[Any, ...]]:
        pool = self._pool if self._pool_opened else await self._ready_pool()
        try:
            # getconn/putconn rather than pool.connection(): the same checks on return, with
            # less machinery on the path every operation takes.
            conn = await pool.getconn()
            try:
                if not conn.autocommit:
                    await conn.set_autocommit(True)
                # The statement itself is shielded (bounded by statement_timeout): cancelling
                # a statement in flight would leave it to commit or not, unknown to us, after
                # we gave up on it. Cancellation is delivered right after it instead.
                rows: list[tuple[Any, ...]] | None = None
                with anyio.move_on_after(self._statement_timeout, shield=True):
                    # Prepared from the first call (unless the pool's connections disable
                    # prepared statements with prepare_threshold=None, as for PgBouncer).
                    cursor = await conn.execute(query, params, prepare=True)
                    rows = await cursor.fetchall() if cursor.description is not None else []
            finally:
                with anyio.CancelScope(shield=True):
                    await pool.putconn(conn)
            if rows is None:
                raise BackendError(
                    f"Postgres did not answer within statement_timeout={self._statement_timeout}s"
                )
            return rows
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction) as error:
            raise BackendError(self._missing()) from error
        except psycopg.Error as error:
            raise BackendError(f"Postgres error: {error}") from error

    def _new_id(self) -> str:
        return f"{self._instance}{next(self._counter):x}"

    async def _release_statement(self, key: str, token: str) -> bool:
        """Release (or withdraw) by token; pass a lease handed to a local waiter on."""
        rows = await self._execute(self._q_release, (key, token, self._relaxed, self._instance))
        released, wid, fence, acquired_at, expires_at = rows[0]
        if wid is not None:
            self._listener.deliver(str(wid), int(fence), float(acquired_at), float(expires_at))
        return bool(released)

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
            self._q_acquire,
            (key, token, wid, owner, ttl, self._grace, enqueue, seq, self._relaxed),
        )
        return _Attempt.from_row(key, rows[0])

    async def _abandon(self, key: str, token: str) -> None:
        """Withdraw a waiter, or give on a key granted to a caller that is gone (shielded)."""
        with anyio.move_on_after(self._release_timeout, shield=True) as scope:
            try:
                await self._release_statement(key, token)
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

    # -- schema -----------------------------------------------------------------------------

    async def create_schema(self) -> None:
        """Create (or upgrade) the tables, sequence and functions; idempotent.

        Safe to run from several processes at once (an advisory lock serialises it, and all
        of it is one transaction). The installed version is recorded in
        ``threadlock_schema_version``; an older version is upgraded in place, keeping every
        lease, waiter and fence.
        """
        self._check_open()
        pool = await self._ready_pool()
        try:
            async with pool.connection() as conn:
                if not conn.autocommit:
                    await conn.set_autocommit(True)
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_ID,))
                    await self._install(conn)
        except (BackendError, ValueError):
            raise
        except psycopg.Error as error:
            raise BackendError(f"create_schema failed: {error}") from error

    async def _install(self, conn: psycopg.AsyncConnection[Any]) -> None:
        schema = self._schema
        if schema is None:
            row = await (await conn.execute("SELECT current_schema()")).fetchone()
            if row is None or row[0] is None:
                raise BackendError("create_schema: the search_path names no existing schema")
            schema = str(row[0])
        else:
            found = await (
                await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
            ).fetchone()
            if found is None:
                await conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
                )
        version_table = sql.Identifier(schema, _VERSION_TABLE)
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (table_name text PRIMARY KEY,"
                " version integer NOT NULL, unlogged boolean NOT NULL,"
                " updated_at timestamptz NOT NULL DEFAULT now())"
            ).format(version_table)
        )
        row = await (
            await conn.execute(
                sql.SQL("SELECT version FROM {} WHERE table_name = %s").format(version_table),
                (self._table,),
            )
        ).fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise BackendError(
                f"create_schema: {schema}.{self._table} has schema version {row[0]}, newer "
                f"than this threadlock's {SCHEMA_VERSION}; upgrade threadlock"
            )
        if row is not None and int(row[0]) == SCHEMA_VERSION:
            return
        # A fresh install and an upgrade run the same idempotent statements. Upgrading from
        # version 1 adds the registry and chain tables, replaces the helper functions (same
        # signatures and meaning) and adds the version-2 entry points beside the version-1
        # ones, which stay so that processes still running the older threadlock keep working
        # during a rolling upgrade.
        # Relaxed commits are sound only where a grant's own commit flushes WAL, i.e. when the
        # lease table is logged (see schema.sql); an existing table keeps its persistence.
        persistence = await (
            await conn.execute(
                "SELECT c.relpersistence FROM pg_class c JOIN pg_namespace n"
                " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s"
                " AND c.relkind = 'r'",
                (schema, self._table),
            )
        ).fetchone()
        unlogged = self._unlogged if persistence is None else persistence[0] == "u"
        names = {
            "relaxable": sql.SQL("false" if unlogged else "true"),
            "leases": self._name("", schema),
            "waiters": self._name("_waiters", schema),
            "fence_seq": self._name("_fence_seq", schema),
            "fence_seq_name": sql.Literal(f'"{schema}"."{self._table}_fence_seq"'),
            "grant_next": self._name("_grant_next", schema),
            "hand_on": self._name("_hand_on", schema),
            "settle": self._name("_settle", schema),
            "sweep": self._name("_sweep", schema),
            "acquire": self._name("_acquire", schema),
            "release": self._name("_release", schema),
            "extend": self._name("_extend", schema),
            "advance_chain": self._name("_advance_chain", schema),
            "runs": self._name("_runs", schema),
            "chains": self._name("_chains", schema),
            "channel": sql.Literal(self._channel),
            "lockclass": sql.SQL(str(self._lockclass)),
            "unlogged": sql.SQL("UNLOGGED " if self._unlogged else ""),
        }
        for statement in _load_statements():
            await conn.execute(sql.SQL(statement).format(**names))
        await conn.execute(
            sql.SQL(
                "INSERT INTO {} (table_name, version, unlogged) VALUES (%s, %s, %s)"
                " ON CONFLICT (table_name) DO UPDATE SET version = excluded.version,"
                " updated_at = now()"
            ).format(version_table),
            (self._table, SCHEMA_VERSION, self._unlogged),
        )

    # -- primitives -------------------------------------------------------------------------

    @staticmethod
    def _check_ttl(ttl: float) -> None:
        if ttl > _MAX_TTL:
            raise ValueError(f"ttl must be at most {_MAX_TTL:g} seconds on Postgres, got {ttl!r}")

    @staticmethod
    def _forged(lease: Lease) -> bool:
        """A lease no acquire can have made (a NUL, which Postgres text cannot hold)."""
        return "\x00" in lease.key or not isinstance(lease.token, str) or "\x00" in lease.token

    async def _acquire(self, key: str, ttl: float, timeout: float | None) -> Lease:
        self._check_ttl(ttl)
        owner = self._task_owner()
        token = self._new_id()
        await anyio.lowlevel.checkpoint_if_cancelled()
        if timeout == 0:
            try:
                attempt = await self._attempt(key, token, "", owner, ttl, enqueue=False, seq=None)
                await anyio.lowlevel.checkpoint_if_cancelled()  # cancelled at the grant: give back
            except BaseException:
                await self._abandon(key, token)
                raise
            if attempt.status == "granted":
                return attempt.lease(key, token, ttl)
            raise attempt.busy(key)

        # Registered before the first attempt (a dict entry), so that a release by this
        # instance can hand it the key from then on; the listening connection is only started
        # once the attempt says we have to wait.
        waiter = _Waiter(self._new_id())
        self._listener.register(waiter)
        deadline = None if timeout is None else anyio.current_time() + timeout
        seq: int | None = None
        try:
            while True:
                waiter.clear()  # a wake-up from now on means "re-check"
                attempt = await self._attempt(
                    key, token, waiter.wid, owner, ttl, enqueue=True, seq=seq
                )
                await anyio.lowlevel.checkpoint_if_cancelled()  # cancelled at the grant: give back
                if attempt.status == "granted":
                    return attempt.lease(key, token, ttl)
                if waiter.granted is not None:  # handed over while our statement ran
                    return waiter.lease(key, token, ttl)
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
                await waiter.wait(wait)
                if waiter.granted is not None:  # a release by this instance handed it over
                    await anyio.lowlevel.checkpoint_if_cancelled()  # cancelled: give back
                    return waiter.lease(key, token, ttl)
        except BaseException:
            await self._abandon(key, token)
            raise
        finally:
            self._listener.unregister(waiter)

    async def _release(self, lease: Lease) -> bool:
        if self._forged(lease):
            return False
        return await self._release_statement(lease.key, lease.token)

    async def _extend(self, lease: Lease, ttl: float) -> Lease:
        self._check_ttl(ttl)
        if self._forged(lease):
            raise LeaseLost(lease.key, lease.fence, "no such lease")
        rows = await self._execute(self._q_extend, (lease.key, lease.token, ttl))
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
        rows = await self._execute(self._q_inspect, (key,))
        return self._info(rows[0]) if rows else None

    async def _held(self) -> list[LockInfo]:
        return [self._info(row) for row in await self._execute(self._q_held)]

    # -- run registry and chain heads (RunRegistry, ChainStore) ------------------------------

    async def track_run(self, record: RunRecord) -> None:
        """Record a run or background response; see :class:`threadlock.RunRegistry`.

        One statement (an upsert): recording the same ``key`` and ``run_id`` again replaces
        the entry and keeps its place. Committed synchronously, so the entry survives a crash
        of this process and of the server.
        """
        if not isinstance(record, RunRecord):
            raise TypeError(f"record must be a RunRecord, not {type(record).__name__}")
        self._check_open()
        await self._execute(
            self._q_track,
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
        """Forget a run; see :class:`threadlock.RunRegistry`. A missing entry is no error."""
        check_key(key)
        check_key(run_id, "run_id")
        self._check_open()
        await self._execute(self._q_untrack, (key, run_id))

    async def tracked_runs(self, key: str | None = None) -> list[RunRecord]:
        """The recorded runs of ``key`` (or of every key), oldest first."""
        if key is not None:
            check_key(key)
        self._check_open()
        if key is None:
            rows = await self._execute(self._q_tracked_all)
        else:
            rows = await self._execute(self._q_tracked_key, (key,))
        return [self._record(row) for row in rows]

    @staticmethod
    def _record(row: tuple[Any, ...]) -> RunRecord:
        key, kind, run_id, thread_id, created_at, fence, owner = row
        run_kind: RunKind = "response" if kind == "response" else "run"
        return RunRecord(
            str(key),
            run_kind,
            str(run_id),
            str(thread_id),
            float(created_at),
            int(fence),
            str(owner),
        )

    async def chain_head(self, key: str) -> str | None:
        """The last response id of chain ``key``; see :class:`threadlock.ChainStore`."""
        check_key(key)
        self._check_open()
        rows = await self._execute(self._q_chain_head, (key,))
        return str(rows[0][0]) if rows else None

    async def advance_chain(self, lease: Lease, expected: str | None, new: str) -> bool:
        """Compare-and-set the chain head while ``lease`` is held; one statement.

        It checks the lease's token (and that it has not expired) under the key's advisory
        lock, the same serialisation as acquire, release and extend, then moves the head from
        ``expected`` (``None``: no head yet) to ``new``.
        """
        if not isinstance(lease, Lease):
            raise TypeError(f"lease must be a threadlock.Lease, not {type(lease).__name__}")
        check_key(new, "new")
        self._check_open()
        if self._forged(lease):
            return False
        rows = await self._execute(self._q_advance_chain, (lease.key, lease.token, expected, new))
        return bool(rows[0][0])

    async def _aclose(self) -> None:
        await self._listener.aclose()
        if self._owns_pool and self._pool_opened:
            with anyio.CancelScope(shield=True):
                await self._pool.close()
