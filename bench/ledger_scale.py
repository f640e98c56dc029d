"""Ledger scale: `spotctl cost` as a whole process on a big ledger, and on one 10x smaller.

Builds (and caches under bench/out/) a ledger of DAYS days x 20 resources sampled every minute
(90 days: about 2.6 M samples) and USAGE_ROWS usage rows (20 M) with their per-minute rollup,
then times `spotctl cost --window 30d` and `--window 24h` as whole processes, alternating the
big and the small ledger in each round, and reports medians.

    .venv/bin/python bench/ledger_scale.py            # full size (builds in a few minutes once)
    .venv/bin/python bench/ledger_scale.py --quick    # 9 days, 2 M rows: a fast sanity run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cost_scale import END_MS, MIN, OUT, RESOURCES, WINDOWS, cell, cost_cmd, run_rounds, write_config
from spotctl.ledger.check import stored_schema_version
from spotctl.ledger.db import Ledger
from spotctl.ledger.queries import rebuild_catalogues
from spotctl.ledger.schema import SCHEMA_VERSION


def build(path: Path, days: int, usage_rows: int) -> None:
    if path.exists():
        if stored_schema_version(path) != SCHEMA_VERSION:  # cached by an older spotctl
            with Ledger(path) as led:  # migrate it, once
                led.conn.execute("ANALYZE")
        return
    tmp = path.with_suffix(".building")
    for p in (tmp, Path(str(tmp) + "-wal"), Path(str(tmp) + "-shm")):
        p.unlink(missing_ok=True)
    led = Ledger(tmp)
    conn = led.conn
    conn.execute("PRAGMA synchronous = OFF")
    minutes = days * 1440
    start = END_MS - minutes * MIN
    t0 = time.perf_counter()
    with led.transaction():
        # one poll row per minute (the provider answered), then 20 samples per poll
        conn.execute(
            "WITH RECURSIVE m(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM m WHERE i < ?) "
            "INSERT INTO billing_polls (id, provider, started_ms, finished_ms, outcome, "
            "resources_seen) SELECT i + 1, 'hs', ? + i * 60000 - 300, ? + i * 60000, 'ok', ? "
            "FROM m", (minutes, start, start, RESOURCES))
        for r in range(RESOURCES):
            rate = 30_000 + r * 1_000  # micro-dollars per minute
            tier = f"tier-{r % 4}" if r < 16 else None
            kind = "vm" if r < 16 else "volume"
            conn.execute(
                "WITH RECURSIVE m(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM m WHERE i < ?) "
                "INSERT INTO billing_samples (poll_id, provider, account, resource_id, "
                "resource_kind, tier, observed_ms, rate_micros_per_h, cumulative_micros, "
                "cumulative_kind, created_ms, state, spot, payload_sha256) "
                "SELECT i + 1, 'hs', 'acct', ?, ?, ?, ? + i * 60000, ?, i * ?, "
                "'resource_total', ?, 'ACTIVE', 1, 'bench' FROM m",
                (minutes, f"{kind}:{r}", kind, tier, start, rate * 60, rate, start))
        conn.execute(
            "INSERT INTO billing_series (provider, account, resource_id, resource_kind, "
            "cumulative_kind, tier, created_ms, first_ms, last_ms, last_state) SELECT provider, "
            "account, resource_id, resource_kind, cumulative_kind, tier, min(created_ms), "
            "min(observed_ms), max(observed_ms), 'ACTIVE' FROM billing_samples GROUP BY 1, 2, 3")
    t1 = time.perf_counter()
    with led.transaction():
        step = max(1, (minutes * MIN) // usage_rows)
        conn.execute(
            "WITH RECURSIVE u(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM u WHERE i < ?) "
            "INSERT INTO usage (id, started_ms, completed_ms, key_id, tier, model, "
            "prompt_tokens, completion_tokens, status, http_status, latency_ms, ttft_ms, stream, "
            "tokens_estimated) SELECT printf('r%d', i), ? + i * ? - 900, ? + i * ?, 'k', "
            "'tier-' || (i % 4), 'm', 200 + i % 700, 50 + i % 300, 'ok', 200, 900, 80, 1, 0 "
            "FROM u", (usage_rows - 1, start, step, start, step))
        conn.execute(
            "INSERT INTO usage_minutes (minute_ms, tier, requests, prompt_tokens, "
            "completion_tokens, estimated_requests) SELECT completed_ms - completed_ms % 60000, "
            "tier, count(*), sum(prompt_tokens), sum(completion_tokens), 0 FROM usage "
            "GROUP BY 1, 2")
        rebuild_catalogues(conn)  # what the writers keep in their transactions
    t2 = time.perf_counter()
    conn.execute("ANALYZE")
    led.close()
    os.replace(tmp, path)
    print(f"built {path.name}: samples {t1 - t0:.0f} s, usage {t2 - t1:.0f} s")


def ledgers(days: int, rows: int) -> dict[str, Path]:
    """The big and the 10x smaller ledger (built once, cached in bench/out/)."""
    OUT.mkdir(exist_ok=True)
    big, small = OUT / f"ledger-{days}d.db", OUT / f"ledger-{days}d-small.db"
    build(big, days, rows)
    build(small, max(1, days // 10), rows // 10)
    return {"big": big, "small": small}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    days, rows = (9, 2_000_000) if args.quick else (90, 20_000_000)
    paths = ledgers(days, rows)
    cfgs = {w: write_config(p.with_suffix(".toml"), p) for w, p in paths.items()}
    labels = {"big": f"{days} d", "small": f"{max(1, days // 10)} d"}
    cases = [("--help|-", cost_cmd(None, ["--help"]))]
    for window in WINDOWS:
        for which in ("big", "small"):
            cases.append((f"cost --window {window}|{which}",
                          cost_cmd(cfgs[which], ["cost", "--window", window, "--json"])))
    times, _ = run_rounds(cases, args.rounds)
    print("| command | ledger | median s (min) | runs |\n|---|---|---|---|")
    for name, ts in times.items():
        command, which = name.split("|")
        print(f"| `spotctl {command}` | {labels.get(which, which)} | {cell(ts)} | {len(ts)} |")


if __name__ == "__main__":
    main()
