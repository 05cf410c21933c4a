"""Runs the selected scenarios on the selected adapters, interleaving rounds."""

from __future__ import annotations

import gc
import math
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import anyio

from benchmarks.adapter import Adapter
from benchmarks.scenarios import Context, Raw, Scenario, Settings

__all__ = ["Cell", "run_all"]


@dataclass
class Cell:
    """The outcome of one scenario on one adapter."""

    status: Literal["ok", "skipped", "error"]
    note: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    rounds: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        def clean(d: dict[str, float]) -> dict[str, float | None]:
            return {k: None if math.isnan(v) else v for k, v in d.items()}

        return {
            "status": self.status,
            "note": self.note,
            "metrics": clean(self.metrics),
            "rounds": [clean(r) for r in self.rounds],
        }


Results = dict[str, dict[str, Cell]]  # scenario id -> adapter name -> cell


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


async def run_all(
    adapters: Sequence[Adapter],
    scenarios: Sequence[Scenario],
    settings: Settings,
    *,
    run_id: str,
    unusable: dict[str, str] | None = None,
    progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> Results:
    """Set up every adapter, run every scenario, tear every adapter down.

    ``unusable`` maps adapters that cannot run at all (wrong event loop) to the reason; their
    cells are marked skipped.
    """
    results: Results = {sc.id: {} for sc in scenarios}
    broken: dict[str, str] = dict(unusable or {})
    ready: list[Adapter] = []
    try:
        for adapter in adapters:
            if adapter.name in broken:
                continue
            try:
                with anyio.fail_after(settings.round_timeout_s):
                    await adapter.setup()
                ready.append(adapter)
            except Exception as exc:
                broken[adapter.name] = f"setup failed: {_error(exc)}"
                progress(f"  {adapter.name}: {broken[adapter.name]}")
        for sc in scenarios:
            await _run_scenario(sc, ready, settings, run_id, results[sc.id], progress)
    finally:
        with anyio.CancelScope(shield=True):
            for adapter in ready:
                try:
                    with anyio.move_on_after(settings.round_timeout_s):
                        await adapter.teardown()
                except Exception as exc:
                    progress(f"  {adapter.name}: teardown failed: {_error(exc)}")
    for sc in scenarios:
        for name, reason in broken.items():
            results[sc.id][name] = Cell("skipped" if name in (unusable or {}) else "error", reason)
    # keep the adapters' order in every scenario
    order = [a.name for a in adapters]
    return {
        sc: dict(sorted(cells.items(), key=lambda kv: order.index(kv[0])))
        for sc, cells in results.items()
    }


async def _run_scenario(
    sc: Scenario,
    adapters: Sequence[Adapter],
    settings: Settings,
    run_id: str,
    cells: dict[str, Cell],
    progress: Callable[[str], None],
) -> None:
    progress(f"{sc.title}: {sc.describe(settings)}")
    active: list[Adapter] = []
    contexts: dict[str, Context] = {}
    for adapter in adapters:
        reason = sc.skip_reason(adapter.capabilities, settings)
        if reason is not None:
            cells[adapter.name] = Cell("skipped", reason)
            progress(f"  {adapter.name}: skipped ({reason})")
            continue
        contexts[adapter.name] = Context(f"bench:{run_id}:{adapter.name}", settings)
        active.append(adapter)

    raws: dict[str, list[Raw]] = {a.name: [] for a in active}
    failed: dict[str, str] = {}

    async def attempt(adapter: Adapter, step: Callable[[], Awaitable[Raw | None]]) -> Raw | None:
        gc.collect()
        try:
            with anyio.fail_after(settings.round_timeout_s):
                return await step()
        except Exception as exc:
            failed[adapter.name] = _error(exc)
            progress(f"  {adapter.name}: error: {failed[adapter.name]}")
            return None

    for adapter in active:
        await attempt(adapter, partial(_warmup, sc, adapter, contexts[adapter.name]))

    for index in range(sc.rounds(settings)):
        rotation = index % len(active) if active else 0
        for adapter in active[rotation:] + active[:rotation]:
            if adapter.name in failed:
                continue
            step = partial(sc.run_round, adapter, contexts[adapter.name], index)
            raw = await attempt(adapter, step)
            if raw is not None:
                raws[adapter.name].append(raw)

    for adapter in active:
        if adapter.name in failed:
            cells[adapter.name] = Cell("error", failed[adapter.name])
            continue
        rounds = raws[adapter.name]
        cell = Cell(
            "ok", metrics=sc.aggregate(rounds), rounds=[sc.round_summary(r) for r in rounds]
        )
        cells[adapter.name] = cell
        shown = ", ".join(
            f"{header}={cell.metrics.get(metric, math.nan):.4g}" for metric, header in sc.columns
        )
        progress(f"  {adapter.name}: {shown}")


async def _warmup(sc: Scenario, adapter: Adapter, ctx: Context) -> None:
    await sc.warmup(adapter, ctx)
