"""Smoke tests of the benchmark harness (``benchmarks/``). No timing assertions."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {"S1", "S2", "S3", "S4"}


def test_quick_run_writes_json_and_markdown_with_every_scenario(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--adapters",
            "memory,asyncio-lock",
            "--out",
            str(tmp_path),
            "--name",
            "smoke",
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "smoke.json").read_text(encoding="utf-8"))
    assert set(doc["scenarios"]) == SCENARIOS
    for section in doc["scenarios"].values():
        for name in ("memory", "asyncio-lock"):
            cell = section["results"][name]
            assert cell["status"] == "ok", cell
            assert cell["metrics"]
    assert doc["machine"]["python"]
    assert doc["machine"]["cpu_count"]
    assert "git_commit" in doc["machine"]
    assert doc["settings"]["s2_tasks"] == 8
    checked = {(t["scenario"], t["metric"]) for t in doc["targets"]}
    assert ("S1", "pairs_per_s") in checked
    assert ("S2", "handoff_p99_us") in checked
    assert ("S3", "inversions") in checked
    assert all(t["status"] in {"PASS", "MISS"} for t in doc["targets"])
    md = (tmp_path / "smoke.md").read_text(encoding="utf-8")
    assert md.startswith("# Benchmark results: smoke")
    assert "## Targets" in md
    assert "PASS" in proc.stderr or "MISS" in proc.stderr


class _Floor:
    """A non-lock reference (like PING): S1 only."""

    name = "test-floor"

    def __init__(self) -> None:
        from benchmarks.adapter import Capabilities

        self.capabilities = Capabilities(exclusive=False)

    async def setup(self) -> None: ...

    async def teardown(self) -> None: ...

    async def acquire(self, key: str) -> str:
        return key

    async def release(self, handle: Any) -> None: ...


class _Barging:
    """A polling lock: the releaser re-acquires before any poller wakes (unfair)."""

    name = "test-barging"

    def __init__(self) -> None:
        from benchmarks.adapter import Capabilities

        self.capabilities = Capabilities(max_tasks=16)
        self.held: set[str] = set()

    async def setup(self) -> None: ...

    async def teardown(self) -> None: ...

    async def acquire(self, key: str) -> str:
        while key in self.held:
            await anyio.sleep(0.0005)
        self.held.add(key)
        return key

    async def release(self, handle: str) -> None:
        self.held.discard(handle)


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(ROOT))
    import benchmarks.adapter
    import benchmarks.runner
    import benchmarks.scenarios
    import benchmarks.targets

    return benchmarks


def test_capabilities_skip_scenarios_and_metrics_see_unfairness(bench: Any) -> None:
    from benchmarks.adapter import Adapter, AdapterConfig
    from benchmarks.adapters_memory import MemoryAdapter
    from benchmarks.runner import run_all
    from benchmarks.scenarios import SCENARIOS, Settings

    config = AdapterConfig(options={}, loop="asyncio", run_id="t")
    adapters: list[Adapter] = [MemoryAdapter(config), _Floor(), _Barging()]
    settings = Settings.quick()

    async def go() -> Any:
        return await run_all(adapters, list(SCENARIOS.values()), settings, run_id="t")

    results = anyio.run(go)
    assert results["S1"]["test-floor"].status == "ok"
    for sc in ("S2", "S3", "S4"):
        assert results[sc]["test-floor"].status == "skipped"
    assert results["S4"]["test-barging"].status == "skipped"  # 64 tasks > max_tasks
    assert "64" in results["S4"]["test-barging"].note
    assert results["S2"]["memory"].metrics["self_reacquire_pct"] == 0.0
    assert results["S2"]["test-barging"].metrics["self_reacquire_pct"] > 50.0
    assert results["S3"]["memory"].metrics["inversions"] == 0.0


def test_targets_are_data_and_skip_without_their_reference(bench: Any) -> None:
    from benchmarks.targets import Ref, Target, evaluate, register_targets, targets

    before = targets()
    register_targets(
        Target("x-lock", "S1", "pairs_per_s", ">=", 0.5, ref=Ref("x-base")),
        Target("x-lock", "S2", "handoff_p50_us", "<=", 2.0, ref=Ref("x-ping", "S1", "pair_p50_us")),
    )
    try:
        metrics = {
            "S1": {"x-lock": {"pairs_per_s": 60.0}, "x-ping": {"pair_p50_us": 10.0}},
            "S2": {"x-lock": {"handoff_p50_us": 25.0}},
        }
        outcomes = {o.target.scenario: o for o in evaluate(metrics, {"x-lock", "x-ping"})}
        assert outcomes["S1"].status == "SKIP"
        assert "x-base" in outcomes["S1"].reason
        assert outcomes["S2"].status == "MISS"
        assert outcomes["S2"].ratio == 2.5
        metrics["S1"]["x-base"] = {"pairs_per_s": 100.0}
        s1 = next(o for o in evaluate(metrics, {"x-lock"}) if o.target.scenario == "S1")
        assert s1.status == "PASS"
        assert s1.ratio == 0.6
    finally:
        import benchmarks.targets

        benchmarks.targets._TARGETS[:] = before


def test_cluster_scale_quick_run_starts_clusters_and_leaves_every_key_with_a_ttl(
    tmp_path: Path,
) -> None:
    from tests._servers.redis_server import _missing, require_redis_server

    require_redis_server()
    if shutil.which("redis-cli") is None:
        _missing("redis-cli is not on PATH; the cluster-scale run creates its cluster with it")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.cluster_scale", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "cluster.json").read_text(encoding="utf-8"))
    assert [(r["shards"], r["simulated"]) for r in doc["runs"]] == [
        (3, False),
        (3, True),
        (1, False),
    ]
    for run in doc["runs"]:
        assert run["turns"] > 0, run
        assert run["failures"] == 0, run
        assert run["populated"] == (run["hot_keys"] if run["simulated"] else run["keys"])
        assert len(run["cpu_us_per_turn_by_shard"]) == run["shards"]
        assert run["keys_scanned"] == run["keys_at_end"] > 0
        assert run["keys_without_ttl"] == 0
        assert run["redis_keys_per_held_key"] >= 1
        assert len(run["load_before"]) == len(run["load_after"]) == 3
    assert doc["summary"]["no_key_without_ttl"] is True
    assert doc["summary"]["scaling"]["keys"] == doc["runs"][2]["keys"]
    md = (tmp_path / "cluster.md").read_text(encoding="utf-8")
    assert md.startswith("# Benchmark results: cluster")
    assert "keys w/o TTL" in md


def test_postgres_adapter_quick_run_measures_every_scenario(tmp_path: Path) -> None:
    """The ``postgres`` adapter sets up on the backend as it is (it broke when the backend became
    a package: its setup read a ``_pool`` the lock no longer has)."""
    from tests._servers.postgres_server import find_bindir
    from tests.conftest import _unavailable

    if find_bindir() is None:
        _unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found")
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks", "--quick", "--adapters", "postgres"),
            *("--scenarios", "S1,S2,S3", "--out", str(tmp_path), "--name", "pg-smoke"),
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "pg-smoke.json").read_text(encoding="utf-8"))
    for scenario in ("S1", "S2", "S3"):
        cell = doc["scenarios"][scenario]["results"]["postgres"]
        assert cell["status"] == "ok", cell
        assert cell["metrics"]


def test_postgres_cost_quick_run_counts_statements_round_trips_and_wal(tmp_path: Path) -> None:
    from tests._servers.postgres_server import find_bindir
    from tests.conftest import _unavailable

    if find_bindir() is None:
        _unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found")
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.postgres_cost", "--pairs", "20", "--cycles", "3"),
            *("--rounds", "1", "--concurrency", "2", "--out", str(tmp_path)),
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "postgres-cost.json").read_text(encoding="utf-8"))["results"]
    assert set(results) == {
        "threadlock (relaxed)",
        "threadlock (durable)",
        "plain lease table (relaxed)",
        "plain lease table (durable)",
        "advisory lock (n/a)",
    }
    for label, batches in results.items():
        expected = {"pairs, one key", "pairs, fresh keys", "hand-off", "concurrent, 2 tasks"}
        if label.startswith("threadlock"):
            expected.add("hand-off, other instance")
        assert set(batches) == expected, label

    def pair(label: str) -> dict[str, float]:
        return dict(results[label]["pairs, one key"][0])

    # The peers send two statements a pair, one round trip each; an advisory lock writes no WAL.
    advisory, plain = pair("advisory lock (n/a)"), pair("plain lease table (durable)")
    assert advisory["round_trips"] == advisory["statements_top"] == 2.0
    assert advisory["stmt_wal_records"] == 0
    assert plain["round_trips"] == plain["statements_top"] == 2.0
    # threadlock: one statement per call (plus the background sweep), its work in plpgsql; a
    # durable pair makes two sequential synchronous commits, each its own WAL flush.
    for mode in ("relaxed", "durable"):
        ours = pair(f"threadlock ({mode})")
        assert ours["round_trips"] >= 2.0
        assert ours["statements_nested"] > ours["statements_top"]
        assert ours["wal_syncs"] >= 1.0
    assert pair("threadlock (durable)")["wal_syncs"] >= 2.0
    md = (tmp_path / "postgres-cost.md").read_text(encoding="utf-8")
    assert md.startswith("# Postgres cost per pair")


def test_inbox_quick_run_answers_every_message_and_kills_an_owner_on_postgres(
    tmp_path: Path,
) -> None:
    from tests._servers.postgres_server import find_bindir
    from tests._servers.redis_server import _missing

    if find_bindir() is None:
        _missing("initdb/pg_ctl are not installed; the inbox benchmark's kill run needs them")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.inbox",
            "--quick",
            "--backends",
            "memory,postgres",
            "--modes",
            "plain,coalesce",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "inbox.json").read_text(encoding="utf-8"))
    settings = doc["settings"]
    for name in ("memory", "postgres"):
        section = doc["backends"][name]
        runs = {r["mode"]: r for r in section["runs"]}
        assert set(runs) == {"plain", "coalesce"}
        assert runs["plain"]["calls_per_burst"] == settings["messages"]  # one turn a message
        for run in runs.values():
            assert run["messages"] == settings["users"] * settings["messages"]
            assert run["lost"] == 0, run
            assert run["answered_twice"] == 0, run
            assert run["concurrency_errors"] == 0, run
            assert run["bursts_with_a_reply"] == settings["users"], run
        race = section["race"]
        assert race["rounds"] == settings["race_rounds"]
        assert race["stranded"] == race["still_held"] == 0, race
    assert doc["backends"]["memory"]["kill"] is None  # no process to kill in-process
    kill = doc["backends"]["postgres"]["kill"]
    assert kill["kill"] is True, kill
    assert kill["killed_batch"] >= 1, kill
    assert kill["lost"] == 0, kill
    assert kill["bursts_with_a_reply"] == settings["users"], kill
    assert doc["backends"]["postgres"]["runs"][0]["pg_xacts_per_message"] > 0
    md = (tmp_path / "inbox.md").read_text(encoding="utf-8")
    assert md.startswith("# Benchmark results: inbox")
    assert "| postgres | messages lost, an owner SIGKILLed mid-batch | 0 | = 0 | PASS |" in md


def test_server_cost_counts_script_internal_calls_but_not_their_time_twice(bench: Any) -> None:
    from benchmarks.redis_commands import server_cost

    before = {"cmdstat_evalsha": {"calls": 10, "usec": 100}, "cmdstat_info": {"calls": 1}}
    after = {
        # two EVALSHA whose scripts ran 2 GET and 2 SET: their 12 µs are inside the 60
        "cmdstat_evalsha": {"calls": 12, "usec": 160},
        "cmdstat_get": {"calls": 2, "usec": 5},
        "cmdstat_set": {"calls": 2, "usec": 7},
        "cmdstat_info": {"calls": 3, "usec": 50},
        "cmdstat_client|setname": {"calls": 1, "usec": 3},
    }
    cost = server_cost(before, after, {"evalsha": 2}, ignore={"info", "client"})
    assert (cost.calls, cost.usec, cost.mixed) == (6, 60, ())

    # redis-py's Lock: SET NX sent by the client, GET + DEL inside its release script
    peer = {
        "set": {"calls": 1, "usec": 3},
        "evalsha": {"calls": 1, "usec": 9},
        "get": {"calls": 1, "usec": 1},
        "del": {"calls": 1, "usec": 2},
    }
    cost = server_cost({}, peer, {"set": 1, "evalsha": 1})
    assert (cost.calls, cost.usec) == (4, 12)

    # a command both sent and run by scripts: its row is shared out by calls, and flagged
    both = {"evalsha": {"calls": 1, "usec": 10}, "set": {"calls": 4, "usec": 8}}
    cost = server_cost({}, both, {"evalsha": 1, "set": 1})
    assert cost.usec == 12
    assert cost.mixed == ("set",)


def test_issue14_goals_show_peer_bound_floor_and_whether_the_floor_meets_the_bound(
    bench: Any,
) -> None:
    from benchmarks.issue14 import Goal, Val, derive, evaluate_goals

    metrics: dict[str, dict[str, dict[str, float]]] = {
        "RC": {
            "lock": {"acquire_server_calls": 4.0, "release_server_calls": 4.0, "us": 80.0},
            "peer": {"acquire_server_calls": 1.0, "release_server_calls": 3.0, "us": 20.0},
            "floor": {"acquire_server_calls": 3.0, "release_server_calls": 3.0, "us": 40.0},
        },
        "S1": {"memory": {"pair_p50_us": 15.0}, "memory-hold": {"pair_p50_us": 215.0}},
    }
    derive(metrics)
    assert metrics["RC"]["lock"]["pair_server_calls"] == 8.0
    assert metrics["G"]["memory-hold"]["hold_overhead_p50_ms"] == 0.2
    goals = [
        Goal(
            "us <= 1.5x peer",
            Val("RC", "lock", "us"),
            "<=",
            1.5,
            peer=Val("RC", "peer", "us"),
            relative=True,
            floor=Val("RC", "floor", "us"),
        ),
        Goal("calls <= 8", Val("RC", "lock", "pair_server_calls"), "<=", 8.0),
        Goal("reported", Val("RC", "lock", "us"), None, 0.0, floor=Val("RC", "floor", "us")),
        Goal("absent peer", Val("RC", "lock", "us"), "<=", 1.0, Val("RC", "x", "us"), True),
    ]
    rows = {r["goal"]: r for r in evaluate_goals(metrics, goals)}
    first = rows["us <= 1.5x peer"]
    assert (first["measured"], first["peer"], first["bound"], first["floor"]) == (80, 20, 30, 40)
    assert first["status"] == "MISS"
    assert first["floor_status"] == "MISS"  # the floor itself cannot meet the bound
    assert rows["calls <= 8"]["status"] == "PASS"
    assert rows["calls <= 8"]["floor_status"] is None
    assert rows["reported"]["status"] == "REPORT"
    assert rows["reported"]["bound"] is None
    assert rows["absent peer"]["status"] == "SKIP"
    assert "x RC us" in rows["absent peer"]["reason"]
