""":class:`RedisThreadLock`: acquire, wait, release, extend and inspect on Redis.

Every operation is one script (see ``lua/``; acquire and release start with their fast path)
except a contended acquire, which waits for a notification (:mod:`.wakeup`) and then makes
one more attempt that claims the key. Acquire and release run unshielded, made safe by the
acquire's tombstone and a shielded retry of a cancelled release; every other round trip is
shielded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from threadlock._deadline import bounded_call
from threadlock._lease import Lease, LockInfo
from threadlock._validate import check_positive
from threadlock.backends._waiting import TokenFactory, Waiter, on_fork
from threadlock.backends.base import DEFAULT_GRACE, BaseThreadLock, check_registry_ttls
from threadlock.backends.redis.cluster import forget_connections
from threadlock.backends.redis.keys import KeyNames, NameCache, scan_pattern, text, ttl_ms
from threadlock.backends.redis.keys import waiter_id as make_waiter_id
from threadlock.backends.redis.registry import (
    DEFAULT_CHAIN_TTL,
    DEFAULT_REGISTRY_TTL,
    RedisRunRegistry,
)
from threadlock.backends.redis.scripts import RedisCommands, for_each_bounded
from threadlock.backends.redis.urls import client_from_url, close_client
from threadlock.backends.redis.wakeup import PubSubHub
from threadlock.errors import BackendError, LeaseLost, ThreadBusy
from threadlock.observe import Observer

__all__ = ["RedisThreadLock"]

logger = logging.getLogger("threadlock")

_MIN_RETRY_AFTER = 0.001
#: The longest ttl accepted (about 31 years): the scripts keep times as µs in Lua numbers
#: (doubles), exact up to 2**53 µs since the epoch; anything longer is a ValueError.
_MAX_TTL = 1e9

#: Seconds a shielded round trip may take when its caller has no earlier deadline.
DEFAULT_COMMAND_TIMEOUT = 10.0
_MODES = {"try": b"t", "wait": b"w", "last": b"l"}


class RedisThreadLock(RedisRunRegistry, BaseThreadLock):
    """The Redis backend. How it works: docs/backends/redis.md.

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
        command_timeout: the most a shielded round trip (extend, inspect, the registry, a
            retried release) may take when its caller has no earlier deadline, whatever the
            client's ``socket_timeout`` (redis-py's default, ``None``, waits for ever).
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
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
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
        try:
            prefix.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"prefix must be encodable as UTF-8 (lone surrogates are not): {prefix!r}"
            ) from None
        registry_s, chain_s = check_registry_ttls(registry_ttl, chain_ttl)
        self._registry_ttl_ms = ttl_ms(registry_s)
        self._chain_ttl_ms = ttl_ms(chain_s)
        self._client = client
        self._commands = RedisCommands(client, check_positive(command_timeout, "command_timeout"))
        self._prefix = prefix
        self._cluster = isinstance(client, RedisCluster)
        self._sharded = self._cluster if sharded_pubsub is None else bool(sharded_pubsub)
        self._pub = b"s" if self._sharded else b"p"
        self._modes = {mode: self._pub + letter for mode, letter in _MODES.items()}
        self._owns_client = _owns_client
        self._names = NameCache(prefix)
        self._ids = TokenFactory()  # tokens, and the prefix of this instance's tombstones
        self._attempts = 0
        #: On a plain server (pub/sub not sharded) every waiter of this instance is notified
        #: on one channel, subscribed once; sharded pub/sub (Cluster) needs the key's own.
        self._per_instance = not self._sharded and not self._cluster
        self._wakeup = PubSubHub(client, sharded=self._sharded, release_timeout=release_timeout)
        self._wakeup.inbox = self._inbox_name()
        on_fork(self)
        self._entering: dict[str, list[asyncio.Event]] = {}  # key -> acquires in line
        self._heartbeat = self._grace / 3
        self._grace_ms = str(ttl_ms(self._grace)).encode()

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisThreadLock:
        """Build a backend from a URL, without connecting.

        Schemes: ``redis://``, ``rediss://`` (TLS, as Upstash uses), ``unix://`` (redis-py's
        own URL parsing), ``redis+cluster://`` / ``rediss+cluster://`` (any node of the
        cluster), and ``redis+sentinel://`` / ``rediss+sentinel://`` written as
        ``redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db]``.

        The backend options (``prefix``, ``owner``, ``grace``, ``release_timeout``,
        ``sharded_pubsub``, ``registry_ttl``, ``chain_ttl``, ``command_timeout``,
        ``observer``) may be given as keywords; ``prefix`` also as the query parameter
        ``threadlock_prefix``. Every other keyword goes to the redis-py client.
        """
        client, backend_options = client_from_url(url, options)
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
    def sharded_pubsub(self) -> bool:
        """Whether wake-ups go out by sharded pub/sub (``SPUBLISH``), as on a Cluster."""
        return self._sharded

    @property
    def command_timeout(self) -> float:
        """Seconds a shielded round trip may take when its caller has no earlier deadline."""
        return self._commands.command_timeout

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
        """A lease token: 128 random bits (see :class:`.TokenFactory`; new in a fork)."""
        return self._ids.token()

    @property
    def _instance(self) -> str:
        """This instance's random name (its inbox, its tombstones); new in a forked child."""
        return self._ids.instance

    def _after_fork(self) -> None:
        """In a forked child: new names, and nothing of the parent's connections or waiters
        (the child opens its own; the parent's sockets are left to the parent)."""
        self._attempts = 0
        self._entering.clear()
        self._wakeup.after_fork()
        self._wakeup.inbox = self._inbox_name()
        forget_connections(self._client)

    def _inbox_name(self) -> str:
        return f"{self._prefix}:inbox:{self._instance}" if self._per_instance else ""

    def _wait_channel(self, names: KeyNames) -> str:
        """Where a waiter of this instance is notified: the inbox, or the key's channel."""
        return self._wakeup.inbox or names.channel

    def _keys(self, key: str) -> list[str]:
        """The four lock keys of ``key`` (lease, queue, beat, meta)."""
        return [name.decode() for name in self._names(key).lock]

    def _channel(self, key: str) -> str:
        return self._names(key).channel

    def _info(self, reply: Sequence[Any], key: str | None = None) -> LockInfo:
        # reply: [key?, fence, owner, acquired µs, expires µs, waiters, newest run id or None]
        run_id = reply[6] if len(reply) > 6 else None
        return LockInfo(
            key=text(reply[0]) if key is None else key,
            fence=int(reply[1]),
            owner=text(reply[2]),
            acquired_at=int(reply[3]) / 1e6,
            expires_at=int(reply[4]) / 1e6,
            waiters=int(reply[5]),
            run_id=None if run_id is None else text(run_id),
        )

    def _busy(self, key: str, reply: Sequence[Any]) -> ThreadBusy:
        # reply: [0, µs left, fence, owner, acquired µs, expires µs, waiters, newest run id]
        left = max(int(reply[1]) / 1e6, _MIN_RETRY_AFTER)
        return ThreadBusy(key, left, self._info(reply[1:], key))

    async def _subscribe(self, channel: str) -> None:
        """Subscribe to ``channel`` for a waiter (bounded, shielded); on failure the waiter
        still has its re-checks."""
        hub = self._wakeup
        if hub.inbox == channel and hub.subscribed(channel):
            return
        try:
            async with bounded_call(self._release_timeout, "Redis SUBSCRIBE"):
                await self._commands.command(lambda: hub.subscribe(channel))
        except BackendError:  # the wait's re-checks still bound the wake-up
            logger.warning(
                "threadlock could not subscribe to %r; waiting on re-checks only",
                channel,
                exc_info=True,
                extra={"event": "redis.subscribe_failed"},
            )

    @staticmethod
    def _lease(key: str, token: str, ttl: float, grant: Sequence[Any]) -> Lease:
        return Lease(key, token, int(grant[0]), ttl, int(grant[1]) / 1e6, int(grant[2]) / 1e6)

    def _check_waiting(self) -> None:
        if self._closed:
            raise BackendError("RedisThreadLock was closed while waiting")

    # -- primitives ------------------------------------------------------------------------------

    @staticmethod
    def _check_ttl(ttl: float) -> None:
        if ttl > _MAX_TTL:
            raise ValueError(f"ttl must be at most {_MAX_TTL:g} seconds on Redis, got {ttl!r}")

    async def _acquire(self, key: str, ttl: float, timeout: float | None) -> Lease:
        self._check_ttl(ttl)
        names = self._names(key)
        token = self._token()
        self._attempts += 1
        keys = names.acquire_keys(f"{self._instance}{self._attempts:x}")
        # ARGV 2-7 of acquire.lua; ARGV 1 (pub letter + mode letter) is set per attempt.
        argv = (
            token,
            ttl_ms(ttl),
            self._task_owner(),
            names.key,
            self._grace_ms,
            self._wakeup.inbox,
        )

        # Cancellation is delivered before the first attempt. After it, any way out but
        # success (a BackendError included) runs the shielded ``abandon``: it passes the key
        # on if it was granted to us, else takes us out of the queue, and it writes this
        # acquire's tombstone, so an attempt cancelled in flight whose bytes reach Redis only
        # afterwards changes nothing. That is what lets the attempts themselves run
        # unshielded (a shielded round trip costs as much CPU as all the rest of an
        # uncontended acquire).
        await anyio.lowlevel.checkpoint_if_cancelled()
        started = time.monotonic()
        await self._await_local_turn(key)
        try:
            mode = self._modes["try" if timeout == 0 else "wait"]
            reply = await self._commands.script_unshielded("acquire", keys, mode, *argv)
        except BaseException:
            # Also on a BackendError: a reset or timeout after the script ran would leave a
            # lease nobody holds, or a queue entry that becomes an unclaimed hand-off.
            await self._abandon(keys, key, token)
            raise
        finally:
            self._pass_local_turn(key)
        if reply[0] == 1:  # the uncontended path ends here: one round trip, nothing else
            return self._lease(key, token, ttl, reply[1:4])
        _check_not_abandoned(reply)
        if timeout == 0:
            raise self._busy(key, reply)
        deadline = None if timeout is None else started + timeout
        return await self._wait(names, keys, key, token, ttl, deadline, argv, reply)

    async def _wait(
        self,
        names: KeyNames,
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
        waiter = self._wakeup.add_waiter(channel, make_waiter_id(token))
        subscribed = False
        queued = True  # whether Redis may hold a queue entry (or a fresh grant) for us
        try:
            while True:
                if not subscribed:
                    subscribed = True
                    await self._subscribe(channel)
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
                reply = await self._commands.script_unshielded("acquire", keys, mode, *argv)
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
            self._wakeup.remove_waiter(channel, waiter)
        raise self._busy(key, reply)

    async def _abandon(self, keys: list[bytes], key: str, token: str) -> None:
        """Shielded and bounded: leave the queue, or pass on a key granted meanwhile; and
        leave the acquire's tombstone (``keys`` are its acquire keys)."""
        try:
            async with bounded_call(self._release_timeout, "Redis abandon"):
                await self._commands.script_unshielded("abandon", keys, self._pub, token)
        except BackendError:
            logger.warning(
                "threadlock could not leave the queue of %r; its entry expires within the grace",
                key,
                exc_info=True,
                extra={"event": "redis.abandon_failed", "key": key},
            )

    async def _await_local_turn(self, key: str) -> None:
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
                self._pass_local_turn(key)
            else:
                line.remove(turn)
            raise

    def _pass_local_turn(self, key: str) -> None:
        """Our first attempt is answered: the next local acquire of ``key`` may send its."""
        line = self._entering.get(key)
        if line:
            line.pop(0).set()
        else:
            self._entering.pop(key, None)

    async def _release(self, lease: Lease) -> bool:
        names = self._names(lease.key)
        keys = names.lock
        # A release takes at most release_timeout, its retry included: at the end of hold()
        # (whose own bound is release_timeout) a first try cut off there is not retried.
        deadline = anyio.current_time() + self._release_timeout
        try:
            reply = await self._commands.script_unshielded("release", keys, self._pub, lease.token)
        except BackendError:
            raise
        except BaseException:
            # Cancelled in flight: release again, shielded, within release_timeout of the
            # call, so the lease is released whatever became of the first try (should that
            # one reach Redis later, it finds the lease gone and changes nothing); then go on
            # being cancelled.
            with contextlib.suppress(BackendError):
                async with bounded_call(self._release_timeout, "Redis release", deadline=deadline):
                    await self._commands.script_unshielded("release", keys, self._pub, lease.token)
            raise
        if isinstance(reply, bytes | str):  # handed to that waiter
            waiter = self._wakeup.waiter(self._wait_channel(names), text(reply))
            if waiter is not None:
                await self._let_waiter_run(waiter)
            return True
        return int(reply) != 0

    async def _let_waiter_run(self, waiter: Waiter) -> None:
        """The key went to a waiter of this process: let it run before this task goes on.

        Its notification arrives with (or just after) the release's reply; a few turns of
        the event loop let the subscriber read it and the woken waiter claim its lease
        before this task goes on (say, to queue for the key again), which is what the
        hand-off latency measures. No cancellation is delivered here: the release is done.
        """
        for _ in range(3):
            await anyio.lowlevel.cancel_shielded_checkpoint()
            if waiter.grant is not None:
                await anyio.lowlevel.cancel_shielded_checkpoint()  # behind the woken one
                return

    async def _extend(self, lease: Lease, ttl: float) -> Lease:
        self._check_ttl(ttl)
        reply = await self._commands.script_shielded(
            "extend", self._names(lease.key).lock, self._pub, lease.token, ttl_ms(ttl)
        )
        if not isinstance(reply, list):
            raise LeaseLost(lease.key, lease.fence, "expired or taken before extend")
        return self._lease(lease.key, lease.token, ttl, reply)

    async def _inspect(self, key: str) -> LockInfo | None:
        reply = await self._commands.script_shielded("inspect", self._names(key).inspect, self._pub)
        if not isinstance(reply, list):
            return None
        return self._info(reply, key)

    async def _held(self) -> list[LockInfo]:
        names = await self._commands.scan(scan_pattern(self._prefix, "*"))
        leases = [name for name in names if name.endswith(":lease")]
        # A lease key outlives its lease by an hour; one holding the free-key marker is
        # skipped without a script.
        values = await self._commands.get_many(leases)
        tags = {
            name.rpartition(":")[0]
            for name, value in zip(leases, values, strict=True)
            if value is not None and not text(value).startswith("F ")
        }
        tags.update(name.rpartition(":")[0] for name in names if name.endswith(":queue"))
        infos: list[LockInfo] = []

        async def one(base: str) -> None:
            reply = await self._commands.script_shielded(
                "inspect", KeyNames(base).inspect, self._pub
            )
            if isinstance(reply, list):
                infos.append(self._info(reply))

        await for_each_bounded(sorted(tags), one)
        infos.sort(key=lambda info: info.key)
        return infos

    async def _aclose(self) -> None:
        await self._wakeup.aclose(cluster=self._cluster)
        if self._owns_client:
            with anyio.CancelScope(shield=True):
                try:
                    await close_client(self._client)
                except Exception:  # pragma: no cover - best effort at shutdown
                    logger.debug("closing the redis client failed", exc_info=True)


def _check_not_abandoned(reply: Sequence[Any]) -> None:
    if reply[0] == 2:  # pragma: no cover - only an attempt whose caller is gone sees it
        raise BackendError("redis: this acquire was abandoned (tombstone) already")
