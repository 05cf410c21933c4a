"""Testing support: the conformance suites (lock, run registry, chain heads, inbox) and a fake
OpenAI for bots' own tests.

All are imported lazily, so ``import threadlock.testing`` needs neither pytest nor anything
else beyond threadlock's own dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from threadlock.testing.conformance import BackendConformance, backend_conformance
    from threadlock.testing.fake_openai import FakeOpenAI
    from threadlock.testing.inbox_conformance import InboxConformance, InboxRecoveryConformance
    from threadlock.testing.registry_conformance import ChainConformance, RegistryConformance

__all__ = [
    "BackendConformance",
    "ChainConformance",
    "FakeOpenAI",
    "InboxConformance",
    "InboxRecoveryConformance",
    "RegistryConformance",
    "backend_conformance",
]

_WHERE = {
    "BackendConformance": "threadlock.testing.conformance",
    "backend_conformance": "threadlock.testing.conformance",
    "FakeOpenAI": "threadlock.testing.fake_openai",
    "InboxConformance": "threadlock.testing.inbox_conformance",
    "InboxRecoveryConformance": "threadlock.testing.inbox_conformance",
    "RegistryConformance": "threadlock.testing.registry_conformance",
    "ChainConformance": "threadlock.testing.registry_conformance",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'threadlock.testing' has no attribute {name!r}")
