"""The Redis key names of a lock, and the small conversions every module of the backend uses.

One lock ``key`` lives under Redis keys sharing the hash tag ``{<digest>}`` (the first 128
bits of SHA-256 of the key in hex), so they are in one Cluster slot and every user key,
whatever its characters, becomes an ordinary Redis key (see docs/backends/redis.md).
"""

from __future__ import annotations

import hashlib
import math

#: How many keys' names one backend instance keeps pre-encoded.
_NAMES_CACHED = 4096
_GLOB_SPECIALS = "\\*?[]"


def text(value: object) -> str:
    """A Redis reply (bytes or str) as str; bytes must be UTF-8."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def ttl_ms(ttl: float) -> int:
    """Seconds as whole milliseconds, rounded up, at least 1."""
    return max(1, math.ceil(ttl * 1000))


def digest(key: str) -> str:
    """The hash tag of ``key``: 128 bits of its SHA-256, in hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def waiter_id(token: str) -> str:
    """The id a waiter has in Redis: sha1(token), so the token never rests there."""
    return hashlib.sha1(token.encode("ascii")).hexdigest()  # noqa: S324 - an id, not security


def scan_pattern(prefix: str, suffix: str) -> str:
    """A ``SCAN`` pattern for the ``suffix`` keys of every lock of ``prefix``."""
    escaped = "".join("\\" + c if c in _GLOB_SPECIALS else c for c in prefix)
    return f"{escaped}:{{*}}:{suffix}"


class KeyNames:
    """The Redis key names of one lock (all in one hash slot) and its channel.

    The lists are the KEYS of the scripts, pre-encoded, so a call does not encode them again.
    Each index has one meaning in every full lock script (see ``lua/_lib.lua``): 1 lease,
    2 queue, 3 beat, 4 meta, 5 runs, 6 chain, 7 an acquire's tombstone, 8 the runs' order.
    """

    __slots__ = (
        "base",
        "chain",
        "channel",
        "full",
        "inspect",
        "key",
        "lock",
        "order",
        "registry",
        "runs",
        "with_runs",
    )

    def __init__(self, base: str, key: str = "") -> None:
        self.base = base
        parts = ("lease", "queue", "beat", "meta")
        #: KEYS 1-4 (release, extend): lease, queue, beat, meta
        self.lock = [f"{base}:{part}".encode() for part in parts]
        self.runs = f"{base}:runs"
        self.with_runs = [*self.lock, self.runs.encode()]  # KEYS 1-5
        self.chain = f"{base}:chain"
        self.full = [*self.with_runs, self.chain.encode()]  # KEYS 1-6 (advance)
        self.order = f"{base}:order"
        #: KEYS 1-8 of inspect: its 7, a tombstone, is never written
        self.inspect = [*self.full, f"{base}:gone:-".encode(), self.order.encode()]
        #: KEYS of track and untrack: the runs hash and its order
        self.registry = [self.runs.encode(), self.order.encode()]
        self.channel = f"{base}:wake"
        self.key = key.encode()

    def acquire_keys(self, attempt: str) -> list[bytes]:
        """KEYS 1-8 of one acquire (for ``acquire`` and ``abandon``), 7 the tombstone, 8 the
        runs' order; ``attempt`` names the acquire uniquely (it need not be secret)."""
        return [*self.full, f"{self.base}:gone:{attempt}".encode(), self.order.encode()]


class NameCache:
    """``names(key)``: the :class:`KeyNames` of ``key`` under ``prefix``, kept for reuse
    (at most :data:`_NAMES_CACHED` keys; the cache is emptied when full)."""

    __slots__ = ("_cache", "_prefix")

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._cache: dict[str, KeyNames] = {}

    def __call__(self, key: str) -> KeyNames:
        names = self._cache.get(key)
        if names is None:
            if len(self._cache) >= _NAMES_CACHED:
                self._cache.clear()
            names = self._cache[key] = KeyNames(f"{self._prefix}:{{{digest(key)}}}", key)
        return names
