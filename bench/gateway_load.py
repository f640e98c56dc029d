"""Load: N concurrent streaming clients through the gateway for S seconds against the
built-in engine. Reports gateway errors, completed requests vs usage rows in the ledger, and
the gateway's memory (RSS) over time after warm-up.

    .venv/bin/python bench/gateway_load.py [--clients 256] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spotctl.localcloud.engines import free_port


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def client_loop(base: str, key: str, stop_at: float, counts: dict) -> None:
    body = {"model": "load", "max_tokens": 32, "stream": True,
            "messages": [{"role": "user", "content": "load test"}]}
    async with httpx.AsyncClient(base_url=base, timeout=120,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        while time.monotonic() < stop_at:
            try:
                async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                    async for _ in r.aiter_raw():
                        pass
                    counts[r.status_code] = counts.get(r.status_code, 0) + 1
            except httpx.HTTPError as exc:
                counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1


async def run(base: str, key: str, clients: int, seconds: float, gw_pid: int) -> tuple:
    counts: dict = {}
    stop_at = time.monotonic() + seconds
    rss: list[tuple[float, float]] = []

    async def sample() -> None:
        t0 = time.monotonic()
        while time.monotonic() < stop_at:
            rss.append((time.monotonic() - t0, rss_mb(gw_pid)))
            await asyncio.sleep(2)

    await asyncio.gather(sample(), *(client_loop(base, key, stop_at, counts)
                                     for _ in range(clients)))
    return counts, rss


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args(argv)
    eport, gport = free_port(), free_port()
    engine = subprocess.Popen([sys.executable, "-m", "spotctl.engine.builtin", "--port",
                               str(eport), "--model", "load", "--ttft-ms", "20",
                               "--tokens-per-s", "400"], stdout=subprocess.PIPE, text=True)
    engine.stdout.readline()
    work = Path(tempfile.mkdtemp())
    cfg = work / "spotctl.toml"
    cfg.write_text(f'[[tiers]]\nname = "load"\nmodel = "load"\nendpoint = '
                   f'"http://127.0.0.1:{eport}"\n[gateway]\nlisten = "127.0.0.1:{gport}"\n')
    env = {**os.environ, "SPOTCTL_CONFIG": str(cfg)}
    key = json.loads(subprocess.run([sys.executable, "-m", "spotctl", "keys", "create", "load",
                                     "--json"], env=env, capture_output=True, text=True,
                                    check=True).stdout)["key"]
    gw = subprocess.Popen([sys.executable, "-m", "spotctl", "gateway"], env=env,
                          stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{gport}"
    for _ in range(200):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    counts, rss = asyncio.run(run(base, key, args.clients, args.seconds, gw.pid))
    gw.terminate()  # SIGTERM: the gateway flushes every pending usage row
    gw.wait(60)
    engine.terminate()
    with sqlite3.connect(work / "spotctl.db") as conn:
        rows = conn.execute("SELECT status, count(*) FROM usage GROUP BY status").fetchall()
    completed = counts.get(200, 0)
    warm = [m for t, m in rss if t >= 10]
    print(f"clients {args.clients}, {args.seconds:.0f} s: responses {counts}")
    print(f"usage rows by status: {rows}; completed requests {completed}")
    if warm:
        print(f"gateway RSS after warm-up: first {warm[0]:.1f} MB, max {max(warm):.1f} MB, "
              f"last {warm[-1]:.1f} MB")
    ok_rows = dict(rows).get("ok", 0)
    errors = sum(v for k, v in counts.items() if k != 200)
    sys.exit(0 if errors == 0 and ok_rows == completed else 1)


if __name__ == "__main__":
    main()
