"""How far past its budget a key gets across N gateways sharing one PostgreSQL ledger (issue 14
§2): the gateway side of the overshoot bound, measured.

A key's budget closes it on every gateway once the shared ledger says so: each gateway re-reads
the gate every ``[gateway] gate_cache_s``, so after the ledger state that closes the key is
committed, a gateway may still admit that key's requests for up to gate_cache_s (+ the time one
gate evaluation takes). Usage rows reach the ledger within the usage writer's batch delay (0.2 s,
durable within 1 s). So the key's overshoot, in output tokens, is bounded by

    r_k * (flush_delay + gate_cache_s + eval_time) + C_k * max_tokens

where r_k is the key's output-token rate summed over ALL gateways and C_k its concurrent
requests (each admitted request may run to max_tokens) -- the same as one gateway carrying the
same load: N gateways do not multiply it, because they share the ledger (a per-replica budget
would allow N times the budget). In dollars: that many tokens times the day's $/output token.

This bench measures the gateway term: N gateways under load from the key, a budget step
(the key's budget set to 0 in the shared ledger at t*, as a crossing would), then per gateway
the last request admitted after t* and the first refusal, and the key's tokens admitted after t*.

    .venv/bin/python bench/pg_overshoot.py [--gateways 4] [--clients 16] [--seconds 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PY = sys.executable
BODY = {"model": "load", "max_tokens": 16,
        "messages": [{"role": "user", "content": "overshoot"}]}


async def _client(base: str, key: str, stop_at: float, log: list) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=60,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        while time.time() < stop_at:
            t0 = time.time()
            try:
                r = await client.post("/v1/chat/completions", json=BODY)
            except httpx.HTTPError as exc:
                log.append((t0, type(exc).__name__, 0))
                continue
            tokens = (r.json().get("usage") or {}).get("completion_tokens", 0) \
                if r.status_code == 200 else 0
            log.append((t0, r.status_code, tokens))
            if r.status_code != 200:
                await asyncio.sleep(0.05)


def client_main(base: str, key: str, seconds: float, clients: int) -> None:
    log: list = []
    stop_at = time.time() + seconds

    async def all_clients() -> None:
        await asyncio.gather(*(_client(base, key, stop_at, log) for _ in range(clients)))

    asyncio.run(all_clients())
    print(json.dumps(log))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateways", type=int, default=4)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=16)
    ap.add_argument("--client", nargs=4)
    args = ap.parse_args(argv)
    if args.client:
        b, k, s, c = args.client
        client_main(b, k, float(s), int(c))
        return
    from bench.pg_common import running_postgres
    from spotctl.clock import SystemClock
    from spotctl.ledger.db import Ledger
    from spotctl.localcloud.runner import serve_in_thread
    from spotctl.testing import free_port, running_engine, wait_http

    work = Path(tempfile.mkdtemp(prefix="spotctl-pg-over-"))
    lc = serve_in_thread(SystemClock(), "lc-key", dark_hang_s=5)
    lc.cloud.create_vm("spotctl-x", "n3-H100x1")
    procs: list[subprocess.Popen] = []
    try:
        with running_engine("load", ttft_ms=10, tokens_per_s=800) as engine, \
                running_postgres() as pg:
            env = {**os.environ, "LC_KEY": "lc-key"}  # PGPASSFILE is set now
            env.pop("SPOTCTL_CLOCK", None)
            url = pg.url(pg.create_database())
            cfgs, bases = [], []
            for g in range(args.gateways):
                port = free_port()
                cfg = work / f"gw{g}.toml"
                cfg.write_text(
                    f'[ledger]\nurl = "{url}"\n[billing]\npoll_interval_s = 5\n'
                    f'[[providers]]\nname = "lc"\nkind = "localcloud"\napi_key_env = "LC_KEY"\n'
                    f'base_url = "{lc.base_url}"\n[[tiers]]\nname = "load"\nmodel = "load"\n'
                    f'endpoint = "{engine.url}"\nprovider = "lc"\n'
                    f'[gateway]\nlisten = "127.0.0.1:{port}"\nspool_dir = "{work / f"s{g}"}"\n')
                cfgs.append(cfg)
                bases.append(f"http://127.0.0.1:{port}")
            spotctl = [PY, "-m", "spotctl", "--config", str(cfgs[0])]
            key = json.loads(subprocess.run([*spotctl, "keys", "create", "k", "--daily-usd",
                                             "1000", "--json"], env=env, capture_output=True,
                                            text=True, check=True).stdout)["key"]
            subprocess.run([*spotctl, "poll-billing"], env=env, check=True, capture_output=True)
            procs.append(subprocess.Popen([*spotctl, "poll-billing", "--daemon"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for c in cfgs:
                procs.append(subprocess.Popen([PY, "-m", "spotctl", "--config", str(c),
                                               "gateway"], env=env, stderr=subprocess.DEVNULL))
            for b in bases:
                wait_http(f"{b}/readyz", timeout_s=60, ready=lambda status: status == 200)
            clients = [subprocess.Popen([PY, __file__, "--client", b, key, str(args.seconds),
                                         str(args.clients)], stdout=subprocess.PIPE, text=True)
                       for b in bases]
            time.sleep(args.seconds / 2)
            with Ledger(url) as led:
                led.conn.execute("UPDATE api_keys SET daily_budget_micros = 0 WHERE name = 'k'")
            t_star = time.time()  # the closing state is committed
            logs = [json.loads(c.communicate(timeout=args.seconds + 120)[0]) for c in clients]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
        lc.stop()
    print(f"{args.gateways} gateways x {args.clients} clients of one key, gate_cache_s 2 "
          "(default), budget step at t*")
    print("| gateway | admitted before t* | admitted after t* | tokens after t* | "
          "last admitted after t* (s) | first refusal after t* (s) |")
    print("|---|---|---|---|---|---|")
    all_after, all_tokens, before_total = 0, 0, 0
    rates = []
    for g, log in enumerate(logs):
        before = [e for e in log if e[0] < t_star and e[1] == 200]
        after = [e for e in log if e[0] >= t_star and e[1] == 200]
        refused = [e for e in log if e[0] >= t_star and e[1] == 429]
        last = max((e[0] for e in after), default=t_star) - t_star
        first_ref = min((e[0] for e in refused), default=float("nan")) - t_star
        tok = sum(e[2] for e in after)
        all_after += len(after)
        all_tokens += tok
        before_total += len(before)
        span = (t_star - min((e[0] for e in before), default=t_star)) or 1
        rates.append(sum(e[2] for e in before) / span)
        print(f"| {g} | {len(before)} | {len(after)} | {tok} | {last:.2f} | {first_ref:.2f} |")
    r_k = sum(rates)
    print(f"all gateways: {all_after} requests, {all_tokens} output tokens admitted after t*; "
          f"the key's rate before t*: {r_k:.0f} output tokens/s over all gateways")
    print(f"bound (gateway term): r_k x (0.2 s flush + 2 s gate_cache_s + eval) + C_k x max_tokens"
          f" = {r_k:.0f} x 2.2 + {args.gateways * args.clients} x {BODY['max_tokens']} "
          f"= {r_k * 2.2 + args.gateways * args.clients * BODY['max_tokens']:.0f} tokens "
          "(+ eval time)")


if __name__ == "__main__":
    main()
