"""Overlap soak: eight `spotctl poll-billing` processes started every few seconds for a few
minutes against the local cloud, while a gateway writes usage rows under load. Afterwards: no
duplicate sample, no "database is locked" failure, no lost poll (every run recorded a poll or
said it skipped), every completed request has its usage row, and `ledger check` passes.

    .venv/bin/python bench/overlap_soak.py [--minutes 5]
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.local_stack import PY, local_stack
from spotctl.testing import wait_http


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=5)
    args = ap.parse_args(argv)
    with local_stack("soak-key", speed=30, billing_toml="timeout_s = 5\n", tokens_per_s=200) as stack:
        work, env, gport, key = stack.work, stack.env, stack.gateway_port, stack.key
        gw = subprocess.Popen([*PY, "gateway"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{gport}/healthz")
        stop = threading.Event()
        completed = [0]

        def load() -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{gport}", timeout=30,
                              headers={"Authorization": f"Bearer {key}"}) as c:
                while not stop.is_set():
                    r = c.post("/v1/completions", json={"model": "m", "prompt": "x",
                                                        "max_tokens": 8})
                    if r.status_code == 200:
                        completed[0] += 1

        loaders = [threading.Thread(target=load) for _ in range(4)]
        for t in loaders:
            t.start()
        runs, bad = 0, []
        end = time.monotonic() + args.minutes * 60
        while time.monotonic() < end:
            procs = [subprocess.Popen([*PY, "poll-billing"], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for _ in range(8)]
            for p in procs:
                out, err = p.communicate(timeout=300)
                runs += 1
                if p.returncode != 0 or "locked" in out + err:
                    bad.append((p.returncode, err.strip()[:200]))
            time.sleep(3)
        stop.set()
        for t in loaders:
            t.join()
        gw.terminate()
        gw.wait(60)
        with sqlite3.connect(work / "spotctl.db") as conn:
            polls = conn.execute("SELECT count(*) FROM billing_polls").fetchone()[0]
            dupes = conn.execute(
                "SELECT count(*) FROM (SELECT provider, account, resource_id, observed_ms, count(*) c"
                " FROM billing_samples GROUP BY 1, 2, 3, 4 HAVING c > 1)").fetchone()[0]
            rows = conn.execute("SELECT count(*) FROM usage WHERE status='ok'").fetchone()[0]
        check = subprocess.run([*PY, "ledger", "check"], env=env, capture_output=True, text=True)
    print(f"{args.minutes:g} min: {runs} poll-billing runs, {polls} polls recorded, "
          f"{len(bad)} bad exits, {dupes} duplicate samples; {completed[0]} requests completed, "
          f"{rows} usage rows; ledger check rc={check.returncode}")
    ok = not bad and dupes == 0 and polls == runs and rows == completed[0] and \
        check.returncode == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
