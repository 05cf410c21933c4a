"""The documentation's figures, drawn from the saved results: ``python -m benchmarks.figures``.

Reads ``benchmarks/results/{memory,redis,postgres}.json`` (written by ``python -m benchmarks``),
``benchmarks/results/cluster.json`` (``python -m benchmarks.cluster_scale``),
``benchmarks/results/inbox.json`` (``python -m benchmarks.inbox``) and
``benchmarks/results/demo.json`` (the output of ``threadlock demo --json``), and writes one
SVG per figure into ``docs/assets/``. The SVG is written by hand (no plotting library), and the
same JSON always gives the same bytes, so ``tests/test_figures.py`` can check that the
committed figures are the ones the committed results give.

* ``python -m benchmarks.figures``: redraw every figure;
* ``python -m benchmarks.figures --check``: redraw in memory and exit 1 if a committed figure
  differs (or is missing);
* ``python -m benchmarks.figures --run-demo``: run ``threadlock demo --json`` first (its
  default settings, FakeOpenAI, the memory backend) and save its output as ``demo.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ASSETS = ROOT / "docs" / "assets"

# Colours: threadlock in the theme's indigo, everything else in greys; "without" in red.
OURS = "#3f51b5"
OURS_LIGHT = "#9fa8da"
PEER = "#757575"
PEER_LIGHT = "#cfcfcf"
BAD = "#c62828"
INK = "#212121"
MUTED = "#616161"
GRID = "#e0e0e0"
FONT = "font-family=\"-apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif\""


def _num(value: float) -> str:
    """A coordinate: two decimals at most, no trailing zeros, so the output is stable."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _tick_us(value: float) -> str:
    """A tick of a log axis in microseconds: 0.1 µs, 1 µs, ..., 1 ms, 10 ms."""
    return f"{value / 1000:g} ms" if value >= 1000 else f"{value:g} µs"


def _fmt_us(value: float) -> str:
    """A latency in microseconds, in the unit a reader expects."""
    if value >= 1000:
        ms = value / 1000
        return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"
    if value >= 10:
        return f"{value:.0f} µs"
    return f"{value:.1f} µs"


class Svg:
    """A minimal SVG writer: rectangles, lines and text, with a white background."""

    def __init__(self, width: int, height: int, title: str) -> None:
        self.width = width
        self.height = height
        self.parts: list[str] = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" {FONT} font-size="13">',
            f"<title>{escape(title)}</title>",
            f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        ]

    def rect(self, x: float, y: float, w: float, h: float, fill: str) -> None:
        self.parts.append(
            f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(max(w, 0.0))}" '
            f'height="{_num(h)}" fill="{fill}"/>'
        )

    def line(self, x1: float, y1: float, x2: float, y2: float, stroke: str = GRID) -> None:
        self.parts.append(
            f'<line x1="{_num(x1)}" y1="{_num(y1)}" x2="{_num(x2)}" y2="{_num(y2)}" '
            f'stroke="{stroke}" stroke-width="1"/>'
        )

    def text(
        self,
        x: float,
        y: float,
        content: str,
        *,
        anchor: str = "start",
        size: int = 13,
        fill: str = INK,
        bold: bool = False,
    ) -> None:
        weight = ' font-weight="bold"' if bold else ""
        self.parts.append(
            f'<text x="{_num(x)}" y="{_num(y)}" text-anchor="{anchor}" font-size="{size}" '
            f'fill="{fill}"{weight}>{escape(content)}</text>'
        )

    def legend(self, x: float, y: float, items: Sequence[tuple[str, str]]) -> None:
        for colour, label in items:
            self.rect(x, y - 10, 12, 12, colour)
            self.text(x + 17, y, label, size=14, fill=MUTED)
            x += 17 + 7.5 * len(label) + 28

    def render(self) -> str:
        return "\n".join([*self.parts, "</svg>"]) + "\n"


# --- the demo: without the lock and with it ----------------------------------------------


