"""Names a module offers but another module defines, loaded on first access (PEP 562).

A module's ``__getattr__`` calls :func:`load_lazily` with its table of such names. This keeps
an import path working without importing the defining module up front: a backend's driver
(``threadlock.RedisThreadLock``), or a module that imports the one re-exporting it (the
thread guard, ``threadlock.openai.guard.guard_thread``), which an eager import would turn into
a cycle.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["load_lazily"]


def load_lazily(module: str, name: str, lazy: Mapping[str, str]) -> Any:
    """``name`` from the module ``lazy[name]`` names, kept in ``module`` for the next access;
    :class:`AttributeError` for a name ``lazy`` does not hold."""
    source = lazy.get(name)
    if source is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    vars(sys.modules[module])[name] = value  # the next access is a plain module attribute
    return value
