"""The ``threadlock`` command line: ``demo``, ``status``, ``recover``, ``create-schema``.

Exit codes:

* 0: success;
* 1: the command ran and found a problem (``recover`` left errors; the demo's guarded pass was
  not clean);
* 2: bad usage (argparse, a bad URL, a missing ``OPENAI_API_KEY``);
* 3: the backend could not be reached or is misconfigured;
* 4: the OpenAI API could not be reached or refused the key.

Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from threadlock._lease import LockInfo
from threadlock.backends import from_env, from_url
from threadlock.backends.base import BaseThreadLock
from threadlock.errors import BackendError

__all__ = ["main"]

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_BACKEND = 3
EXIT_OPENAI = 4


def _backend(url: str | None) -> BaseThreadLock:
    return from_url(url) if url else from_env()


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


async def _status(args: argparse.Namespace) -> int:
    async with _backend(args.url) as lock:
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
    )


def _openai_client(args: argparse.Namespace) -> Any:
    """The OpenAI client for ``recover``: ``OPENAI_API_KEY``, and ``--base-url`` if given."""
    import openai

    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        raise ValueError("recover needs OPENAI_API_KEY in the environment")
    return openai.AsyncOpenAI(api_key=key, base_url=args.base_url)


async def _recover(args: argparse.Namespace) -> int:
    from threadlock.openai.recovery import recover_orphaned_runs

    client = args.client_factory(args)
    async with _backend(args.url) as lock:
        report = await recover_orphaned_runs(
            client,
            lock=lock,
            max_age=args.max_age,
            thread_ids=args.thread_id or None,
            dry_run=args.dry_run,
            concurrency=args.concurrency,
        )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        verb = "would cancel" if report.dry_run else "cancelled"
        print(f"checked {len(report.checked)} conversations/threads")
        for name, ids in (
            (verb, report.cancelled),
            ("skipped (live lease)", report.skipped_live),
            ("too young", report.too_young),
            ("already ended", report.already_terminal),
        ):
            print(f"{name}: {len(ids)}" + (f"  {' '.join(ids)}" if ids else ""))
        for run_id, error in report.errors:
            print(f"error: {run_id}: {error}")
    return EXIT_PROBLEM if report.errors else EXIT_OK


async def _create_schema(args: argparse.Namespace) -> int:
    scheme = args.url.split("://", 1)[0].lower()
    if scheme not in ("postgresql", "postgres"):
        raise ValueError("create-schema needs a postgresql:// or postgres:// URL")
    from threadlock.backends.postgres import PostgresThreadLock

    options: dict[str, Any] = {"unlogged": args.unlogged}
    if args.table:
        options["table"] = args.table
    if args.schema:
        options["schema"] = args.schema
    async with PostgresThreadLock.from_url(args.url, **options) as lock:
        await lock.create_schema()
    print(f"schema ready ({args.table or 'threadlock_leases'})")
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threadlock",
        description="One conversation, one turn at a time: locks for OpenAI bots.",
    )
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
    demo.add_argument(
        "--live",
        action="store_true",
        help="talk to the real OpenAI API (needs OPENAI_API_KEY; costs tokens)",
    )
    demo.set_defaults(handler=_demo)

    status = sub.add_parser("status", help="list the held locks")
    status.add_argument("--url", help="backend URL (default: from the environment)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_status)

    recover = sub.add_parser(
        "recover",
        help="cancel runs a crashed worker left active (never those a live worker owns)",
        description="Walks the run registry (plus --thread-id), skips every conversation "
        "whose lease is live, and cancels runs and background responses older than "
        "--max-age. Reads OPENAI_API_KEY.",
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
        code: int = anyio.run(args.handler, args)
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