def demo_figure(demo: dict[str, Any]) -> str:
    """Two panels: what went wrong (counts) and how long a reply took (seconds), a bar per
    pass (without the lock, with it, and with the inbox when the demo ran that pass)."""
    passes = demo["passes"]
    colours = (BAD, OURS, OURS_LIGHT)[: len(passes)]
    total = demo["users"] * demo["messages_per_user"]
    width, height = 760, 372
    svg = Svg(width, height, "threadlock demo: without the lock, with it, and with the inbox")
    svg.text(
        20,
        28,
        f"threadlock demo: {demo['users']} users x {demo['messages_per_user']} messages "
        f"sent at once ({total} messages), {demo['workers']} workers",
        size=17,
        bold=True,
    )
    svg.legend(20, 52, [(c, str(p["label"])) for c, p in zip(colours, passes, strict=False)])

    def panel(
        left: float,
        title: str,
        groups: Sequence[tuple[str, Sequence[float]]],
        label: Callable[[float], str],
    ) -> None:
        top, bottom, panel_width = 98.0, 286.0, 340.0
        peak = max(max(values) for _, values in groups) or 1.0
        svg.text(left, top - 14, title, bold=True)
        svg.line(left, bottom, left + panel_width, bottom, MUTED)
        slot = panel_width / len(groups)
        bar = min(36.0, slot / (len(passes) + 1))
        for i, (name, values) in enumerate(groups):
            centre = left + slot * (i + 0.5)
            first = centre - (bar + 4) * len(values) / 2 + 2
            for j, (value, colour) in enumerate(zip(values, colours, strict=False)):
                x = first + (bar + 4) * j
                h = (bottom - top - 16) * value / peak
                svg.rect(x, bottom - h, bar, h, colour)
                svg.text(x + bar / 2, bottom - h - 4, label(value), anchor="middle", size=13)
            for j, word in enumerate(name.split("\n")):
                svg.text(centre, bottom + 19 + 16 * j, word, anchor="middle", size=14, fill=MUTED)

    counts = [
        ("400 errors\n(incl. retries)", [p["errors"] for p in passes]),
        ("lost\nmessages", [p["lost"] for p in passes]),
        ("out-of-order\nreplies", [p["out_of_order"] for p in passes]),
    ]
    if all("model_calls" in p for p in passes):
        counts.append(("model calls\n(all tries)", [p["model_calls"] for p in passes]))
    panel(20, f"What it cost, out of {total} messages", counts, lambda v: f"{v:.0f}")
    times = [
        ("p50 reply", [p["p50"] or 0.0 for p in passes]),
        ("p99 reply", [p["p99"] or 0.0 for p in passes]),
    ]
    if all("last_reply_p50" in p for p in passes):
        times.append(("last reply\n(p50 user)", [p["last_reply_p50"] or 0.0 for p in passes]))
    times.append(("wall time", [p["wall"] for p in passes]))
    panel(400, "Time to reply, and to answer everyone (s)", times, lambda v: f"{v:.1f}")
    where = (
        f"FakeOpenAI, {demo['response_duration'] * 1000:.0f} ms per response"
        if demo.get("openai") == "fake"
        else "the real OpenAI API"
    )
    svg.text(
        20,
        height - 26,
        f"From threadlock demo --json: {where}, {demo['backend']} backend.",
        size=13,
        fill=MUTED,
    )
    svg.text(
        20,
        height - 9,
        f"Without the lock, a refused message is retried up to {demo['retries']} times, then lost.",
        size=13,
        fill=MUTED,
    )
    return svg.render()


# --- latency plots of the benchmark results ------------------------------------------------


@dataclass(frozen=True)
class LatencyPanel:
    scenario: str
    title: str
    p50: str
    p99: str


PANELS = (
    LatencyPanel("S1", "S1: one acquire + release, no contention", "pair_p50_us", "pair_p99_us"),
    LatencyPanel(
        "S2",
        "S2: hand-off, release to the next waiter's acquire",
        "handoff_p50_us",
        "handoff_p99_us",
    ),
)


