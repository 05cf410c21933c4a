"""Fuzzing the public surface with hypothesis: only ValueError/TypeError escape a bad call.

Keys, ttl, timeout, ``hold()`` options, leases, URLs (``from_url``/``from_env``), Postgres
table and schema names, Redis prefixes and the guards' ids are generated, well-formed and
not. For every call the test knows from the SPEC alone (an oracle written here, not the
library's own checks) whether it is valid:

* a valid call works (and is undone);
* an invalid one raises ``ValueError`` or ``TypeError`` whose message names the argument, and
  leaves the backend as it was (``held()`` and ``inspect()`` before and after are equal);
* a URL that parses but cannot be reached gives ``BackendError`` on first use.

Nothing else may escape. Ranges that hit open defects are narrowed here, each with a pointer
to its reproduction in ``tests/chaos/test_chaos_repros.py``. Examples are derandomized and
bounded, so CI runs the same inputs every time.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from tests._servers.postgres_server import PostgresServer, ServerUnavailable
from tests._servers.redis_server import RedisServer, free_port

import threadlock
from threadlock import BackendError, Lease, LeaseLost, MemoryThreadLock, ThreadBusy
from threadlock.backends import from_env
from threadlock.openai import guard_conversation, guard_thread
from threadlock.testing import FakeOpenAI

pytestmark = pytest.mark.slow

FAST = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SERVER = settings(FAST, max_examples=60)
SCHEMA = settings(FAST, max_examples=12)

# -- the oracle: what the SPEC says is valid ---------------------------------------------------

MAX_KEY_BYTES = 1024
# Integers beyond float range raise OverflowError today (see test_chaos_repros.py), so the
# fuzzed integers stay within it.
FLOAT_RANGE = 10**300
# Redis and Postgres refuse finite ttls past their time range (about 31 and 3,000 years) with
# a ValueError naming ttl (see test_chaos_repros.py); the *valid* ttls sent to them stay below
# this, so that a lease's expiry stays readable in the snapshots.
SERVER_MAX_TTL = 1e6
# A lease with a shorter ttl may expire between two calls on a busy machine.
LIVES = 5.0


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def key_ok(key: object) -> bool:
    if not isinstance(key, str) or not key or "\x00" in key:
        return False
    try:
        return len(key.encode("utf-8")) <= MAX_KEY_BYTES
    except UnicodeEncodeError:
        return False


def ttl_ok(ttl: object) -> bool:
    return is_number(ttl) and math.isfinite(float(ttl)) and float(ttl) > 0  # type: ignore[arg-type]


def timeout_ok(timeout: object) -> bool:
    if timeout is None:
        return True
    return is_number(timeout) and not math.isnan(float(timeout)) and float(timeout) >= 0  # type: ignore[arg-type]


# -- strategies ----------------------------------------------------------------------------------

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.binary(max_size=8),
    st.lists(st.integers(0, 3), max_size=2),
    st.builds(object),
    st.complex_numbers(max_magnitude=10),
)
numbers = st.one_of(
    st.integers(-FLOAT_RANGE, FLOAT_RANGE),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 0.0, -0.0, 1e-300, 5e-324, 1e300, math.inf, -math.inf, math.nan]),
)
texts = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=40),
    st.sampled_from(
        [
            "",
            "\x00",
            "a\x00b",
            "\ud800",
            "a\udfffb",
            "{",
            "}",
            "{x}",
            "*",
            "?",
            "[a-z]",
            "\\",
            "'; DROP TABLE x; --",
            '"',
            "$1",
            "%s",
            "\n",
            " ",
            "ключ",
            "🔒",
            "a" * 1024,
            "a" * 1025,
            "é" * 512,
            "é" * 513,
        ]
    ),
)
keys = st.one_of(texts, junk, numbers)
ttls = st.one_of(numbers, junk, texts)
timeouts = st.one_of(st.none(), numbers, junk, texts)

# Well-formed values, so that about half of the calls take the success path.
good_keys = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=60),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=250, max_size=256),
    st.sampled_from(["{x}", "*", "[a-z]", "'; DROP TABLE x; --", "ключ", "🔒", "é" * 512]),
)
good_ttls = st.one_of(st.floats(1e-6, 1e6), st.integers(1, 10**6), st.sampled_from([5e-324, 1e300]))
good_timeouts = st.one_of(
    st.none(), st.floats(0, 1e300), st.integers(0, 10**6), st.sampled_from([math.inf, 0, 0.0])
)
acquire_args = st.one_of(
    st.tuples(good_keys, good_ttls, good_timeouts),
    st.tuples(
        st.one_of(good_keys, keys), st.one_of(good_ttls, ttls), st.one_of(good_timeouts, timeouts)
    ),
)


def names(error: BaseException, *arguments: str) -> bool:
    text = str(error)
    return any(re.search(rf"\b{re.escape(a)}\b", text) for a in arguments)


# -- a portal per module: the backends live on an event loop in a thread ------------------------


@pytest.fixture(scope="module")
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal("asyncio") as portal:
        yield portal


class Harness:
    """A backend on the portal's loop, with one key held and one waiter queued on it."""

    held_key = "held"

    def __init__(self, portal: BlockingPortal, lock: Any) -> None:
        self.portal = portal
        self.lock = lock
        self.held = portal.call(lambda: lock.acquire(self.held_key, ttl=300.0))

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.portal.call(lambda: fn(*args, **kwargs))

    def snapshot(self) -> list[tuple[str, int, float, int]]:
        infos = self.call(self.lock.held)
        return sorted((i.key, i.fence, round(i.expires_at, 3), i.waiters) for i in infos)

    def close(self) -> None:
        self.call(self.lock.release, self.held)
        self.call(self.lock.aclose)


