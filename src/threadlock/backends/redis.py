"""Redis backend: FIFO leases with direct hand-off, fencing, pub/sub wake-up, the run registry.

It runs on redis-py's asyncio clients (:class:`redis.asyncio.Redis`, Sentinel's
``master_for``, :class:`redis.asyncio.cluster.RedisCluster`), so it needs the asyncio event
loop (redis-py's asyncio client does not run on trio).

Key layout
    One lock ``key`` lives under Redis keys sharing the hash tag ``{<digest>}``, where the
    digest is the first 128 bits of SHA-256 of the key in hex. Hashing, not escaping, is what
    makes every key an ordinary key: ``{a}b}``, ``*``, ``'; --`` or unicode can neither break
    the hash tag nor reach a glob or a script (keys and values reach Redis only as
    KEYS/ARGV). The user's key is stored in the lease value, so ``held()`` shows it::

        <prefix>:{<digest>}:lease  string "<sha1(token)> <w> <fence> <acquired µs> <expires µs>
                                          <claim by µs> <#owner> <owner><key>"
        <prefix>:{<digest>}:fence  string the last fence; TTL = lease ttl + 1 h after last use
        <prefix>:{<digest>}:queue  zset   waiter id -> arrival order (FIFO)
        <prefix>:{<digest>}:beat   zset   waiter id -> heartbeat deadline (µs, server clock)
        <prefix>:{<digest>}:meta   hash   waiter id -> ttl, grace, channel, owner; k -> key
        <prefix>:{<digest>}:runs   hash   run id -> "<order µs> <record JSON>" (run registry)
        <prefix>:{<digest>}:chain  string the chain head (a response id)
        <prefix>:{<digest>}:gone:<attempt>  tombstone of an abandoned acquire (60 s)

    The lease key expires when the lease ends (``PXAT``), so its existence is its liveness;
    the queue keys expire with the last waiter's heartbeat deadline and are deleted when the
    queue empties; the fence key expires one hour after the lease would. A free key
    therefore leaves only its fence key, for at most ``ttl + 1 h`` (plus its registry and
    chain keys, if a guard wrote them, and for a minute the tombstone of a cancelled
    acquire).

Scripts (``redis_lua/*.lua``, loaded once, run with ``EVALSHA`` and reloaded on NOSCRIPT)
    ``acquire`` (one attempt: take, queue/heartbeat, or leave the queue), ``release``,
    ``extend``, ``claim``, ``abandon`` (a waiter gives up; if the key was just handed to it,
    it passes it on), ``inspect``, ``advance`` (chain compare-and-set) and ``track`` (run
    registry). Each is one round trip and reads the server clock with ``TIME`` where it
    needs it, so expiry and waiter deadlines never depend on client clocks. Every lock
    script first hands a free key with live waiters to the head waiter, so expiry is exact.

    ``acquire`` and ``release`` open with a fast path, written before the shared helpers are
    even defined (``_head.lua`` holds locals only; ``_common.lua`` is inserted at the
    script's ``-- @common`` line): a free key with no queue is taken with four Redis calls
    (``EXISTS lease queue tombstone``, ``TIME``, ``SET fence GET``, ``SET lease PXAT``), and
    a lease with nobody queued behind it (its ``w`` flag, set when a waiter joins) is
    released with two (``GET``, ``DEL``). On the Python side the uncontended path is one
    ``EVALSHA`` each, with arguments pre-encoded where they can be, and nothing else: no
    subscription, no timer, no task.

FIFO and hand-off
    A waiter joins the queue in the same round trip as its first attempt. ``release`` makes
    the first live waiter the holder inside the script and publishes
    ``"<waiter id> <fence> <acquired µs> <expires µs>"`` to it, so the woken task returns its
    lease at once, with no further round trip on the hand-off path; a releaser whose waiter
    is in the same process lets it run before going on. The releaser cannot barge back in
    ahead of the queue. Within one process, acquires of one key reach Redis in the order they
    were called (each waits for the previous one's first answer: ``_enter``).

Grace
    A waiter's entry carries a heartbeat deadline (``now + grace`` on the server clock) that
    it renews every ``grace / 3`` while it waits; a waiter past its deadline (its process
    died) is dropped by the next script that looks at the queue. A key handed to a waiter is
    *unclaimed* until the waiter's process claims it with its next ``acquire`` attempt, which
    the notification triggers (the notification only wakes; the script checks the token, so
    a forged message cannot hand out a lease); an unclaimed hand-off ends at
    ``grant + grace``, so a waiter that died just before the grant stalls the key for at most
    ``grace``, not its TTL. A live waiter whose event loop stalled for longer than ``grace``
    rejoins at the tail.

Wake-up
    One pub/sub connection per backend instance (per master on Cluster), multiplexed over all
    keys. On a plain server every waiter of an instance is notified on the instance's own
    channel, ``<prefix>:inbox:<random id>``, subscribed at the first wait and kept: a
    contended acquire costs no SUBSCRIBE, and a grant published before the waiter registered
    locally is kept for it (``_early``). With sharded pub/sub (Cluster) a script may only
    ``SPUBLISH`` to a channel in its own hash slot, so there the channel is the key's own,
    ``<prefix>:{<digest>}:wake``, subscribed while a local task waits on the key and dropped
    about a second after the last one left. The reader task re-subscribes after a dropped
    connection (redis-py reconnects it), and every (re)subscription confirmation wakes the
    local waiters of that channel to re-check, so a notification lost while unsubscribed
    costs one round trip. Besides, every wait re-checks at the latest when the holder's
    lease ends and at each heartbeat, so a lost notification never costs more than that.

Fences
    ``fence = max(last fence + 1, server time in µs)``: strictly increasing per key, also
    after a restart that lost every key (the clock has moved on), as long as the server's
    clock does not step back by more than the hour the fence key is kept.

Cancellation
    Cancellation is delivered before an acquire's first attempt. After it, any way out but
    success runs the shielded ``abandon`` script, which passes the key on if it was granted
    to us, else takes us out of the queue, and writes the acquire's tombstone, so that an
    attempt cancelled in flight whose bytes reach Redis only afterwards changes nothing. A
    release cancelled in flight releases again, shielded. That is what lets acquire and
    release themselves run unshielded: an anyio shielded scope costs as much CPU as all the
    rest of an uncontended acquire. Every other round trip is shielded.

Run registry (:class:`threadlock.RunRegistry`)
    One hash per lock, ``<prefix>:{<digest>}:runs``, in the lock's hash slot: field = run
    id, value = ``"<order µs> <JSON>"`` where the JSON holds the :class:`RunRecord` (ids,
    times, fence and owner: never message content). ``track_run`` is one ``EVALSHA``
    (``track.lua``): the order is the server time of the first track of that run id, so
    ``tracked_runs(key)`` lists entries in the order recorded and re-tracking keeps the
    place. The hash expires ``registry_ttl`` (24 h by default, at least the 600 s an OpenAI
    run can live) after its last ``track_run``, and each ``track_run`` drops entries older
    than ``registry_ttl``: an entry a crashed worker left behind stays for recovery long
    after its run must have ended, and nothing grows without bound. ``untrack_run`` is one
    ``HDEL``. Because the hash shares the lock's slot, ``inspect`` (and ``held``) read the
    newest entry in the same script as the lease: :attr:`LockInfo.run_id`.

    ``tracked_runs(None)`` finds the hashes of this prefix with ``SCAN`` (on every master of a
    Cluster), then reads each with ``HGETALL``. A global index (one set of the keys that have
    runs) was rejected: on Cluster it lives in another slot than the lock, so every
    ``track_run``/``untrack_run`` would become two round trips that a crash can separate (an
    index that drifts from the entries), and one shard would take every registry write of
    the whole fleet. Writes happen on every guarded turn; the global listing happens once at
    start-up (``recover_orphaned_runs``) and in the CLI, where a ``SCAN`` costs a moment.

Chain heads (:class:`threadlock.ChainStore`)
    ``<prefix>:{<digest>}:chain`` holds the last response id of a ``previous_response_id``
    chain (the chain key is the lease key). ``chain_head`` is one ``GET``; ``advance_chain``
    is one ``EVALSHA`` (``advance.lua``) that checks, in the same script, that the lease is
    the caller's live lease (token) and that the head is the expected one, then sets the new
    head with a TTL of ``chain_ttl`` (30 days by default), refreshed on every advance: a
    conversation left alone that long starts a new chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.resources
import json
import logging
import math
import os
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import anyio
import anyio.lowlevel
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.commands.core import AsyncScript

from threadlock._lease import Lease, LockInfo
from threadlock._validate import check_key, check_positive
from threadlock.backends.base import DEFAULT_GRACE, BaseThreadLock
from threadlock.errors import BackendError, LeaseLost, ThreadBusy
from threadlock.observe import Observer
from threadlock.protocol import RunKind, RunRecord

__all__ = ["RedisThreadLock"]

logger = logging.getLogger("threadlock")

_T = TypeVar("_T")
_MIN_RETRY_AFTER = 0.001
_LOCK_SCRIPTS = ("acquire", "release", "extend", "abandon", "inspect", "advance")
_SCRIPTS = (*_LOCK_SCRIPTS, "track")
_GLOB_SPECIALS = "\\*?[]"
#: How long a lost subscriber connection waits before redis-py is asked to reconnect it.
_RECONNECT_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0)
_HELD_CONCURRENCY = 32
_NAMES_CACHED = 4096
_EARLY_KEPT = 256
_NUMKEYS = {n: str(n).encode() for n in range(1, 8)}
_MODES = {"try": b"t", "wait": b"w", "last": b"l"}
#: Seconds a channel stays subscribed after its last local waiter left.
_LINGER = 1.0
#: The longest an OpenAI run lives (it expires 10 minutes after creation): the run registry
#: must keep entries at least that long.
_MIN_REGISTRY_TTL = 600.0
DEFAULT_REGISTRY_TTL = 24 * 3600.0
DEFAULT_CHAIN_TTL = 30 * 24 * 3600.0


def _load_scripts() -> dict[str, str]:
    """Script texts: ``_head.lua`` + the script with ``-- @common`` replaced by the helpers.

    A script without the ``-- @common`` marker is standalone (``track.lua``).
    """
    folder = importlib.resources.files("threadlock.backends") / "redis_lua"
    head = (folder / "_head.lua").read_text(encoding="utf-8")
    common = (folder / "_common.lua").read_text(encoding="utf-8")
    texts = {}
    for name in _SCRIPTS:
        body = (folder / f"{name}.lua").read_text(encoding="utf-8")
        if "\n-- @common\n" in body:
            texts[name] = head + "\n" + body.replace("\n-- @common\n", "\n" + common + "\n", 1)
        else:
            texts[name] = body
    return texts


_SCRIPT_TEXT = _load_scripts()

#: Every backend instance, so a forked child draws fresh randomness (see _token).
_INSTANCES: weakref.WeakSet[RedisThreadLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for instance in list(_INSTANCES):
        instance._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _ttl_ms(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def _waiter_id(token: str) -> str:
    return hashlib.sha1(token.encode("ascii")).hexdigest()  # noqa: S324 - an id, not security


class _Names:
    """The Redis key names of one lock (all in one hash slot) and its channel.

    The lists are the KEYS of the scripts, pre-encoded, so a call does not encode them again.
    """

    __slots__ = ("base", "chain", "channel", "full", "key", "lock", "runs", "with_runs")

    def __init__(self, base: str, key: str = "") -> None:
        self.base = base
        parts = ("lease", "fence", "queue", "beat", "meta")
        #: KEYS 1-5 of every lock script: lease, fence, queue, beat, meta
        self.lock = [f"{base}:{part}".encode() for part in parts]
        self.runs = f"{base}:runs"
        self.chain = f"{base}:chain"
        self.with_runs = [*self.lock, self.runs.encode()]  # KEYS 1-6 (acquire, inspect)
        self.full = [*self.with_runs, self.chain.encode()]  # KEYS 1-7 (advance)
        self.channel = f"{base}:wake"
        self.key = key.encode()

    def acquire_keys(self, attempt: str) -> list[bytes]:
        """KEYS 1-6 and the tombstone of one acquire (KEYS 7 of acquire and abandon);
        ``attempt`` names the acquire uniquely (it need not be secret)."""
        return [*self.with_runs, f"{self.base}:gone:{attempt}".encode()]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Waiter:
    """A local task waiting on a key, woken to re-check or, with the grant, to return."""

    __slots__ = ("_future", "grant", "id", "woken")

    def __init__(self, waiter_id: str) -> None:
        self.id = waiter_id
        self.woken = False
        self.grant: tuple[int, int, int] | None = None  # fence, acquired µs, expires µs
        self._future: asyncio.Future[None] | None = None

    def wake(self, grant: tuple[int, int, int] | None = None) -> None:
        if grant is not None:
            self.grant = grant  # a hint: the next acquire attempt checks and claims it
        self.woken = True
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    async def sleep(self, delay: float) -> None:
        """Until woken or ``delay`` seconds passed (a plain future and one timer)."""
        if self.woken or delay <= 0:
            return
        loop = asyncio.get_running_loop()
        future = self._future = loop.create_future()
        handle = loop.call_later(delay, _resolve, future)
        try:
            await future
        finally:
            handle.cancel()
            self._future = None


class _Subscriber:
    """One pub/sub connection and the asyncio task that reads it, shared by many channels."""

    def __init__(self, backend: RedisThreadLock, pubsub: PubSub, sharded: bool) -> None:
        self._backend = backend
        self._pubsub = pubsub
        self._sharded = sharded
        self.channels: set[str] = set()
        self._lock = anyio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def subscribe(self, channel: str) -> None:
        async with self._lock:
            if channel in self.channels:
                return
            if self._sharded:
                await self._pubsub.ssubscribe(channel)
            else:
                await self._pubsub.subscribe(channel)
            self.channels.add(channel)
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(
                    self._read(), name="threadlock redis subscriber"
                )

    async def unsubscribe(self, channel: str) -> None:
        async with self._lock:
            if channel not in self.channels or self._backend._has_waiters(channel):
                return
            self.channels.discard(channel)
            if self._sharded:
                await self._pubsub.sunsubscribe(channel)
            else:
                await self._pubsub.unsubscribe(channel)

    async def _read(self) -> None:
        failures = 0
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = _RECONNECT_DELAYS[min(failures, len(_RECONNECT_DELAYS) - 1)]
                failures += 1
                logger.warning(
                    "threadlock redis subscriber lost its connection (%s); reconnecting in %ss",
                    exc,
                    delay,
                    extra={"event": "redis.subscriber_reconnect"},
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            if message is not None:
                self._backend._dispatch(message)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):  # cancelled on purpose
                await self._task
            self._task = None
        try:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        except Exception:  # pragma: no cover - best effort at shutdown
            logger.debug("closing the redis subscriber failed", exc_info=True)


class RedisThreadLock(BaseThreadLock):
    """The Redis backend. See the module docstring for how it works.

    It is also a :class:`threadlock.RunRegistry` and a :class:`threadlock.ChainStore`, so the
    OpenAI guards and :func:`threadlock.openai.recover_orphaned_runs` work across processes.

    Args:
        client: a redis-py asyncio client: :class:`redis.asyncio.Redis` (also Sentinel's
            ``master_for(...)``) or :class:`redis.asyncio.cluster.RedisCluster`. The backend
            does not close a client it was given.
        prefix: the first part of every Redis key and channel name this backend uses; it must
            not contain ``{``, ``}`` or NUL. Backends sharing a prefix share their locks.
        owner: the owner prefix stored with each lease (``host:pid`` by default).
        grace: seconds after which a waiter whose process died is skipped.
        release_timeout: the bound on the release at the end of ``hold()``.
        sharded_pubsub: use ``SSUBSCRIBE``/``SPUBLISH`` (Redis 7+). Default: on Cluster only.
        registry_ttl: seconds a lock's run registry is kept after its last ``track_run``
            (and the most an entry is kept after it was first recorded, if the key goes on
            being used); at least 600 (an OpenAI run's life).
        chain_ttl: seconds a chain head is kept after its last ``advance_chain``.
        observer: where this lock reports what it does (see :mod:`threadlock.observe`).
    """

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        prefix: str = "threadlock",
        *,
        owner: str | None = None,
        grace: float = DEFAULT_GRACE,
        release_timeout: float = 5.0,
        sharded_pubsub: bool | None = None,
        registry_ttl: float = DEFAULT_REGISTRY_TTL,
        chain_ttl: float = DEFAULT_CHAIN_TTL,
        observer: Observer | None = None,
        _owns_client: bool = False,
    ) -> None:
        super().__init__(
            owner=owner, grace=grace, release_timeout=release_timeout, observer=observer
        )
        if not isinstance(client, (aioredis.Redis, RedisCluster)):
            raise TypeError(
                "client must be a redis.asyncio.Redis or redis.asyncio.cluster.RedisCluster, "
                f"not {type(client).__name__}"
            )
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        if not prefix or any(c in prefix for c in "{}\x00"):
            raise ValueError(f"prefix must be non-empty, without '{{', '}}' or NUL: {prefix!r}")
        registry_s = check_positive(registry_ttl, "registry_ttl")
        if registry_s < _MIN_REGISTRY_TTL:
            raise ValueError(
                f"registry_ttl must be at least {_MIN_REGISTRY_TTL:g} s (an OpenAI run lives "
                f"up to 10 minutes), got {registry_ttl!r}"
            )
        self._registry_ttl_ms = _ttl_ms(registry_s)
        self._chain_ttl_ms = _ttl_ms(check_positive(chain_ttl, "chain_ttl"))
        self._client = client
        self._prefix = prefix
        self._cluster = isinstance(client, RedisCluster)
        self._sharded = self._cluster if sharded_pubsub is None else bool(sharded_pubsub)
        self._pub = b"s" if self._sharded else b"p"
        self._modes = {mode: self._pub + letter for mode, letter in _MODES.items()}
        self._owns_client = _owns_client
        #: redis-py script objects (for pipelines); the backend itself calls EVALSHA directly.
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(text) for name, text in _SCRIPT_TEXT.items()
        }
        self._shas = {name: script.sha for name, script in self._scripts.items()}
        self._names_cache: dict[str, _Names] = {}
        self._random = b""
        self._random_at = 0
        self._instance = secrets.token_hex(6)  # names this instance's acquires (tombstones)
        self._attempts = 0
        #: On a plain server (pub/sub not sharded) every waiter of this instance is notified
        #: on one channel, subscribed once; sharded pub/sub (Cluster) needs the key's own.
        self._per_instance = not self._sharded and not self._cluster
        self._inbox = self._inbox_name()
        _INSTANCES.add(self)
        self._waiting: dict[str, dict[str, _Waiter]] = {}
        self._subscribers: dict[str, _Subscriber] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # claims and unsubscriptions
        self._idle: dict[str, float] = {}  # channel -> when its last local waiter left
        self._entering: dict[str, list[asyncio.Event]] = {}  # key -> acquires in line
        #: waiter id -> (grant, when): grants that arrived before their waiter registered
        self._early: dict[str, tuple[int, int, int]] = {}
        self._janitor: asyncio.TimerHandle | None = None
        self._heartbeat = self._grace / 3
        self._grace_ms = str(_ttl_ms(self._grace)).encode()
        # redis-py's RedisCluster races when its first commands run concurrently before it
        # has loaded the slot map; initialise it once, first (Cluster only).
        self._initialized = not self._cluster
        self._init_lock = anyio.Lock()

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisThreadLock:
        """Build a backend from a URL, without connecting.

        Schemes: ``redis://``, ``rediss://`` (TLS, as Upstash uses), ``unix://`` (redis-py's
        own URL parsing), ``redis+cluster://`` / ``rediss+cluster://`` (any node of the
        cluster), and ``redis+sentinel://`` / ``rediss+sentinel://`` written as
        ``redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db]``.

        The backend options (``prefix``, ``owner``, ``grace``, ``release_timeout``,
        ``sharded_pubsub``, ``registry_ttl``, ``chain_ttl``, ``observer``) may be given as
        keywords; ``prefix`` also as the query parameter ``threadlock_prefix``. Every other
        keyword goes to the redis-py client.
        """
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        backend_options: dict[str, Any] = {
            name: options.pop(name)
            for name in (
                "prefix",
                "owner",
                "grace",
                "release_timeout",
                "sharded_pubsub",
                "registry_ttl",
                "chain_ttl",
                "observer",
            )
            if name in options
        }
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        kept = []
        for name, value in query:
            if name == "threadlock_prefix":
                backend_options.setdefault("prefix", value)
            else:
                kept.append((name, value))
        parts = parts._replace(query=urlencode(kept))
        scheme = parts.scheme.lower()
        client: aioredis.Redis | RedisCluster
        if scheme in ("redis", "rediss", "unix"):
            client = aioredis.Redis.from_url(urlunsplit(parts), **options)
        elif scheme in ("redis+cluster", "rediss+cluster"):
            plain = parts._replace(scheme=scheme.partition("+")[0])
            client = RedisCluster.from_url(urlunsplit(plain), **options)
        elif scheme in ("redis+sentinel", "rediss+sentinel"):
            client = _sentinel_client(parts, scheme.startswith("rediss"), options)
        else:
            raise ValueError(f"url: {scheme!r} is not a Redis URL scheme: {url!r}")
        return cls(client, _owns_client=True, **backend_options)

    @property
    def client(self) -> aioredis.Redis | RedisCluster:
        """The redis-py client this backend uses."""
        return self._client

    @property
    def prefix(self) -> str:
        """The prefix of every Redis key this backend writes."""
        return self._prefix

    @property
    def registry_ttl(self) -> float:
        """Seconds a lock's run registry is kept after its last ``track_run``."""
        return self._registry_ttl_ms / 1000

    @property
    def chain_ttl(self) -> float:
        """Seconds a chain head is kept after its last ``advance_chain``."""
        return self._chain_ttl_ms / 1000

    # -- internals -------------------------------------------------------------------------------

    def _token(self) -> str:
        """A lease token: 128 random bits, from a buffer refilled 4 KiB at a time (one
        ``getrandom`` call per 256 tokens instead of one per token). The buffer is this
        instance's (an instance serves one event loop) and is dropped in a forked child."""
        at = self._random_at
        if at >= len(self._random):
            self._random = os.urandom(4096)
            at = 0
        self._random_at = at + 16
        return self._random[at : at + 16].hex()

    def _after_fork(self) -> None:
        self._random = b""
        self._random_at = 0
        self._instance = secrets.token_hex(6)
        self._attempts = 0
        self._inbox = self._inbox_name()

    def _inbox_name(self) -> str:
        return f"{self._prefix}:inbox:{self._instance}" if self._per_instance else ""

    def _wait_channel(self, names: _Names) -> str:
        """Where a waiter of this instance is notified: the inbox, or the key's channel."""
        return self._inbox or names.channel

    def _names(self, key: str) -> _Names:
        names = self._names_cache.get(key)
        if names is None:
            if len(self._names_cache) >= _NAMES_CACHED:
                self._names_cache.clear()
            names = self._names_cache[key] = _Names(f"{self._prefix}:{{{_digest(key)}}}", key)
        return names

    def _keys(self, key: str) -> list[str]:
        """The five lock keys of ``key`` (lease, fence, queue, beat, meta)."""
        return [name.decode() for name in self._names(key).lock]

    def _channel(self, key: str) -> str:
        return self._names(key).channel

    async def _eval(self, name: str, keys: list[bytes], *args: bytes | str | int) -> Any:
        """One script, one round trip: ``EVALSHA`` straight through the client.

        On NOSCRIPT (``SCRIPT FLUSH``, a restart, a failover) the script is loaded and run
        again. Errors come out as BackendError. Not shielded: see :meth:`_run`.
        """
        client = self._client
        try:
            if not self._initialized:
                await self._initialize()
            try:
                return await client.execute_command(
                    "EVALSHA", self._shas[name], _NUMKEYS[len(keys)], *keys, *args
                )
            except redis.exceptions.NoScriptError:
                await client.script_load(_SCRIPT_TEXT[name])
                return await client.execute_command(
                    "EVALSHA", self._shas[name], _NUMKEYS[len(keys)], *keys, *args
                )
        except (redis.exceptions.RedisError, OSError) as exc:
            raise BackendError(f"redis: {type(exc).__name__}: {exc}") from exc

    async def _run(self, name: str, keys: list[bytes], *args: bytes | str | int) -> Any:
        """:meth:`_eval`, shielded: its outcome is always known (a command cancelled in flight
        may still reach Redis after whatever the caller does next). ``acquire`` and
        ``release`` do without it (see there); the other operations are not hot."""
        with anyio.CancelScope(shield=True):
            return await self._eval(name, keys, *args)

    async def _initialize(self) -> None:
        async with self._init_lock:
            if not self._initialized:
                assert isinstance(self._client, RedisCluster)
                await self._client.initialize()
                self._initialized = True

    async def _guard(self, run: Callable[[], Awaitable[_T]], *, shield: bool = False) -> _T:
        try:
            with anyio.CancelScope(shield=shield):
                if not self._initialized:
                    await self._initialize()
                result = await run()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise BackendError(f"redis: {type(exc).__name__}: {exc}") from exc
        return result

    def _info(self, reply: Sequence[Any], key: str | None = None) -> LockInfo:
        # reply: [key?, fence, owner, acquired µs, expires µs, waiters, newest run id or None]
        run_id = reply[6] if len(reply) > 6 else None
        return LockInfo(
            key=_text(reply[0]) if key is None else key,
            fence=int(reply[1]),
            owner=_text(reply[2]),
            acquired_at=int(reply[3]) / 1e6,
            expires_at=int(reply[4]) / 1e6,
            waiters=int(reply[5]),
            run_id=None if run_id is None else _text(run_id),
        )

    def _busy(self, key: str, reply: Sequence[Any]) -> ThreadBusy:
        # reply: [0, µs left, fence, owner, acquired µs, expires µs, waiters, newest run id]
        left = max(int(reply[1]) / 1e6, _MIN_RETRY_AFTER)
        return ThreadBusy(key, left, self._info(reply[1:], key))

    def _has_waiters(self, channel: str) -> bool:
        return bool(self._waiting.get(channel))

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = _text(message.get("type"))
        channel = _text(message.get("channel"))
        waiters = self._waiting.get(channel) or {}
        if kind in ("message", "smessage"):
            # "<waiter id> <fence> <acquired µs> <expires µs>": the grant itself
            parts = _text(message.get("data")).split(" ")
            grant = None
            if len(parts) == 4:
                with contextlib.suppress(ValueError):
                    grant = (int(parts[1]), int(parts[2]), int(parts[3]))
            waiter = waiters.get(parts[0])
            if waiter is not None:
                waiter.wake(grant)
            elif grant is not None:
                # Perhaps for a local acquire whose first attempt queued it, answered after
                # this (another connection): it looks here when it registers. Otherwise a
                # waiter of another process; kept a while, bounded.
                if len(self._early) >= _EARLY_KEPT:
                    del self._early[next(iter(self._early))]
                self._early[parts[0]] = grant
        elif kind in ("subscribe", "ssubscribe"):
            # A (re)subscription: whatever was published before it was missed; re-check.
            for waiter in waiters.values():
                waiter.wake()

    def _subscriber_name(self, channel: str) -> str:
        if not isinstance(self._client, RedisCluster):
            return ""
        node = self._client.get_node_from_key(channel)
        if node is None:
            raise BackendError(f"redis cluster: no node serves the channel {channel!r}")
        return str(node.name)

    def _subscriber(self, channel: str) -> _Subscriber:
        name = self._subscriber_name(channel)
        subscriber = self._subscribers.get(name)
        if subscriber is None:
            if isinstance(self._client, RedisCluster):
                node = self._client.get_node_from_key(channel)
                assert node is not None
                pool = aioredis.ConnectionPool(
                    connection_class=node.connection_class, **node.connection_kwargs
                )
                pubsub = PubSub(connection_pool=pool, encoder=self._client.get_encoder())
            else:
                pubsub = self._client.pubsub()
            subscriber = self._subscribers[name] = _Subscriber(self, pubsub, self._sharded)
        return subscriber

    def _subscribed(self, channel: str) -> bool:
        return any(channel in s.channels for s in self._subscribers.values())

    async def _watch(self, channel: str) -> None:
        if self._inbox == channel and self._subscribed(channel):
            return
        try:
            with anyio.fail_after(self._release_timeout, shield=True):
                await self._guard(lambda: self._subscriber(channel).subscribe(channel))
        except (BackendError, TimeoutError):  # the wait's re-checks still bound the wake-up
            logger.warning(
                "threadlock could not subscribe to %r; waiting on re-checks only",
                channel,
                exc_info=True,
                extra={"event": "redis.subscribe_failed"},
            )

    def _unwatch(self, channel: str, waiter: _Waiter) -> None:
        """The waiter leaves; a channel left without local waiters is unsubscribed later.

        Not on the way out of ``acquire`` (that is the hand-off's critical path): a channel
        stays subscribed for :data:`_LINGER` seconds after its last local waiter left, so the
        next waiter on a busy key needs no SUBSCRIBE either, then one background task
        unsubscribes every channel that is still idle.
        """
        waiters = self._waiting.get(channel)
        if waiters is not None:
            waiters.pop(waiter.id, None)
            if not waiters:
                del self._waiting[channel]
        if (
            channel in self._waiting
            or channel == self._inbox  # subscribed for the life of the instance
            or self._closed
            or not self._subscribed(channel)
        ):
            return
        loop = asyncio.get_running_loop()
        self._idle[channel] = loop.time()
        if self._janitor is None:
            self._janitor = loop.call_later(_LINGER, self._sweep_idle, loop)

    def _sweep_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        self._janitor = None
        if self._closed:
            return
        now = loop.time()
        due = [c for c, at in self._idle.items() if now - at >= _LINGER * 0.9]
        for channel in due:
            del self._idle[channel]
        due = [c for c in due if c not in self._waiting]
        if due:
            self._background(loop, self._unsubscribe(due))
        if self._idle:
            self._janitor = loop.call_later(_LINGER, self._sweep_idle, loop)

    async def _unsubscribe(self, channels: list[str]) -> None:
        for channel in channels:
            with anyio.move_on_after(self._release_timeout, shield=True):
                try:
                    await self._subscriber(channel).unsubscribe(channel)
                except Exception:
                    logger.debug("unsubscribe from %r failed", channel, exc_info=True)

    def _background(self, loop: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, None]) -> None:
        task = loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _lease(key: str, token: str, ttl: float, grant: Sequence[Any]) -> Lease:
        return Lease(key, token, int(grant[0]), ttl, int(grant[1]) / 1e6, int(grant[2]) / 1e6)

    def _check_waiting(self) -> None:
        if self._closed:
            raise BackendError("RedisThreadLock was closed while waiting")

    # -- primitives ------------------------------------------------------------------------------

    async def _acquire(self, key: str, ttl: float, timeout: float | None) -> Lease:
        names = self._names(key)
        token = self._token()
        self._attempts += 1
        keys = names.acquire_keys(f"{self._instance}{self._attempts:x}")
        # ARGV 2-7 of acquire.lua; ARGV 1 (pub letter + mode letter) is set per attempt.
        argv = (token, _ttl_ms(ttl), self._task_owner(), names.key, self._grace_ms, self._inbox)

        # Cancellation is delivered before the first attempt. After it, any way out but
        # success runs the shielded ``abandon``: it passes the key on if it was granted to
        # us, else takes us out of the queue, and it writes this acquire's tombstone, so an
        # attempt cancelled in flight whose bytes reach Redis only afterwards changes
        # nothing. That is what lets the attempts themselves run unshielded (a shielded
        # round trip costs as much CPU as all the rest of an uncontended acquire).
        await anyio.lowlevel.checkpoint_if_cancelled()
        started = time.monotonic()
        await self._enter(key)
        try:
            mode = self._modes["try" if timeout == 0 else "wait"]
            reply = await self._eval("acquire", keys, mode, *argv)
        except BackendError:
            raise
        except BaseException:
            await self._abandon(keys, key, token)
            raise
        finally:
            self._pass_on(key)
        if reply[0] == 1:  # the uncontended path ends here: one round trip, nothing else
            return self._lease(key, token, ttl, reply[1:4])
        _check_not_abandoned(reply)
        if timeout == 0:
            raise self._busy(key, reply)
        deadline = None if timeout is None else started + timeout
        return await self._wait(names, keys, key, token, ttl, deadline, argv, reply)

    async def _wait(
        self,
        names: _Names,
        keys: list[bytes],
        key: str,
        token: str,
        ttl: float,
        deadline: float | None,
        argv: tuple[Any, ...],
        reply: Any,
    ) -> Lease:
        """The first attempt queued us: wait for the grant (notified), re-checking now and then."""
        beat_at = time.monotonic()
        channel = self._wait_channel(names)
        waiter = _Waiter(_waiter_id(token))
        waiters = self._waiting.get(channel)
        if waiters is None:
            waiters = self._waiting[channel] = {}
            self._idle.pop(channel, None)
        waiters[waiter.id] = waiter
        early = self._early.pop(waiter.id, None)
        if early is not None:  # granted before we got here (see _dispatch)
            waiter.wake(early)
        subscribed = False
        queued = True  # whether Redis may hold a queue entry (or a fresh grant) for us
        try:
            while True:
                if not subscribed:
                    subscribed = True
                    await self._watch(channel)
                # Sleep until notified, or until the holder's lease ends, the next heartbeat
                # is due or the timeout runs out, whichever comes first.
                wake_at = beat_at + min(int(reply[1]) / 1e6, self._heartbeat)
                if deadline is not None:
                    wake_at = min(wake_at, deadline)
                self._check_waiting()
                await waiter.sleep(wake_at - time.monotonic())
                self._check_waiting()
                # A notification only wakes us: the grant is checked (token) and claimed by
                # the next acquire attempt, so a forged message cannot hand out a lease.
                last = deadline is not None and time.monotonic() >= deadline
                waiter.woken = False  # a wake during the next attempt is kept
                waiter.grant = None
                mode = self._modes["last" if last else "wait"]
                reply = await self._eval("acquire", keys, mode, *argv)
                beat_at = time.monotonic()
                if reply[0] == 1:
                    return self._lease(key, token, ttl, reply[1:4])
                _check_not_abandoned(reply)
                if last:  # the script has taken us out of the queue
                    queued = False
                    break
        except BaseException:
            if queued:
                await self._abandon(keys, key, token)
            raise
        finally:
            self._unwatch(channel, waiter)
        raise self._busy(key, reply)

    async def _abandon(self, keys: list[bytes], key: str, token: str) -> None:
        """Shielded and bounded: leave the queue, or pass on a key granted meanwhile; and
        leave the acquire's tombstone (``keys`` are its acquire keys)."""
        with anyio.move_on_after(self._release_timeout, shield=True):
            try:
                await self._eval("abandon", keys, self._pub, token)
            except BackendError:
                logger.warning(
                    "threadlock could not leave the queue of %r; its entry expires within "
                    "the grace",
                    key,
                    exc_info=True,
                    extra={"event": "redis.abandon_failed", "key": key},
                )

    async def _enter(self, key: str) -> None:
        """Wait until the first attempts of earlier local acquires of ``key`` are answered.

        Redis serves waiters in the order their first attempts arrive; without this, two
        tasks of one process calling ``acquire`` one after the other could reach Redis in
        the other order (a fresh pooled connection, for one). With it, callers of one
        process are served in the order they called. Free when no other local acquire of
        the key is between its call and its first answer (the usual case): one dict entry.
        """
        line = self._entering.get(key)
        if line is None:
            self._entering[key] = []
            return
        turn = asyncio.Event()
        line.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn.is_set():  # our turn came as we were cancelled: pass it on
                self._pass_on(key)
            else:
                line.remove(turn)
            raise

    def _pass_on(self, key: str) -> None:
        line = self._entering.get(key)
        if line:
            line.pop(0).set()
        else:
            self._entering.pop(key, None)

    async def _release(self, lease: Lease) -> bool:
        names = self._names(lease.key)
        keys = names.lock
        try:
            reply = await self._eval("release", keys, self._pub, lease.token)
        except BackendError:
            raise
        except BaseException:
            # Cancelled in flight: release again, shielded and bounded, so the lease is
            # released whatever became of the first try (should that one reach Redis later,
            # it finds the lease gone and changes nothing); then go on being cancelled.
            with anyio.move_on_after(self._release_timeout, shield=True):
                with contextlib.suppress(BackendError):
                    await self._eval("release", keys, self._pub, lease.token)
            raise
        if isinstance(reply, bytes | str):  # handed to that waiter
            waiter = self._waiting.get(self._wait_channel(names), {}).get(_text(reply))
            if waiter is not None:
                await self._let_waiter_run(waiter)
            return True
        return int(reply) != 0

    async def _let_waiter_run(self, waiter: _Waiter) -> None:
        """The key went to a waiter of this process: let it run before this task goes on.

        Its grant notification arrives with (or just after) the release's reply; a few turns
        of the event loop let the subscriber read it and the woken waiter return its lease
        before this task goes on (say, to queue for the key again), which is what the
        hand-off latency measures. No cancellation is delivered here: the release is done.
        """
        for _ in range(3):
            await anyio.lowlevel.cancel_shielded_checkpoint()
            if waiter.grant is not None:
                await anyio.lowlevel.cancel_shielded_checkpoint()  # behind the woken one
                return

    async def _extend(self, lease: Lease, ttl: float) -> Lease:
        reply = await self._run(
            "extend", self._names(lease.key).lock, self._pub, lease.token, _ttl_ms(ttl)
        )
        if not isinstance(reply, list):
            raise LeaseLost(lease.key, lease.fence, "expired or taken before extend")
        return self._lease(lease.key, lease.token, ttl, reply)

    async def _inspect(self, key: str) -> LockInfo | None:
        reply = await self._run("inspect", self._names(key).with_runs, self._pub)
        if not isinstance(reply, list):
            return None
        return self._info(reply, key)

    def _scan_pattern(self, suffix: str) -> str:
        prefix = "".join("\\" + c if c in _GLOB_SPECIALS else c for c in self._prefix)
        return f"{prefix}:{{*}}:{suffix}"

    async def _scan(self, pattern: str) -> list[str]:
        found: list[str] = []

        async def scan() -> None:
            async for name in self._client.scan_iter(match=pattern, count=1000):
                found.append(_text(name))

        await self._guard(scan)
        return found

    async def _held(self) -> list[LockInfo]:
        tags = {
            name.rpartition(":")[0]
            for name in await self._scan(self._scan_pattern("*"))
            if name.endswith((":lease", ":queue"))
        }
        infos: list[LockInfo] = []

        async def one(base: str) -> None:
            reply = await self._run("inspect", _Names(base).with_runs, self._pub)
            if isinstance(reply, list):
                infos.append(self._info(reply))

        await _each(sorted(tags), one)
        infos.sort(key=lambda info: info.key)
        return infos

    # -- run registry and chain heads (RunRegistry, ChainStore) ----------------------------------

    async def track_run(self, record: RunRecord) -> None:
        """Record a run or background response; see :class:`threadlock.RunRegistry`.

        One ``EVALSHA``: the entry is in Redis (with the registry TTL) when this returns, so
        it survives a crash of this process. Recording the same ``key`` and ``run_id`` again
        replaces the entry and keeps its place.
        """
        if not isinstance(record, RunRecord):
            raise TypeError(f"record must be a RunRecord, not {type(record).__name__}")
        check_key(record.key, "record.key")
        check_key(record.run_id, "record.run_id")
        self._check_open()
        document = json.dumps(
            [
                record.key,
                record.kind,
                record.run_id,
                record.thread_id,
                record.created_at,
                record.fence,
                record.owner,
            ],
            separators=(",", ":"),
            ensure_ascii=False,
        )
        names = self._names(record.key)
        await self._run(
            "track", [names.with_runs[5]], record.run_id, document, self._registry_ttl_ms
        )

    async def untrack_run(self, key: str, run_id: str) -> None:
        """Forget a run; see :class:`threadlock.RunRegistry`. A missing entry is no error."""
        check_key(key)
        check_key(run_id, "run_id")
        self._check_open()
        runs = self._names(key).runs
        await self._guard(lambda: self._client.hdel(runs, run_id), shield=True)

    async def tracked_runs(self, key: str | None = None) -> list[RunRecord]:
        """The recorded runs of ``key`` in the order recorded, or of every key (all masters
        of a Cluster) by ``created_at``, oldest first."""
        if key is not None:
            check_key(key)
        self._check_open()
        if key is not None:
            return [record for _, record in await self._read_runs(self._names(key).runs)]
        found: list[tuple[int, RunRecord]] = []

        async def one(name: str) -> None:
            found.extend(await self._read_runs(name))

        await _each(sorted(set(await self._scan(self._scan_pattern("runs")))), one)
        found.sort(key=lambda pair: (pair[1].created_at, pair[0]))
        return [record for _, record in found]

    async def _read_runs(self, name: str) -> list[tuple[int, RunRecord]]:
        """The entries of one runs hash as (order, record), in order."""
        raw: dict[Any, Any] = await self._guard(lambda: self._client.hgetall(name))
        entries = []
        for field, value in raw.items():
            try:
                order, _, document = _text(value).partition(" ")
                key, kind, run_id, thread_id, created_at, fence, owner = json.loads(document)
                run_kind: RunKind = "response" if kind == "response" else "run"
                record = RunRecord(
                    str(key),
                    run_kind,
                    str(run_id),
                    str(thread_id),
                    float(created_at),
                    int(fence),
                    str(owner),
                )
                entries.append((int(order), record))
            except (ValueError, TypeError):
                logger.warning(
                    "threadlock skipped an unreadable run registry entry %r in %r",
                    _text(field),
                    name,
                    extra={"event": "redis.registry_unreadable"},
                )
        entries.sort(key=lambda pair: pair[0])
        return entries

    async def chain_head(self, key: str) -> str | None:
        """The last response id of chain ``key``; see :class:`threadlock.ChainStore`."""
        check_key(key)
        self._check_open()
        chain = self._names(key).chain
        head = await self._guard(lambda: self._client.get(chain))
        return None if head is None else _text(head)

    async def advance_chain(self, lease: Lease, expected: str | None, new: str) -> bool:
        """Compare-and-set the chain head while ``lease`` is held; one ``EVALSHA``.

        The script checks the lease's token (and that it is live, by the server clock) and
        that the head is ``expected`` (``None``: no head yet), then sets ``new`` with the
        chain TTL.
        """
        if not isinstance(lease, Lease):
            raise TypeError(f"lease must be a threadlock.Lease, not {type(lease).__name__}")
        check_key(new, "new")
        if expected is not None and not isinstance(expected, str):
            raise TypeError(f"expected must be a str or None, not {type(expected).__name__}")
        self._check_open()
        reply = await self._run(
            "advance",
            self._names(lease.key).full,
            self._pub,
            lease.token,
            "0" if expected is None else "1",
            "" if expected is None else expected,
            new,
            self._chain_ttl_ms,
        )
        return int(reply) == 1

    async def _aclose(self) -> None:
        for waiters in self._waiting.values():
            for waiter in waiters.values():
                waiter.wake()
        subscribers = list(self._subscribers.values())
        self._subscribers.clear()
        if self._janitor is not None:
            self._janitor.cancel()
            self._janitor = None
        with anyio.CancelScope(shield=True):
            await anyio.lowlevel.cancel_shielded_checkpoint()  # confirmations just scheduled
            if self._tasks:  # let hand-off confirmations in flight land
                with anyio.move_on_after(self._release_timeout):
                    await asyncio.gather(*self._tasks, return_exceptions=True)
            for subscriber in subscribers:
                await subscriber.aclose()
                pool = subscriber._pubsub.connection_pool
                if self._cluster:
                    await pool.disconnect()
            if self._owns_client:
                try:
                    await self._client.aclose()
                except Exception:  # pragma: no cover - best effort at shutdown
                    logger.debug("closing the redis client failed", exc_info=True)


