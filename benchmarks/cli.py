"""Command line: ``python -m benchmarks --adapters memory,asyncio-lock``."""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

from benchmarks.adapter import Adapter, AdapterConfig, import_errors, registry
from benchmarks.report import build_document, machine_info, markdown
from benchmarks.runner import run_all
from benchmarks.scenarios import SCENARIOS, Settings
from benchmarks.targets import evaluate, targets

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_ADAPTERS = "memory,asyncio-lock"


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"{flag} takes name=value, got {item!r}")
        out[name.strip()] = value
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="threadlock benchmarks: scenarios S1-S4 on every selected adapter.",
    )
    p.add_argument(
        "--adapters",
        default=DEFAULT_ADAPTERS,
        help=f"comma-separated adapter names (default {DEFAULT_ADAPTERS}); see --list",
    )
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, e.g. S1,S3")
    p.add_argument("--quick", action="store_true", help="tiny counts: a smoke run, not figures")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a setting (see the settings line of the output), e.g. s1_pairs=2000",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="K=V",
        help="adapter option, passed to every adapter factory",
    )
    p.add_argument("--redis-url", help="same as --option redis_url=URL")
    p.add_argument("--pg-dsn", help="same as --option pg_dsn=DSN")
    p.add_argument("--loop", choices=["asyncio", "trio"], default="asyncio")
    p.add_argument(
        "--name", help="results file stem (default: the first adapter, the one under test)"
    )
    p.add_argument("--out", type=Path, default=RESULTS, help=f"results directory ({RESULTS})")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--list", action="store_true", help="list adapters and targets, then exit")
    return p


def _list() -> int:
    print("adapters:")
    for name, reg in registry().items():
        print(f"  {name:20} {reg.description}  [{reg.module}]")
    for module, error in import_errors().items():
        print(f"  (not loaded: {module}: {error})")
    print("targets:")
    for target in targets():
        print(f"  {target.label()}")
    print("settings (default):")
    for key, value in vars(Settings()).items():
        print(f"  {key} = {value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(args_list)
    if args.list:
        return _list()

    known = registry()
    names = [n.strip() for n in args.adapters.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        loaded = ", ".join(known) or "none"
        failed = "".join(f"\n  not loaded: {m}: {e}" for m, e in import_errors().items())
        raise SystemExit(f"unknown adapter(s) {unknown}; registered: {loaded}{failed}")
    if len(set(names)) != len(names):
        raise SystemExit("an adapter is named twice in --adapters")
    ids = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    if bad := [s for s in ids if s not in SCENARIOS]:
        raise SystemExit(f"unknown scenario(s) {bad}; known: {', '.join(SCENARIOS)}")
    scenarios = [SCENARIOS[s] for s in ids]

    settings = Settings.quick() if args.quick else Settings()
    try:
        settings = settings.override(_pairs(args.set, "--set"))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    options = _pairs(args.option, "--option")
    if args.redis_url:
        options["redis_url"] = args.redis_url
    if args.pg_dsn:
        options["pg_dsn"] = args.pg_dsn
    run_id = secrets.token_hex(4)
    config = AdapterConfig(options=options, loop=args.loop, run_id=run_id)
    adapters: list[Adapter] = [known[n].factory(config) for n in names]
    for name, adapter in zip(names, adapters, strict=True):
        if adapter.name != name:
            raise SystemExit(f"adapter registered as {name!r} calls itself {adapter.name!r}")
    unusable = {
        a.name: f"does not run on {args.loop}"
        for a in adapters
        if args.loop not in a.capabilities.loops
    }
    name = args.name or re.sub(r"[^A-Za-z0-9_.-]+", "_", names[0])
    if args.quick and not args.name:
        name += "-quick"

    machine = machine_info(args.loop)
    print(f"settings: {vars(settings)}", file=sys.stderr)
    started = time.perf_counter()
    results = anyio.run(
        lambda: run_all(adapters, scenarios, settings, run_id=run_id, unusable=unusable),
        backend=args.loop,
    )
    elapsed = time.perf_counter() - started

    metrics = {
        sc: {a: cell.metrics for a, cell in cells.items() if cell.status == "ok"}
        for sc, cells in results.items()
    }
    outcomes = evaluate(metrics, set(names))
    doc = build_document(
        name=name,
        argv=args_list,
        machine=machine,
        settings=settings,
        adapters=adapters,
        descriptions={n: known[n].description for n in names},
        scenarios=scenarios,
        results=results,
        outcomes=outcomes,
        elapsed_s=elapsed,
    )
    text = markdown(doc, scenarios)
    print(text)
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        json_path = args.out / f"{name}.json"
        md_path = args.out / f"{name}.md"
        json_path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        md_path.write_text(text + "\n", encoding="utf-8")
        print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    if outcomes:
        print("targets:", file=sys.stderr)
        for o in outcomes:
            ratio = "" if o.ratio is None else f" ({o.ratio:.3g}x)"
            print(f"{o.status}: {o.target.label()}{ratio} {o.reason}".rstrip(), file=sys.stderr)
    errors = [c for cells in results.values() for c in cells.values() if c.status == "error"]
    if errors:
        return 2
    if args.strict and any(o.status == "MISS" for o in outcomes):
        return 1
    return 0
