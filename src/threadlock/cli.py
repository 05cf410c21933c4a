"""The ``threadlock`` command line: ``demo``, ``status``, ``recover``, ``create-schema``.

Exit codes:

* 0: success;
* 1: the command ran and found a problem (``recover`` left errors; the demo's guarded pass was
  not clean);
* 2: bad usage (argparse, a bad URL, a missing ``OPENAI_API_KEY``);
* 3: the backend could not be reached or is misconfigured;
* 4: the OpenAI API could not be reached or refused the key.

Errors are one line on stderr, never a traceback. ``status`` and ``recover`` refuse the
in-process memory backend (exit 2): from a separate process it would see nothing, and its "no
locks held" would be a false all-clear.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio

from threadlock._lease import LockInfo
from threadlock._version import __version__
from threadlock.backends import from_url, url_from_env
from threadlock.backends.base import BaseThreadLock
from threadlock.errors import BackendError
from threadlock.observe import Observer, combine

__all__ = ["main"]

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_BACKEND = 3
EXIT_OPENAI = 4

#: From the command line a dead Postgres is reported within about this many seconds: the
#: pool's wait for a connection, and (unless the URL sets one) libpq's ``connect_timeout``.
PG_POOL_TIMEOUT = 2.0
PG_CONNECT_TIMEOUT = 2
#: The bound on the one call ``recover`` makes first to check that OpenAI answers.
OPENAI_CHECK_TIMEOUT = 10.0

_PG_SCHEMES = ("postgresql", "postgres")
_QUIET_LOGGERS = ("psycopg.pool", "psycopg")


class OpenAIUnreachable(Exception):
    """``recover`` could not reach the OpenAI API at all (exit 4)."""


def _shared_url(url: str | None, command: str) -> str:
    """The backend URL for ``status``/``recover``: named, and not the in-process memory one."""
    url = url or url_from_env()
    if url is None:
        raise ValueError(
            f"{command} needs the backend your workers use: pass --url redis://HOST:6379/0 or "
            "--url postgresql://..., or set THREADLOCK_URL (the in-process memory backend "
            "would see nothing from here)"
        )
    if urlsplit(url).scheme.lower() == "memory":
        raise ValueError(
            f"{command}: memory:// lives inside one process, so from the command line it sees "
            "nothing; pass --url redis://... or --url postgresql://... (the backend your "
            "workers use)"
        )
    return url


def _with_connect_timeout(url: str) -> str:
    """``url`` with libpq's ``connect_timeout`` set, unless it already sets one."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(name == "connect_timeout" for name, _ in query):
        return url
    query.append(("connect_timeout", str(PG_CONNECT_TIMEOUT)))
    return parts._replace(query=urlencode(query)).geturl()


def _backend(url: str, **options: Any) -> BaseThreadLock:
    """The backend for ``url``; a Postgres one fails fast, as a command line should."""
    if urlsplit(url).scheme.lower() in _PG_SCHEMES:
        return from_url(_with_connect_timeout(url), pool_timeout=PG_POOL_TIMEOUT, **options)
    return from_url(url, **options)


