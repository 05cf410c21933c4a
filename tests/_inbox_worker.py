"""A separate OS process for the inbox crash tests (run as a script, never imported by pytest).

python _inbox_worker.py own URL NAMESPACE KEY TTL COUNT
    post m0 and own KEY (ttl TTL, renewed by hold()); in the first batch's body post m1 ..
    m<COUNT-1> (they fold into the next batch), print "OWNS <fence> <ids of the batch>", then
    wait for ever, mid-batch (the test SIGKILLs it).
python _inbox_worker.py stale URL NAMESPACE KEY TTL
    post m0 and own KEY; in the body print "OWNS <fence>", then block the event loop (a read
    of stdin: no renewal, no checkpoint) until the test writes a line, and end the body. Print
    "LOST" if the inbox refused to acknowledge the batch (LeaseLost), else "ACKED".

NAMESPACE is the Redis prefix, or the Postgres table (its schema already created).
"""

from __future__ import annotations

import sys

import anyio

from threadlock import Inbox, LeaseLost
from threadlock.backends import from_url


def _lock(url: str, namespace: str) -> object:
    option = "table" if url.startswith("postgres") else "prefix"
    return from_url(url, **{option: namespace})


async def own(url: str, namespace: str, key: str, ttl: float, count: int) -> None:
    async with _lock(url, namespace) as lock:  # type: ignore[attr-defined]
        inbox = Inbox(lock)
        async with inbox.turns(key, "payload m0", id="m0", ttl=ttl) as turns:
            async for batch in turns:
                for n in range(1, count):
                    async with inbox.turns(key, f"payload m{n}", id=f"m{n}", ttl=ttl) as more:
                        async for _ in more:
                            raise AssertionError("the key is owned: nothing to yield")
                ids = " ".join(m.id for m in batch.messages)
                print(f"OWNS {batch.lease.fence} {ids}", flush=True)
                await anyio.sleep_forever()


async def stale(url: str, namespace: str, key: str, ttl: float) -> None:
    async with _lock(url, namespace) as lock:  # type: ignore[attr-defined]
        inbox = Inbox(lock)
        try:
            async with inbox.turns(key, "payload m0", id="m0", ttl=ttl) as turns:
                async for batch in turns:
                    print(f"OWNS {batch.lease.fence}", flush=True)
                    sys.stdin.readline()  # blocks the whole process: a stalled owner
        except LeaseLost:
            print("LOST", flush=True)
            return
        print("ACKED", flush=True)


def main(argv: list[str]) -> None:
    mode, url, namespace, key, ttl, *rest = argv
    if mode == "own":
        anyio.run(own, url, namespace, key, float(ttl), int(rest[0]))
    elif mode == "stale":
        anyio.run(stale, url, namespace, key, float(ttl))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
