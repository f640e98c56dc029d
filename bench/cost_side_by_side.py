"""`spotctl cost` on the 90-day bench ledger, this tree against another checkout, side by side.

    .venv/bin/python bench/ledger_scale.py --rounds 1     # builds bench/out/ledger-90d.db once
    .venv/bin/python bench/cost_side_by_side.py --rounds 7 [--other /work/main/.venv/bin/python]

Alternates the two interpreters (each runs its own tree's spotctl) per round and window, and
prints medians: on a shared, noisy machine only the ratio measured in one run means much.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
END_MS = 1_795_000_000_000 - 1_795_000_000_000 % 60_000  # bench/ledger_scale.py's "now"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--other", default="/work/main/.venv/bin/python")
    args = ap.parse_args()
    ledger = OUT / "ledger-90d.db"
    if not ledger.exists():
        raise SystemExit("build it first: .venv/bin/python bench/ledger_scale.py --rounds 1")
    cfg = OUT / "ledger-90d-side.toml"
    cfg.write_text(f'[ledger]\npath = "{ledger}"\n[[providers]]\nname = "hs"\n'
                   'kind = "hyperstack"\napi_key_env = "HS_KEY"\n')
    env = {**os.environ,
           "SPOTCTL_CLOCK": "fixed:" + datetime.fromtimestamp(END_MS / 1000, UTC).isoformat()}
    exes = {"this tree": sys.executable, "other": args.other}
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for window in ("24h", "30d"):
            for name, exe in exes.items():
                t0 = time.perf_counter()
                p = subprocess.run([exe, "-m", "spotctl", "--config", str(cfg), "cost",
                                    "--window", window, "--json"], capture_output=True,
                                   text=True, env=env, check=False)
                elapsed = time.perf_counter() - t0
                if p.returncode:
                    raise SystemExit(f"{name} {window}: {p.stderr[-300:]}")
                times.setdefault((name, window), []).append(elapsed)
    print("| command | tree | median s | min s | runs |\n|---|---|---|---|---|")
    for (name, window), ts in times.items():
        print(f"| `cost --window {window}` | {name} | {statistics.median(ts):.3f} | "
              f"{min(ts):.3f} | {len(ts)} |")


if __name__ == "__main__":
    main()
