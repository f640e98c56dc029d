"""Where the time of one `spotctl cost --json` process goes, phase by phase, on SQLite and on
PostgreSQL: the steps the command takes (bench/cost_scale.py's ledgers), each timed inside a
fresh process, medians over the rounds.

    .venv/bin/python bench/ledger_scale.py --rounds 1     # builds bench/out/ledger-90d.db once
    .venv/bin/python bench/cost_phases.py --rounds 5 [--pg-url postgresql://...]

Phases: the CLI's imports (typer, the command table), the config module's (pydantic and the
config models), the cost path's (accounting, ledger queries), reading the config, the database driver's import
(psycopg and its pool; nothing on SQLite), opening the ledger (connection, schema check), the
window's read (one snapshot), spend, the report with the economics and the summary, the JSON
(built and encoded as `cost --json` prints it); "start and exit" is the process's wall time
outside these (the interpreter and site, exit). "of which GC" is the cyclic
collector's time inside the phases (gc.callbacks), the collector paused as `cost` pauses it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cost_scale import END_MS, OUT, bench_env, write_config

PHASES = ("cli imports", "config imports", "cost imports", "config", "driver import",
          "open ledger", "read", "spend", "report", "json")


def child(config: str, window: str) -> None:
    """One `cost --window W --json`, its steps timed; prints the phases as JSON on stderr."""
    import gc

    gc_ms = [0.0]
    started = [0.0]

    def meter(phase: str, _info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            gc_ms[0] += (time.perf_counter() - started[0]) * 1000

    gc.callbacks.append(meter)
    marks = [time.perf_counter()]

    def mark() -> None:
        marks.append(time.perf_counter())

    import spotctl.cli.main
    mark()
    import spotctl.config  # pydantic and the config models
    mark()
    import spotctl.cli.cost  # noqa: F401
    from spotctl.accounting.window import parse_window
    from spotctl.cli.common import emit_json
    from spotctl.cli.cost import collector_paused, freeze_at_exit
    from spotctl.config import load_config
    from spotctl.services import cost as services
    mark()
    cfg = load_config(config)
    mark()
    freeze_at_exit()  # as the command does
    with collector_paused():
        if cfg.ledger.url:
            import psycopg_pool  # noqa: F401
        mark()
        from spotctl.ledger.db import Ledger

        start = END_MS - int(parse_window(window).total_seconds() * 1000)
        with Ledger(cfg.ledger_target, readonly=True) as ledger:
            mark()
            data = services.read_window(ledger, cfg, start, END_MS, 3_600_000)
            mark()
        spend = services.spend_of(data, cfg)
        mark()
        from spotctl.accounting.compare import fully_loaded
        from spotctl.accounting.report import build_report

        report = build_report(data, spend, cfg, min_tokens=1000)
        services.add_spot_economics(report, cfg)
        report.extras["fully_loaded"] = fully_loaded(
            report.total.spend_micros, services.fixed_costs(cfg), END_MS - start)
        report.compare = services.add_summary(report, cfg)
        mark()
        emit_json(report.to_json())
        mark()
    took = {p: (b - a) * 1000 for p, a, b in zip(PHASES, marks[:-1], marks[1:], strict=True)}
    took["of which GC"] = gc_ms[0]
    print(json.dumps(took), file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sqlite", default=str(OUT / "ledger-90d.db"))
    ap.add_argument("--pg-url", help="also a PostgreSQL ledger (PGPASSFILE for its password)")
    ap.add_argument("--windows", default="24h,30d")
    ap.add_argument("--child", nargs=2, metavar=("CONFIG", "WINDOW"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    if not Path(args.sqlite).exists():
        raise SystemExit("build it first: .venv/bin/python bench/ledger_scale.py --rounds 1")
    OUT.mkdir(exist_ok=True)
    ledgers = {"SQLite": write_config(OUT / "phases-sqlite.toml", args.sqlite)}
    if args.pg_url:
        ledgers["PostgreSQL"] = write_config(OUT / "phases-pg.toml", args.pg_url)
    windows = args.windows.split(",")
    env = bench_env()
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in range(args.rounds + 1):  # round 0 warms caches
        for window in windows:
            for backend, cfg in ledgers.items():
                t0 = time.perf_counter()
                p = subprocess.run([sys.executable, __file__, "--child", str(cfg), window],
                                   capture_output=True, text=True, env=env, check=False)
                wall = (time.perf_counter() - t0) * 1000
                if p.returncode:
                    raise SystemExit(p.stderr[-500:])
                took = json.loads(p.stderr.strip().splitlines()[-1])
                took["start and exit"] = wall - sum(took[k] for k in PHASES)
                took["whole process"] = wall
                if r:
                    runs.setdefault((backend, window), []).append(took)
    cols = list(runs)
    print(f"{args.rounds} rounds, medians in ms\n| phase | "
          + " | ".join(f"{b} {w}" for b, w in cols) + " |\n|---|" + "---|" * len(cols))
    for phase in ("start and exit", *PHASES, "of which GC", "whole process"):
        cells = [f"{statistics.median(t[phase] for t in runs[c]):.0f}" for c in cols]
        print(f"| {phase} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