@contextmanager
def _quiet_driver_logs() -> Iterator[None]:
    """Keep psycopg_pool's repeated connection warnings off the terminal (one line, not 17)."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in _QUIET_LOGGERS]
    for logger, _ in saved:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def _progress(text: str) -> None:
    print(f"threadlock: {text}", file=sys.stderr, flush=True)


def _fill(text: str) -> str:
    return textwrap.fill(text, width=78)


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _status_rows(infos: list[LockInfo], now: float) -> list[dict[str, object]]:
    return [
        {
            "key": info.key,
            "owner": info.owner,
            "age": round(now - info.acquired_at, 3),
            "ttl_left": round(info.expires_at - now, 3),
            "fence": info.fence,
            "waiters": info.waiters,
            "run_id": info.run_id,
        }
        for info in sorted(infos, key=lambda i: i.key)
    ]


def _print_table(rows: list[dict[str, object]]) -> None:
    if not rows:
        print("no locks held")
        return
    headers = list(rows[0])
    cells = [[("-" if row[h] is None else str(row[h])) for h in headers] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for line in cells:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))


#: How many inbox keys ``status --inbox`` and ``recover`` list by default (``--limit``).
INBOX_LIMIT = 1000

#: How many keys ``recover`` inspects at once when it looks for live leases.
_INSPECT_AT_ONCE = 16


def _inbox_limit(value: str) -> int:
    """``--limit``: a whole number >= 1."""
    try:
        limit = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--limit must be a whole number, got {value!r}") from None
    if limit < 1:
        raise argparse.ArgumentTypeError(f"--limit must be >= 1, got {limit}")
    return limit


async def _inbox_rows(
    lock: BaseThreadLock, limit: int = INBOX_LIMIT
) -> tuple[list[dict[str, object]], bool] | None:
    """Per key (the first ``limit`` by key), the inbox's pending messages and dead letters,
    and whether there are more keys than ``limit`` (one more row is asked for, so a cut is
    always known); ``None`` if the backend's inbox store cannot list them (it is no
    :class:`~threadlock.inbox.SummaryStore`)."""
    from threadlock.inbox.store import SummaryStore, store_for

    try:
        store = store_for(lock)
    except TypeError:
        return None
    if not isinstance(store, SummaryStore):
        return None
    found = await store.summary(limit + 1)
    rows: list[dict[str, object]] = [
        {"key": key, "pending": pending, "dead_letters": dead}
        for key, pending, dead in found[:limit]
    ]
    return rows, len(found) > limit


async def _without_live_lease(lock: BaseThreadLock, keys: list[str]) -> set[str]:
    """Those of ``keys`` with no live lease: inspected up to :data:`_INSPECT_AT_ONCE` at a
    time, not one after the other."""
    free: set[str] = set()
    limiter = anyio.CapacityLimiter(_INSPECT_AT_ONCE)

    async def inspect(key: str) -> None:
        async with limiter:
            if await lock.inspect(key) is None:
                free.add(key)

    async with anyio.create_task_group() as tg:
        for key in keys:
            tg.start_soon(inspect, key)
    return free


async def _inbox_report(lock: BaseThreadLock, limit: int = INBOX_LIMIT) -> dict[str, Any] | None:
    """What ``recover`` says of the inbox: totals, and the stranded keys (pending messages,
    no live lease: their owner died mid-batch; a worker running ``inbox.serve()`` answers
    them), over the first ``limit`` keys (``truncated`` says there are more). ``None`` if the
    backend's inbox store cannot list its keys."""
    listed = await _inbox_rows(lock, limit)
    if listed is None:
        return None
    rows, truncated = listed
    free = await _without_live_lease(lock, [str(row["key"]) for row in rows if row["pending"]])
    stranded = [
        {"key": row["key"], "pending": row["pending"]} for row in rows if row["key"] in free
    ]
    return {
        "keys": len(rows),
        "pending": sum(int(str(row["pending"])) for row in rows),
        "dead_letters": sum(int(str(row["dead_letters"])) for row in rows),
        "stranded": stranded,
        "truncated": truncated,
    }


def _cut_note(limit: int) -> str:
    return f"inbox: more than {limit} keys; the lines above cover the first {limit} (raise --limit)"


def _print_inbox_report(report: dict[str, Any], limit: int) -> None:
    print(
        f"inbox: {_plural(report['pending'], 'message', 'messages')} pending, "
        f"{_plural(report['dead_letters'], 'dead letter', 'dead letters')}, "
        f"over {_plural(report['keys'], 'key', 'keys')}"
    )
    stranded = report["stranded"]
    print(
        f"inbox stranded (pending, no live lease): {len(stranded)}"
        + "".join(f"  {row['key']} ({row['pending']})" for row in stranded)
    )
    if report["truncated"]:
        print(_cut_note(limit))


