"""Crashes: `kill -9` of the gateway (under load) and of the billing daemon at random moments,
N times. After every kill: `spotctl ledger check` passes, no partial row, and every request whose
response ended more than 1 s before the kill has its usage row.

    .venv/bin/python bench/crash_loop.py [--kills 50]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
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
    ap.add_argument("--kills", type=int, default=50)
    args = ap.parse_args(argv)
    rng = random.Random(11)
    with local_stack("crash-key", speed=60, billing_toml="poll_interval_s = 1\ntimeout_s = 2\n",
                     tokens_per_s=2000) as stack:
        work, env, gport, key = stack.work, stack.env, stack.gateway_port, stack.key
        failures, lost_total, checked = [], 0, 0
        for i in range(args.kills):
            victim = "gateway" if i % 2 == 0 else "daemon"
            if victim == "gateway":
                proc = subprocess.Popen([*PY, "gateway"], env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                wait_http(f"http://127.0.0.1:{gport}/healthz")
                done: list[float] = []
                stop = threading.Event()

                def load(stop=stop, done=done) -> None:
                    with httpx.Client(base_url=f"http://127.0.0.1:{gport}", timeout=5,
                                      headers={"Authorization": f"Bearer {key}"}) as c:
                        while not stop.is_set():
                            try:
                                r = c.post("/v1/completions", json={"model": "m", "prompt": "x",
                                                                    "max_tokens": 4})
                                if r.status_code == 200:
                                    done.append(time.monotonic())
                            except httpx.HTTPError:
                                return

                threads = [threading.Thread(target=load) for _ in range(4)]
                for t in threads:
                    t.start()
                time.sleep(rng.uniform(1.2, 3.0))
                killed_at = time.monotonic()
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                stop.set()
                for t in threads:
                    t.join()
                must = sum(1 for t in done if killed_at - t > 1.0)
                with sqlite3.connect(work / "spotctl.db") as conn:
                    have = conn.execute("SELECT count(*) FROM usage WHERE status='ok'").fetchone()[0]
                before = getattr(main, "_rows", 0)
                if have - before < must:
                    lost_total += must - (have - before)
                main._rows = have
            else:
                proc = subprocess.Popen([*PY, "poll-billing", "--daemon"], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(rng.uniform(0.5, 2.5))
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            check = subprocess.run([*PY, "ledger", "check", "--json"], env=env, capture_output=True,
                                   text=True)
            checked += 1
            if check.returncode != 0:
                failures.append((i, victim, check.stdout[-500:]))
    print(f"kills: {args.kills} (gateway {sum(1 for i in range(args.kills) if i % 2 == 0)}, "
          f"billing daemon {args.kills // 2}); ledger checks passed: {checked - len(failures)}/"
          f"{checked}; usage rows lost (responses ended >1 s before a kill): {lost_total}")
    sys.exit(0 if not failures and lost_total == 0 else 1)


if __name__ == "__main__":
    main()
