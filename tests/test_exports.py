"""The top-level names: the backends with optional drivers load on first use only."""

from __future__ import annotations

import subprocess
import sys

import pytest

import threadlock


def test_import_threadlock_loads_no_driver_until_a_backend_is_named() -> None:
    code = (
        "import sys, threadlock\n"
        "drivers = ('redis', 'psycopg', 'psycopg_pool')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in drivers))\n"
        "from threadlock import RedisThreadLock\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg', 'psycopg_pool')))\n"
        "print('redis' in sys.modules)\n"
        "from threadlock import PostgresThreadLock\n"
        "print('psycopg' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\n")
    assert out[:4] == ["[]", "[]", "True", "True"]


def test_lazy_backends_are_the_backend_classes() -> None:
    from threadlock.backends.postgres import PostgresThreadLock
    from threadlock.backends.redis import RedisThreadLock

    assert threadlock.RedisThreadLock is RedisThreadLock
    assert threadlock.PostgresThreadLock is PostgresThreadLock
    assert {"RedisThreadLock", "PostgresThreadLock"} <= set(dir(threadlock))


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(threadlock, "no_such_name")
