"""Redis backend: FIFO leases with direct hand-off, fencing and pub/sub wake-up.

It runs on redis-py's asyncio clients (:class:`redis.asyncio.Redis`, Sentinel's
``master_for``, :class:`redis.asyncio.cluster.RedisCluster`), so it needs the asyncio event
loop (redis-py's asyncio client does not run on trio); everything else is anyio.

Key layout
    One lock ``key`` lives under five Redis keys sharing the hash tag ``{<digest>}``, where the
    digest is the first 128 bits of SHA-256 of the key in hex. Hashing, not escaping, is what
    makes every key an ordinary key: ``{a}b}``, ``*``, ``'; --`` or unicode can neither break
    the hash tag nor reach a glob or a script (keys and values reach Redis only as KEYS/ARGV).
    The user's key is stored in the lease hash, so ``held()`` shows it::

        <prefix>:{<digest>}:lease  hash   k, t=sha1(token), f=fence, o=owner, a/e=µs, ttl=ms
        <prefix>:{<digest>}:fence  string the last fence; TTL = lease ttl + 1 h after last use
        <prefix>:{<digest>}:queue  zset   waiter id -> arrival order (FIFO)
        <prefix>:{<digest>}:beat   zset   waiter id -> heartbeat deadline (µs, server clock)
        <prefix>:{<digest>}:meta   hash   waiter id -> "<ttl ms> <owner>", k -> the user key
        <prefix>:{<digest>}:wake   the notification channel (pub/sub, not a key)

    The lease key expires with the lease (``PEXPIREAT``); the queue keys expire with the last
    waiter's heartbeat deadline and are deleted when the queue empties; the fence key expires
    one hour after the lease would. A free key therefore leaves only its fence key, for at
    most ``ttl + 1 h``.

Scripts (``redis_lua/*.lua``, loaded once, run with ``EVALSHA`` and reloaded on NOSCRIPT)
    ``acquire`` (one attempt: take, queue/heartbeat, or leave the queue), ``release``,
    ``extend``, ``abandon`` (a waiter gives up; if the key was just handed to it, it passes
    it on) and ``inspect``. Each is one round trip and reads the server clock with ``TIME``,
    so expiry and waiter deadlines never depend on client clocks. Every script first retires
    an expired holder and hands the key to the first live waiter, so expiry is exact.

FIFO and hand-off
    A waiter joins the queue in the same round trip as its first attempt. ``release`` makes
    the first live waiter the holder inside the script and publishes the waiter's id on the
    key's channel; the woken task claims the lease with one more round trip (the acquire
    script again), which gives it its full TTL. The releaser cannot barge back in ahead of the
    queue.

Grace
    A waiter's entry carries a heartbeat deadline (``now + grace`` on the server clock) that
    it renews every ``grace / 3`` while it waits; a waiter past its deadline (its process
    died) is dropped by the next script that looks at the queue. A key handed to a waiter
    that died just before the grant lives only ``min(ttl, grace)`` until claimed, so it
    passes on to the next waiter within ``grace`` instead of after the full TTL. A live
    waiter whose event loop stalled for longer than ``grace`` rejoins at the tail.

Wake-up
    One pub/sub connection per backend instance (per master on Cluster), multiplexed over all
    keys. Channels are per key and subscribed on demand while a local task waits on that key
    (reference-counted; unsubscribed when the last local waiter leaves). Per-key channels
    were chosen over one channel per instance because on Cluster a script may only
    ``SPUBLISH`` to a channel in its own hash slot: the key's channel shares the key's hash
    tag, so sharded pub/sub works and notifications stay on one shard. On a plain server the
    same code uses ``PUBLISH``. The reader task re-subscribes after a dropped connection
    (redis-py reconnects it), and every (re)subscription confirmation wakes the local
    waiters of that channel to re-check, so a notification lost while unsubscribed costs
    one round trip. Besides, every wait re-checks at the latest when the holder's lease
    expires and at each heartbeat, so a lost notification never costs more than that.

Fences
    ``fence = max(last fence + 1, server time in µs)``: strictly increasing per key, also
    after a restart that lost every key (the clock has moved on), as long as the server's
    clock does not step back by more than the hour the fence key is kept.

Cancellation
    Every round trip runs shielded, so its outcome is always known; a waiter cancelled or
    timed out at any point after its first attempt runs the shielded ``abandon`` script,
    which removes its queue entry or, if the key was granted to it meanwhile, passes the key
    on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.resources
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Sequence
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
from threadlock.backends.base import DEFAULT_GRACE, BaseThreadLock
from threadlock.errors import BackendError, LeaseLost, ThreadBusy

__all__ = ["RedisThreadLock"]

logger = logging.getLogger("threadlock")

_T = TypeVar("_T")
_MIN_RETRY_AFTER = 0.001
_SCRIPTS = ("acquire", "release", "extend", "abandon", "inspect")
_GLOB_SPECIALS = "\\*?[]"
#: How long a lost subscriber connection waits before redis-py is asked to reconnect it.
_RECONNECT_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0)
_HELD_CONCURRENCY = 32


def _load_scripts() -> dict[str, str]:
    folder = importlib.resources.files("threadlock.backends") / "redis_lua"
    common = (folder / "_common.lua").read_text(encoding="utf-8")
    return {
        name: common + "\n" + (folder / f"{name}.lua").read_text(encoding="utf-8")
        for name in _SCRIPTS
    }


_SCRIPT_TEXT = _load_scripts()


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


class _Waiter:
    """A local task waiting on a key, woken to re-check (granted, or the subscription changed)."""

    __slots__ = ("event", "id")

    def __init__(self, waiter_id: str) -> None:
        self.id = waiter_id
        self.event = anyio.Event()

    def wake(self) -> None:
        self.event.set()


class _Subscriber:
    """One pub/sub connection and the asyncio task that reads it, shared by many channels."""

    def __init__(self, backend: RedisThreadLock, pubsub: PubSub, sharded: bool) -> None:
        self._backend = backend
        self._pubsub = pubsub
        self._sharded = sharded
        self._channels: set[str] = set()
        self._lock = anyio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def subscribe(self, channel: str) -> None:
        async with self._lock:
            if channel in self._channels:
                return
            if self._sharded:
                await self._pubsub.ssubscribe(channel)
            else:
                await self._pubsub.subscribe(channel)
            self._channels.add(channel)
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(
                    self._read(), name="threadlock redis subscriber"
                )

    async def unsubscribe(self, channel: str) -> None:
        async with self._lock:
            if channel not in self._channels or self._backend._has_waiters(channel):
                return
            self._channels.discard(channel)
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
        _owns_client: bool = False,
    ) -> None:
        super().__init__(owner=owner, grace=grace, release_timeout=release_timeout)
        if not isinstance(client, (aioredis.Redis, RedisCluster)):
            raise TypeError(
                "client must be a redis.asyncio.Redis or redis.asyncio.cluster.RedisCluster, "
                f"not {type(client).__name__}"
            )
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        if not prefix or any(c in prefix for c in "{}\x00"):
            raise ValueError(f"prefix must be non-empty, without '{{', '}}' or NUL: {prefix!r}")
        self._client = client
        self._prefix = prefix
        self._cluster = isinstance(client, RedisCluster)
        self._sharded = self._cluster if sharded_pubsub is None else bool(sharded_pubsub)
        self._owns_client = _owns_client
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(text) for name, text in _SCRIPT_TEXT.items()
        }
        self._waiting: dict[str, dict[str, _Waiter]] = {}
        self._subscribers: dict[str, _Subscriber] = {}
        self._heartbeat = self._grace / 3
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
        ``sharded_pubsub``) may be given as keywords; ``prefix`` also as the query parameter
        ``threadlock_prefix``. Every other keyword goes to the redis-py client.
        """
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        backend_options: dict[str, Any] = {
            name: options.pop(name)
            for name in ("prefix", "owner", "grace", "release_timeout", "sharded_pubsub")
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

    # -- internals -------------------------------------------------------------------------------

    def _keys(self, key: str) -> list[str]:
        base = f"{self._prefix}:{{{_digest(key)}}}"
        return [f"{base}:lease", f"{base}:fence", f"{base}:queue", f"{base}:beat", f"{base}:meta"]

    def _channel(self, key: str) -> str:
        return f"{self._prefix}:{{{_digest(key)}}}:wake"

    def _pub_mode(self) -> str:
        return "s" if self._sharded else "p"

    async def _call(self, name: str, keys: list[str], channel: str, *args: str | int) -> Any:
        """Run one script, shielded (its outcome is always known), errors as BackendError."""

        async def run() -> Any:
            if not self._initialized:
                await self._initialize()
            return await self._scripts[name](keys, [channel, self._pub_mode(), *args])

        return await self._guard(run, shield=True)

    async def _initialize(self) -> None:
        async with self._init_lock:
            if not self._initialized:
                assert isinstance(self._client, RedisCluster)
                await self._client.initialize()
                self._initialized = True

    async def _guard(self, run: Callable[[], Awaitable[_T]], *, shield: bool = False) -> _T:
        try:
            with anyio.CancelScope(shield=shield):
                result = await run()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise BackendError(f"redis: {type(exc).__name__}: {exc}") from exc
        return result

    def _info(self, reply: Sequence[Any], key: str | None = None) -> LockInfo:
        # reply: [key?, fence, owner, acquired µs, expires µs, waiters]
        return LockInfo(
            key=_text(reply[0]) if key is None else key,
            fence=int(reply[1]),
            owner=_text(reply[2]),
            acquired_at=int(reply[3]) / 1e6,
            expires_at=int(reply[4]) / 1e6,
            waiters=int(reply[5]),
            run_id=None,
        )

    def _busy(self, key: str, reply: Sequence[Any]) -> ThreadBusy:
        # reply: [0, µs left, fence, owner, acquired µs, expires µs, waiters]
        left = max(int(reply[1]) / 1e6, _MIN_RETRY_AFTER)
        return ThreadBusy(key, left, self._info(reply[1:], key))

    def _has_waiters(self, channel: str) -> bool:
        return bool(self._waiting.get(channel))

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = _text(message.get("type"))
        channel = _text(message.get("channel"))
        waiters = self._waiting.get(channel)
        if not waiters:
            return
        if kind in ("message", "smessage"):
            waiter = waiters.get(_text(message.get("data")))
            if waiter is not None:
                waiter.wake()
        elif kind in ("subscribe", "ssubscribe"):
            # A (re)subscription: whatever was published before it was missed; re-check.
            for waiter in waiters.values():
                waiter.wake()

    def _subscriber(self, channel: str) -> _Subscriber:
        if not self._cluster:
            name = ""
        else:
            assert isinstance(self._client, RedisCluster)
            node = self._client.get_node_from_key(channel)
            if node is None:
                raise BackendError(f"redis cluster: no node serves the channel {channel!r}")
            name = node.name
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

    async def _watch(self, channel: str) -> None:
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

    async def _unwatch(self, channel: str, waiter: _Waiter) -> None:
        waiters = self._waiting.get(channel)
        if waiters is not None:
            waiters.pop(waiter.id, None)
            if not waiters:
                del self._waiting[channel]
        if channel in self._waiting or self._closed:
            return
        with anyio.move_on_after(self._release_timeout, shield=True):
            try:
                await self._subscriber(channel).unsubscribe(channel)
            except Exception:
                logger.debug("unsubscribe from %r failed", channel, exc_info=True)

    @staticmethod
    def _lease(key: str, token: str, ttl: float, grant: Sequence[Any]) -> Lease:
        fence, acquired, expires = (int(value) for value in grant)
        return Lease(key, token, fence, ttl, acquired / 1e6, expires / 1e6)

    def _check_waiting(self) -> None:
        if self._closed:
            raise BackendError("RedisThreadLock was closed while waiting")

    # -- primitives ------------------------------------------------------------------------------

    async def _acquire(self, key: str, ttl: float, timeout: float | None) -> Lease:
        keys = self._keys(key)
        channel = self._channel(key)
        token = secrets.token_hex(16)
        waiter = _Waiter(_waiter_id(token))
        owner = self._task_owner()
        fixed = (token, _ttl_ms(ttl), owner, key)
        grace_ms = _ttl_ms(self._grace)

        # Cancellation is delivered before the first attempt; after it, the outcome of every
        # round trip is known, and any way out but success gives the key on (abandon).
        await anyio.lowlevel.checkpoint_if_cancelled()
        if timeout == 0:
            reply = await self._call("acquire", keys, channel, *fixed, "try", grace_ms)
            if reply[0] == 1:
                return self._lease(key, token, ttl, reply[1:4])
            raise self._busy(key, reply)

        deadline = None if timeout is None else anyio.current_time() + timeout
        self._waiting.setdefault(channel, {})[waiter.id] = waiter
        subscribed = False
        queued = True  # whether Redis may hold a queue entry (or a fresh grant) for us
        try:
            mode = "wait"
            while True:
                waiter.event = anyio.Event()
                reply = await self._call("acquire", keys, channel, *fixed, mode, grace_ms)
                beat_at = anyio.current_time()
                if reply[0] == 1:
                    return self._lease(key, token, ttl, reply[1:4])
                if mode == "last":  # the script has taken us out of the queue
                    queued = False
                    break
                if not subscribed:
                    subscribed = True
                    await self._watch(channel)
                # Sleep until notified, or until the holder expires, the next heartbeat is
                # due or the timeout runs out, whichever comes first.
                wake_at = beat_at + min(int(reply[1]) / 1e6, self._heartbeat)
                if deadline is not None:
                    wake_at = min(wake_at, deadline)
                self._check_waiting()
                with anyio.move_on_after(max(0.0, wake_at - anyio.current_time())):
                    await waiter.event.wait()
                self._check_waiting()
                if deadline is not None and anyio.current_time() >= deadline:
                    mode = "last"
        except BaseException:
            if not queued:
                raise
            with anyio.move_on_after(self._release_timeout, shield=True):
                try:
                    await self._call("abandon", keys, channel, token)
                except BackendError:
                    logger.warning(
                        "threadlock could not leave the queue of %r; its entry expires "
                        "within the grace",
                        key,
                        exc_info=True,
                        extra={"event": "redis.abandon_failed", "key": key},
                    )
            raise
        finally:
            await self._unwatch(channel, waiter)
        raise self._busy(key, reply)

    async def _release(self, lease: Lease) -> bool:
        reply = await self._call(
            "release", self._keys(lease.key), self._channel(lease.key), lease.token
        )
        return int(reply) == 1

    async def _extend(self, lease: Lease, ttl: float) -> Lease:
        reply = await self._call(
            "extend",
            self._keys(lease.key),
            self._channel(lease.key),
            lease.token,
            _ttl_ms(ttl),
        )
        if not isinstance(reply, list):
            raise LeaseLost(lease.key, lease.fence, "expired or taken before extend")
        return self._lease(lease.key, lease.token, ttl, reply)

    async def _inspect(self, key: str) -> LockInfo | None:
        reply = await self._call("inspect", self._keys(key), self._channel(key))
        if not isinstance(reply, list):
            return None
        return self._info(reply, key)

    async def _held(self) -> list[LockInfo]:
        pattern = "".join("\\" + c if c in _GLOB_SPECIALS else c for c in self._prefix)
        tags: set[str] = set()

        async def scan() -> None:
            if not self._initialized:
                await self._initialize()
            async for name in self._client.scan_iter(match=f"{pattern}:{{*}}:*", count=1000):
                text = _text(name)
                if text.endswith((":lease", ":queue")):
                    tags.add(text.rpartition(":")[0])

        await self._guard(scan)
        infos: list[LockInfo] = []
        limiter = anyio.CapacityLimiter(_HELD_CONCURRENCY)

        async def one(base: str) -> None:
            async with limiter:
                keys = [f"{base}:{part}" for part in ("lease", "fence", "queue", "beat", "meta")]
                reply = await self._call("inspect", keys, f"{base}:wake")
                if isinstance(reply, list):
                    infos.append(self._info(reply))

        async with anyio.create_task_group() as tg:
            for base in sorted(tags):
                tg.start_soon(one, base)
        infos.sort(key=lambda info: info.key)
        return infos

    async def _aclose(self) -> None:
        for waiters in self._waiting.values():
            for waiter in waiters.values():
                waiter.wake()
        subscribers = list(self._subscribers.values())
        self._subscribers.clear()
        with anyio.CancelScope(shield=True):
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
