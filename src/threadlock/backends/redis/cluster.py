"""What the backend does differently on Redis Cluster.

- One pub/sub connection per master: a waiter subscribes on the master that serves its
  key's slot (sharded pub/sub, ``SSUBSCRIBE``, Redis 7+). When the slot moves, the old master
  drops the channel; the wake hub reloads the slot map (:func:`refresh_slots`) and subscribes
  it on the new master.
- redis-py 8.1's :class:`~redis.asyncio.cluster.RedisCluster` fails when its first commands
  run concurrently before it loaded the slot map, so the backend loads it once, first.
"""

from __future__ import annotations

import asyncio

import anyio
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster

from threadlock.backends._waiting import inherit
from threadlock.errors import BackendError


class SlotMap:
    """Loads a cluster client's slot map once, before its first command (a no-op elsewhere).

    ``loaded`` is checked on every call; it is true from the start for a non-cluster client.
    """

    __slots__ = ("_client", "_lock", "loaded")

    def __init__(self, client: aioredis.Redis | RedisCluster) -> None:
        self._client = client
        self.loaded = not isinstance(client, RedisCluster)
        self._lock = anyio.Lock()

    async def load(self) -> None:
        async with self._lock:
            if not self.loaded:
                assert isinstance(self._client, RedisCluster)
                await self._client.initialize()
                self.loaded = True


def subscriber_name(client: aioredis.Redis | RedisCluster, channel: str) -> str:
    """Which pub/sub connection serves ``channel``: the name of its master on Cluster, else
    ``""`` (one connection)."""
    if not isinstance(client, RedisCluster):
        return ""
    node = client.get_node_from_key(channel)
    if node is None:
        raise BackendError(f"redis cluster: no node serves the channel {channel!r}")
    return str(node.name)


async def refresh_slots(client: aioredis.Redis | RedisCluster) -> None:
    """Reload a cluster client's slot map (after a slot moved); a no-op elsewhere."""
    if isinstance(client, RedisCluster):
        await client.nodes_manager.initialize()


def new_pubsub(client: aioredis.Redis | RedisCluster, channel: str) -> PubSub:
    """A pub/sub object for ``channel``: on Cluster with its own pool to the channel's master
    (``RedisCluster`` has no ``pubsub()`` of its own), else the client's."""
    if isinstance(client, RedisCluster):
        node = client.get_node_from_key(channel)
        if node is None:
            raise BackendError(f"redis cluster: no node serves the channel {channel!r}")
        pool = aioredis.ConnectionPool(
            connection_class=node.connection_class, **node.connection_kwargs
        )
        return PubSub(connection_pool=pool, encoder=client.get_encoder())
    return client.pubsub()


def forget_connections(client: aioredis.Redis | RedisCluster) -> None:
    """In a forked child: drop the parent's pooled connections without closing them (their
    sockets are the parent's, and so is the event loop they belong to); the child connects
    anew on first use. The dropped connections are :func:`.inherit`-ed: kept, never
    finalised in the child."""
    if isinstance(client, RedisCluster):
        for node in client.get_nodes():
            free = getattr(node, "_free", None)
            if free is not None:
                inherit(list(free))
                free.clear()
            if isinstance(getattr(node, "_connections", None), list):
                inherit(node._connections)
                node._connections = []
        return
    pool = client.connection_pool
    inherit(
        list(getattr(pool, "_available_connections", ())),
        list(getattr(pool, "_in_use_connections", ())),
    )
    pool.reset()  # type: ignore[no-untyped-call]
    pool._lock = asyncio.Lock()  # a parent's waiter may have bound it to the parent's loop