def _rows(doc: dict[str, Any], panel: LatencyPanel) -> list[tuple[str, float, float]]:
    """(adapter, p50, p99) of the locks that ran the scenario, in the run's adapter order."""
    results = doc["scenarios"].get(panel.scenario, {}).get("results", {})
    rows = []
    for name in doc["adapters"]:
        cell = results.get(name)
        if not cell or cell.get("status") != "ok":
            continue
        metrics = cell["metrics"]
        if panel.p50 in metrics and panel.p99 in metrics:
            rows.append((name, float(metrics[panel.p50]), float(metrics[panel.p99])))
    return rows


def latency_figure(doc: dict[str, Any], ours: str) -> str:
    """p50 and p99 latencies of every lock of one saved run, on a log scale."""
    panels = [(panel, _rows(doc, panel)) for panel in PANELS]
    panels = [(panel, rows) for panel, rows in panels if rows]
    values = [v for _, rows in panels for _, p50, p99 in rows for v in (p50, p99) if v > 0]
    low = 10 ** math.floor(math.log10(min(values)))
    high = 10 ** math.ceil(math.log10(max(values)))
    label_w, plot_w, row_h = 160.0, 470.0, 26.0
    left = 20 + label_w
    width = int(left + plot_w + 150)
    height = 70 + sum(54 + row_h * len(rows) for _, rows in panels) + 30
    machine = doc.get("machine", {})
    svg = Svg(width, int(height), f"latency of {ours} and its peers")
    svg.text(20, 28, f"Latency, {ours} backend and peers (log scale)", size=17, bold=True)
    svg.legend(
        20,
        52,
        [(OURS, f"{ours}: p50"), (OURS_LIGHT, "p99"), (PEER, "others: p50"), (PEER_LIGHT, "p99")],
    )

    def x_of(value: float) -> float:
        span = math.log10(high) - math.log10(low)
        return left + plot_w * (math.log10(max(value, low)) - math.log10(low)) / span

    y = 70.0
    for panel, rows in panels:
        svg.text(20, y + 18, panel.title, bold=True)
        top = y + 28
        bottom = top + row_h * len(rows)
        decade = low
        while decade <= high:
            svg.line(x_of(decade), top, x_of(decade), bottom + 4)
            svg.text(
                x_of(decade), bottom + 18, _tick_us(decade), anchor="middle", size=13, fill=MUTED
            )
            decade *= 10
        for i, (name, p50, p99) in enumerate(rows):
            row_top = top + row_h * i
            mine = name == ours
            svg.text(left - 8, row_top + 18, name, anchor="end", size=14, bold=mine)
            svg.rect(
                left, row_top + 4, x_of(p99) - left, row_h - 8, OURS_LIGHT if mine else PEER_LIGHT
            )
            svg.rect(left, row_top + 4, x_of(p50) - left, row_h - 8, OURS if mine else PEER)
            svg.text(
                x_of(p99) + 5,
                row_top + 18,
                f"{_fmt_us(p50)} / {_fmt_us(p99)}",
                size=13,
                fill=MUTED,
            )
        y = bottom + 26
    svg.text(
        20,
        height - 12,
        f"Bars: p50, lighter to p99. From benchmarks/results/{doc['name']}.json "
        f"({str(machine.get('date', ''))[:10]}, {machine.get('cpu_count', '?')} shared CPUs).",
        size=13,
        fill=MUTED,
    )
    return svg.render()


# --- the cluster-scale run -------------------------------------------------------------------


