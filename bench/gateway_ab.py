"""Two (or more) builds or settings of the gateway side by side: one engine, alternating wrk
rounds, medians. How docs/benchmarks.md measured what each issue-15 change bought.

    .venv/bin/python bench/gateway_ab.py --variant base:cwd=/work/wt/base \\
        --variant new: [--variant thread:toml=usage_writer="thread"] [--conns 1,32] \\
        [--rounds 6] [--seconds 3] [--overhead]

A variant is ``name:key=value;key=value`` with keys ``cwd`` (a checkout to run
``python -m spotctl gateway`` from, e.g. a ``git worktree`` of the commit before a change),
``toml`` (lines added to its ``[gateway]`` section) and ``env.NAME``. Each variant is its own
gateway process with one worker. Per round and variant: req/s, p50/p99 (wrk), CPU µs per request
of the gateway's process tree and of its own process alone (/proc).

``--overhead``: instead, a sequential Python client sends 20,000 requests through the first
variant and reports the round trip and ``x-spotctl-overhead-ms`` (the gateway's own time)
at p50/p99/p99.9.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import gateway_overhead as G  # noqa: E402

from spotctl.testing import free_port, wait_http  # noqa: E402


def own_cpu_s(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_text()
    f = raw[raw.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / G.TICK


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    opts: dict = {"cwd": str(ROOT), "toml": "", "env": {}}
    for item in filter(None, rest.split(";")):
        k, _, v = item.partition("=")
        if k.startswith("env."):
            opts["env"][k[4:]] = v
        elif k == "toml":
            opts["toml"] += v + "\n"
        elif k == "cwd":
            opts["cwd"] = v
        else:
            raise SystemExit(f"unknown variant key {k!r}")
    return name, opts


def overhead(url: str, key: str, n: int = 20_000) -> None:
    host, port = url.rsplit("/", 1)[-1].split(":")
    conn = http.client.HTTPConnection(host, int(port))
    body = G.PLAIN_BODY.encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    total, own = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body, headers)
        r = conn.getresponse()
        r.read()
        total.append((time.perf_counter() - t0) * 1000)
        own.append(float(r.getheader("x-spotctl-overhead-ms")))
    total.sort()
    own.sort()

    def q(a, p):
        return a[min(len(a) - 1, int(p * len(a)))]

    print(f"{n} sequential requests: round trip p50 {q(total, .5):.3f} ms, p99 "
          f"{q(total, .99):.3f}, p99.9 {q(total, .999):.3f}; x-spotctl-overhead-ms p50 "
          f"{q(own, .5):.3f}, p99 {q(own, .99):.3f}, p99.9 {q(own, .999):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--conns", default="1,32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--overhead", action="store_true")
    args = ap.parse_args()
    G.apt_install("wrk")
    work = Path(tempfile.mkdtemp(prefix="gw-ab-"))
    eport = free_port()
    procs = []
    try:
        engine = G.start([sys.executable, str(ROOT / "bench" / "gateway_engine.py"), "--port",
                          str(eport), "--tick-ms", "5"])
        procs.append(engine)
        assert engine.stdout.readline().startswith("READY")
        targets = []
        for text in args.variant:
            name, opts = parse_variant(text)
            port = free_port()
            cfg = work / f"{name}.toml"
            cfg.write_text(f'[ledger]\npath = "{name}.db"\n[[tiers]]\nname = "bench"\n'
                           f'model = "bench"\nendpoint = "http://127.0.0.1:{eport}"\n'
                           f'[gateway]\nlisten = "127.0.0.1:{port}"\nworkers = 1\n'
                           f'max_concurrent_requests = 100000\nspool_dir = "spool-{name}"\n'
                           + opts["toml"])
            env = {**os.environ, **opts["env"], "SPOTCTL_CONFIG": str(cfg)}
            env.pop("SPOTCTL_CLOCK", None)
            key = json.loads(subprocess.run(
                [sys.executable, "-m", "spotctl", "keys", "create", "bench", "--json"],
                env=env, capture_output=True, text=True, check=True,
                cwd=opts["cwd"]).stdout)["key"]
            gw = G.start([sys.executable, "-m", "spotctl", "gateway"], env=env, cwd=opts["cwd"])
            procs.append(gw)
            wait_http(f"http://127.0.0.1:{port}/healthz")
            script = work / f"{name}.lua"
            script.write_text('wrk.method = "POST"\nwrk.body = ' + json.dumps(G.PLAIN_BODY) +
                              '\nwrk.headers["Content-Type"] = "application/json"\n'
                              f'wrk.headers["Authorization"] = "Bearer {key}"\n')
            targets.append((G.Target(name, f"http://127.0.0.1:{port}", gw.pid, {}), script, key))
        if args.overhead:
            overhead(targets[0][0].url, targets[0][2])
            return
        targets.append((G.Target("direct", f"http://127.0.0.1:{eport}", None, {}),
                        targets[0][1], ""))
        for conns in (int(c) for c in args.conns.split(",")):
            res: dict[str, list[dict]] = {}
            for rnd in range(args.rounds):
                for t, script, _ in (targets if rnd % 2 == 0 else targets[::-1]):
                    own0 = own_cpu_s(t.pid) if t.pid else 0.0
                    r = G.measure_plain(t, conns, args.seconds, script)
                    r["own_us"] = ((own_cpu_s(t.pid) - own0) / max(1, r["requests"]) * 1e6
                                   if t.pid else 0.0)
                    res.setdefault(t.name, []).append(r)
            for name, rows in res.items():
                def m(k, rows=rows):
                    return statistics.median(x[k] for x in rows)

                print(f"c={conns} {name:>10}: {m('rps'):8,.0f} req/s, CPU {m('cpu_us'):4.0f} "
                      f"µs/request (own process {m('own_us'):4.0f}), p50 {m('p50'):.2f} ms, "
                      f"p99 {m('p99'):.2f} ms", flush=True)
    finally:
        for p in reversed(procs):
            G.stop(p)


if __name__ == "__main__":
    main()