def check_acquire(h: Harness, key: object, ttl: object, timeout: object, max_ttl: float) -> None:
    valid = key_ok(key) and ttl_ok(ttl) and timeout_ok(timeout)
    if valid:
        assume(key != h.held_key and float(ttl) <= max_ttl)  # type: ignore[arg-type]
    event("valid" if valid else "rejected")
    before = h.snapshot()
    try:
        lease = h.call(h.lock.acquire, key, ttl=ttl, timeout=timeout)
    except (ValueError, TypeError) as error:
        assert not valid, f"a valid acquire was refused: {error!r}"
        bad = [
            name
            for name, ok in (
                ("key", key_ok(key)),
                ("ttl", ttl_ok(ttl)),
                ("timeout", timeout_ok(timeout)),
            )
            if not ok
        ]
        assert names(error, *bad), f"{error!r} does not name any of {bad}"
        assert h.snapshot() == before, "a rejected acquire changed the backend"
        return
    assert valid, f"an invalid acquire was accepted: key={key!r} ttl={ttl!r} timeout={timeout!r}"
    assert isinstance(lease, Lease)
    assert lease.key == key
    if float(ttl) >= LIVES:  # type: ignore[arg-type]
        info = h.call(h.lock.inspect, key)
        assert info is not None
        assert info.key == key
        assert info.fence == lease.fence
        assert h.call(h.lock.release, lease) is True
    else:  # it may have expired already
        assert isinstance(h.call(h.lock.release, lease), bool)
    assert h.snapshot() == before


def forged(lease: Lease) -> bool:
    """A Lease no acquire can have made: a key or token that is not valid text."""
    if not key_ok(lease.key) or not isinstance(lease.token, str):
        return True
    try:
        lease.token.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_extend_release(h: Harness, lease: object, ttl: object) -> None:
    """A lease the caller does not hold: extend is LeaseLost, release is False.

    A Lease no acquire can have made may also be refused with ValueError/TypeError; anything
    that is not a Lease, or a bad ttl, must be (naming the argument).
    """
    before = h.snapshot()
    bad_ttl = ttl is not None and not ttl_ok(ttl)
    try:
        h.call(h.lock.extend, lease, ttl=ttl)
    except (ValueError, TypeError) as error:
        if not isinstance(lease, Lease) or bad_ttl:
            assert names(error, "lease", "ttl"), repr(error)
        else:
            assert forged(lease), f"extend of a well-formed foreign lease: {error!r}"
    except LeaseLost:
        assert isinstance(lease, Lease)
        assert not bad_ttl, "a bad ttl was not refused"
    else:
        pytest.fail(f"extend of a foreign or malformed lease succeeded: {lease!r}")
    try:
        assert h.call(h.lock.release, lease) is False
    except (ValueError, TypeError) as error:
        if not isinstance(lease, Lease):
            assert names(error, "lease"), repr(error)
        else:
            assert forged(lease), f"release of a well-formed foreign lease: {error!r}"
    assert h.snapshot() == before


