"""threadlock: one conversation, one turn at a time.

Per-conversation FIFO leases with fencing tokens on memory, Redis and Postgres, an
``async with`` guard for OpenAI conversations and Assistants threads, and recovery of runs a
crashed worker left active.

``RedisThreadLock`` and ``PostgresThreadLock`` are importable from here too. They are loaded
on first use, through the module ``__getattr__``, so ``import threadlock`` imports neither
redis nor psycopg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from threadlock._lazy import load_lazily
from threadlock._lease import Lease, LockInfo
from threadlock._version import __version__
from threadlock.backends import from_env, from_url
from threadlock.backends.base import BaseThreadLock
from threadlock.backends.memory import MemoryThreadLock
from threadlock.errors import BackendError, LeaseLost, ThreadBusy, ThreadLockError
from threadlock.hold import Hold
from threadlock.inbox import Batch, DeadLetter, Inbox, InboxFull, Message
from threadlock.observe import (
    LoggingObserver,
    Observer,
    combine,
    get_default_observer,
    set_default_observer,
)
from threadlock.protocol import ChainStore, RunRecord, RunRegistry, ThreadLock

if TYPE_CHECKING:
    from threadlock.backends.postgres import PostgresThreadLock as PostgresThreadLock
    from threadlock.backends.redis import RedisThreadLock as RedisThreadLock

#: Public names loaded on first access: name -> the module that owns it. They are left out of
#: ``__all__`` so that ``from threadlock import *`` needs no extra.
_LAZY: dict[str, str] = {
    "PostgresThreadLock": "threadlock.backends.postgres",
    "RedisThreadLock": "threadlock.backends.redis",
}

__all__ = [
    "BackendError",
    "BaseThreadLock",
    "Batch",
    "ChainStore",
    "DeadLetter",
    "Hold",
    "Inbox",
    "InboxFull",
    "Lease",
    "LeaseLost",
    "LockInfo",
    "LoggingObserver",
    "MemoryThreadLock",
    "Message",
    "Observer",
    "RunRecord",
    "RunRegistry",
    "ThreadBusy",
    "ThreadLock",
    "ThreadLockError",
    "__version__",
    "combine",
    "from_env",
    "from_url",
    "get_default_observer",
    "set_default_observer",
]


def __getattr__(name: str) -> Any:
    return load_lazily(__name__, name, _LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
