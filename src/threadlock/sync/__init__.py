"""The synchronous face of threadlock, for Flask, Django and Celery code.

The same names and guarantees as the async API, without ``await``::

    lock = threadlock.sync.from_url("redis://localhost:6379/0")
    with lock.hold(user_id, ttl=30, timeout=60) as lease:
        ...
    with threadlock.sync.guard_conversation(openai.OpenAI(), cid, lock=lock) as turn:
        turn.create(input="hello", model="gpt-4.1-mini")
    with threadlock.sync.Inbox(lock).turns(cid, text) as turns:
        for batch in turns:
            ...

There is one implementation: every call runs the async code (renewal, FIFO hand-off,
fencing, the backends' scripts, the guards, the inbox) on an event loop that the process
owns, in one daemon thread started at the first call and started again in the child of a
fork. One lock object serves every thread of the process. See ``docs/sync.md``.
"""

from threadlock.sync._inbox import Inbox, SyncBatch, SyncTurns
from threadlock.sync._lock import SyncHold, SyncThreadLock, from_env, from_url
from threadlock.sync._openai import (
    SyncConversationGuard,
    SyncConversationTurn,
    SyncThreadGuard,
    SyncThreadTurn,
    guard_conversation,
    guard_thread,
    recover_orphaned_runs,
)

__all__ = [
    "Inbox",
    "SyncBatch",
    "SyncConversationGuard",
    "SyncConversationTurn",
    "SyncHold",
    "SyncThreadGuard",
    "SyncThreadLock",
    "SyncThreadTurn",
    "SyncTurns",
    "from_env",
    "from_url",
    "guard_conversation",
    "guard_thread",
    "recover_orphaned_runs",
]
