"""The ``threadlock`` command line: ``demo``, ``status``.

Exit codes: 0 success; 1 the command ran and found a problem; 2 bad usage (argparse);
3 the backend could not be reached or is misconfigured (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        code: int = anyio.run(args.handler, args)
    except BackendError as error:
        print(f"threadlock: backend error: {error}", file=sys.stderr)
        return EXIT_BACKEND
    except ValueError as error:
        print(f"threadlock: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code
