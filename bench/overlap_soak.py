"""Overlap soak: eight `spotctl poll-billing` processes started every few seconds for a few
minutes against the local cloud, while a gateway writes usage rows under load. Afterwards: no
duplicate sample, no "database is locked" failure, no lost poll (every run recorded a poll or
said it skipped), every completed request has its usage row, and `ledger check` passes.

    .venv/bin/python bench/overlap_soak.py [--minutes 5]
"""

from __future__ import annotations

import argparse
import json
import os
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
    ap.add_argument("--minutes", type=float, default=5)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp())
    eport, gport, cport = free_port(), free_port(), free_port()
    env = {**os.environ, "SPOTCTL_CONFIG": str(work / "spotctl.toml"), "LC_KEY": "soak-key",
           "SPOTCTL_LOCALCLOUD_KEY": "soak-key"}
    env.pop("SPOTCTL_CLOCK", None)
    cloud = subprocess.Popen([*PY, "localcloud", "serve", "--listen", f"127.0.0.1:{cport}",
                              "--speed", "30", "--engine", "none"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    engine = subprocess.Popen([sys.executable, "-m", "spotctl.engine.builtin", "--port",
                               str(eport), "--model", "m", "--ttft-ms", "5"],
                              stdout=subprocess.PIPE, text=True)
    engine.stdout.readline()
    (work / "spotctl.toml").write_text(
        f'[billing]\ntimeout_s = 5\n[[providers]]\nname = "lc"\nkind = "localcloud"\n'
        f'api_key_env = "LC_KEY"\nbase_url = "http://127.0.0.1:{cport}/v1"\n'
        f'[[tiers]]\nname = "t"\nmodel = "m"\nendpoint = "http://127.0.0.1:{eport}"\n'
        f'[gateway]\nlisten = "127.0.0.1:{gport}"\n')
    wait_up(f"http://127.0.0.1:{cport}/_control/health")
    httpx.post(f"http://127.0.0.1:{cport}/_control/vms", json={"name": "spotctl-t"}, timeout=5)
    key = json.loads(subprocess.run([*PY, "keys", "create", "k", "--json"], env=env,
                                    capture_output=True, text=True).stdout)["key"]
    gw = subprocess.Popen([*PY, "gateway"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    wait_up(f"http://127.0.0.1:{gport}/healthz")
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
    for p in (cloud, engine):
        p.terminate()
    print(f"{args.minutes:g} min: {runs} poll-billing runs, {polls} polls recorded, "
          f"{len(bad)} bad exits, {dupes} duplicate samples; {completed[0]} requests completed, "
          f"{rows} usage rows; ledger check rc={check.returncode}")
    ok = not bad and dupes == 0 and polls == runs and rows == completed[0] and \
        check.returncode == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