def _bars(
    svg: Svg,
    left: float,
    title: str,
    groups: Sequence[tuple[str, Sequence[float]]],
    colours: Sequence[str],
    label: Callable[[float], str],
) -> None:
    """One panel of grouped bars: a group per label, a bar per value, on a linear axis."""
    top, bottom, panel_width = 98.0, 286.0, 340.0
    peak = max((v for _, values in groups for v in values), default=0.0) or 1.0
    svg.text(left, top - 14, title, bold=True)
    svg.line(left, bottom, left + panel_width, bottom, MUTED)
    slot = panel_width / len(groups)
    bar = min(36.0, slot / (len(colours) + 1))
    for i, (name, values) in enumerate(groups):
        centre = left + slot * (i + 0.5)
        start = centre - (bar + 4) * len(values) / 2 + 2
        for j, (value, colour) in enumerate(zip(values, colours, strict=False)):
            x = start + (bar + 4) * j
            h = (bottom - top - 16) * value / peak
            svg.rect(x, bottom - h, bar, h, colour)
            svg.text(x + bar / 2, bottom - h - 4, label(value), anchor="middle", size=13)
        for k, word in enumerate(name.split("\n")):
            svg.text(centre, bottom + 19 + 16 * k, word, anchor="middle", size=14, fill=MUTED)


def _keys_label(run: dict[str, Any]) -> str:
    keys = run["keys"]
    text = f"{keys // 1_000_000}M" if keys >= 1_000_000 else f"{keys // 1000}k"
    return f"{text} keys" + ("\n(simulated)" if run["simulated"] else "")


def cluster_figure(doc: dict[str, Any]) -> str:
    """Server cost per turn by key space (3 shards), and 1 against 3 shards."""
    runs = doc["runs"]
    three = [r for r in runs if r["shards"] == 3]
    width, height = 760, 388
    svg = Svg(width, height, "threadlock on a Redis Cluster: cost per turn and shards")
    svg.text(
        20, 28, "Redis Cluster: server cost per turn, by key space and shards", size=17, bold=True
    )
    svg.legend(
        20, 52, [(OURS, "server CPU µs/turn, net of idle"), (OURS_LIGHT, "commandstats µs/turn")]
    )
    _bars(
        svg,
        20,
        "3 shards, by key space (sum of shards)",
        [(_keys_label(r), (r["net_cpu_us_per_turn"], r["cmd_us_per_turn"])) for r in three],
        (OURS, OURS_LIGHT),
        lambda v: f"{v:.0f}",
    )
    scaling = doc["summary"].get("scaling")
    if scaling:
        pair = [
            next(r for r in runs if r["shards"] == n and r["keys"] == scaling["keys"])
            for n in (1, 3)
        ]
        _bars(
            svg,
            400,
            f"{scaling['keys'] // 1000}k keys: the busiest shard",
            [
                (
                    f"{r['shards']} shard{'s' * (r['shards'] > 1)}\n"
                    f"{r['turns_per_s']:,.0f} turns/s",
                    (
                        max(r["net_cpu_us_per_turn_by_shard"]),
                        max(r["cmd_us_per_turn_by_shard"]),
                    ),
                )
                for r in pair
            ],
            (OURS, OURS_LIGHT),
            lambda v: f"{v:.0f}",
        )
    machine = doc.get("machine", {})
    loads = ", ".join(str(r["load_after"][0]) for r in runs)
    svg.text(
        20,
        height - 26,
        f"From benchmarks/results/{doc['name']}.json ({str(machine.get('date', ''))[:10]}): "
        f"clients and shards share {machine.get('cpu_count', '?')} CPUs,",
        size=13,
        fill=MUTED,
    )
    svg.text(
        20,
        height - 9,
        f"so turns/s cannot scale with shards here; 1-min load average after each run: {loads}.",
        size=13,
        fill=MUTED,
    )
    return svg.render()


# --- the inbox: a burst per user, the plain guard and each strategy ---------------------------

INBOX_MODES = ("plain", "queue", "coalesce", "debounce", "latest")


