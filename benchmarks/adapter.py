"""The adapter interface and the registry that the scenarios run against.

A lock under test (a threadlock backend, or a peer it is compared with) is wrapped in an
:class:`Adapter`: four coroutines and a :class:`Capabilities` record. Scenarios only ever call
``acquire(key)`` and ``release(handle)``, so adding a lock to the benchmark never touches
scenario code.

To add adapters, create a module ``benchmarks/adapters_<something>.py`` that calls
:func:`register_adapter` (and, if it has goals, :func:`benchmarks.targets.register_targets`)
at import time. Every ``benchmarks.adapters_*`` module is imported by :func:`discover`; a
module whose import fails (a driver that is not installed) is reported, not fatal, unless one
of its adapters is asked for.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Adapter",
    "AdapterConfig",
    "AdapterFactory",
    "Capabilities",
    "Registration",
    "discover",
    "import_errors",
    "register_adapter",
    "registry",
]


@dataclass(frozen=True)
class Capabilities:
    """What an adapter can do; scenarios use it to skip what makes no sense.

    Attributes:
        exclusive: it gives mutual exclusion. ``False`` marks a *floor* (``PING``,
            ``SELECT 1``, a bare round trip): only S1 runs on it, as a reference for ratios.
        fifo: it promises first-come-first-served waiters with direct hand-off. Shown in the
            tables; S2/S3 run either way and show what really happens.
        max_tasks: the most callers it can serve at once (a connection pool, a thread pool);
            a scenario needing more concurrent tasks is skipped. ``None``: no limit.
        loops: the anyio backends it runs on (``"asyncio"``, ``"trio"``).
        skip: scenario id -> reason, for anything else it cannot do.
    """

    exclusive: bool = True
    fifo: bool = False
    max_tasks: int | None = None
    loops: frozenset[str] = frozenset({"asyncio", "trio"})
    skip: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "exclusive": self.exclusive,
            "fifo": self.fifo,
            "max_tasks": self.max_tasks,
            "loops": sorted(self.loops),
            "skip": dict(self.skip),
        }


@runtime_checkable
class Adapter(Protocol):
    """One lock under test.

    ``acquire`` returns an opaque handle that ``release`` takes back. Both are called from the
    same task, and the handle is never used again after ``release``. ``acquire`` waits as long
    as it takes (no timeout); the harness bounds each scenario as a whole. ``setup`` runs once
    before the first scenario (connect, load scripts, create tables) and ``teardown`` once
    after the last, also after an error.
    """

    name: str
    capabilities: Capabilities

    async def setup(self) -> None: ...

    async def teardown(self) -> None: ...

    async def acquire(self, key: str) -> Any: ...

    async def release(self, handle: Any) -> None: ...


@dataclass(frozen=True)
class AdapterConfig:
    """What an adapter factory is given.

    Attributes:
        options: ``--option k=v`` pairs, plus ``redis_url`` / ``pg_dsn`` from their flags.
        loop: the anyio backend of this run.
        run_id: unique per run; prefix shared-server keys with it so runs never collide.
    """

    options: Mapping[str, str]
    loop: str
    run_id: str

    def get(self, name: str, default: str | None = None, *, env: str | None = None) -> str | None:
        """``options[name]``, else the environment variable ``env``, else ``default``."""
        if name in self.options:
            return self.options[name]
        if env is not None and env in os.environ:
            return os.environ[env]
        return default


AdapterFactory = Callable[[AdapterConfig], Adapter]


@dataclass(frozen=True)
class Registration:
    name: str
    factory: AdapterFactory
    description: str
    module: str


_REGISTRY: dict[str, Registration] = {}
_IMPORT_ERRORS: dict[str, str] = {}
_DISCOVERED = False


def register_adapter(name: str, factory: AdapterFactory, *, description: str = "") -> None:
    """Make ``factory`` selectable as ``--adapters name``.

    Call it at import time of a ``benchmarks/adapters_*.py`` module. ``factory`` is called once
    per run with an :class:`AdapterConfig`; it must not connect (``setup`` does).
    """
    if name in _REGISTRY:
        raise ValueError(f"benchmark adapter {name!r} is already registered")
    if not name or "," in name or name != name.strip():
        raise ValueError(f"bad adapter name {name!r}")
    module = getattr(factory, "__module__", "?")
    _REGISTRY[name] = Registration(name, factory, description, module)


def discover() -> None:
    """Import every ``benchmarks.adapters_*`` module once (they register themselves)."""
    global _DISCOVERED  # noqa: PLW0603 - one-shot module state
    if _DISCOVERED:
        return
    _DISCOVERED = True
    package = importlib.import_module("benchmarks")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not info.name.startswith("adapters_"):
            continue
        qualified = f"benchmarks.{info.name}"
        try:
            importlib.import_module(qualified)
        except Exception as exc:  # a missing driver must not break the other adapters
            _IMPORT_ERRORS[qualified] = f"{type(exc).__name__}: {exc}"


def registry() -> Mapping[str, Registration]:
    """Every registered adapter, after :func:`discover`."""
    discover()
    return dict(_REGISTRY)


def import_errors() -> Mapping[str, str]:
    """Adapter modules whose import failed, with the error."""
    discover()
    return dict(_IMPORT_ERRORS)
