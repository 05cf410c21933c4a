"""The inbox: a durable per-key inbox that folds a burst of messages into one turn.

``types`` (values and errors), ``store`` (the protocol a backend implements and its lookup),
``memory``, ``redis`` and ``postgres`` (the stores), ``api`` (:class:`Inbox`). Import from here.
"""

from threadlock.inbox.api import Handler, Inbox, Turns
from threadlock.inbox.store import (
    InboxStore,
    SummaryStore,
    SweepableStore,
    register_store,
    store_for,
)
from threadlock.inbox.types import STRATEGIES, Batch, DeadLetter, InboxFull, Message, Strategy

__all__ = [
    "STRATEGIES",
    "Batch",
    "DeadLetter",
    "Handler",
    "Inbox",
    "InboxFull",
    "InboxStore",
    "Message",
    "Strategy",
    "SummaryStore",
    "SweepableStore",
    "Turns",
    "register_store",
    "store_for",
]
