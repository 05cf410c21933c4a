"""The OpenAI guards and recovery, measured against FakeOpenAI on the memory backend.

    python -m benchmarks.guards            # full run, writes benchmarks/results/guards.{json,md}
    python -m benchmarks.guards --quick    # a smoke run (no file written)

It reports four things:

* API calls per guarded turn, from FakeOpenAI's counters: a conversation turn must cost no call
  beyond the user's own when nothing is tracked; an Assistants turn at most one extra call
  (``runs.list(limit=1)``) plus polling.
* The guard's own time per turn: a guarded turn minus a bare turn, both against a fake whose
  responses take no time, so what is left is the lock, the registry and the guard's Python.
  Bare and guarded turns alternate, each on a conversation of its own, so that the machine's
  load and the fake's growing conversations fall on both alike.
* The same two for a streamed conversation turn (``turn.stream(...)`` read to its end, against
  a bare ``client.responses.stream(...)``).
* The Agents SDK (``turn.run_agent``, needs the ``agents`` extra; skipped without it): API
  calls per turn beyond the bare ``Runner.run``'s, the guard's time per turn, and a burst of 5
  messages 0.1 s apart on one conversation (1 s per response): the bare SDK's failures and time
  to the last reply against the guarded run's.
* ``recover_orphaned_runs`` over many registered threads at several ``concurrency`` values,
  with a fixed per-request latency, against the lower bound calls x latency / concurrency.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from benchmarks.report import machine_info
from threadlock import MemoryThreadLock
from threadlock.openai import guard_conversation, guard_thread, recover_orphaned_runs
from threadlock.protocol import RunRecord
from threadlock.testing import FakeOpenAI

RESULTS = Path(__file__).resolve().parent / "results"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _timed(turns: int, one: Callable[[int], Awaitable[Any]]) -> list[float]:
    for index in range(min(20, turns)):  # warm-up
        await one(index)
    out = []
    for index in range(turns):
        started = time.perf_counter()
        await one(index)
        out.append(time.perf_counter() - started)
    return out


async def _timed_interleaved(
    turns: int, *ones: Callable[[int], Awaitable[Any]]
) -> list[list[float]]:
    """Time each of ``ones`` once per iteration, in alternating order: the shared machine's load
    and any state that grows with the turns fall on all of them alike (timing ``bare`` then
    ``guarded`` one after the other made the second pay for a longer conversation: FakeOpenAI
    scans a conversation's responses at every create)."""
    for index in range(min(20, turns)):  # warm-up
        for one in ones:
            await one(index)
    out: list[list[float]] = [[] for _ in ones]
    for index in range(turns):
        order = range(len(ones)) if index % 2 == 0 else range(len(ones) - 1, -1, -1)
        for k in order:
            started = time.perf_counter()
            await ones[k](index)
            out[k].append(time.perf_counter() - started)
    return out


async def calls_per_turn(turns: int) -> dict[str, Any]:
    fake = FakeOpenAI(response_duration=0, run_duration=0.02, poll_after_ms=10)
    client = fake.client()
    lock = MemoryThreadLock()
    conversation = fake.add_conversation()
    fake.reset_counters()
    for index in range(turns):
        async with guard_conversation(client, conversation, lock=lock) as turn:
            await turn.create(model="m", input=f"t{index}")
    conversation_calls = fake.requests / turns

    thread = fake.add_thread()
    fake.reset_counters()
    for index in range(turns):
        async with guard_thread(client, thread, lock=lock) as tturn:
            await tturn.add_message(f"t{index}")
            await tturn.create_and_poll(assistant_id="asst_1")
    per_turn = {name: count / turns for name, count in sorted(fake.calls.items())}
    extra = per_turn.get("GET /threads/{thread_id}/runs", 0.0)
    polls = per_turn.get("GET /threads/{thread_id}/runs/{run_id}", 0.0)
    return {
        "turns": turns,
        "conversation_calls_per_turn": conversation_calls,
        "conversation_extra_calls_per_turn": conversation_calls - 1,
        "thread_calls_per_turn": per_turn,
        "thread_extra_calls_per_turn": extra,
        "thread_polls_per_turn": polls,
    }


async def guard_overhead(turns: int) -> dict[str, Any]:
    fake = FakeOpenAI(response_duration=0)
    client = fake.client()
    lock = MemoryThreadLock()
    # One conversation each, growing alike (see _timed_interleaved).
    bare_conversation, guarded_conversation = fake.add_conversation(), fake.add_conversation()
    empty_conversation = fake.add_conversation()

    async def bare(index: int) -> None:
        await client.responses.create(model="m", conversation=bare_conversation, input=f"b{index}")

    async def guarded(index: int) -> None:
        async with guard_conversation(client, guarded_conversation, lock=lock) as turn:
            await turn.create(model="m", input=f"g{index}")

    async def enter_exit(index: int) -> None:
        async with guard_conversation(client, empty_conversation, lock=lock):
            pass

    bare_s, guarded_s = await _timed_interleaved(turns, bare, guarded)
    empty_s = await _timed(turns, enter_exit)
    return {
        "turns": turns,
        "bare_turn_p50_ms": _pct(bare_s, 0.5) * 1e3,
        "guarded_turn_p50_ms": _pct(guarded_s, 0.5) * 1e3,
        "overhead_p50_ms": (_pct(guarded_s, 0.5) - _pct(bare_s, 0.5)) * 1e3,
        "enter_exit_p50_ms": _pct(empty_s, 0.5) * 1e3,
        "enter_exit_p99_ms": _pct(empty_s, 0.99) * 1e3,
    }


async def streaming(turns: int) -> dict[str, Any]:
    fake = FakeOpenAI(response_duration=0)
    client = fake.client()
    lock = MemoryThreadLock()
    conversations = {"bare": fake.add_conversation(), "guarded": fake.add_conversation()}

    async def bare(index: int) -> None:
        async with client.responses.stream(
            model="m", conversation=conversations["bare"], input=f"b{index}"
        ) as stream:
            await stream.until_done()

    async def guarded(index: int) -> None:
        async with (
            guard_conversation(client, conversations["guarded"], lock=lock) as turn,
            turn.stream(model="m", input=f"g{index}") as stream,
        ):
            await stream.until_done()

    fake.reset_counters()
    for index in range(turns):
        await guarded(index)
    calls = fake.requests / turns
    # Timed on fresh conversations, growing alike (see _timed_interleaved).
    conversations = {"bare": fake.add_conversation(), "guarded": fake.add_conversation()}
    bare_s, guarded_s = await _timed_interleaved(turns, bare, guarded)
    return {
        "turns": turns,
        "calls_per_turn": calls,
        "extra_calls_per_turn": calls - 1,
        "bare_turn_p50_ms": _pct(bare_s, 0.5) * 1e3,
        "guarded_turn_p50_ms": _pct(guarded_s, 0.5) * 1e3,
        "overhead_p50_ms": (_pct(guarded_s, 0.5) - _pct(bare_s, 0.5)) * 1e3,
    }


async def agents_rows(turns: int) -> dict[str, Any] | None:
    try:
        import agents
    except ImportError:
        return None
    agents.set_tracing_disabled(True)
    fake = FakeOpenAI(response_duration=0)
    client = fake.client()
    lock = MemoryThreadLock()
    config = agents.RunConfig(
        model_provider=agents.OpenAIProvider(openai_client=client, use_responses=True)
    )
    agent = agents.Agent(name="bot", instructions="Be brief.", model="gpt-4o")
    conversations = {"bare": fake.add_conversation(), "guarded": fake.add_conversation()}

    async def bare(index: int) -> None:
        await agents.Runner.run(
            agent, f"b{index}", conversation_id=conversations["bare"], run_config=config
        )

    async def guarded(index: int) -> None:
        async with guard_conversation(client, conversations["guarded"], lock=lock) as turn:
            await turn.run_agent(agent, f"g{index}", run_config=config)

    fake.reset_counters()
    for index in range(turns):
        await bare(index)
    bare_calls = fake.requests / turns
    fake.reset_counters()
    for index in range(turns):
        await guarded(index)
    guarded_calls = fake.requests / turns
    # Timed on fresh conversations, growing alike (see _timed_interleaved).
    conversations = {"bare": fake.add_conversation(), "guarded": fake.add_conversation()}
    bare_s, guarded_s = await _timed_interleaved(turns, bare, guarded)
    return {
        "turns": turns,
        "bare_calls_per_turn": bare_calls,
        "guarded_calls_per_turn": guarded_calls,
        "extra_calls_per_turn": guarded_calls - bare_calls,
        "bare_turn_p50_ms": _pct(bare_s, 0.5) * 1e3,
        "guarded_turn_p50_ms": _pct(guarded_s, 0.5) * 1e3,
        "overhead_p50_ms": (_pct(guarded_s, 0.5) - _pct(bare_s, 0.5)) * 1e3,
        "burst": [await agents_burst("bare"), await agents_burst("guarded")],
    }


async def agents_burst(mode: str, messages: int = 5) -> dict[str, Any]:
    import agents

    fake = FakeOpenAI(response_duration=1.0)
    client = fake.client()
    lock = MemoryThreadLock()
    config = agents.RunConfig(
        model_provider=agents.OpenAIProvider(openai_client=client, use_responses=True)
    )
    agent = agents.Agent(name="bot", instructions="Be brief.", model="gpt-4o")
    conversation = fake.add_conversation()
    failures = 0
    last = 0.0
    started = time.perf_counter()

    async def one(index: int) -> None:
        nonlocal failures, last
        await anyio.sleep(index * 0.1)
        try:
            if mode == "bare":
                await agents.Runner.run(
                    agent, f"m{index}", conversation_id=conversation, run_config=config
                )
            else:
                async with guard_conversation(client, conversation, lock=lock) as turn:
                    await turn.run_agent(agent, f"m{index}", run_config=config)
            last = max(last, time.perf_counter() - started)
        except Exception:
            failures += 1

    async with anyio.create_task_group() as tg:
        for index in range(messages):
            tg.start_soon(one, index)
    inputs = fake.conversation_inputs(conversation)
    return {
        "mode": mode,
        "messages": messages,
        "failures": failures,
        "last_reply_s": last,
        "in_order": inputs == sorted(inputs),
        "conversation_locked_errors": fake.concurrency_errors_by_kind["conversation_locked"],
    }


async def recovery(threads: int, latency: float, concurrencies: list[int]) -> list[dict[str, Any]]:
    rows = []
    for concurrency in concurrencies:
        fake = FakeOpenAI(cancel_duration=0, latency=latency)
        client = fake.client()
        lock = MemoryThreadLock()
        for _ in range(threads):
            thread = fake.add_thread()
            run = fake.add_run(thread, "in_progress", age=900)
            await lock.track_run(RunRecord(thread, "run", run, thread, time.time() - 900, 1, "x"))
        fake.reset_counters()
        started = time.perf_counter()
        report = await recover_orphaned_runs(client, lock=lock, concurrency=concurrency)
        wall = time.perf_counter() - started
        calls = fake.requests
        bound = calls * latency / concurrency
        rows.append(
            {
                "concurrency": concurrency,
                "threads": threads,
                "cancelled": len(report.cancelled),
                "calls": calls,
                "max_in_flight": fake.max_in_flight,
                "wall_s": wall,
                "bound_s": bound,
                "ratio": wall / bound,
                "within_1_2x": wall <= 1.2 * bound,
            }
        )
    return rows


def _markdown(doc: dict[str, Any]) -> str:
    calls = doc["calls_per_turn"]
    over = doc["guard_overhead"]
    stream = doc["streaming"]
    lines = [
        "# OpenAI guards and recovery (FakeOpenAI, memory backend)",
        "",
        f"Command: `{doc['command']}`  ",
        f"Machine: {doc['machine'].get('cpu_count')} CPUs, Python {doc['machine'].get('python')}",
        "",
        "## API calls per guarded turn",
        "",
        "| turn | calls per turn | beyond the user's own | target |",
        "| --- | ---: | ---: | --- |",
        f"| conversation (`turn.create`) | {calls['conversation_calls_per_turn']:.2f} | "
        f"{calls['conversation_extra_calls_per_turn']:.2f} | 0 — "
        f"{'PASS' if calls['conversation_extra_calls_per_turn'] == 0 else 'MISS'} |",
        f"| thread (`add_message` + `create_and_poll`) | "
        f"{sum(calls['thread_calls_per_turn'].values()):.2f} | "
        f"{calls['thread_extra_calls_per_turn']:.2f} (`runs.list(limit=1)`) + "
        f"{calls['thread_polls_per_turn']:.2f} polls | <= 1 + polling — "
        f"{'PASS' if calls['thread_extra_calls_per_turn'] <= 1 else 'MISS'} |",
        "",
        "## The guard's own time per turn",
        "",
        "| measure | ms |",
        "| --- | ---: |",
        f"| bare `responses.create` p50 | {over['bare_turn_p50_ms']:.3f} |",
        f"| guarded turn p50 | {over['guarded_turn_p50_ms']:.3f} |",
        f"| overhead p50 (guarded - bare) | {over['overhead_p50_ms']:.3f} |",
        f"| empty guard enter+exit p50 / p99 | {over['enter_exit_p50_ms']:.3f} / "
        f"{over['enter_exit_p99_ms']:.3f} |",
        "",
        f"Target: overhead p50 < 1 ms — {'PASS' if over['overhead_p50_ms'] < 1 else 'MISS'}",
        "",
        "## Streamed conversation turns (`turn.stream`, read to the end)",
        "",
        "| measure | value | target |",
        "| --- | ---: | --- |",
        f"| calls per turn | {stream['calls_per_turn']:.2f} | |",
        f"| beyond the user's own | {stream['extra_calls_per_turn']:.2f} | 0 — "
        f"{'PASS' if stream['extra_calls_per_turn'] == 0 else 'MISS'} |",
        f"| bare `responses.stream` p50 ms | {stream['bare_turn_p50_ms']:.3f} | |",
        f"| guarded streamed turn p50 ms | {stream['guarded_turn_p50_ms']:.3f} | |",
        f"| overhead p50 ms (guarded - bare) | {stream['overhead_p50_ms']:.3f} | < 1 — "
        f"{'PASS' if stream['overhead_p50_ms'] < 1 else 'MISS'} |",
        "",
        "## recover_orphaned_runs",
        "",
        f"{doc['recovery'][0]['threads']} threads, each with an orphaned run; every request "
        f"spends {doc['recovery_latency_s'] * 1000:.0f} ms in flight. Bound = calls x latency / "
        "concurrency.",
        "",
        "| concurrency | calls | max in flight | wall s | bound s | ratio | within 1.2x |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in doc["recovery"]:
        lines.append(
            f"| {row['concurrency']} | {row['calls']} | {row['max_in_flight']} | "
            f"{row['wall_s']:.2f} | {row['bound_s']:.2f} | {row['ratio']:.2f} | "
            f"{'PASS' if row['within_1_2x'] else 'MISS'} |"
        )
    ag = doc.get("agents")
    if ag is None:
        lines += ["", "## Agents SDK", "", "Skipped: the `agents` extra is not installed."]
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "## Agents SDK (`turn.run_agent`)",
        "",
        "| measure | bare `Runner.run` | guarded | target |",
        "| --- | ---: | ---: | --- |",
        f"| API calls per turn | {ag['bare_calls_per_turn']:.2f} | "
        f"{ag['guarded_calls_per_turn']:.2f} | 0 extra — "
        f"{'PASS' if ag['extra_calls_per_turn'] == 0 else 'MISS'} |",
        f"| turn p50 ms | {ag['bare_turn_p50_ms']:.3f} | {ag['guarded_turn_p50_ms']:.3f} | "
        f"overhead {ag['overhead_p50_ms']:.3f} ms < 1 ms — "
        f"{'PASS' if ag['overhead_p50_ms'] < 1 else 'MISS'} |",
        "",
        "Burst: 5 messages 0.1 s apart on one conversation, 1 s per response, one process.",
        "",
        "| run | failures | last reply s | in order | conversation_locked errors |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for row in ag["burst"]:
        lines.append(
            f"| {row['mode']} | {row['failures']} | {row['last_reply_s']:.2f} | "
            f"{row['in_order']} | {row['conversation_locked_errors']} |"
        )
    return "\n".join(lines) + "\n"


async def run(quick: bool) -> dict[str, Any]:
    turns = 30 if quick else 300
    threads = 40 if quick else 1000
    # A cancel or list takes 0.1-0.5 s against the real API; at 0.1 s the client's own CPU
    # time per call (the SDK's parsing, ~2 ms here) stays small beside the wait, as it does
    # in production, so the bound calls x latency / concurrency is the right yardstick.
    latency = 0.05 if quick else 0.1
    concurrencies = [4, 8] if quick else [8, 16, 32]
    return {
        "calls_per_turn": await calls_per_turn(turns),
        "guard_overhead": await guard_overhead(turns),
        "streaming": await streaming(turns),
        "recovery_latency_s": latency,
        "recovery": await recovery(threads, latency, concurrencies),
        "agents": await agents_rows(turns),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.guards", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts; writes nothing")
    args = parser.parse_args(argv)
    logging.getLogger("threadlock").setLevel(logging.ERROR)  # recovery logs every cancel
    doc = anyio.run(run, args.quick)
    doc["command"] = "python -m benchmarks.guards" + (" --quick" if args.quick else "")
    doc["machine"] = machine_info("asyncio")
    text = _markdown(doc)
    print(text)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "guards.json").write_text(json.dumps(doc, indent=2) + "\n")
        (RESULTS / "guards.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
