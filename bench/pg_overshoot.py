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

This bench measures the gateway term with a real crossing: the key is created with a daily
budget half a minute's charge above its share of the spend billed so far, the gateways carry its load,
and billing polls (every 5 s, in this process, as `poll-billing` does) record the VM's spend;
the local cloud charges each whole minute of the VM's life, and the load is timed so that the
next charge falls half-way through it. t* is when the poll that records it has committed.
Then, per gateway, the last request admitted after t* and the first refusal, and the key's
tokens admitted after t*.
``--runs`` repeats the whole run (a fresh PostgreSQL each time) and prints the medians.

    .venv/bin/python bench/pg_overshoot.py [--gateways 4] [--clients 16] [--seconds 16] [--runs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
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
                log.append((t0, type(exc).__name__, 0, None))
                continue
            body = r.json()
            tokens = (body.get("usage") or {}).get("completion_tokens", 0) \
                if r.status_code == 200 else 0
            code = None if r.status_code == 200 else (body.get("error") or {}).get("code")
            log.append((t0, r.status_code, tokens, code))
            if r.status_code != 200:
                await asyncio.sleep(0.05)


def client_main(base: str, key: str, seconds: float, clients: int) -> None:
    log: list = []
    stop_at = time.time() + seconds

    async def all_clients() -> None:
        await asyncio.gather(*(_client(base, key, stop_at, log) for _ in range(clients)))

    asyncio.run(all_clients())
    print(json.dumps(log))


POLL_S = 5  # [billing] poll_interval_s
KEY_WAIT_S = 2.5  # > gate_cache_s: a new key is known to every gateway


def run_once(args) -> dict:
    from bench.pg_common import running_postgres
    from spotctl.clock import SystemClock
    from spotctl.config import load_config
    from spotctl.gateway.gate import evaluate_gate
    from spotctl.ledger.db import Ledger
    from spotctl.ledger.keys import create_key
    from spotctl.localcloud.model import CREATE_S, FLAVORS
    from spotctl.localcloud.runner import serve_in_thread
    from spotctl.services.billing import poll_all
    from spotctl.testing import free_port, running_engine, wait_http

    clock = SystemClock()
    work = Path(tempfile.mkdtemp(prefix="spotctl-pg-over-"))
    lc = serve_in_thread(clock, "lc-key", dark_hang_s=5)
    created = time.time()
    lc.cloud.create_vm("spotctl-x", "n3-H100x1")
    procs: list[subprocess.Popen] = []
    try:
        with running_engine("load", ttft_ms=10, tokens_per_s=800) as engine, \
                running_postgres() as pg:
            env = {**os.environ, "LC_KEY": "lc-key"}  # PGPASSFILE is set now
            env.pop("SPOTCTL_CLOCK", None)
            os.environ["LC_KEY"] = "lc-key"
            url = pg.url(pg.create_database())
            cfgs, bases = [], []
            for g in range(args.gateways):
                port = free_port()
                cfg = work / f"gw{g}.toml"
                cfg.write_text(
                    f'[ledger]\nurl = "{url}"\n[billing]\npoll_interval_s = {POLL_S}\n'
                    f'[[providers]]\nname = "lc"\nkind = "localcloud"\napi_key_env = "LC_KEY"\n'
                    f'base_url = "{lc.base_url}"\n[[tiers]]\nname = "load"\nmodel = "load"\n'
                    f'endpoint = "{engine.url}"\nprovider = "lc"\n'
                    f'[gateway]\nlisten = "127.0.0.1:{port}"\nspool_dir = "{work / f"s{g}"}"\n')
                cfgs.append(cfg)
                bases.append(f"http://127.0.0.1:{port}")
            cfg0 = load_config(cfgs[0])
            led = Ledger(cfg0.ledger_target)

            def poll() -> None:
                outcomes, _ = poll_all(cfg0, led, clock)
                assert all(o.ok for o in outcomes), outcomes

            poll()
            time.sleep(POLL_S)
            poll()
            for c in cfgs:
                procs.append(subprocess.Popen([PY, "-m", "spotctl", "--config", str(c),
                                               "gateway"], env=env, stderr=subprocess.DEVNULL))
            for b in bases:
                wait_http(f"{b}/readyz", timeout_s=60, ready=lambda status: status == 200)
            # The VM is charged at each whole minute of its life once it is ACTIVE (CREATE_S
            # after its creation): start the load so that a charge falls half-way through it.
            lead = KEY_WAIT_S + 1.0 + args.seconds / 2
            now = time.time()
            charge = created + 60 * max(math.ceil((now + lead - created) / 60),
                                        math.ceil(CREATE_S / 60))
            time.sleep(charge - lead - now)
            poll()
            spent = evaluate_gate(led, cfg0, clock).spend_micros
            # the budget: half a minute's charge above the key's share of today's spend (one
            # key: its share is all the spend once it has sent tokens); the next charge crosses it
            budget = spent + FLAVORS["n3-H100x1"].active_per_min // 2
            key = create_key(led, "k", 0, budget)
            time.sleep(KEY_WAIT_S)  # every gateway re-read its key table
            clients = [subprocess.Popen([PY, __file__, "--client", b, key, str(args.seconds),
                                         str(args.clients)], stdout=subprocess.PIPE, text=True)
                       for b in bases]
            t_star, eval_s, share = None, 0.0, 0
            stop_at = time.time() + args.seconds
            while t_star is None and time.time() < stop_at - 1:
                time.sleep(POLL_S)
                poll()
                committed = time.time()  # the poll's samples are committed
                t0 = time.perf_counter()
                gate = evaluate_gate(led, cfg0, clock)
                eval_s = time.perf_counter() - t0
                share = gate.key_spend_micros.get("k", 0)
                if "k" in gate.closed_keys:
                    t_star = committed
            logs = [json.loads(c.communicate(timeout=args.seconds + 120)[0]) for c in clients]
            led.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
        lc.stop()
    if t_star is None:
        raise SystemExit(f"the key's share ({share} micro-$) never reached its budget "
                         f"({budget}); run longer")
    rows, all_after, all_tokens, rates = [], 0, 0, []
    for log in logs:
        before = [e for e in log if e[0] < t_star and e[1] == 200]
        after = [e for e in log if e[0] >= t_star and e[1] == 200]
        refused = [e for e in log if e[0] >= t_star and e[1] == 429]
        early = [e for e in log if e[0] < t_star and e[1] != 200]  # sent just before t*,
        assert len(early) <= args.clients, early[:5]  # checked just after the commit
        assert {e[3] for e in refused} <= {"budget_exhausted"}, {e[3] for e in refused}
        last = max((e[0] for e in after), default=t_star) - t_star
        first_ref = min((e[0] for e in refused), default=float("nan")) - t_star
        tok = sum(e[2] for e in after)
        all_after += len(after)
        all_tokens += tok
        span = (t_star - min((e[0] for e in before), default=t_star)) or 1
        rates.append(sum(e[2] for e in before) / span)
        rows.append((len(before), len(after), tok, last, first_ref))
    r_k = sum(rates)
    c_k = args.gateways * args.clients
    bound = r_k * (0.2 + 2.0 + eval_s) + c_k * BODY["max_tokens"]
    return {"rows": rows, "after": all_after, "tokens": all_tokens, "r_k": r_k, "eval_s": eval_s,
            "bound": bound, "budget": budget, "share": share,
            "last": max(r[3] for r in rows), "first": max(r[4] for r in rows)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateways", type=int, default=4)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=16)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--client", nargs=4)
    args = ap.parse_args(argv)
    if args.client:
        b, k, s, c = args.client
        client_main(b, k, float(s), int(c))
        return
    import statistics

    results = []
    for run in range(args.runs):
        res = run_once(args)
        results.append(res)
        print(f"run {run + 1}: {args.gateways} gateways x {args.clients} clients of one key, "
              f"gate_cache_s 2 (default), budget {res['budget']} micro-$ crossed by the poll at "
              f"t* (the key's share then {res['share']}); gate evaluation {res['eval_s'] * 1000:.0f} ms")
        print("| gateway | admitted before t* | admitted after t* | tokens after t* | "
              "last admitted after t* (s) | first refusal after t* (s) |")
        print("|---|---|---|---|---|---|")
        for g, (nb, na, tok, last, first) in enumerate(res["rows"]):
            print(f"| {g} | {nb} | {na} | {tok} | {last:.2f} | {first:.2f} |")
        print(f"all gateways: {res['after']} requests, {res['tokens']} output tokens admitted "
              f"after t*; the key's rate before t*: {res['r_k']:.0f} output tokens/s; bound "
              f"r_k x (0.2 s flush + 2 s gate_cache_s + eval) + C_k x max_tokens = "
              f"{res['bound']:.0f} tokens")
    if args.runs > 1:
        med = {k: statistics.median(r[k] for r in results)
               for k in ("after", "tokens", "r_k", "bound", "last", "first", "eval_s")}
        print(f"medians of {args.runs} runs: {med['after']:.0f} requests and {med['tokens']:.0f} "
              f"output tokens admitted after t*; slowest gateway's last admission "
              f"{med['last']:.2f} s and first refusal {med['first']:.2f} s after t*; key rate "
              f"{med['r_k']:.0f} tokens/s; bound {med['bound']:.0f} tokens; gate evaluation "
              f"{med['eval_s'] * 1000:.0f} ms")
        print("per run (tokens after t* / bound): " + ", ".join(
            f"{r['tokens']}/{r['bound']:.0f}" for r in results))


if __name__ == "__main__":
    main()
