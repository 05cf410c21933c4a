"""Redis backend: FIFO leases with direct hand-off, fencing, pub/sub wake-up, the run registry.

What it guarantees, on one server, Sentinel or Cluster (how: docs/backends/redis.md):

- **Exclusion and order.** One live lease per key; waiters are served first come, first
  served (within a process, in the order ``acquire`` was called), and a releaser cannot
  barge ahead of the queue.
- **Fences** increase strictly per key, also across a restart that lost every key.
- **Server time only.** Expiry, heartbeats and fences use the server's clock (``TIME``).
- **Nothing stalls for long.** A dead holder's key is free when its lease ends; a dead
  waiter is skipped within ``grace``; a lost or forged notification never hands out a lease,
  and costs a waiter at most its next re-check.
- **Cancellation leaves nothing behind**: a cancelled acquire leaves the queue (or passes a
  key granted meanwhile on), a cancelled release releases.
- **Bounded state.** Every key it writes expires; values reach Redis only as script
  arguments.

It runs on redis-py's asyncio clients, so on the asyncio event loop only. Modules:
``lock`` (the lock), ``scripts`` (the Lua scripts and every round trip),
``wakeup`` (the pub/sub wake-up), ``registry`` (run registry and chain heads),
``cluster`` (Cluster quirks), ``keys`` (key names), ``urls`` (URLs).
"""

from __future__ import annotations

from threadlock.backends.redis.lock import RedisThreadLock
from threadlock.backends.redis.registry import DEFAULT_CHAIN_TTL, DEFAULT_REGISTRY_TTL

__all__ = ["DEFAULT_CHAIN_TTL", "DEFAULT_REGISTRY_TTL", "RedisThreadLock"]