def _check_not_abandoned(reply: Sequence[Any]) -> None:
    if reply[0] == 2:  # pragma: no cover - only an attempt whose caller is gone sees it
        raise BackendError("redis: this acquire was abandoned (tombstone) already")


async def _each(items: Sequence[str], work: Callable[[str], Awaitable[None]]) -> None:
    """``work(item)`` for every item, at most :data:`_HELD_CONCURRENCY` at once.

    The first :class:`BackendError` comes out as itself, not inside an ``ExceptionGroup``.
    """
    limiter = anyio.CapacityLimiter(_HELD_CONCURRENCY)
    errors: list[BackendError] = []

    async def one(item: str) -> None:
        async with limiter:
            if errors:
                return
            try:
                await work(item)
            except BackendError as error:
                errors.append(error)

    async with anyio.create_task_group() as tg:
        for item in items:
            tg.start_soon(one, item)
    if errors:
        raise errors[0]


def _sentinel_client(parts: Any, tls: bool, options: dict[str, Any]) -> aioredis.Redis:
    """``redis+sentinel://[:password@]host:port[,host:port]/service[/db]`` -> master client."""
    netloc = parts.netloc
    password: str | None = None
    username: str | None = None
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        user, _, pw = auth.partition(":")
        username = unquote(user) or None
        password = unquote(pw) or None
    hosts: list[tuple[str, int]] = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "26379")
        hosts.append((host.strip("[]") or "localhost", int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("url: a redis+sentinel:// URL needs the service name as its path")
    service = unquote(path[0])
    db = int(path[1]) if len(path) > 1 else 0
    query = dict(parse_qsl(parts.query))
    sentinel_kwargs: dict[str, Any] = {}
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query.pop("sentinel_password")
    client_kwargs: dict[str, Any] = {"db": db, **options}
    if password is not None:
        client_kwargs.setdefault("password", password)
    if username is not None:
        client_kwargs.setdefault("username", username)
    if tls:
        client_kwargs.setdefault("ssl", True)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        hosts, sentinel_kwargs=sentinel_kwargs or None, **client_kwargs
    )
    client: aioredis.Redis = sentinel.master_for(service)
    return client