# A Lease the caller does not own: the held key with another token, or junk fields.
foreign_leases = st.one_of(
    junk,
    texts,
    st.builds(
        Lease,
        key=st.sampled_from(["held", "other", "ключ"]),
        token=st.one_of(st.text(max_size=40), st.just("")),
        fence=st.integers(-(2**63), 2**63),
        ttl=st.floats(0.001, 100),
        acquired_at=st.floats(0, 2e9),
        expires_at=st.floats(0, 2e9),
    ),
)


# -- memory: the whole argument surface ---------------------------------------------------------


@pytest.fixture(scope="module")
def memory(portal: BlockingPortal) -> Iterator[Harness]:
    harness = Harness(portal, MemoryThreadLock())
    try:
        yield harness
    finally:
        harness.close()


@FAST
@given(args=acquire_args)
@example(args=("k", 1e300, 1e300))
@example(args=("é" * 512, 1, 0))
@example(args=("é" * 513, 1, 0))
@example(args=("k", True, 0))
@example(args=("k", 1, math.nan))
def test_memory_acquire(memory: Harness, args: tuple[object, object, object]) -> None:
    check_acquire(memory, *args, max_ttl=math.inf)


@FAST
@given(lease=foreign_leases, ttl=st.one_of(st.none(), ttls))
def test_memory_extend_and_release_of_foreign_leases(
    memory: Harness, lease: object, ttl: object
) -> None:
    check_extend_release(memory, lease, ttl)


@FAST
@given(key=st.one_of(good_keys, keys, st.just("held")))
def test_memory_inspect(memory: Harness, key: object) -> None:
    before = memory.snapshot()
    try:
        info = memory.call(memory.lock.inspect, key)
    except (ValueError, TypeError) as error:
        assert not key_ok(key)
        assert names(error, "key"), repr(error)
    else:
        assert key_ok(key)
        assert (info is not None) == (key == memory.held_key)
    assert memory.snapshot() == before


@FAST
@given(
    key=st.one_of(good_keys, keys),
    ttl=st.one_of(good_ttls, ttls),
    timeout=st.one_of(good_timeouts, timeouts),
    renew_every=st.one_of(st.none(), good_ttls, numbers, junk),
    max_hold=st.one_of(st.none(), good_ttls, numbers, junk),
)
def test_memory_hold_options_are_checked_before_anything_is_acquired(
    memory: Harness,
    key: object,
    ttl: object,
    timeout: object,
    renew_every: object,
    max_hold: object,
) -> None:
    def positive(value: object) -> bool:
        return value is None or ttl_ok(value)

    valid = key_ok(key) and ttl_ok(ttl) and timeout_ok(timeout) and positive(max_hold)
    if valid and renew_every is not None:
        valid = ttl_ok(renew_every) and float(renew_every) < float(ttl)  # type: ignore[arg-type]
    before = memory.snapshot()
    try:
        hold = memory.lock.hold(
            key, ttl=ttl, timeout=timeout, renew_every=renew_every, max_hold=max_hold
        )
    except (ValueError, TypeError) as error:
        assert not valid, f"valid hold() options refused: {error!r}"
        assert names(error, "key", "ttl", "timeout", "renew_every", "max_hold"), repr(error)
    else:
        assert valid, "invalid hold() options accepted"
        assert hold is not None
    assert memory.snapshot() == before  # hold() acquires only when entered


# -- Redis and Postgres: keys, ttl and timeout reach a real server ------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def redis(portal: BlockingPortal, redis_server: RedisServer) -> Iterator[Harness]:
    from threadlock.backends.redis import RedisThreadLock

    lock = RedisThreadLock.from_url(redis_server.url, prefix=f"fuzz-{uuid.uuid4().hex[:8]}")
    harness = Harness(portal, lock)
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer.create()
    except ServerUnavailable as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the Postgres tests cannot run: {error}")
        pytest.skip(str(error))
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="module")
def postgres(portal: BlockingPortal, pg_server: PostgresServer) -> Iterator[Harness]:
    from threadlock.backends.postgres import PostgresThreadLock

    lock = PostgresThreadLock.from_url(pg_server.dsn, table=f"fuzz_{uuid.uuid4().hex[:12]}")
    portal.call(lock.create_schema)
    harness = Harness(portal, lock)
    try:
        yield harness
    finally:
        harness.close()


@SERVER
@given(args=acquire_args)
@example(args=("{x}*?[a]\\", 1, 0))
@example(args=("'; DROP TABLE x; --", 1, 0))
@example(args=("é" * 512, 1, 0))
def test_redis_acquire(redis: Harness, args: tuple[object, object, object]) -> None:
    check_acquire(redis, *args, max_ttl=SERVER_MAX_TTL)


