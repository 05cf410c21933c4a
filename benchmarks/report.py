"""Machine information, the JSON document and the Markdown tables."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import anyio

import threadlock
from benchmarks.adapter import Adapter
from benchmarks.runner import Cell
from benchmarks.scenarios import Scenario, Settings
from benchmarks.targets import Outcome

__all__ = ["build_document", "fmt", "machine_info", "markdown", "targets_table"]

SCHEMA = 1


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},  # read only: no index refresh
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _timer_overhead_ns() -> float:
    n = 100_000
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in range(n):
        clock()
    return (clock() - t0) / n


def machine_info(loop: str) -> dict[str, Any]:
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "loadavg_start": load,
        "loop": loop,
        "anyio": getattr(anyio, "__version__", None) or _dist_version("anyio"),
        "threadlock": threadlock.__version__,
        "git_commit": commit or None,
        "git_dirty": None if status is None else bool(status),  # tracked files only
        "perf_counter_overhead_ns": round(_timer_overhead_ns(), 1),
        "perf_counter_resolution_s": time.get_clock_info("perf_counter").resolution,
    }


def _dist_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def build_document(
    *,
    name: str,
    argv: Sequence[str],
    machine: dict[str, Any],
    settings: Settings,
    adapters: Sequence[Adapter],
    descriptions: Mapping[str, str],
    scenarios: Sequence[Scenario],
    results: Mapping[str, Mapping[str, Cell]],
    outcomes: Sequence[Outcome],
    elapsed_s: float,
) -> dict[str, Any]:
    try:
        load_end: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load_end = None
    return {
        "schema": SCHEMA,
        "name": name,
        "command": " ".join(["python -m benchmarks", *argv]),
        "machine": {**machine, "loadavg_end": load_end},
        "elapsed_s": round(elapsed_s, 2),
        "settings": asdict(settings),
        "adapters": {
            a.name: {
                "description": descriptions.get(a.name, ""),
                "capabilities": a.capabilities.as_dict(),
            }
            for a in adapters
        },
        "scenarios": {
            sc.id: {
                "title": sc.title,
                "description": sc.describe(settings),
                "results": {n: cell.as_dict() for n, cell in results.get(sc.id, {}).items()},
            }
            for sc in scenarios
        },
        "targets": [o.as_dict() for o in outcomes],
    }


def fmt(metric: str, value: float | None) -> str:
    """A value formatted by its metric's unit suffix."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if metric.endswith("_pct"):
        return f"{value:.1f} %"
    if metric.endswith("_per_s"):
        return f"{value:,.0f}"
    if metric.endswith(("_us", "_ms")):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    if float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.3g}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def targets_table(outcomes: Sequence[Mapping[str, Any]]) -> list[str]:
    """Rows for :meth:`benchmarks.targets.Outcome.as_dict` records."""
    lines = [
        _row(["target", "measured", "bound", "ratio", "result"]),
        _row(["---", "---:", "---:", "---:", "---"]),
    ]
    for o in outcomes:
        metric = o["metric"]
        ratio = "n/a" if o["ratio"] is None else f"{o['ratio']:.3g}x"
        result = o["status"] if not o["reason"] else f"{o['status']} ({o['reason']})"
        lines.append(
            _row([o["target"], fmt(metric, o["measured"]), fmt(metric, o["bound"]), ratio, result])
        )
    return lines


def markdown(doc: Mapping[str, Any], scenarios: Sequence[Scenario]) -> str:
    m = doc["machine"]
    out = [
        f"# Benchmark results: {doc['name']}",
        "",
        f"`{doc['command']}`",
        "",
        f"- date: {m['date']}; git: {(m['git_commit'] or 'none')[:12]}"
        f"{' (dirty)' if m['git_dirty'] else ''}; threadlock {m['threadlock']}",
        f"- Python {m['python']} ({m['implementation']}) on {m['platform']}, "
        f"{m['cpu_count']} CPUs ({m['cpus_usable']} usable), loop: {m['loop']}, anyio {m['anyio']}",
        f"- load average at start {m['loadavg_start']}, at end {m['loadavg_end']}; "
        f"perf_counter_ns call ≈ {m['perf_counter_overhead_ns']} ns; run took {doc['elapsed_s']} s",
        "- settings: " + ", ".join(f"{k}={v}" for k, v in doc["settings"].items()),
        "",
    ]
    adapters = doc["adapters"]
    for sc in scenarios:
        section = doc["scenarios"].get(sc.id)
        if section is None:
            continue
        out += [f"## {section['title']}", "", section["description"], ""]
        out.append(_row(["adapter", *(h for _, h in sc.columns)]))
        out.append(_row(["---", *("---:" for _ in sc.columns)]))
        notes = []
        for name, cell in section["results"].items():
            if cell["status"] != "ok":
                notes.append(f"- {name}: {cell['status']}: {cell['note']}")
                continue
            fifo = adapters.get(name, {}).get("capabilities", {}).get("fifo")
            label = f"{name} (fifo)" if fifo else name
            values = [fmt(metric, cell["metrics"].get(metric)) for metric, _ in sc.columns]
            out.append(_row([label, *values]))
        out += ["", *notes] if notes else []
        out.append("")
    if doc["targets"]:
        out += ["## Targets", ""]
        out += targets_table(doc["targets"])
        out.append("")
    return "\n".join(out)
