"""`spotctl cost` on the 90-day bench ledger, this tree against another checkout, side by side.

    .venv/bin/python bench/ledger_scale.py --rounds 1      # builds bench/out/ledger-90d.db once
    .venv/bin/python bench/cost_side_by_side.py --rounds 7 \\
        --other /path/to/other/.venv/bin/python [--other-sqlite OTHER.db] \\
        [--pg-url postgresql://... --other-pg-url postgresql://...]

Each command is a whole process (`python -m spotctl ... cost --window W --json`), run with the
tree's own root as the working directory (``python -m`` imports from there first), the two
trees alternated in every round, per backend and window; medians, minimums and the ratio of the
medians. A tree whose schema is older than this one's needs a ledger at its own schema
(``--other-sqlite`` / ``--other-pg-url``: a copy made before this tree migrated its own); the
figures both trees print are compared (keys only one tree prints are ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
END_MS = 1_795_000_000_000 - 1_795_000_000_000 % 60_000  # bench/ledger_scale.py's "now"


def _config(directory: Path, name: str, ledger: str) -> Path:
    key = "url" if ledger.startswith("postgresql://") else "path"
    path = directory / f"{name}.toml"
    path.write_text(f'[ledger]\n{key} = "{ledger}"\n[[providers]]\nname = "hs"\n'
                    'kind = "hyperstack"\napi_key_env = "HS_KEY"\n')
    return path


def _common(mine, theirs):
    """``mine`` restricted to the keys ``theirs`` has (recursively): fields only one tree
    prints (added later) do not count as a difference."""
    if isinstance(mine, dict) and isinstance(theirs, dict):
        return {k: _common(mine[k], theirs[k]) for k in theirs if k in mine}
    if isinstance(mine, list) and isinstance(theirs, list) and len(mine) == len(theirs):
        return [_common(a, b) for a, b in zip(mine, theirs, strict=True)]
    return mine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--other", default="/work/main/.venv/bin/python",
                    help="the other tree's interpreter (its editable install)")
    ap.add_argument("--other-root", help="the other tree's root (default: the venv's parent)")
    ap.add_argument("--sqlite", default=str(OUT / "ledger-90d.db"))
    ap.add_argument("--other-sqlite", help="the other tree's copy (default: --sqlite)")
    ap.add_argument("--pg-url", help="also time a PostgreSQL ledger")
    ap.add_argument("--other-pg-url", help="the other tree's database (default: --pg-url)")
    ap.add_argument("--windows", default="24h,30d")
    args = ap.parse_args()
    other_root = Path(args.other_root or Path(os.path.abspath(args.other)).parents[2])
    if not Path(args.sqlite).exists():
        raise SystemExit("build it first: .venv/bin/python bench/ledger_scale.py --rounds 1")
    ledgers = {"SQLite": (args.sqlite, args.other_sqlite or args.sqlite)}
    if args.pg_url:
        ledgers["PostgreSQL"] = (args.pg_url, args.other_pg_url or args.pg_url)
    env = {**os.environ,
           "SPOTCTL_CLOCK": "fixed:" + datetime.fromtimestamp(END_MS / 1000, UTC).isoformat()}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: compiled modules cached
    trees = {"this tree": (sys.executable, ROOT), "other": (args.other, other_root)}
    times: dict[tuple[str, str, str], list[float]] = {}
    outputs: dict[tuple[str, str, str], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfgs = {(backend, tree): _config(Path(tmp), f"{backend}-{i}", ledger)
                for backend, pair in ledgers.items()
                for i, (tree, ledger) in enumerate(zip(trees, pair, strict=True))}
        for r in range(args.rounds + 1):  # round 0 warms caches (OS, compiled modules)
            for backend in ledgers:
                for window in args.windows.split(","):
                    for tree, (exe, root) in trees.items():
                        t0 = time.perf_counter()
                        p = subprocess.run(
                            [exe, "-m", "spotctl", "--config", str(cfgs[(backend, tree)]),
                             "cost", "--window", window, "--json"], capture_output=True,
                            text=True, env=env, cwd=root, check=False)
                        elapsed = time.perf_counter() - t0
                        if p.returncode:
                            raise SystemExit(f"{tree} {backend} {window}: {p.stderr[-300:]}")
                        if r:
                            times.setdefault((backend, window, tree), []).append(elapsed)
                        outputs[(backend, window, tree)] = json.loads(p.stdout)
    print(f"{args.rounds} rounds; this tree {ROOT}, other {other_root}")
    print("| command | ledger | this tree median s (min) | other median s (min) | ratio |\n"
          "|---|---|---|---|---|")
    for backend in ledgers:
        for window in args.windows.split(","):
            mine, theirs = (times[(backend, window, t)] for t in trees)
            print(f"| `cost --window {window} --json` | {backend} | "
                  f"{statistics.median(mine):.3f} ({min(mine):.3f}) | "
                  f"{statistics.median(theirs):.3f} ({min(theirs):.3f}) | "
                  f"{statistics.median(mine) / statistics.median(theirs):.2f} |")
    for (backend, window, tree), js in outputs.items():
        if tree != "this tree":
            continue
        other = outputs[(backend, window, "other")]
        same = _common(js, other) == other
        print(f"{backend} {window}: {'the same figures' if same else 'FIGURES DIFFER'} "
              f"(spend {js['spend_usd']} USD, {js['output_tokens']:,} output tokens)")


if __name__ == "__main__":
    main()