@SERVER
@given(args=acquire_args)
@example(args=("'; DROP TABLE x; --", 1, 0))
@example(args=("é" * 512, 1, 0))
def test_postgres_acquire(postgres: Harness, args: tuple[object, object, object]) -> None:
    check_acquire(postgres, *args, max_ttl=SERVER_MAX_TTL)


# Leases the caller does not own, with keys and tokens no acquire can make (NUL, 2 KB keys,
# lone surrogates, tokens that are not str) among them.
server_leases = st.builds(
    Lease,
    key=st.sampled_from(["held", "other", "ключ", "{x}*", "a\x00b", "k" * 2000, "\ud800"]),
    token=st.one_of(st.text(max_size=40), st.sampled_from(["", "\x00", "\ud800"]), junk),
    fence=st.integers(-(2**63), 2**63 - 1),
    ttl=st.floats(0.001, 100),
    acquired_at=st.floats(0, 2e9),
    expires_at=st.floats(0, 2e9),
)


@SERVER
@given(lease=st.one_of(junk, server_leases), ttl=st.one_of(st.none(), st.floats(0.001, 100)))
def test_redis_extend_and_release_of_foreign_leases(
    redis: Harness, lease: object, ttl: object
) -> None:
    check_extend_release(redis, lease, ttl)


@SERVER
@given(lease=st.one_of(junk, server_leases), ttl=st.one_of(st.none(), st.floats(0.001, 100)))
def test_postgres_extend_and_release_of_foreign_leases(
    postgres: Harness, lease: object, ttl: object
) -> None:
    check_extend_release(postgres, lease, ttl)


# -- names that become part of Redis keys or SQL identifiers ------------------------------------


def prefix_ok(prefix: object) -> bool:
    if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "{}\x00"):
        return False
    try:
        prefix.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@FAST
@given(prefix=st.one_of(texts, junk, numbers))
def test_redis_prefix_is_checked_when_the_backend_is_built(prefix: object) -> None:
    from threadlock.backends.redis import RedisThreadLock

    try:
        lock = RedisThreadLock.from_url("redis://127.0.0.1:1/0", prefix=prefix)
    except (ValueError, TypeError) as error:
        assert not prefix_ok(prefix)
        assert names(error, "prefix"), repr(error)
    else:
        assert prefix_ok(prefix)
        assert lock.prefix == prefix
        anyio.run(lock.aclose)


@SCHEMA
@given(
    prefix=st.text(
        st.characters(codec="utf-8", exclude_characters="{}\x00"), min_size=1, max_size=20
    )
)
@example(prefix="a*")
@example(prefix="a?[b]\\")
@example(prefix="fuzz:x")
def test_redis_prefixes_keep_their_locks_apart(
    portal: BlockingPortal, redis_server: RedisServer, prefix: str
) -> None:
    from threadlock.backends.redis import RedisThreadLock

    async def run() -> None:
        # A neighbour whose prefix the glob of a careless scan would also match.
        async with (
            RedisThreadLock.from_url(redis_server.url, prefix=prefix) as mine,
            RedisThreadLock.from_url(redis_server.url, prefix=prefix + "x") as neighbour,
        ):
            theirs = await neighbour.acquire("theirs", ttl=30.0)
            lease = await mine.acquire("mine", ttl=30.0)
            assert [i.key for i in await mine.held()] == ["mine"]
            assert await mine.inspect("theirs") is None
            assert await mine.release(lease)
            assert await neighbour.release(theirs)

    portal.call(run)


IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def table_ok(table: object) -> bool:
    return isinstance(table, str) and IDENTIFIER.fullmatch(table) is not None and len(table) <= 48


def schema_ok(schema: object) -> bool:
    return schema is None or (
        isinstance(schema, str) and IDENTIFIER.fullmatch(schema) is not None and len(schema) <= 63
    )


@FAST
@given(table=st.one_of(texts, junk), schema=st.one_of(st.none(), texts, junk))
@example(table="a" * 48, schema="b" * 63)
@example(table="a" * 49, schema=None)
@example(table="t", schema="b" * 64)
@example(table="x; DROP TABLE y", schema=None)
@example(table="t", schema='public"; --')
def test_postgres_names_are_checked_when_the_backend_is_built(
    table: object, schema: object
) -> None:
    from threadlock.backends.postgres import PostgresThreadLock

    valid = table_ok(table) and schema_ok(schema)
    try:
        lock = PostgresThreadLock.from_url(
            "postgresql://postgres@127.0.0.1:1/postgres", table=table, schema=schema
        )
    except (ValueError, TypeError) as error:
        assert not valid, f"valid names refused: {error!r}"
        assert names(error, "table", "schema"), repr(error)
    else:
        assert valid, f"invalid names accepted: table={table!r} schema={schema!r}"
        assert lock.table == table
        anyio.run(lock.aclose)


