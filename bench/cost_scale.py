"""What bench/ledger_scale.py (SQLite) and bench/pg_cost_scale.py (PostgreSQL) share: the bench
ledgers' shape and fixed "now", their config files, and `spotctl cost` timed as whole processes
in alternating rounds."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
RESOURCES = 20  # 16 VMs (4 tiers) and 4 volumes, one sample a minute each
MIN = 60_000
END_MS = 1_795_000_000_000 - 1_795_000_000_000 % MIN  # a fixed "now" (2026-11-18T11:06Z)
WINDOWS = ("24h", "30d")


def write_config(path: Path, ledger: str | Path) -> Path:
    """A config at ``path`` for a ledger: a PostgreSQL URL or an SQLite file."""
    key = "url" if str(ledger).startswith("postgresql://") else "path"
    path.write_text(f'[ledger]\n{key} = "{ledger}"\n[[providers]]\nname = "hs"\nkind = '
                    '"hyperstack"\napi_key_env = "HS_KEY"\n')
    return path


def bench_env() -> dict[str, str]:
    """The clock fixed at the ledgers' end; compiled modules cached as installed."""
    env = {**os.environ, "SPOTCTL_CLOCK": "fixed:" + datetime.fromtimestamp(
        END_MS / 1000, UTC).isoformat()}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: compiled modules cached
    return env


def time_cmd(args: Sequence[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall time of one whole process, and its stdout; exits on a failure."""
    t0 = time.perf_counter()
    out = subprocess.run(list(args), capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {out.stderr}")
    return elapsed, out.stdout


def cost_cmd(config: Path | None, args: Sequence[str]) -> list[str]:
    exe = [sys.executable, "-m", "spotctl"]
    return exe + (["--config", str(config)] if config is not None else []) + list(args)


def run_rounds(cases: Sequence[tuple[str, list[str]]], rounds: int
               ) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Run every case once per round, in order, after one warm-up round (OS cache, compiled
    modules): the times per case, and each case's last stdout."""
    env = bench_env()
    times: dict[str, list[float]] = {}
    outputs: dict[str, str] = {}
    for r in range(rounds + 1):
        for name, cmd in cases:
            took, outputs[name] = time_cmd(cmd, env)
            if r:
                times.setdefault(name, []).append(took)
    return times, outputs


def cell(ts: Sequence[float]) -> str:
    """``median (min)`` in seconds."""
    return f"{statistics.median(ts):.3f} ({min(ts):.3f})"
