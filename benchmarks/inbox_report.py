"""The Markdown of ``python -m benchmarks.inbox``: the table per backend and the targets."""

from __future__ import annotations

from typing import Any

__all__ = ["markdown", "targets"]


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _n(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of issue 11 with what was measured and PASS / MISS."""
    s = doc["settings"]
    bound = round(1.1 * (s["debounce"] + s["turn"]), 3)
    out: list[dict[str, Any]] = []

    def check(backend: str, what: str, measured: Any, goal: str, ok: bool) -> None:
        out.append(
            {
                "backend": backend,
                "target": what,
                "measured": measured,
                "goal": goal,
                "status": "PASS" if ok else "MISS",
            }
        )

    for name, section in doc["backends"].items():
        runs = {r["mode"]: r for r in section["runs"]}
        if "plain" in runs:
            r = runs["plain"]
            check(
                name,
                "plain: model calls per burst",
                r["calls_per_burst"],
                f"= {s['messages']}",
                r["calls_per_burst"] == s["messages"],
            )
        if "coalesce" in runs:
            r = runs["coalesce"]
            check(
                name,
                "coalesce: model calls per burst (most of any user)",
                r["calls_per_burst_max"],
                "<= 2",
                r["calls_per_burst_max"] <= 2,
            )
        if "debounce" in runs:
            r = runs["debounce"]
            check(
                name,
                "debounce: model calls per burst (most of any user)",
                r["calls_per_burst_max"],
                "= 1",
                r["calls_per_burst_max"] == 1,
            )
            p99 = r["last_reply_p99_s"]
            check(
                name,
                "debounce: last message to reply p99 (s)",
                p99,
                f"<= {bound} (1.1 x (debounce + turn))",
                p99 is not None and p99 <= bound,
            )
        lost = sum(r["lost"] for r in section["runs"])
        check(name, "messages lost, every strategy", lost, "= 0", lost == 0)
        twice = sum(r["answered_twice"] for r in section["runs"] if r["mode"] != "plain")
        check(name, "answered twice after a normal hand-off", twice, "= 0", twice == 0)
        kill = section.get("kill")
        if kill is not None and "pending" not in kill:
            check(
                name,
                "messages lost, an owner SIGKILLed mid-batch",
                kill["lost"],
                "= 0",
                kill["lost"] == 0,
            )
        race = section["race"]
        check(
            name,
            f"release-boundary race: stranded of {race['rounds']}",
            race["stranded"],
            "= 0",
            race["stranded"] == 0 and race["still_held"] == 0,
        )
    return out


def markdown(doc: dict[str, Any]) -> str:
    s, m = doc["settings"], doc["machine"]
    lines = [
        "# Benchmark results: inbox",
        "",
        f"`{doc['command']}`",
        "",
        f"- date: {m['date']}; git: {(m['git_commit'] or 'none')[:12]}"
        f"{' (dirty)' if m['git_dirty'] else ''}; threadlock {m['threadlock']}",
        f"- Python {m['python']} on {m['platform']}, {m['cpu_count']} CPUs; load average at "
        f"start {m['loadavg_start']}; run took {doc['elapsed_s']} s",
        f"- {s['users']} users x {s['messages']} messages within {s['span']:g} s; model turn "
        f"{s['turn']:g} s (FakeOpenAI); {s['workers']} workers (processes on Redis and "
        f"Postgres, tasks on memory); debounce {s['debounce']:g} s, max_wait "
        f"{s['max_wait']:g} s",
        "",
        "Model calls per burst: `POST /responses` / users (the most of any user in brackets). "
        "Last → reply: from a user's last message to the reply that answers it. Lost: never in "
        "a completed model call. Twice: in two. 400s: FakeOpenAI's concurrency errors. Redis, "
        "per message (`INFO commandstats`): server calls (script-internal ones included), "
        "scripts run, and the scripts' µs; Postgres: committed transactions per message.",
        "",
    ]
    for name, section in doc["backends"].items():
        lines += [
            f"## {name}",
            "",
            "| run | model calls / burst | last → reply p50 s | p99 s | lost | twice "
            "| 400s | backend per message |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        runs = list(section["runs"])
        kill = section.get("kill")
        if kill is not None and "pending" not in kill:
            runs.append(kill)
        for r in runs:
            label = "plain guard_conversation" if r["mode"] == "plain" else r["mode"]
            if r.get("kill"):
                label = "coalesce, owner SIGKILLed mid-batch"
            if "redis_calls_per_message" in r:
                backend = (
                    f"{r['redis_calls_per_message']:.1f} calls "
                    f"({r['redis_scripts_per_message']:.1f} scripts), "
                    f"{r['redis_us_per_message']:.0f} µs"
                )
            elif "pg_xacts_per_message" in r:
                backend = f"{r['pg_xacts_per_message']:.1f} xacts"
            else:
                backend = "n/a (in-process)"
            lines.append(
                f"| {label} | {r['calls_per_burst']:.2f} ({r['calls_per_burst_max']}) | "
                f"{_s(r['last_reply_p50_s'])} | {_s(r['last_reply_p99_s'])} | {r['lost']} | "
                f"{r['answered_twice']} | {r['concurrency_errors']} | {backend} |"
            )
        if kill is not None and "pending" in kill:
            lines += ["", f"Kill run: pending: {kill['pending']}."]
        elif kill is not None:
            lines += [
                "",
                f"Kill run: a batch of {kill['killed_batch']} message(s) was in its model call "
                f"when its worker was SIGKILLed (lease ttl {s['kill_ttl']:g} s, serve interval "
                f"{s['serve_interval']:g} s); answered again "
                f"{_s(kill['recovered_after_s'])} s after the kill. Twice counts the "
                "at-least-once redelivery of what the dead worker had answered.",
            ]
        race = section["race"]
        lines += [
            "",
            f"Release-boundary race: {race['rounds']} rounds, {race['stranded']} stranded, "
            f"{race['still_held']} keys still held; the late post was folded into the owner's "
            f"next batch {race['folded']} times and owned the key itself {race['own_turn']} "
            f"times ({race['wall_s']:.1f} s).",
            "",
        ]
    lines += [
        "## Targets",
        "",
        "| backend | target | measured | goal | result |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for t in targets(doc):
        measured = t["measured"]
        text = _n(measured, 2) if isinstance(measured, float) else str(measured)
        lines.append(f"| {t['backend']} | {t['target']} | {text} | {t['goal']} | {t['status']} |")
    return "\n".join(lines) + "\n"
