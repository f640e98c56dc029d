"""Gateway overhead: the same upstream (the built-in engine, in its own process, instant
tokens) measured direct and through the gateway, in alternating rounds, streaming and not, at
concurrency 1, 16 and 64. Reports added latency (p50/p95/p99 of through − direct medians per
round) and requests per second, with the ratio.

    .venv/bin/python bench/gateway_overhead.py [--requests 400] [--rounds 3]

The load generator is a separate process (this one) on the same 2-core machine as the engine
and the gateway: they compete for CPU, which inflates both sides; the ratio is what to read.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spotctl.localcloud.engines import free_port


def start(argv: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)


def wait_http(url: str, headers: dict | None = None) -> None:
    for _ in range(200):
        try:
            if httpx.get(url, headers=headers, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


async def run_load(base: str, key: str | None, concurrency: int, n: int, stream: bool
                   ) -> tuple[list[float], float]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": "bench", "max_tokens": 16, "stream": stream,
            "messages": [{"role": "user", "content": "benchmark me"}]}
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits,
                                 timeout=60) as client:
        queue = list(range(n))

        async def worker() -> None:
            while queue:
                queue.pop()
                t0 = time.perf_counter()
                if stream:
                    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                        async for _ in r.aiter_raw():
                            pass
                else:
                    r = await client.post("/v1/chat/completions", json=body)
                assert r.status_code == 200, r.status_code
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return latencies, n / elapsed


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    eport, gport = free_port(), free_port()
    engine = start([sys.executable, "-m", "spotctl.engine.builtin", "--port", str(eport),
                    "--model", "bench", "--ttft-ms", "0", "--tokens-per-s", "0"])
    engine.stdout.readline()
    work = Path(tempfile.mkdtemp())
    cfg = work / "spotctl.toml"
    cfg.write_text(f'[[tiers]]\nname = "bench"\nmodel = "bench"\nendpoint = '
                   f'"http://127.0.0.1:{eport}"\n[gateway]\nlisten = "127.0.0.1:{gport}"\n')
    env = {**os.environ, "SPOTCTL_CONFIG": str(cfg)}
    key = subprocess.run([sys.executable, "-m", "spotctl", "keys", "create", "bench", "--json"],
                         env=env, capture_output=True, text=True, check=True).stdout
    import json

    key = json.loads(key)["key"]
    gateway = start([sys.executable, "-m", "spotctl", "gateway"], env)
    wait_http(f"http://127.0.0.1:{gport}/healthz")
    direct, through = f"http://127.0.0.1:{eport}", f"http://127.0.0.1:{gport}"
    rows = []
    try:
        for stream in (False, True):
            for conc in (1, 16, 64):
                d_lat, g_lat, d_rps, g_rps = [], [], [], []
                for _ in range(args.rounds):  # alternate, so drift hits both sides alike
                    lat, rps = asyncio.run(run_load(direct, None, conc, args.requests, stream))
                    d_lat += lat
                    d_rps.append(rps)
                    lat, rps = asyncio.run(run_load(through, key, conc, args.requests, stream))
                    g_lat += lat
                    g_rps.append(rps)
                added = {q: (pct(g_lat, q) - pct(d_lat, q)) * 1000 for q in (0.5, 0.95, 0.99)}
                rows.append((stream, conc, added, statistics.median(d_rps),
                             statistics.median(g_rps)))
    finally:
        gateway.terminate()
        engine.terminate()
    print("| mode | concurrency | added p50 ms | added p95 ms | added p99 ms | direct req/s "
          "| gateway req/s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for stream, conc, added, drps, grps in rows:
        print(f"| {'stream' if stream else 'plain'} | {conc} | {added[0.5]:.2f} | "
              f"{added[0.95]:.2f} | {added[0.99]:.2f} | {drps:.0f} | {grps:.0f} | "
              f"{grps / drps:.0%} |")


if __name__ == "__main__":
    main()