reserved = st.sampled_from(["select", "user", "table", "order", "Group", "MixedCase", "_", "t1"])
identifiers = st.one_of(reserved, st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True))


@SCHEMA
@given(table=identifiers, schema=st.one_of(st.none(), identifiers))
def test_postgres_valid_names_work_on_a_real_server(
    portal: BlockingPortal, pg_server: PostgresServer, table: str, schema: str | None
) -> None:
    from threadlock.backends.postgres import PostgresThreadLock

    table = f"{table}_{uuid.uuid4().hex[:6]}"  # a fresh table per example

    async def run() -> None:
        async with PostgresThreadLock.from_url(pg_server.dsn, table=table, schema=schema) as lock:
            await lock.create_schema()
            await lock.create_schema()  # idempotent
            lease = await lock.acquire("k", ttl=30.0)
            with pytest.raises(ThreadBusy):
                await lock.acquire("k", ttl=30.0, timeout=0)
            assert [i.key for i in await lock.held()] == ["k"]
            assert await lock.release(lease)
            assert await lock.held() == []

    portal.call(run)


# -- URLs ---------------------------------------------------------------------------------------

# redis+cluster:// URLs that redis-py's cluster client refuses raise its RedisClusterException
# today (see test_chaos_repros.py): the cluster schemes are fuzzed there only.
schemes = st.one_of(
    st.sampled_from(
        [
            "memory",
            "redis",
            "rediss",
            "unix",
            "redis+sentinel",
            "rediss+sentinel",
            "postgresql",
            "postgres",
            "REDIS",
            "http",
            "",
        ]
    ),
    st.text("abcdefghijklmnopqrstuvwxyz+-.", max_size=12),
)
url_text = st.text(
    st.characters(codec="ascii", exclude_characters="\x00"), max_size=20
) | st.sampled_from(["", ":", "@", "[::1", "[::1]", "h:99999", "h:-1", "h:x", "%zz", "a,b:2"])
query_names = st.sampled_from(
    [
        "db",
        "socket_timeout",
        "socket_connect_timeout",
        "ssl_cert_reqs",
        "sslmode",
        "threadlock_prefix",
        "max_connections",
        "protocol",
        "health_check_interval",
        "sentinel_password",
        "x",
    ]
)
queries = st.lists(st.tuples(query_names, url_text), max_size=3).map(
    lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)
)


