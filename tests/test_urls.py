"""from_url / from_env: schemes, precedence, and errors that name the problem."""

from __future__ import annotations

import logging

import pytest

import threadlock
from threadlock.backends import url_from_env


def test_memory_url_builds_a_memory_backend() -> None:
    assert isinstance(threadlock.from_url("memory://"), threadlock.MemoryThreadLock)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"THREADLOCK_URL": "memory://", "REDIS_URL": "redis://a"}, "memory://"),
        ({"REDIS_URL": "redis://a:1/0", "UPSTASH_REDIS_URL": "rediss://b"}, "redis://a:1/0"),
        ({"UPSTASH_REDIS_URL": "rediss://default:t@b:6379"}, "rediss://default:t@b:6379"),
        ({"REDIS_HOST": "h"}, "redis://h:6379/0"),
        ({"REDIS_HOST": "h", "REDIS_PORT": "7000"}, "redis://h:7000/0"),
        ({"REDIS_HOST": "h", "REDIS_PASSWORD": "p@ss:/w"}, "redis://:p%40ss%3A%2Fw@h:6379/0"),
        ({"THREADLOCK_URL": ""}, None),
        ({}, None),
    ],
)
def test_environment_precedence(environ: dict[str, str], expected: str | None) -> None:
    assert url_from_env(environ) == expected


def test_from_env_falls_back_to_memory_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="threadlock"):
        lock = threadlock.from_env({})
    assert isinstance(lock, threadlock.MemoryThreadLock)
    assert [r.event for r in caplog.records] == ["backend.memory_fallback"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("url", ["nosuch://x", "http://localhost", "", "localhost:6379"])
def test_unknown_scheme_is_a_value_error_naming_url(url: str) -> None:
    with pytest.raises(ValueError, match="url"):
        threadlock.from_url(url)


def test_url_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="url"):
        threadlock.from_url(b"memory://")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "rediss://default:token@example.upstash.io:6379",
        "redis+cluster://localhost:7000",
        "postgresql://user@localhost/db",
        "postgres://user@localhost/db",
    ],
)
def test_network_urls_build_without_connecting(url: str) -> None:
    # Nothing listens at these addresses: building must not try.
    lock = threadlock.from_url(url)
    assert isinstance(lock, threadlock.ThreadLock)


@pytest.mark.parametrize(
    "url",
    ["memory://", "redis://127.0.0.1:1/0", "postgresql://nobody@127.0.0.1:1/postgres"],
    ids=["memory", "redis", "postgres"],
)
def test_common_options_are_accepted_by_every_backend(url: str) -> None:
    # Issue 18 item 5: switching THREADLOCK_URL between backends never breaks start-up.
    # Nothing connects: from_url only builds the backend. The options are BaseThreadLock's.
    observer = threadlock.observe.Observer()
    lock = threadlock.from_url(
        url,
        owner="worker-1",
        grace=2.5,
        release_timeout=1.5,
        observer=observer,
    )
    assert lock.owner == "worker-1"
    assert lock.grace == 2.5
    assert lock.release_timeout == 1.5
    assert lock.observer is observer