async def _status(args: argparse.Namespace) -> int:
    options = {} if args.table is None else {"table": args.table}
    async with _backend(_shared_url(args.url, "status"), **options) as lock:
        if args.inbox:
            listed = await _inbox_rows(lock, args.limit)
            if listed is None:
                print(
                    "threadlock: status --inbox needs a backend whose inbox store lists its "
                    "keys (Redis, Postgres)",
                    file=sys.stderr,
                )
                return EXIT_USAGE
            inbox, truncated = listed
            if args.json:
                print(json.dumps(inbox, indent=2))
                if truncated:  # the list stays a list: the cut is said on stderr
                    print(f"threadlock: status --inbox: {_cut_note(args.limit)}", file=sys.stderr)
            elif not inbox:
                print("no inbox messages pending or dead")
            else:
                _print_table(inbox)
                if truncated:
                    print(_cut_note(args.limit))
            return EXIT_OK
        infos = await lock.held()
    rows = _status_rows(infos, time.time())
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows)
    return EXIT_OK


async def _demo(args: argparse.Namespace) -> int:
    from threadlock.demo import run_demo

    return await run_demo(
        url=args.url,
        users=args.users,
        messages=args.messages,
        workers=args.workers,
        live=args.live,
        as_json=args.json,
    )


def _openai_client(args: argparse.Namespace) -> Any:
    """The OpenAI client for ``recover``: ``OPENAI_API_KEY``, and ``--base-url`` if given.

    The SDK's own retries are off: recovery retries 429/5xx itself, with backoff.
    """
    import openai

    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        raise ValueError("recover needs OPENAI_API_KEY in the environment")
    return openai.AsyncOpenAI(api_key=key, base_url=args.base_url, max_retries=0)


async def _check_openai(client: Any) -> None:
    """One cheap call first, so that an unreachable API or a refused key is exit 4 at once.

    Only "no answer" and 401 stop here; any other answer (a 404 from a server without
    ``/models``, a 403 from a key restricted to some endpoints) shows the API is there.
    """
    import openai

    probe = client.with_options(max_retries=0, timeout=OPENAI_CHECK_TIMEOUT)
    try:
        await probe.models.list()
    except openai.APIConnectionError as error:  # APITimeoutError included
        raise OpenAIUnreachable(
            f"could not reach the OpenAI API at {client.base_url}: {_one_line(error)}"
        ) from error
    except openai.AuthenticationError:
        raise
    except openai.APIStatusError:
        pass


class _RecoveryProgress(Observer):
    """Progress lines on stderr while ``recover`` works: retries and cancellations."""

    def recovery_retry(self, what: str, error: str, delay: float) -> None:
        _progress(f"recover: {what}: {error}, retrying in {delay:.1f} s")

    def orphan_cancelled(self, backend: str, key: str, kind: str, run_id: str) -> None:
        _progress(f"recover: cancelled {kind} {run_id} ({key})")


async def _recover(args: argparse.Namespace) -> int:
    from threadlock.openai.recovery import recover_orphaned_runs

    url = _shared_url(args.url, "recover")
    options = {} if args.table is None else {"table": args.table}
    if args.inbox:
        return await _recover_inbox(url, options, args)
    client = args.client_factory(args)
    await _check_openai(client)
    async with _backend(url, **options) as lock:
        lock.observer = combine(lock.observer, _RecoveryProgress())
        keys = {record.key for record in await lock.tracked_runs()}  # type: ignore[attr-defined]
        keys.update(args.thread_id or ())
        what = _plural(len(keys), "conversation/thread", "conversations/threads")
        _progress(f"recover: checking {what}" + (" (dry run)" if args.dry_run else ""))
        report = await recover_orphaned_runs(
            client,
            lock=lock,
            max_age=args.max_age,
            thread_ids=args.thread_id or None,
            dry_run=args.dry_run,
            concurrency=args.concurrency,
        )
        inbox = await _inbox_report(lock, args.limit)
    if args.json:
        print(json.dumps({**report.as_dict(), "inbox": inbox}, indent=2))
    else:
        verb = "would cancel" if report.dry_run else "cancelled"
        checked = len(report.checked)
        print(f"checked {_plural(checked, 'conversation/thread', 'conversations/threads')}")
        for name, ids in (
            (verb, report.cancelled),
            ("skipped (live lease)", report.skipped_live),
            ("too young", report.too_young),
            ("already ended", report.already_terminal),
        ):
            print(f"{name}: {len(ids)}" + (f"  {' '.join(ids)}" if ids else ""))
        for run_id, error in report.errors:
            print(f"error: {run_id}: {error}")
        if inbox is not None:
            _print_inbox_report(inbox, args.limit)
    return EXIT_PROBLEM if report.errors else EXIT_OK


