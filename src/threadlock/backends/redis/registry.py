"""The run registry and chain heads of the Redis backend (RunRegistry, ChainStore).

Each lock's registry is one hash in the lock's hash slot, ``<prefix>:{<digest>}:runs``, with
its order beside it (a sorted set, ``<prefix>:{<digest>}:order``, so the newest entry and the
entries to prune are found without reading the hash), and
its chain head one string, ``<prefix>:{<digest>}:chain`` (layout and bounds:
docs/backends/redis.md). Every write is one round trip.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from threadlock._lease import Lease
from threadlock._validate import check_key
from threadlock.backends.base import DEFAULT_CHAIN_TTL, DEFAULT_REGISTRY_TTL, MIN_REGISTRY_TTL
from threadlock.backends.redis.keys import NameCache, scan_pattern, text
from threadlock.backends.redis.scripts import RedisCommands, for_each_bounded
from threadlock.protocol import RunKind, RunRecord

logger = logging.getLogger("threadlock")

__all__ = [
    "DEFAULT_CHAIN_TTL",
    "DEFAULT_REGISTRY_TTL",
    "MIN_REGISTRY_TTL",
    "RedisRunRegistry",
    "decode_record",
    "encode_record",
]


def encode_record(record: RunRecord) -> str:
    """A registry entry's record, as stored (ids, times, fence, owner: no content)."""
    return json.dumps(
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


def decode_record(document: str) -> RunRecord:
    """The inverse of :func:`encode_record`; ValueError/TypeError if it is not one."""
    key, kind, run_id, thread_id, created_at, fence, owner = json.loads(document)
    run_kind: RunKind = "response" if kind == "response" else "run"
    return RunRecord(
        str(key), run_kind, str(run_id), str(thread_id), float(created_at), int(fence), str(owner)
    )


class RedisRunRegistry:
    """The :class:`threadlock.RunRegistry` and :class:`threadlock.ChainStore` methods of
    :class:`~threadlock.backends.redis.RedisThreadLock`, which sets the attributes
    annotated here."""

    _commands: RedisCommands
    _names: NameCache
    _prefix: str
    _pub: bytes
    _registry_ttl_ms: int
    _chain_ttl_ms: int

    if TYPE_CHECKING:

        def _check_open(self) -> None: ...

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
        names = self._names(record.key)
        await self._commands.script_shielded(
            "track",
            names.registry,
            record.run_id,
            encode_record(record),
            self._registry_ttl_ms,
        )

    async def untrack_run(self, key: str, run_id: str) -> None:
        """Forget a run; see :class:`threadlock.RunRegistry`. A missing entry is no error.

        One ``EVALSHA`` (``untrack.lua``): the entry leaves the hash and its order together."""
        check_key(key)
        check_key(run_id, "run_id")
        self._check_open()
        await self._commands.script_shielded("untrack", self._names(key).registry, run_id)

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

        names = await self._commands.scan(scan_pattern(self._prefix, "runs"))
        await for_each_bounded(sorted(set(names)), one)
        found.sort(key=lambda pair: (pair[1].created_at, pair[0]))
        return [record for _, record in found]

    async def _read_runs(self, name: str) -> list[tuple[int, RunRecord]]:
        """The entries of one runs hash as (order, record), in order."""
        client = self._commands.client
        raw: dict[Any, Any] = await self._commands.command(lambda: client.hgetall(name))
        entries = []
        for field, value in raw.items():
            try:
                order, _, document = text(value).partition(" ")
                entries.append((int(order), decode_record(document)))
            except (ValueError, TypeError):
                logger.warning(
                    "threadlock skipped an unreadable run registry entry %r in %r",
                    text(field),
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
        client = self._commands.client
        head = await self._commands.command(lambda: client.get(chain))
        return None if head is None else text(head)

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
        reply = await self._commands.script_shielded(
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
