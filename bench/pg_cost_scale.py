"""`spotctl cost` as a whole process on a 90-day ledger on PostgreSQL (issue 14 §4), and on one
10x smaller, side by side in the same rounds with the same ledgers on SQLite (built and cached by
bench/ledger_scale.py).

The PostgreSQL ledgers have the same shape as bench/ledger_scale.py's: DAYS days x 20 resources
sampled every minute (90 days: 2,592,000 samples) and 20 M usage rows with their per-minute
rollups, generated on the server with generate_series. Each round runs, per window, the big and
the small ledger on each backend; the figures both backends print are compared.

    .venv/bin/python bench/pg_cost_scale.py --rounds 5    # full size (builds in a few minutes)
    .venv/bin/python bench/pg_cost_scale.py --quick       # 9 days, 2 M rows
    # time ledgers already built (PGPASSFILE set), without starting a server or building:
    .venv/bin/python bench/pg_cost_scale.py --big-url postgresql://... --small-url postgresql://...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cost_scale import END_MS, MIN, OUT, RESOURCES, WINDOWS, cell, cost_cmd, run_rounds, write_config
from spotctl.ledger.db import Ledger
from spotctl.ledger.queries import rebuild_catalogues


def build(url: str, days: int, usage_rows: int) -> float:
    t0 = time.perf_counter()
    minutes = days * 1440
    start = END_MS - minutes * MIN
    with Ledger(url) as led:
        raw = led.conn.raw
        raw.execute("SET statement_timeout = 0")
        raw.execute("SET synchronous_commit = off")
        with raw.transaction():
            raw.execute(
                "INSERT INTO billing_polls (id, provider, started_ms, finished_ms, outcome, "
                "resources_seen) SELECT i + 1, 'hs', %s + i * 60000 - 300, %s + i * 60000, 'ok', "
                "%s FROM generate_series(0, %s) i", (start, start, RESOURCES, minutes))
            for r in range(RESOURCES):
                rate = 30_000 + r * 1_000  # micro-dollars per minute
                tier = f"tier-{r % 4}" if r < 16 else None
                kind = "vm" if r < 16 else "volume"
                raw.execute(
                    "INSERT INTO billing_samples (poll_id, provider, account, resource_id, "
                    "resource_kind, tier, observed_ms, rate_micros_per_h, cumulative_micros, "
                    "cumulative_kind, created_ms, state, spot, payload_sha256) "
                    "SELECT i + 1, 'hs', 'acct', %s, %s, %s, %s + i * 60000, %s, i * %s, "
                    "'resource_total', %s, 'ACTIVE', 1, 'bench' FROM generate_series(0, %s) i",
                    (f"{kind}:{r}", kind, tier, start, rate * 60, rate, start, minutes))
            raw.execute(
                "INSERT INTO billing_series (provider, account, resource_id, resource_kind, "
                "cumulative_kind, tier, created_ms, first_ms, last_ms, last_state) SELECT "
                "provider, account, resource_id, min(resource_kind), min(cumulative_kind), "
                "min(tier), min(created_ms), min(observed_ms), max(observed_ms), 'ACTIVE' "
                "FROM billing_samples GROUP BY 1, 2, 3")
            raw.execute("SELECT setval(pg_get_serial_sequence('billing_polls', 'id'), %s)",
                        (minutes + 1,))
        with raw.transaction():
            step = max(1, (minutes * MIN) // usage_rows)
            raw.execute(
                "INSERT INTO usage (id, started_ms, completed_ms, key_id, tier, model, "
                "prompt_tokens, completion_tokens, status, http_status, latency_ms, ttft_ms, "
                "stream, tokens_estimated) SELECT 'r' || i, %s + i * %s - 900, %s + i * %s, 'k', "
                "'tier-' || (i %% 4), 'm', 200 + i %% 700, 50 + i %% 300, 'ok', 200, 900, 80, 1, 0 "
                "FROM generate_series(0, %s) i", (start, step, start, step, usage_rows - 1))
            raw.execute(
                "INSERT INTO usage_minutes (minute_ms, tier, requests, prompt_tokens, "
                "completion_tokens, estimated_requests) SELECT completed_ms - completed_ms % "
                "60000, tier, count(*), sum(prompt_tokens), sum(completion_tokens), 0 FROM usage "
                "GROUP BY 1, 2")
            raw.execute(
                "INSERT INTO usage_key_minutes (minute_ms, key_id, requests, prompt_tokens, "
                "completion_tokens) SELECT completed_ms - completed_ms % 60000, key_id, "
                "count(*), sum(prompt_tokens), sum(completion_tokens) FROM usage GROUP BY 1, 2")
        with led.transaction() as conn:
            rebuild_catalogues(conn)  # what the writers keep in their transactions
        raw.execute("VACUUM ANALYZE")
    return time.perf_counter() - t0


def _figures(stdout: str) -> str:
    js = json.loads(stdout)
    return f"spend {js['spend_usd']} USD, {js['output_tokens']:,} output tokens"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--big-url", help="an already built big ledger (skips the server and build)")
    ap.add_argument("--small-url", help="an already built small ledger (with --big-url)")
    ap.add_argument("--no-sqlite", action="store_true",
                    help="PostgreSQL only (default: also the SQLite ledgers, side by side)")
    args = ap.parse_args(argv)
    if bool(args.big_url) != bool(args.small_url):
        raise SystemExit("give both --big-url and --small-url, or neither")
    days, rows = (9, 2_000_000) if args.quick else (90, 20_000_000)
    sizes = {"big": (days, rows), "small": (max(1, days // 10), rows // 10)}
    OUT.mkdir(exist_ok=True)
    with ExitStack() as stack:
        urls = {"big": args.big_url, "small": args.small_url}
        if not args.big_url:
            from bench.pg_common import running_postgres

            pg = stack.enter_context(running_postgres())
            for which, (d, n) in sizes.items():
                urls[which] = pg.url(pg.create_database())
                secs = build(urls[which], d, n)
                print(f"built {which} ({d} d, {n:,} usage rows) on PostgreSQL in {secs:.0f} s",
                      flush=True)
        ledgers = {("PostgreSQL", w): write_config(OUT / f"pg-{w}.toml", u)
                   for w, u in urls.items()}
        if not args.no_sqlite:
            from bench.ledger_scale import ledgers as sqlite_ledgers

            for w, path in sqlite_ledgers(days, rows).items():
                ledgers[("SQLite", w)] = write_config(path.with_suffix(".toml"), path)
        backends = list(dict.fromkeys(b for b, _ in ledgers))
        cases = [(f"{window}|{which}|{backend}",
                  cost_cmd(ledgers[(backend, which)], ["cost", "--window", window, "--json"]))
                 for window in WINDOWS for which in sizes for backend in backends]
        times, outputs = run_rounds(cases, args.rounds)
    print(f"{args.rounds} rounds, medians (min) in seconds, whole processes\n"
          f"| command | ledger | {' | '.join(backends)} |\n|---|---|{'---|' * len(backends)}")
    for window in WINDOWS:
        for which, (d, n) in sizes.items():
            label = f"{d} d ({d * 1440 * RESOURCES:,} samples, {n:,} usage rows)"
            row = " | ".join(cell(times[f"{window}|{which}|{b}"]) for b in backends)
            print(f"| `spotctl cost --window {window} --json` | {label} | {row} |")
    for window in WINDOWS:
        for which in sizes:
            got = {b: outputs[f"{window}|{which}|{b}"] for b in backends}
            same = len({json.dumps(json.loads(o), sort_keys=True) for o in got.values()}) == 1
            print(f"{window} on {which}: {_figures(got[backends[0]])}"
                  + ("" if len(backends) == 1 else
                     ("; the same figures on both backends" if same else "; FIGURES DIFFER")))


if __name__ == "__main__":
    main()
