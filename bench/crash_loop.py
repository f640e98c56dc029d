"""Crashes: `kill -9` of the gateway (under load) and of the billing daemon at random moments,
N times. After every kill: `spotctl ledger check` passes, no partial row, and every request whose
response ended more than 1 s before the kill has its usage row.

    .venv/bin/python bench/crash_loop.py [--kills 50]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spotctl.localcloud.engines import free_port

PY = [sys.executable, "-m", "spotctl"]


def wait_up(url: str) -> None:
    for _ in range(300):
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.03)
    raise SystemExit(f"{url} did not come up")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=50)
    args = ap.parse_args(argv)
    rng = random.Random(11)
    work = Path(tempfile.mkdtemp())
    eport, gport, cport = free_port(), free_port(), free_port()
    env = {**os.environ, "SPOTCTL_CONFIG": str(work / "spotctl.toml"), "LC_KEY": "crash-key",
           "SPOTCTL_LOCALCLOUD_KEY": "crash-key"}
    env.pop("SPOTCTL_CLOCK", None)
    cloud = subprocess.Popen([*PY, "localcloud", "serve", "--listen",
                              f"127.0.0.1:{cport}", "--speed", "60", "--engine", "none"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    engine = subprocess.Popen([sys.executable, "-m", "spotctl.engine.builtin", "--port",
                               str(eport), "--model", "m", "--ttft-ms", "5", "--tokens-per-s",
                               "2000"], stdout=subprocess.PIPE, text=True)
    engine.stdout.readline()
    (work / "spotctl.toml").write_text(
        f'[billing]\npoll_interval_s = 1\ntimeout_s = 2\n[[providers]]\nname = "lc"\n'
        f'kind = "localcloud"\napi_key_env = "LC_KEY"\nbase_url = "http://127.0.0.1:{cport}/v1"\n'
        f'[[tiers]]\nname = "t"\nmodel = "m"\nendpoint = "http://127.0.0.1:{eport}"\n'
        f'[gateway]\nlisten = "127.0.0.1:{gport}"\n')
    wait_up(f"http://127.0.0.1:{cport}/_control/health")
    httpx.post(f"http://127.0.0.1:{cport}/_control/vms", json={"name": "spotctl-t"}, timeout=5)
    key = json.loads(subprocess.run([*PY, "keys", "create", "k", "--json"], env=env,
                                    capture_output=True, text=True).stdout)["key"]
    failures, lost_total, checked = [], 0, 0
    for i in range(args.kills):
        victim = "gateway" if i % 2 == 0 else "daemon"
        if victim == "gateway":
            proc = subprocess.Popen([*PY, "gateway"], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            wait_up(f"http://127.0.0.1:{gport}/healthz")
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
    for p in (cloud, engine):
        p.terminate()
    print(f"kills: {args.kills} (gateway {sum(1 for i in range(args.kills) if i % 2 == 0)}, "
          f"billing daemon {args.kills // 2}); ledger checks passed: {checked - len(failures)}/"
          f"{checked}; usage rows lost (responses ended >1 s before a kill): {lost_total}")
    sys.exit(0 if not failures and lost_total == 0 else 1)


if __name__ == "__main__":
    main()
