"""`spotctl cost` on the 90-day bench ledger, this tree against another checkout, side by side.

    .venv/bin/python bench/ledger_scale.py --rounds 1     # builds bench/out/ledger-90d.db once
    .venv/bin/python bench/cost_side_by_side.py 7 [/work/main/.venv/bin/python]

Alternates the two interpreters (each runs its own tree's spotctl) per round and window, and
prints medians: on a shared, noisy machine only the ratio measured in one run means much.
"""
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

END_MS = 1_795_000_000_000 - 1_795_000_000_000 % 60000
env = {**os.environ, "SPOTCTL_CLOCK": "fixed:" + datetime.fromtimestamp(END_MS / 1000, UTC).isoformat()}
out = str(Path(__file__).resolve().parent / "out")
cfg = f"{out}/ledger-90d.toml"
open(cfg, "w").write(f'[ledger]\npath = "{out}/ledger-90d.db"\n[[providers]]\nname = "hs"\nkind = "hyperstack"\napi_key_env = "HS_KEY"\n')
exes = {"this tree": sys.executable,
        "other": sys.argv[2] if len(sys.argv) > 2 else "/work/main/.venv/bin/python"}
times = {}
for r in range(int(sys.argv[1])):
    for w in ("24h", "30d"):
        for name, exe in exes.items():
            t0 = time.perf_counter()
            p = subprocess.run([exe, "-m", "spotctl", "--config", cfg, "cost", "--window", w, "--json"], capture_output=True, text=True, env=env)
            dt = time.perf_counter() - t0
            if p.returncode: print(name, w, p.stderr[-300:]); continue
            times.setdefault((name, w), []).append(dt)
for k, v in times.items():
    print(k, f"median {statistics.median(v):.3f} min {min(v):.3f} n={len(v)}")
