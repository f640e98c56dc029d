"""`spotctl cost` as a whole process on a 90-day ledger on PostgreSQL (issue 14 §4), and on one
10x smaller, side by side with the same ledgers on SQLite (bench/ledger_scale.py builds those).

The PostgreSQL ledgers have the same shape as bench/ledger_scale.py's: DAYS days x 20 resources
sampled every minute (90 days: 2,592,000 samples) and 20 M usage rows with their per-minute
rollups, generated on the server with generate_series. Commands alternate big/small each round.

    .venv/bin/python bench/pg_cost_scale.py             # full size (builds in a few minutes)
    .venv/bin/python bench/pg_cost_scale.py --quick     # 9 days, 2 M rows
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pg_common import running_postgres
from spotctl.ledger.db import Ledger
from spotctl.ledger.queries import rebuild_catalogues

RESOURCES = 20
MIN = 60_000
END_MS = 1_795_000_000_000 - 1_795_000_000_000 % MIN  # the same fixed "now" as ledger_scale


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


def write_config(path: Path, url: str) -> Path:
    path.write_text(f'[ledger]\nurl = "{url}"\n[[providers]]\nname = "hs"\nkind = '
                    '"hyperstack"\napi_key_env = "HS_KEY"\n')
    return path


def time_cmd(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {out.stderr}")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    days, rows = (9, 2_000_000) if args.quick else (90, 20_000_000)
    small_days = max(1, days // 10)
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    with running_postgres() as pg:
        urls = {}
        for which, (d, n) in {"big": (days, rows), "small": (small_days, rows // 10)}.items():
            db = pg.create_database()
            urls[which] = pg.url(db)
            secs = build(urls[which], d, n)
            print(f"built {which} ({d} d, {n:,} usage rows) on PostgreSQL in {secs:.0f} s",
                  flush=True)
        cfgs = {w: write_config(out / f"pg-{w}.toml", u) for w, u in urls.items()}
        exe = [sys.executable, "-m", "spotctl"]
        env = {**os.environ, "SPOTCTL_CLOCK": "fixed:" + datetime.fromtimestamp(
            END_MS / 1000, UTC).isoformat()}
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: compiled modules cached
        times: dict[tuple[str, str], list[float]] = {}
        results: dict[str, str] = {}
        for r in range(args.rounds + 1):  # round 0 warms caches (OS, compiled modules)
            for window in ("24h", "30d"):
                for which in ("big", "small"):
                    cmd = [*exe, "--config", str(cfgs[which]), "cost", "--window", window,
                           "--json"]
                    took = time_cmd(cmd, env)
                    if r:
                        times.setdefault((window, which), []).append(took)
        for which in ("big", "small"):
            got = subprocess.run([*exe, "--config", str(cfgs[which]), "cost", "--window", "30d",
                                  "--json"], capture_output=True, text=True, env=env)

            js = json.loads(got.stdout)
            results[which] = f"spend {js['spend_usd']} USD, {js['output_tokens']:,} output tokens"
        print("| command (PostgreSQL) | ledger | median s | min s | runs |\n|---|---|---|---|---|")
        for (window, which), ts in times.items():
            label = f"{days} d" if which == "big" else f"{small_days} d"
            print(f"| `spotctl cost --window {window}` | {label} | {statistics.median(ts):.3f} "
                  f"| {min(ts):.3f} | {len(ts)} |")
        for which, text in results.items():
            print(f"30d on {which}: {text}")


if __name__ == "__main__":
    main()