async def _recover_inbox(url: str, options: dict[str, Any], args: argparse.Namespace) -> int:
    """``recover --inbox``: only the inbox part, without OpenAI (no key needed)."""
    async with _backend(url, **options) as lock:
        inbox = await _inbox_report(lock, args.limit)
    if inbox is None:
        print(
            "threadlock: recover --inbox needs a backend whose inbox store lists its keys "
            "(Redis, Postgres)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.json:
        print(json.dumps(inbox, indent=2))
    else:
        _print_inbox_report(inbox, args.limit)
    return EXIT_OK


async def _create_schema(args: argparse.Namespace) -> int:
    scheme = args.url.split("://", 1)[0].lower()
    if scheme not in _PG_SCHEMES:
        raise ValueError("create-schema needs a postgresql:// or postgres:// URL")
    options: dict[str, Any] = {"unlogged": args.unlogged}
    if args.table:
        options["table"] = args.table
    if args.schema:
        options["schema"] = args.schema
    async with _backend(args.url, **options) as lock:
        await lock.create_schema()  # type: ignore[attr-defined]
    print(f"schema ready ({args.table or 'threadlock_leases'})")
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threadlock",
        description="One conversation, one turn at a time: locks for OpenAI bots.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"threadlock {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="a burst of messages against a fake OpenAI, without and with the lock",
        description="Runs a burst of concurrent messages from simulated users against the "
        "in-process FakeOpenAI, first without the lock, then with it, and prints a table. "
        "Needs no server and no API key.",
    )
    demo.add_argument("--url", help="backend URL (default: the in-process memory backend)")
    demo.add_argument("--users", type=int, default=20, help="simulated users (default 20)")
    demo.add_argument("--messages", type=int, default=5, help="messages per user (default 5)")
    demo.add_argument("--workers", type=int, default=16, help="concurrent workers (default 16)")
    demo.add_argument("--json", action="store_true", help="print both passes' figures as JSON")
    demo.add_argument(
        "--live",
        action="store_true",
        help="talk to the real OpenAI API (needs OPENAI_API_KEY; costs tokens)",
    )
    demo.set_defaults(handler=_demo)

    status = sub.add_parser(
        "status",
        help="list the held locks",
        description=_fill(
            "Lists every key held in the backend, by any client: key, owner, age "
            "(seconds), ttl_left, fence, waiters and the newest tracked run id. It needs the "
            "backend your workers use (--url or THREADLOCK_URL); memory:// is refused, since "
            "from here it would see nothing."
        ),
        epilog="examples:\n  threadlock status --url redis://localhost:6379/0\n"
        "  THREADLOCK_URL=postgresql://app@db/app threadlock status --json\n"
        "  threadlock status --inbox --url postgresql://app@db/app",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("--url", help="backend URL (default: from the environment)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument(
        "--inbox",
        action="store_true",
        help="list the inbox instead: pending messages and dead letters per key",
    )
    status.add_argument(
        "--limit",
        type=_inbox_limit,
        default=INBOX_LIMIT,
        help=f"with --inbox: list at most this many keys, and say so if there are more "
        f"({INBOX_LIMIT})",
    )
    status.add_argument("--table", help="Postgres lease table (default: threadlock_leases)")
    status.set_defaults(handler=_status)

    recover = sub.add_parser(
        "recover",
        help="cancel runs a crashed worker left active (never those a live worker owns)",
        description=_fill(
            "Walks the run registry (plus --thread-id), skips every conversation whose lease "
            "is live, and cancels runs and background responses older than --max-age. Reads "
            "OPENAI_API_KEY; a first call checks that the API answers and takes the key. "
            "Progress goes to stderr. Then it reports the inbox: pending messages, dead "
            "letters, and the stranded keys (pending messages, no live lease), which a worker "
            "running inbox.serve() answers; recover itself answers and changes no message. "
            "--inbox: only that report, without OpenAI."
        ),
        epilog="examples:\n  threadlock recover --url redis://localhost:6379/0 --dry-run\n"
        "  threadlock recover --url postgresql://app@db/app --max-age 600 --json\n"
        "  threadlock recover --inbox --url redis://localhost:6379/0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    recover.add_argument("--url", help="backend URL (default: from the environment)")
    recover.add_argument(
        "--max-age", type=float, default=300.0, help="seconds; younger runs are left (300)"
    )
    recover.add_argument("--dry-run", action="store_true", help="report, change nothing")
    recover.add_argument("--json", action="store_true", help="print the report as JSON")
    recover.add_argument("--thread-id", action="append", help="also check this thread (repeatable)")
    recover.add_argument("--concurrency", type=int, default=4, help="API calls at once (4)")
    recover.add_argument("--base-url", help="an OpenAI-compatible server's base URL")
    recover.add_argument(
        "--inbox",
        action="store_true",
        help="only the inbox report (stranded keys, pending, dead letters); no OpenAI key",
    )
    recover.add_argument(
        "--limit",
        type=_inbox_limit,
        default=INBOX_LIMIT,
        help=f"the inbox report covers at most this many keys, and says so if there are "
        f"more ({INBOX_LIMIT})",
    )
    recover.add_argument("--table", help="Postgres lease table (default: threadlock_leases)")
    recover.set_defaults(handler=_recover, client_factory=_openai_client)

    schema = sub.add_parser(
        "create-schema",
        help="create or upgrade the Postgres tables (idempotent)",
        description="Creates the lease, waiter and registry tables and functions; safe to "
        "run from several processes at once.",
    )
    schema.add_argument("--url", required=True, help="postgresql:// URL")
    schema.add_argument("--table", help="lease table name (default threadlock_leases)")
    schema.add_argument("--schema", help="Postgres schema (default: the search_path's)")
    schema.add_argument(
        "--unlogged", action="store_true", help="UNLOGGED tables: faster, not crash-safe"
    )
    schema.set_defaults(handler=_create_schema)
    return parser


_EXAMPLES = """\
examples:
  threadlock demo                                  # no server, no API key
  threadlock status --url redis://localhost:6379/0
  threadlock recover --url "$THREADLOCK_URL" --dry-run
  threadlock create-schema --url postgresql://app@db/app

exit codes: 0 ok, 1 a problem found, 2 bad usage, 3 backend unreachable,
4 OpenAI unreachable or the key refused
"""


def main(
    argv: Sequence[str] | None = None,
    *,
    openai_client: Callable[[argparse.Namespace], Any] | None = None,
) -> int:
    """Run the command line; returns the exit code.

    ``openai_client`` replaces how ``recover`` builds its OpenAI client (for tests, e.g.
    ``lambda args: FakeOpenAI().client()``).
    """
    import openai

    args = _parser().parse_args(argv)
    if openai_client is not None:
        args.client_factory = openai_client
    try:
        with _quiet_driver_logs():
            code: int = anyio.run(args.handler, args)
    except OpenAIUnreachable as error:
        print(f"threadlock: OpenAI error: {_one_line(error)}", file=sys.stderr)
        return EXIT_OPENAI
    except BackendError as error:
        print(f"threadlock: backend error: {_one_line(error)}", file=sys.stderr)
        return EXIT_BACKEND
    except (ValueError, TypeError) as error:
        print(f"threadlock: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except openai.APIError as error:
        print(f"threadlock: OpenAI error: {_one_line(error)}", file=sys.stderr)
        return EXIT_OPENAI
    except KeyboardInterrupt:
        return 130
    return code


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