def inbox_figure(doc: dict[str, Any]) -> str:
    """Model calls per burst and last message to reply (p50), a group per strategy and a bar
    per backend."""
    s = doc["settings"]
    names = list(doc["backends"])
    colours = (OURS, OURS_LIGHT, PEER, PEER_LIGHT)[: len(names)]
    width, height = 760, 388
    svg = Svg(width, height, "threadlock inbox: model calls and time to the last reply")
    svg.text(
        20,
        28,
        f"Inbox: {s['users']} users x {s['messages']} messages within {s['span']:g} s, "
        f"a {s['turn']:g} s model turn",
        size=17,
        bold=True,
    )
    svg.legend(20, 52, list(zip(colours, names, strict=False)))

    def runs(metric: str) -> list[tuple[str, Sequence[float]]]:
        groups: list[tuple[str, Sequence[float]]] = []
        for mode in INBOX_MODES:
            values = []
            for name in names:
                row = next((r for r in doc["backends"][name]["runs"] if r["mode"] == mode), None)
                values.append(float((row or {}).get(metric) or 0.0))
            groups.append(("plain\nguard" if mode == "plain" else mode, values))
        return groups

    _bars(svg, 20, "Model calls per burst", runs("calls_per_burst"), colours, lambda v: f"{v:.1f}")
    _bars(
        svg,
        400,
        "Last message to its reply, p50 (s)",
        runs("last_reply_p50_s"),
        colours,
        lambda v: f"{v:.1f}",
    )
    machine = doc.get("machine", {})
    svg.text(
        20,
        height - 26,
        f"From benchmarks/results/inbox.json ({str(machine.get('date', ''))[:10]}, "
        f"{machine.get('cpu_count', '?')} CPUs): FakeOpenAI; {s['workers']} worker processes "
        "on Redis and Postgres;",
        size=13,
        fill=MUTED,
    )
    svg.text(
        20,
        height - 9,
        f"debounce {s['debounce']:g} s. Lost and answered-twice messages: see the table.",
        size=13,
        fill=MUTED,
    )
    return svg.render()


# --- the list of figures --------------------------------------------------------------------


def _load(name: str, results: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((results / name).read_text(encoding="utf-8"))
    return data


def figures(results: Path = RESULTS) -> dict[str, str]:
    """Every figure, by file name, drawn from the JSON in ``results``."""
    return {
        "demo.svg": demo_figure(_load("demo.json", results)),
        "latency-memory.svg": latency_figure(_load("memory.json", results), "memory"),
        "latency-redis.svg": latency_figure(_load("redis.json", results), "redis"),
        "latency-postgres.svg": latency_figure(_load("postgres.json", results), "postgres"),
        "cluster-scale.svg": cluster_figure(_load("cluster.json", results)),
        "inbox.svg": inbox_figure(_load("inbox.json", results)),
    }


def stale(drawn: dict[str, str], assets: Path = ASSETS) -> list[str]:
    """The figures whose file in ``assets`` is missing or differs from ``drawn``."""
    out = []
    for name, text in drawn.items():
        path = assets / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            out.append(name)
    return out


def run_demo_json(results: Path = RESULTS) -> Path:
    """Run ``threadlock demo --json`` with its defaults and save what it prints."""
    import anyio

    from threadlock.demo import run_demo

    printed: list[str] = []
    progress = io.StringIO()

    async def main() -> int:
        with redirect_stderr(progress):
            return await run_demo(as_json=True, out=printed.append)

    rc = anyio.run(main)
    if rc != 0:
        raise SystemExit(f"threadlock demo exited {rc}: {progress.getvalue()}")
    path = results / "demo.json"
    path.write_text("".join(printed).rstrip("\n") + "\n", encoding="utf-8")
    return path


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.figures", description=__doc__)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON is")
    parser.add_argument("--out", type=Path, default=ASSETS, help="where the SVGs go")
    parser.add_argument("--check", action="store_true", help="exit 1 if a figure is stale")
    parser.add_argument("--run-demo", action="store_true", help="re-run the demo first")
    args = parser.parse_args(None if argv is None else list(argv))
    if args.run_demo:
        print(f"saved {run_demo_json(args.results)}")
    drawn = figures(args.results)
    if args.check:
        behind = stale(drawn, args.out)
        for name in behind:
            print(f"{args.out / name} is stale: run python -m benchmarks.figures", file=sys.stderr)
        return 1 if behind else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in drawn.items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
