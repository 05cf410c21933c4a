"""Guards for OpenAI conversations and Assistants threads.

``guard_conversation`` serialises turns on a Responses API conversation (or a
``previous_response_id`` chain; see :mod:`threadlock.openai.guard`), ``guard_thread`` on an
Assistants thread (see :mod:`threadlock.openai.threads`); ``recover_orphaned_runs`` cancels
what a crashed worker left running (see :mod:`threadlock.openai.recovery`). A turn's streams
(``turn.stream(...)``, ``turn.create(stream=True)``) are :class:`GuardedStream` objects (see
:mod:`threadlock.openai.streaming`).
"""

from threadlock.openai.guard import (
    RUN_TOKEN_METADATA,
    ConversationGuard,
    ConversationTurn,
    guard_conversation,
)
from threadlock.openai.recovery import RecoveryReport, recover_orphaned_runs
from threadlock.openai.runs import (
    ACTIVE_RESPONSE_STATUSES,
    ACTIVE_RUN_STATUSES,
    TERMINAL_RESPONSE_STATUSES,
    TERMINAL_RUN_STATUSES,
    active_run_in_error,
    is_conversation_locked,
)
from threadlock.openai.streaming import GuardedStream, GuardedStreamManager, StreamOutsideTurn
from threadlock.openai.threads import INTENT_PREFIX, ThreadGuard, ThreadTurn, guard_thread

__all__ = [
    "ACTIVE_RESPONSE_STATUSES",
    "ACTIVE_RUN_STATUSES",
    "INTENT_PREFIX",
    "RUN_TOKEN_METADATA",
    "TERMINAL_RESPONSE_STATUSES",
    "TERMINAL_RUN_STATUSES",
    "ConversationGuard",
    "ConversationTurn",
    "GuardedStream",
    "GuardedStreamManager",
    "RecoveryReport",
    "StreamOutsideTurn",
    "ThreadGuard",
    "ThreadTurn",
    "active_run_in_error",
    "guard_conversation",
    "guard_thread",
    "is_conversation_locked",
    "recover_orphaned_runs",
]
