"""Gateways sharing one ledger (issue 14 §4): GATEWAYS `spotctl gateway` processes x CLIENTS
streaming clients each, for SECONDS, in front of one built-in engine, first with a shared SQLite
ledger, then with a shared PostgreSQL ledger (same machine, same run, same load).

Reports per backend: client errors; completed requests vs usage rows in the ledger; the engine's
output tokens (from each stream's final usage chunk) vs `spotctl cost` output tokens over the
run's window; and time to first token / total latency through the gateways (p50, p99), with the
same load sent straight to the engine as the baseline for the gateway-added latency.

    .venv/bin/python bench/pg_gateways.py [--gateways 4] [--clients 64] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PY = sys.executable
BODY = {"model": "load", "max_tokens": 32, "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "load test"}]}


# -- one client process: CLIENTS streams against one base URL ---------------------------------
async def _client(base: str, key: str, stop_at: float, out: dict) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=120,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            ttft = None
            tokens = 0
            try:
                async with client.stream("POST", "/v1/chat/completions", json=BODY) as r:
                    async for line in r.aiter_lines():
                        if ttft is None and line.startswith("data:"):
                            ttft = time.monotonic() - t0
                        if line.startswith("data:") and '"usage"' in line and "[DONE]" not in line:
                            usage = json.loads(line[5:]).get("usage") or {}
                            tokens = usage.get("completion_tokens") or tokens
                    status = r.status_code
            except httpx.HTTPError as exc:
                out["errors"][type(exc).__name__] = out["errors"].get(type(exc).__name__, 0) + 1
                continue
            if status != 200:
                out["errors"][str(status)] = out["errors"].get(str(status), 0) + 1
                continue
            out["ok"] += 1
            out["tokens"] += tokens
            out["ttft"].append(ttft or 0.0)
            out["total"].append(time.monotonic() - t0)


def client_main(base: str, key: str, seconds: float, clients: int) -> None:
    out: dict = {"ok": 0, "tokens": 0, "errors": {}, "ttft": [], "total": []}
    stop_at = time.monotonic() + seconds
    async def all_clients() -> None:
        await asyncio.wait_for(asyncio.gather(
            *(_client(base, key, stop_at, out) for _ in range(clients))), seconds + 120)

    asyncio.run(all_clients())
    print(json.dumps(out))


# -- the orchestration -----------------------------------------------------------------------
def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else float("nan")


def drive(bases: list[str], key: str, seconds: float, clients: int) -> dict:
    procs = [subprocess.Popen([PY, __file__, "--client", b, key, str(seconds), str(clients)],
                              stdout=subprocess.PIPE, text=True) for b in bases]
    outs = [json.loads(p.communicate(timeout=seconds + 300)[0]) for p in procs]
    merged: dict = {"ok": 0, "tokens": 0, "errors": {}, "ttft": [], "total": []}
    for o in outs:
        merged["ok"] += o["ok"]
        merged["tokens"] += o["tokens"]
        merged["ttft"] += o["ttft"]
        merged["total"] += o["total"]
        for k, v in o["errors"].items():
            merged["errors"][k] = merged["errors"].get(k, 0) + v
    return merged


def run_backend(name: str, ledger_toml: str, engine_url: str, args, work: Path) -> dict:
    from spotctl.testing import free_port, wait_http

    env = {**os.environ}
    env.pop("SPOTCTL_CLOCK", None)
    cfgs, ports = [], []
    for g in range(args.gateways):
        port = free_port()
        cfg = work / f"{name}-gw{g}.toml"
        cfg.write_text(f'{ledger_toml}[[tiers]]\nname = "load"\nmodel = "load"\nendpoint = '
                       f'"{engine_url}"\n[gateway]\nlisten = "127.0.0.1:{port}"\n'
                       f'spool_dir = "{work / f"{name}-spool{g}"}"\n')
        cfgs.append(cfg)
        ports.append(port)
    key = json.loads(subprocess.run([PY, "-m", "spotctl", "--config", str(cfgs[0]), "keys",
                                     "create", f"load-{name}", "--json"], env=env,
                                    capture_output=True, text=True, check=True).stdout)["key"]
    gws = [subprocess.Popen([PY, "-m", "spotctl", "--config", str(c), "gateway"], env=env,
                            stderr=subprocess.DEVNULL) for c in cfgs]
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    for b in bases:
        wait_http(f"{b}/readyz", ready=lambda status: status == 200)
    since = datetime.now(UTC)
    res = drive(bases, key, args.seconds, args.clients)
    for gw in gws:
        gw.terminate()  # SIGTERM: each gateway flushes its pending usage rows
    for gw in gws:
        gw.wait(120)
    until = datetime.now(UTC)
    rows = subprocess.run(
        [PY, "-c", "import sys, json; from spotctl.config import load_config; "
         "from spotctl.ledger.db import Ledger; c = load_config(sys.argv[1]); "
         "led = Ledger(c.ledger_target); print(json.dumps(led.conn.execute("
         "\"SELECT count(*), coalesce(sum(completion_tokens), 0) FROM usage WHERE "
         "status = 'ok' AND key_id = ?\", (sys.argv[2],)).fetchone()))", str(cfgs[0]),
         f"load-{name}"], capture_output=True, text=True, env=env, check=True)
    res["rows"], res["row_tokens"] = json.loads(rows.stdout)
    cost = json.loads(subprocess.run(
        [PY, "-m", "spotctl", "--config", str(cfgs[0]), "cost", "--since",
         since.isoformat(), "--until", until.isoformat(), "--json"], env=env,
        capture_output=True, text=True, check=True).stdout)
    res["cost_tokens"] = cost["output_tokens"]
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateways", type=int, default=4)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--client", nargs=4, metavar=("BASE", "KEY", "SECONDS", "CLIENTS"))
    args = ap.parse_args(argv)
    if args.client:
        base, key, seconds, clients = args.client
        client_main(base, key, float(seconds), int(clients))
        return
    from bench.pg_common import running_postgres
    from spotctl.testing import running_engine

    work = Path(tempfile.mkdtemp(prefix="spotctl-pg-gw-"))
    results: dict[str, dict] = {}
    with running_engine("load", ttft_ms=20, tokens_per_s=400) as engine:
        engine_url = engine.url
        results["engine direct"] = drive([engine_url] * args.gateways, "none", args.seconds,
                                         args.clients)
        results["sqlite"] = run_backend("sqlite", f'[ledger]\npath = "{work / "spotctl.db"}"\n',
                                        engine_url, args, work)
        with running_postgres() as pg:
            url = pg.url(pg.create_database())
            results["postgresql"] = run_backend("postgresql", f'[ledger]\nurl = "{url}"\n',
                                                engine_url, args, work)
    print(f"{args.gateways} gateways x {args.clients} streaming clients, {args.seconds:.0f} s "
          "each, one built-in engine (ttft 20 ms, 400 tok/s, max_tokens 32)")
    print("| run | requests ok | errors | usage rows | engine tokens | ledger tokens | "
          "cost tokens | TTFT p50 ms | TTFT p99 ms | total p50 ms | total p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['ok']:,} | {sum(r['errors'].values())} {r['errors'] or ''} | "
              f"{r.get('rows', '-')} | {r['tokens']:,} | {r.get('row_tokens', '-')} | "
              f"{r.get('cost_tokens', '-')} | {_pct(r['ttft'], .5):.0f} | "
              f"{_pct(r['ttft'], .99):.0f} | {_pct(r['total'], .5):.0f} | "
              f"{_pct(r['total'], .99):.0f} |")
    base = results["engine direct"]
    for name in ("sqlite", "postgresql"):
        r = results[name]
        print(f"{name}: gateway-added TTFT p50 "
              f"{_pct(r['ttft'], .5) - _pct(base['ttft'], .5):.0f} ms, total p50 "
              f"{_pct(r['total'], .5) - _pct(base['total'], .5):.0f} ms; median req/s "
              f"{r['ok'] / args.seconds:.0f}; {statistics.fmean(r['total']) * 1000:.0f} ms mean")


if __name__ == "__main__":
    main()