@st.composite
def urls(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return draw(st.one_of(texts, st.text(max_size=60)))
    scheme = draw(schemes)
    netloc = draw(url_text)
    path = draw(url_text)
    query = draw(queries)
    return f"{scheme}://{netloc}/{path}" + (f"?{query}" if query else "")


@FAST
@given(url=st.one_of(urls(), junk))
@example(url="redis://h:99999999/0")
@example(url="redis+sentinel://h:x/svc")
@example(url="unix:///x?db=q")
@example(url="postgresql://h:x/")
def test_from_url_raises_only_value_or_type_errors(url: object) -> None:
    try:
        lock = threadlock.from_url(url)  # type: ignore[arg-type]
    except (ValueError, TypeError) as error:
        assert str(error)
        return
    assert isinstance(lock, threadlock.ThreadLock)
    anyio.run(lock.aclose)


env_names = st.sampled_from(
    [
        "THREADLOCK_URL",
        "REDIS_URL",
        "UPSTASH_REDIS_URL",
        "REDIS_HOST",
        "REDIS_PORT",
        "REDIS_PASSWORD",
    ]
)


@FAST
@given(environ=st.dictionaries(env_names, st.one_of(urls(), url_text), max_size=4))
def test_from_env_raises_only_value_or_type_errors(environ: dict[str, str]) -> None:
    try:
        lock = from_env(environ)
    except (ValueError, TypeError) as error:
        assert str(error)
        return
    anyio.run(lock.aclose)


def _closed_port() -> int:
    return free_port()  # nothing listens there


@pytest.mark.parametrize(
    "make_url",
    [
        lambda: f"redis://127.0.0.1:{_closed_port()}/0",
        lambda: f"rediss://127.0.0.1:{_closed_port()}/0",
        lambda: f"unix:///nonexistent/threadlock-{uuid.uuid4().hex}.sock",
        lambda: f"redis://127.0.0.1:{_closed_port()}/0?threadlock_prefix=p",
        lambda: f"postgresql://postgres@127.0.0.1:{_closed_port()}/postgres",
        lambda: f"postgres://postgres@127.0.0.1:{_closed_port()}/postgres?sslmode=require",
    ],
    ids=["redis", "rediss", "unix", "redis-prefix", "postgresql", "postgres-sslmode"],
)
def test_a_url_that_parses_but_cannot_connect_is_a_backend_error(
    make_url: Callable[[], str],
) -> None:
    url = make_url()

    async def run() -> None:
        options: dict[str, Any] = {}
        if url.startswith("postgres"):
            options["pool_timeout"] = 2.0
        async with threadlock.from_url(url, **options) as lock:
            with anyio.fail_after(30):
                with pytest.raises(BackendError):
                    await lock.acquire("k", ttl=1.0, timeout=0)
                with pytest.raises(BackendError):
                    await lock.held()

    anyio.run(run)


# -- the guards' ids ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_client() -> Any:
    return FakeOpenAI().client()


guard_args = st.one_of(
    st.tuples(good_keys, st.none(), good_ttls, good_timeouts),
    st.tuples(st.one_of(st.none(), good_keys), good_keys, good_ttls, good_timeouts),
    st.tuples(
        st.one_of(st.none(), good_keys, texts, junk),
        st.one_of(st.none(), good_keys, texts, junk),
        st.one_of(good_ttls, ttls),
        st.one_of(good_timeouts, timeouts),
    ),
)


@FAST
@given(args=guard_args)
def test_guard_conversation_ids(
    memory: Harness, fake_client: Any, args: tuple[object, object, object, object]
) -> None:
    conversation_id, chain, ttl, timeout = args
    key = chain if chain is not None else conversation_id
    valid = (
        (conversation_id is None or key_ok(conversation_id))
        and (chain is None or key_ok(chain))
        and key is not None
        and ttl_ok(ttl)
        and timeout_ok(timeout)
    )
    before = memory.snapshot()
    try:
        guard = guard_conversation(
            fake_client,
            conversation_id,  # type: ignore[arg-type]
            lock=memory.lock,
            ttl=ttl,  # type: ignore[arg-type]
            timeout=timeout,  # type: ignore[arg-type]
            chain=chain,  # type: ignore[arg-type]
        )
    except (ValueError, TypeError) as error:
        assert not valid, f"valid guard arguments refused: {error!r}"
        assert names(error, "conversation_id", "chain", "ttl", "timeout"), repr(error)
        assert memory.snapshot() == before
        return
    assert valid, "invalid guard arguments accepted"
    assert memory.snapshot() == before
    assume(key != memory.held_key)
    event("entered")

    async def turn() -> None:
        async with guard as t:  # no API call: nothing is tracked for a new conversation
            assert t.key == key
            if float(ttl) >= LIVES:  # type: ignore[arg-type]
                info = await memory.lock.inspect(t.key)
                assert info is not None
                assert info.key == key

    try:
        memory.call(turn)
    except LeaseLost:
        assert float(ttl) < LIVES  # type: ignore[arg-type]  # a lease that short can expire
    assert memory.snapshot() == before


@FAST
@given(
    thread_id=st.one_of(good_keys, texts, junk),
    ttl=st.one_of(good_ttls, ttls),
    timeout=st.one_of(good_timeouts, timeouts),
)
def test_guard_thread_ids(
    memory: Harness, fake_client: Any, thread_id: object, ttl: object, timeout: object
) -> None:
    valid = key_ok(thread_id) and ttl_ok(ttl) and timeout_ok(timeout)
    before = memory.snapshot()
    try:
        guard_thread(
            fake_client,
            thread_id,  # type: ignore[arg-type]
            lock=memory.lock,
            ttl=ttl,  # type: ignore[arg-type]
            timeout=timeout,  # type: ignore[arg-type]
        )
    except (ValueError, TypeError) as error:
        assert not valid, f"valid guard arguments refused: {error!r}"
        assert names(error, "thread_id", "ttl", "timeout"), repr(error)
    else:
        assert valid, "invalid guard arguments accepted"
    assert memory.snapshot() == before
