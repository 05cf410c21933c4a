"""threadlock: one conversation, one turn at a time.

Per-conversation FIFO leases with fencing tokens on memory, Redis and Postgres, an
``async with`` guard for OpenAI conversations and Assistants threads, and recovery of runs a
crashed worker left active.
"""

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
