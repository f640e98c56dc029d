"""Start-up: `spotctl --help` and `spotctl cost` on a small ledger, as whole processes.

Targets (issue 12 §4): `spotctl --help` < 150 ms, `spotctl cost` on a small ledger < 200 ms.
Runs each command N times, interleaved with a bare `python -c pass` so the noise of a shared
machine hits all three alike; prints medians, p90 and the ratio to bare Python.

    .venv/bin/python bench/startup.py [--runs 30] [--importtime] [--other PYTHON]

`--importtime` also prints the 15 slowest imports of each command (python -X importtime).
`--other /path/to/tree/.venv/bin/python` also runs that tree's `spotctl cost` (its console
script, next to the interpreter) on the same ledger, interleaved, for a before/after ratio in
one run (the ledger is built by this tree: the other must read its schema).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPOTCTL = str(Path(sys.executable).with_name("spotctl"))


def small_ledger(directory: Path) -> Path:
    """The example scenario's day (2 resources x 1 440 samples, 15 790 requests)."""
    from spotctl.example_scenario import build_example
    from spotctl.ledger.db import Ledger

    with Ledger(directory / "spotctl.db") as ledger:
        build_example(ledger, datetime.now(UTC))
    cfg = directory / "spotctl.toml"
    cfg.write_text('[ledger]\npath = "spotctl.db"\n[[providers]]\nname = "example-cloud"\n'
                   'kind = "hyperstack"\napi_key_env = "EXAMPLE_CLOUD_API_KEY"\n[[tiers]]\n'
                   'name = "llama-70b"\nmodel = "llama-70b"\nbackend = "localcloud"\n'
                   'provider = "example-cloud"\n')
    return cfg


def timed(argv: list[str], env: dict) -> float:
    t0 = time.perf_counter()  # clock-ok: a benchmark measures real time
    out = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         check=False)
    took = time.perf_counter() - t0  # clock-ok
    if out.returncode != 0:
        raise SystemExit(f"{argv}: exit {out.returncode}: {out.stderr.decode()[-500:]}")
    return took * 1000


def importtime(argv: list[str], env: dict, top: int = 15) -> list[str]:
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "spotctl", *argv[1:]],
                         env=env, capture_output=True, text=True, check=False)
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cum_us, name = line[len("import time:"):].split("|")
        rows.append((int(cum_us), int(self_us), name.rstrip()))
    rows.sort(reverse=True)
    return [f"{cum / 1000:7.1f} ms cumulative {s / 1000:6.1f} ms self  {n}" for cum, s, n in
            rows[:top]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--importtime", action="store_true")
    ap.add_argument("--other", help="another tree's interpreter: time its `spotctl cost` too")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTCTL_")}
    env["NO_COLOR"] = "1"
    # as installed: compiled modules cached (the warm-up run writes them), whatever the shell says
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = small_ledger(Path(tmp))
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "spotctl --help": [SPOTCTL, "--help"],
            "spotctl cost": [SPOTCTL, "--config", str(cfg), "cost"],
        }
        if args.other:  # the same scenario, written by the other tree (its own schema)
            other_dir = Path(tmp) / "other"
            other_dir.mkdir()
            root = Path(os.path.abspath(args.other)).parents[2]
            subprocess.run([args.other, "-c", "import sys; from pathlib import Path; "
                            "sys.path.insert(0, '.'); from bench.startup import small_ledger; "
                            f"small_ledger(Path({str(other_dir)!r}))"], cwd=root, check=True)
            cases["other: spotctl cost"] = [str(Path(args.other).with_name("spotctl")),
                                            "--config", str(other_dir / "spotctl.toml"), "cost"]
        for argv in cases.values():  # warm the OS caches and .pyc files
            timed(argv, env)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, argv in cases.items():
                times[name].append(timed(argv, env))
        base = statistics.median(times["python -c pass"])
        print(f"{args.runs} runs each, interleaved; {os.cpu_count()} CPUs; Python "
              f"{sys.version.split()[0]}")
        print(f"{'command':<18} {'median':>8} {'p90':>8} {'vs bare python':>15}")
        for name, ts in times.items():
            med = statistics.median(ts)
            p90 = statistics.quantiles(ts, n=10)[-1]
            print(f"{name:<18} {med:7.0f}ms {p90:7.0f}ms {med / base:14.1f}x")
        if args.importtime:
            for name in ("spotctl --help", "spotctl cost"):
                print(f"\nslowest imports, {name}:")
                print("\n".join(importtime(cases[name], env)))


if __name__ == "__main__":
    main()
