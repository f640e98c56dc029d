"""`make bench`: every benchmark and long-running check, in their quick sizes.

Full sizes (the figures in docs/benchmarks.md and docs/reliability.md) are each script's
defaults; run them one by one: they take minutes each on this machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUICK = [
    ("ledger_scale.py", ["--quick", "--rounds", "3"]),
    ("gateway_overhead.py", ["--requests", "200", "--rounds", "2"]),
    ("gateway_load.py", ["--clients", "64", "--seconds", "15"]),
    ("crash_loop.py", ["--kills", "10"]),
    ("overlap_soak.py", ["--minutes", "1"]),
    ("month_invoice.py", ["--days", "3"]),
    ("wake_phases.py", ["--rounds", "1"]),
]


def main() -> None:
    failed = []
    for script, args in QUICK:
        print(f"\n=== {script} {' '.join(args)}", flush=True)
        rc = subprocess.run([sys.executable, str(HERE / script), *args], check=False).returncode
        if rc != 0:
            failed.append(script)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
