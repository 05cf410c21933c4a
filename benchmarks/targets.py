"""Goals, declared as data and checked after a run.

A :class:`Target` says "metric M of adapter A in scenario S must be OP X", where X is either an
absolute number (in the metric's unit) or a factor of another measured value (:class:`Ref`):

    register_targets(
        Target("memory", "S1", "pairs_per_s", ">=", 0.2, ref=Ref("asyncio-lock")),
        Target("memory", "S2", "handoff_p99_us", "<", 100.0),
        Target("redis", "S2", "handoff_p50_us", "<=", 2.0,
               ref=Ref("redis-ping", scenario="S1", metric="pair_p50_us")),
    )

Declare a backend's targets next to its adapters (in its ``adapters_*.py`` module). A target
is checked only when its adapter ran; it is ``SKIP`` when its reference did not.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Outcome", "Ref", "Target", "evaluate", "register_targets", "targets"]

Op = Literal["<", "<=", ">", ">="]
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class Ref:
    """A measured value to scale a threshold by; scenario and metric default to the target's."""

    adapter: str
    scenario: str | None = None
    metric: str | None = None


@dataclass(frozen=True)
class Target:
    adapter: str
    scenario: str
    metric: str
    op: Op
    threshold: float
    ref: Ref | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"op must be one of {sorted(_OPS)}, got {self.op!r}")

    def label(self) -> str:
        bound = f"{self.threshold:g}"
        if self.ref is not None:
            where = self.ref.adapter
            if self.ref.scenario is not None and self.ref.scenario != self.scenario:
                where += f" {self.ref.scenario}"
            if self.ref.metric is not None and self.ref.metric != self.metric:
                where += f" {self.ref.metric}"
            bound = f"{bound}x {where}"
        return f"{self.adapter} {self.scenario} {self.metric} {self.op} {bound}"


@dataclass(frozen=True)
class Outcome:
    target: Target
    status: Literal["PASS", "MISS", "SKIP"]
    measured: float | None = None
    bound: float | None = None
    reference: float | None = None
    ratio: float | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target.label(),
            "adapter": self.target.adapter,
            "scenario": self.target.scenario,
            "metric": self.target.metric,
            "op": self.target.op,
            "threshold": self.target.threshold,
            "ref": None if self.target.ref is None else vars(self.target.ref),
            "status": self.status,
            "measured": self.measured,
            "bound": self.bound,
            "reference": self.reference,
            "ratio": self.ratio,
            "reason": self.reason,
        }


_TARGETS: list[Target] = []


def register_targets(*new: Target) -> None:
    """Add targets to the table (call at import time of an ``adapters_*`` module)."""
    _TARGETS.extend(new)


def targets() -> list[Target]:
    return list(_TARGETS)


Metrics = Mapping[str, Mapping[str, Mapping[str, float]]]  # scenario -> adapter -> metrics


def _lookup(metrics: Metrics, scenario: str, adapter: str, metric: str) -> float | None:
    value = metrics.get(scenario, {}).get(adapter, {}).get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def evaluate(metrics: Metrics, adapters: set[str]) -> list[Outcome]:
    """Check every registered target whose adapter is in ``adapters``."""
    outcomes = []
    for target in _TARGETS:
        if target.adapter not in adapters:
            continue
        measured = _lookup(metrics, target.scenario, target.adapter, target.metric)
        if measured is None:
            reason = f"{target.adapter} has no {target.scenario} {target.metric}"
            outcomes.append(Outcome(target, "SKIP", reason=reason))
            continue
        reference = None
        if target.ref is not None:
            ref = target.ref
            scenario = ref.scenario or target.scenario
            metric = ref.metric or target.metric
            reference = _lookup(metrics, scenario, ref.adapter, metric)
            if reference is None:
                reason = f"reference {ref.adapter} {scenario} {metric} not measured in this run"
                outcomes.append(Outcome(target, "SKIP", measured=measured, reason=reason))
                continue
            bound = target.threshold * reference
            ratio = measured / reference if reference else None
        else:
            bound = target.threshold
            ratio = measured / bound if bound else None
        ok = _OPS[target.op](measured, bound)
        outcomes.append(
            Outcome(
                target,
                "PASS" if ok else "MISS",
                measured=measured,
                bound=bound,
                reference=reference,
                ratio=ratio,
            )
        )
    return outcomes
