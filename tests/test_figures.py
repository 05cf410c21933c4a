"""The documentation's figures (``benchmarks/figures.py``) stay true to the saved results.

The committed SVGs in docs/assets/ must be exactly what the generator draws from the committed
JSON in benchmarks/results/, and the demo's figure must accept what ``threadlock demo --json``
prints today. No timing assertions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import anyio
from benchmarks import figures

from threadlock.demo import run_demo

ROOT = Path(__file__).resolve().parent.parent
SVG = "{http://www.w3.org/2000/svg}"


def _texts(svg: str) -> list[str]:
    return [node.text or "" for node in ET.fromstring(svg).iter(f"{SVG}text")]


def test_committed_figures_are_what_the_committed_results_give() -> None:
    drawn = figures.figures()
    assert set(drawn) == {
        "demo.svg",
        "latency-memory.svg",
        "latency-redis.svg",
        "latency-postgres.svg",
        "cluster-scale.svg",
        "inbox.svg",
    }
    assert figures.stale(drawn) == [], "run: python -m benchmarks.figures"


def test_check_mode_exits_1_on_a_stale_or_missing_figure(tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    shutil.copytree(ROOT / "docs" / "assets", assets)
    args = [sys.executable, "-m", "benchmarks.figures", "--check", "--out", str(assets)]
    ok = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    (assets / "latency-redis.svg").write_text("<svg/>", encoding="utf-8")
    (assets / "demo.svg").unlink()
    bad = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert "latency-redis.svg is stale" in bad.stderr
    assert "demo.svg is stale" in bad.stderr
    assert "latency-postgres.svg" not in bad.stderr


def test_generator_writes_every_figure_from_a_results_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.figures", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for name, text in figures.figures().items():
        assert (out / name).read_text(encoding="utf-8") == text
        ET.fromstring(text)  # well-formed SVG


def test_latency_figure_shows_every_lock_that_ran_and_skips_the_others() -> None:
    doc = json.loads((ROOT / "benchmarks/results/redis.json").read_text(encoding="utf-8"))
    texts = _texts(figures.latency_figure(doc, "redis"))
    s1 = doc["scenarios"]["S1"]["results"]
    # every adapter of the run is a row of S1; redis-ping did not run S2, so it has one row
    for name in doc["adapters"]:
        assert texts.count(name) == (
            2 if doc["scenarios"]["S2"]["results"][name]["status"] == "ok" else 1
        )
    p50 = s1["redis"]["metrics"]["pair_p50_us"]
    p99 = s1["redis"]["metrics"]["pair_p99_us"]
    assert f"{figures._fmt_us(p50)} / {figures._fmt_us(p99)}" in texts


def test_demo_figure_accepts_what_the_demo_prints_now() -> None:
    printed: list[str] = []

    async def main() -> int:
        return await run_demo(
            users=2, messages=2, workers=2, response_duration=0.01, as_json=True, out=printed.append
        )

    assert anyio.run(main) == 0
    demo = json.loads("".join(printed))
    texts = _texts(figures.demo_figure(demo))
    assert "threadlock demo: 2 users x 2 messages sent at once (4 messages), 2 workers" in texts
    assert "with threadlock" in texts
    assert "with inbox (coalesce)" in texts
    # the guarded and the inbox passes' three counts are drawn as zeros
    assert texts.count("0") >= 6
    assert "model calls" in texts


def test_cluster_figure_shows_every_run_and_the_shared_cores() -> None:
    doc = json.loads((ROOT / "benchmarks/results/cluster.json").read_text(encoding="utf-8"))
    texts = _texts(figures.cluster_figure(doc))
    three = [r for r in doc["runs"] if r["shards"] == 3]
    for run in three:  # one group per key space, with both of its costs
        assert figures._keys_label(run).split("\n")[0] in texts
        assert f"{run['cmd_us_per_turn']:.0f}" in texts
        assert f"{run['net_cpu_us_per_turn']:.0f}" in texts
    scaling = doc["summary"]["scaling"]
    assert f"{scaling['turns_per_s_1_shard']:,.0f} turns/s" in texts
    assert f"{scaling['turns_per_s_3_shards']:,.0f} turns/s" in texts
    assert any(f"share {doc['machine']['cpu_count']} CPUs" in t for t in texts)


def test_inbox_figure_shows_every_strategy_on_every_backend() -> None:
    doc = json.loads((ROOT / "benchmarks/results/inbox.json").read_text(encoding="utf-8"))
    texts = _texts(figures.inbox_figure(doc))
    for name in doc["backends"]:  # the legend
        assert name in texts
    for mode in ("queue", "coalesce", "debounce", "latest"):
        assert texts.count(mode) == 2  # one group per panel
    assert texts.count("plain") == 2
    for section in doc["backends"].values():
        for run in section["runs"]:
            assert f"{run['calls_per_burst']:.1f}" in texts
            assert f"{run['last_reply_p50_s']:.1f}" in texts
