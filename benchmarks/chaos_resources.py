"""Memory and connection samples of a chaos run (``benchmarks.chaos``).

RSS alone misleads on Postgres: every backend process counts, in its RSS, the pages of
``shared_buffers`` it has touched, so the sum over the server's processes grows as backends
touch more of the same shared memory, and with the number of connections, without any
process leaking (and every process counts the server binary and libraries it maps). Each
sample therefore also splits RSS into its anonymous part (private heap: what a leak grows)
and its shared-memory part (``RssShmem``: on Postgres, the buffers), gives the PSS (shared
pages counted once over all processes), and counts the processes summed.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["children", "memory_kb", "resources"]

_FIELDS = {"VmRSS": "rss", "RssAnon": "anon", "RssShmem": "shmem"}


def memory_kb(pid: int) -> dict[str, int]:
    """``rss``, ``anon`` and ``shmem`` (kB, ``/proc/<pid>/status``) of one process, and its
    ``pss`` (``/proc/<pid>/smaps_rollup``: each shared page divided among the processes that
    map it, so a sum over processes counts it once); zeros if it is gone."""
    found = dict.fromkeys([*_FIELDS.values(), "pss"], 0)
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name = _FIELDS.get(line.split(":", 1)[0])
            if name is not None:
                found[name] = int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                found["pss"] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return found


def children(pids: list[int]) -> list[int]:
    """``pids`` and their direct children (Postgres: the postmaster's backends)."""
    wanted = set(pids)
    found = list(pids)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and int(fields[1]) in wanted:
            found.append(int(entry.name))
    return found


def _summed(pids: list[int]) -> dict[str, int]:
    total = {"rss": 0, "anon": 0, "shmem": 0, "pss": 0, "procs": 0}
    for pid in pids:
        sample = memory_kb(pid)
        if sample["rss"]:
            total["procs"] += 1
            for name in ("rss", "anon", "shmem", "pss"):
                total[name] += sample[name]
    return total


def resources(server: list[int], workers: list[int], connections: int) -> dict[str, int]:
    """RSS (kB, split into anonymous and shared memory) of the server processes, of the live
    workers and of this controller; how many processes each sum covers; open connections."""
    server_mem = _summed(children(server))
    workers_mem = _summed(workers)
    return {
        "server_rss_kb": server_mem["rss"],
        "server_anon_kb": server_mem["anon"],
        "server_shmem_kb": server_mem["shmem"],
        "server_pss_kb": server_mem["pss"],
        "server_procs": server_mem["procs"],
        "workers_rss_kb": workers_mem["rss"],
        "workers_anon_kb": workers_mem["anon"],
        "workers_pss_kb": workers_mem["pss"],
        "worker_procs": workers_mem["procs"],
        "controller_rss_kb": memory_kb(os.getpid())["rss"],
        "connections": connections,
    }
