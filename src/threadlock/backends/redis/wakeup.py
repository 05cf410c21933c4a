"""The pub/sub wake-up: how a waiter learns that the key was handed to it.

A notification only wakes a waiter; its next ``acquire`` attempt checks its token against
the lease and claims it (one round trip), so a message anyone may ``PUBLISH`` cannot hand out
a lease, and a malformed one is ignored. A waiter also re-checks when the holder's lease
ends and at each heartbeat, so a lost notification delays it, never strands it.

One pub/sub connection per backend instance (per master on Cluster), multiplexed over all
keys, read by one supervised task: it reconnects after a dropped connection, survives any
message, and is restarted (with the log event ``redis.subscriber_restarted``) should it
ever fail; every (re)subscription and every restart wakes the local waiters of its
channels to re-check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import anyio
import anyio.lowlevel
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster

from threadlock.backends._waiting import Grant, Waiter, inherit
from threadlock.backends._waiting import WakeHub as _WakeHub
from threadlock.backends.redis.cluster import new_pubsub, refresh_slots, subscriber_name
from threadlock.backends.redis.keys import text

logger = logging.getLogger("threadlock")

#: How long a lost subscriber connection waits before redis-py is asked to reconnect it, and
#: a failed reader before it is restarted, by the number of failures in a row.
_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0)
#: Seconds a channel stays subscribed after its last local waiter left.
_LINGER = 1.0
#: Grants kept for waiters that have not registered locally (yet), at most.
_EARLY_KEPT = 256

# A grant here is (fence, acquired µs, expires µs).


def parse_grant(data: object) -> tuple[str, Grant | None] | None:
    """A notification ``"<waiter id> <fence> <acquired µs> <expires µs>"`` as (waiter id,
    grant); the grant is None unless all three numbers are there. None if not text."""
    try:
        parts = text(data).split(" ")
    except UnicodeDecodeError:
        return None
    grant = None
    if len(parts) == 4:
        with contextlib.suppress(ValueError):
            grant = (int(parts[1]), int(parts[2]), int(parts[3]))
    return parts[0], grant


class Subscriber:
    """One pub/sub connection, shared by many channels, and the task that reads it.

    The task is an asyncio task of the subscriber's own: it outlives every caller (the
    backend has no task group of its own to start it in) and is cancelled by :meth:`aclose`.
    """

    def __init__(self, hub: PubSubHub, pubsub: PubSub, sharded: bool) -> None:
        self._hub = hub
        self.pubsub = pubsub
        self._sharded = sharded
        self.channels: set[str] = set()
        self._lock = anyio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._dispatched = False

    async def subscribe(self, channel: str) -> None:
        async with self._lock:
            if channel in self.channels:
                return
            if self._sharded:
                await self.pubsub.ssubscribe(channel)
            else:
                await self.pubsub.subscribe(channel)
            self.channels.add(channel)
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(
                    self._supervise(), name="threadlock redis subscriber"
                )

    async def unsubscribe(self, channel: str) -> None:
        async with self._lock:
            if channel not in self.channels or self._hub.has_waiters(channel):
                return
            self.channels.discard(channel)
            if self._sharded:
                await self.pubsub.sunsubscribe(channel)
            else:
                await self.pubsub.unsubscribe(channel)

    async def _supervise(self) -> None:
        """Read until cancelled; a reader that fails is restarted, and the local waiters of
        this connection re-check (whatever the failure cost them)."""
        failures = 0
        while True:
            self._dispatched = False
            try:
                await self._read()
            except Exception:
                if self._dispatched:
                    failures = 0
                delay = _RETRY_DELAYS[min(failures, len(_RETRY_DELAYS) - 1)]
                failures += 1
                logger.error(
                    "threadlock redis subscriber failed; restarting it in %ss",
                    delay,
                    exc_info=True,
                    extra={"event": "redis.subscriber_restarted"},
                )
                for channel in list(self.channels):
                    self._hub.wake_all(channel)
                await anyio.sleep(delay)

    async def _read(self) -> None:
        failures = 0
        while True:
            try:
                message = await self.pubsub.get_message(timeout=None)
            except Exception as exc:
                delay = _RETRY_DELAYS[min(failures, len(_RETRY_DELAYS) - 1)]
                failures += 1
                logger.warning(
                    "threadlock redis subscriber lost its connection (%s); reconnecting in %ss",
                    exc,
                    delay,
                    extra={"event": "redis.subscriber_reconnect"},
                )
                await anyio.sleep(delay)
                continue
            failures = 0
            if message is not None:
                if message.get("type") == "sunsubscribe":
                    self._server_unsubscribed(message.get("channel"))
                self._hub.dispatch(message)
                self._dispatched = True

    def _server_unsubscribed(self, channel: object) -> None:
        """A ``sunsubscribe`` we did not ask for: the server dropped the channel because its
        slot moved to another master (Cluster). Forget it here, and have the hub subscribe
        it again where it lives now."""
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "replace")
        if not isinstance(channel, str) or channel not in self.channels:
            return  # the answer to our own unsubscribe
        self.channels.discard(channel)
        self.pubsub.shard_channels.pop(channel, None)  # not re-subscribed here on reconnect
        self.pubsub.shard_channels.pop(channel.encode(), None)
        self._hub.moved(channel)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):  # cancelled on purpose
                await self._task
            self._task = None
        try:
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        except Exception:  # pragma: no cover - best effort at shutdown
            logger.debug("closing the redis subscriber failed", exc_info=True)


class PubSubHub(_WakeHub):
    """The local waiters of one backend instance, by channel (the shared
    :class:`threadlock.backends._waiting.WakeHub`), and the subscribers that wake them.

    On a plain server every waiter of the instance is notified on the instance's own
    channel, the ``inbox`` (subscribed at the first wait and kept for the life of the
    instance); with sharded pub/sub (Cluster) a script may only ``SPUBLISH`` in its own
    slot, so there each key has its channel, subscribed while a local task waits on it and
    dropped about :data:`_LINGER` seconds after the last one left.
    """

    def __init__(
        self, client: aioredis.Redis | RedisCluster, *, sharded: bool, release_timeout: float
    ) -> None:
        self._client = client
        self._sharded = sharded
        self._release_timeout = release_timeout
        super().__init__()
        #: the instance's own channel ("" with sharded pub/sub); set by the backend
        self.inbox = ""
        self.closed = False
        self._subscribers: dict[str, Subscriber] = {}
        self._unsubscribing: set[asyncio.Task[None]] = set()
        self._idle: dict[str, float] = {}  # channel -> when its last local waiter left
        #: waiter id -> grant: grants that arrived before their waiter registered
        self._early_grants: dict[str, Grant] = {}
        self._idle_sweep: asyncio.TimerHandle | None = None

    # -- waiters ----------------------------------------------------------------------------

    def add_waiter(self, channel: str, waiter_id: str) -> Waiter:
        """Register a local waiter on ``channel``; one already granted is woken at once."""
        if channel not in self._waiting:
            self._idle.pop(channel, None)
        waiter = super().add_waiter(channel, waiter_id)
        early = self._early_grants.pop(waiter.id, None)
        if early is not None:  # granted before it got here (see dispatch)
            waiter.wake(early)
        return waiter

    def dispatch(self, message: dict[str, Any]) -> None:
        """Handle one pub/sub message. Anything that is not a well-formed message for this
        instance is ignored: anyone who may PUBLISH on the server can send one."""
        kind = message.get("type")
        channel = message.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "replace")
        if not isinstance(channel, str):
            return
        if kind in ("message", "smessage"):
            parsed = parse_grant(message.get("data"))
            if parsed is None:
                return
            waiter_id, grant = parsed
            waiter = self.waiter(channel, waiter_id)
            if waiter is not None:
                waiter.wake(grant)
            elif grant is not None:
                # Perhaps for a local acquire whose first attempt queued it, answered after
                # this (another connection): it looks here when it registers. Otherwise a
                # waiter of another process; kept a while, bounded.
                if len(self._early_grants) >= _EARLY_KEPT:
                    del self._early_grants[next(iter(self._early_grants))]
                self._early_grants[waiter_id] = grant
        elif kind in ("subscribe", "ssubscribe"):
            # A (re)subscription: whatever was published before it was missed; re-check.
            self.wake_all(channel)

    # -- subscriptions ------------------------------------------------------------------------

    def moved(self, channel: str) -> None:
        """``channel``'s slot moved: its local waiters re-check (a grant published during the
        move was missed), and it is subscribed again on its new master, if still needed."""
        self.wake_all(channel)
        if self.closed or not self.has_waiters(channel):
            return  # a later waiter subscribes where the channel lives then
        self._in_background(asyncio.get_running_loop(), self._follow(channel))

    async def _follow(self, channel: str) -> None:
        with anyio.move_on_after(self._release_timeout, shield=True):
            try:
                await refresh_slots(self._client)
                await self.subscribe(channel)
            except Exception:  # the waiters still have their re-checks
                logger.warning(
                    "threadlock could not follow %r to its new master",
                    channel,
                    exc_info=True,
                    extra={"event": "redis.subscribe_failed"},
                )

    def _subscriber(self, channel: str) -> Subscriber:
        name = subscriber_name(self._client, channel)
        subscriber = self._subscribers.get(name)
        if subscriber is None:
            pubsub = new_pubsub(self._client, channel)
            subscriber = self._subscribers[name] = Subscriber(self, pubsub, self._sharded)
        return subscriber

    def subscribed(self, channel: str) -> bool:
        return any(channel in s.channels for s in self._subscribers.values())

    async def subscribe(self, channel: str) -> None:
        """Subscribe to ``channel`` unless subscribed (errors are redis-py's)."""
        await self._subscriber(channel).subscribe(channel)

    def remove_waiter(self, channel: str, waiter: Waiter) -> None:
        """The waiter leaves; a channel left without local waiters is unsubscribed later.

        Not on the way out of ``acquire`` (that is the hand-off's critical path): a channel
        stays subscribed for :data:`_LINGER` seconds after its last local waiter left, so the
        next waiter on a busy key needs no SUBSCRIBE either, then one background task
        unsubscribes every channel that is still idle.
        """
        super().remove_waiter(channel, waiter)
        if (
            channel in self._waiting
            or channel == self.inbox  # subscribed for the life of the instance
            or self.closed
            or not self.subscribed(channel)
        ):
            return
        loop = asyncio.get_running_loop()
        self._idle[channel] = loop.time()
        if self._idle_sweep is None:
            self._idle_sweep = loop.call_later(_LINGER, self._sweep_idle, loop)

    def _sweep_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        self._idle_sweep = None
        if self.closed:
            return
        now = loop.time()
        due = [c for c, at in self._idle.items() if now - at >= _LINGER * 0.9]
        for channel in due:
            del self._idle[channel]
        due = [c for c in due if c not in self._waiting]
        if due:
            self._in_background(loop, self._unsubscribe(due))
        if self._idle:
            self._idle_sweep = loop.call_later(_LINGER, self._sweep_idle, loop)

    async def _unsubscribe(self, channels: list[str]) -> None:
        for channel in channels:
            with anyio.move_on_after(self._release_timeout, shield=True):
                try:
                    await self._subscriber(channel).unsubscribe(channel)
                except Exception:
                    logger.debug("unsubscribe from %r failed", channel, exc_info=True)

    def _in_background(
        self, loop: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, None]
    ) -> None:
        task = loop.create_task(work)
        self._unsubscribing.add(task)
        task.add_done_callback(self._unsubscribing.discard)

    def after_fork(self) -> None:
        """In a forked child: forget the parent's waiters, subscribers and timers without
        touching their connections (the parent's, :func:`.inherit`-ed: never finalised in
        the child); the child subscribes anew when it waits."""
        inherit(self._subscribers, self._unsubscribing, self._idle_sweep)
        self.forget_all()
        self._subscribers = {}
        self._unsubscribing = set()
        self._idle.clear()
        self._early_grants.clear()
        self._idle_sweep = None

    async def aclose(self, *, cluster: bool) -> None:
        """Wake every waiter (to find the backend closed), let unsubscriptions in flight
        land (bounded) and close the subscribers. Shielded."""
        self.closed = True
        self.wake_all()
        subscribers = list(self._subscribers.values())
        self._subscribers.clear()
        if self._idle_sweep is not None:
            self._idle_sweep.cancel()
            self._idle_sweep = None
        with anyio.CancelScope(shield=True):
            await anyio.lowlevel.cancel_shielded_checkpoint()  # work just scheduled
            if self._unsubscribing:
                with anyio.move_on_after(self._release_timeout):
                    await asyncio.gather(*self._unsubscribing, return_exceptions=True)
            for subscriber in subscribers:
                await subscriber.aclose()
                if cluster:
                    await subscriber.pubsub.connection_pool.disconnect()
