"""Gateway overhead against the proxy limit (issue 15): the same engine measured direct, through
``spotctl gateway``, through nginx (Debian's, installed by this bench when missing) and through
LiteLLM's proxy when it is installed, in alternating rounds on one machine.

    .venv/bin/python bench/gateway_overhead.py [--rounds 3] [--seconds 4] [--workers 1]

Scenarios: non-streaming at concurrency 1, 8, 32 (``wrk``, a C load generator, installed when
missing); 16 and 64 streams at full speed; 64 and 128 streams paced at 5 ms ticks (one ticker in
the engine writes an event to every open stream, as a batched decoder does). The engine
(bench/gateway_engine.py) stamps every event with CLOCK_MONOTONIC, so the stream client measures
each event's delivery latency. CPU per request or event is the proxy's own CPU time (its process
tree, /proc) over the round divided by what it relayed. Figures are medians over the rounds;
ratios compare with nginx measured in the same rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gateway_engine import run_streams  # noqa: E402

from spotctl.testing import free_port, wait_http  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
PLAIN_BODY = json.dumps({"model": "bench", "max_tokens": 16,
                         "messages": [{"role": "user", "content": "benchmark me"}]})


def apt_install(*packages: str) -> None:
    missing = [p for p in packages if shutil.which(p) is None]
    if not missing:
        return
    print(f"installing {' '.join(missing)} (apt)", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        ppid, ut, st = int(fields[1]), int(fields[11]), int(fields[12])
        stats[int(entry)] = (ut, st)
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += sum(stats[p])
        todo += children.get(p, [])
    return total / TICK


# -- the proxies --------------------------------------------------------------------------------
class Target:
    def __init__(self, name: str, url: str, pid: int | None, headers: dict[str, str]) -> None:
        self.name, self.url, self.pid, self.headers = name, url, pid, headers

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


def start(argv, **kw) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True, **kw)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib_suppress():
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


class contextlib_suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], ProcessLookupError)


def nginx_conf(work: Path, port: int, engine_port: int, workers: int = 1) -> Path:
    conf = work / "nginx.conf"
    conf.write_text(f"""
worker_processes {workers};
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    upstream engine {{ server 127.0.0.1:{engine_port}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=2048;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://engine;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 900s;
        }}
    }}
}}
""")
    return conf


# -- measurements -------------------------------------------------------------------------------
def wrk(target: Target, conns: int, seconds: float, script: Path) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency", "-s",
                          str(script), f"{target.url}/v1/chat/completions"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def lat(q: str) -> float:
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {"rps": rps, "requests": total, "errors": int(errors.group(1)) if errors else 0,
            "p50": lat("50"), "p99": lat("99")}


def measure_plain(target: Target, conns: int, seconds: float, script: Path) -> dict:
    cpu0 = tree_cpu_s(target.pid) if target.pid else 0.0
    r = wrk(target, conns, seconds, script)
    cpu = (tree_cpu_s(target.pid) - cpu0) if target.pid else 0.0
    r["cpu_us"] = cpu / max(1, r["requests"]) * 1e6
    return r


def measure_stream(target: Target, conns: int, seconds: float, paced: bool) -> dict:
    body = json.dumps({"model": "bench", "max_tokens": 200 if paced else 256, "stream": True,
                       "paced": paced, "messages": [{"role": "user", "content": "go"}]}).encode()
    headers = b"".join(f"{k}: {v}\r\n".encode() for k, v in target.headers.items())
    cpu0 = tree_cpu_s(target.pid) if target.pid else 0.0
    s = asyncio.run(run_streams("127.0.0.1", target.port, "/v1/chat/completions", headers,
                                body, conns, seconds, paced))
    cpu = (tree_cpu_s(target.pid) - cpu0) if target.pid else 0.0
    r = {"eps": s["events"] / s["seconds"], "events": s["events"], "errors": s["errors"],
         "cpu_us": cpu / max(1, s["events"]) * 1e6}
    if paced and s["lat"]:
        lat = sorted(s["lat"])
        r["p50"] = lat[len(lat) // 2] / 1e6
        r["p99"] = lat[min(len(lat) - 1, int(0.99 * len(lat)))] / 1e6
        r["in_time"] = sum(1 for x in lat if x <= 5_000_000) / len(lat)
    return r


def med(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--workers", type=int, default=1,
                    help="worker processes of spotctl and of nginx alike (default 1)")
    ap.add_argument("--only", default="plain,stream,paced")
    ap.add_argument("--clients", default="h1",
                    help="spotctl upstream clients to measure, comma-separated (h1,aiohttp)")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    ap.add_argument("--soak", type=float, default=0,
                    help="instead: 256 streaming clients through spotctl for this many seconds "
                         "(errors, ledger rows = streams, RSS over time)")
    args = ap.parse_args(argv)
    apt_install("nginx", "wrk")
    work = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    eport, gport, nport = free_port(), free_port(), free_port()
    procs = []
    try:
        engine = start([sys.executable, str(ROOT / "bench" / "gateway_engine.py"), "--port",
                        str(eport), "--tick-ms", "5"])
        procs.append(engine)
        assert engine.stdout.readline().startswith("READY")
        spotctls = []
        key = None
        for client in args.clients.split(","):
            gport = free_port()
            cfg = work / f"spotctl-{client}.toml"
            cfg.write_text(f'[ledger]\npath = "spotctl.db"\n[[tiers]]\nname = "bench"\n'
                           f'model = "bench"\nendpoint = "http://127.0.0.1:{eport}"\n'
                           f'[gateway]\nlisten = "127.0.0.1:{gport}"\nworkers = {args.workers}\n'
                           f'max_concurrent_requests = 100000\nupstream_client = "{client}"\n'
                           f'spool_dir = "spool-{client}"\n')
            env = {**os.environ, "SPOTCTL_CONFIG": str(cfg)}
            env.pop("SPOTCTL_CLOCK", None)
            if key is None:
                key = json.loads(subprocess.run(
                    [sys.executable, "-m", "spotctl", "keys", "create", "bench", "--json"],
                    env=env, capture_output=True, text=True, check=True).stdout)["key"]
            gateway = start([sys.executable, "-m", "spotctl", "gateway"], env=env)
            procs.append(gateway)
            spotctls.append((client, gport, gateway))
        for d in ("body", "proxy", "fcgi", "uwsgi", "scgi"):
            (work / d).mkdir()
        nginx = start(["nginx", "-c", str(nginx_conf(work, nport, eport, args.workers)), "-p", str(work)])
        procs.append(nginx)
        for _, gport, _ in spotctls:
            wait_http(f"http://127.0.0.1:{gport}/healthz")
        wait_http(f"http://127.0.0.1:{nport}/health")
        auth = {"authorization": f"Bearer {key}"}
        names = ["spotctl"] if len(spotctls) == 1 else [f"spotctl-{c}" for c, _, _ in spotctls]
        targets = [Target("direct", f"http://127.0.0.1:{eport}", None, {}),
                   *(Target(n, f"http://127.0.0.1:{gport}", gw.pid, auth)
                     for n, (_, gport, gw) in zip(names, spotctls, strict=True)),
                   Target("nginx", f"http://127.0.0.1:{nport}", nginx.pid, {})]
        try:
            import litellm  # noqa: F401

            print("litellm is installed but not wired into this bench yet", flush=True)
        except ImportError:
            print("LiteLLM: not installed (skipped)", flush=True)
        if args.soak:
            soak(targets[1], spotctls[0][2], work, args.soak)
            return
        script = work / "post.lua"
        script.write_text('wrk.method = "POST"\nwrk.body = ' + json.dumps(PLAIN_BODY) +
                          '\nwrk.headers["Content-Type"] = "application/json"\n'
                          f'wrk.headers["Authorization"] = "Bearer {key}"\n')
        scenarios = []
        only = set(args.only.split(","))
        if "plain" in only:
            scenarios += [("plain", c) for c in (1, 8, 32)]
        if "stream" in only:
            scenarios += [("stream", c) for c in (16, 64)]
        if "paced" in only:
            scenarios += [("paced", c) for c in (64, 128)]
        results: dict[tuple[str, int, str], list[dict]] = {}
        for kind, conns in scenarios:
            for rnd in range(args.rounds):
                order = targets if rnd % 2 == 0 else list(reversed(targets))
                for t in order:
                    if kind == "plain":
                        r = measure_plain(t, conns, args.seconds, script)
                    else:
                        r = measure_stream(t, conns, args.seconds, kind == "paced")
                    results.setdefault((kind, conns, t.name), []).append(r)
                    print(f"{kind} c={conns} round {rnd + 1} {t.name}: " +
                          ", ".join(f"{k}={v:.3g}" for k, v in r.items()
                                    if isinstance(v, float)), flush=True)
        report(results, scenarios, args, [t.name for t in targets])
        if args.json:
            args.json.write_text(json.dumps({f"{k[0]}/{k[1]}/{k[2]}": v
                                             for k, v in results.items()}, indent=1))
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(work, ignore_errors=True)


def rss_mb(pid: int) -> float:
    total = 0
    for p in [pid, *child_pids(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def child_pids(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(raw[raw.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(entry))
    return out


def soak(target: Target, gateway: subprocess.Popen, work: Path, seconds: float) -> None:
    """256 streaming clients for ``seconds``: every stream ends, every stream has its row, and
    the gateway's memory does not grow."""
    import threading

    rss: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not stop.wait(5):
            rss.append((time.monotonic() - t0, rss_mb(gateway.pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    rss.append((0.0, rss_mb(gateway.pid)))
    sampler.start()
    body = json.dumps({"model": "bench", "max_tokens": 64, "stream": True,
                       "messages": [{"role": "user", "content": "soak"}]}).encode()
    headers = b"".join(f"{k}: {v}\r\n".encode() for k, v in target.headers.items())
    s = asyncio.run(run_streams("127.0.0.1", target.port, "/v1/chat/completions", headers, body,
                                256, seconds, False))
    stop.set()
    sampler.join()
    time.sleep(2)  # the last rows become durable
    from spotctl.ledger.db import Ledger

    with Ledger(work / "spotctl.db") as led:
        rows, ok = led.conn.execute(
            "SELECT count(*), sum(status = 'ok') FROM usage").fetchone()
    print(f"soak: 256 clients x {seconds:g} s: {s['streams']} streams, {s['errors']} errors, "
          f"{s['events'] / s['seconds']:,.0f} events/s; ledger rows {rows} (ok {ok})")
    print("RSS MB over time: " + ", ".join(f"{t:.0f}s {m:.0f}" for t, m in rss))
    half = [(t, m) for t, m in rss if t >= seconds / 2]
    if len(half) >= 3:  # least squares over the second half: the warm-up left out
        mt = statistics.fmean(t for t, _ in half)
        mm = statistics.fmean(m for _, m in half)
        slope = (sum((t - mt) * (m - mm) for t, m in half) /
                 sum((t - mt) ** 2 for t, _ in half))
        print(f"RSS over the second half: {min(m for _, m in half):.0f}-"
              f"{max(m for _, m in half):.0f} MB, slope {slope * 60:+.2f} MB/min")


def report(results, scenarios, args, names: list[str]) -> None:
    print(f"\nmedians over {args.rounds} rounds of {args.seconds:g} s; spotctl with "
          f"{args.workers} worker(s), nginx with as many\n")
    print("| scenario | target | throughput | CPU µs per req/event | p50 ms | p99 ms | "
          "added p50 ms | added p99 ms | in time | spotctl ÷ nginx |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, conns in scenarios:
        unit = "req/s" if kind == "plain" else "events/s"
        tput_key = "rps" if kind == "plain" else "eps"
        direct = results[(kind, conns, "direct")]
        for name in names:
            rows = results[(kind, conns, name)]
            tput, cpu = med(rows, tput_key), med(rows, "cpu_us")
            p50, p99 = med(rows, "p50"), med(rows, "p99")
            add50 = add99 = None
            if name != "direct" and p50 is not None:
                add50, add99 = p50 - med(direct, "p50"), p99 - med(direct, "p99")
            ratio = ""
            if name.startswith("spotctl"):
                ng = med(results[(kind, conns, "nginx")], tput_key)
                ratio = f"{tput / ng:.0%} of nginx's {unit}" if ng else ""
            in_time = med(rows, "in_time")
            errors = sum(r["errors"] for r in rows)
            print(f"| {kind} c={conns} | {name} | {tput:,.0f} {unit}"
                  f"{f' ({errors} errors)' if errors else ''} | "
                  f"{'' if name == 'direct' else f'{cpu:,.0f}'} | "
                  f"{'' if p50 is None else f'{p50:.2f}'} | {'' if p99 is None else f'{p99:.2f}'} | "
                  f"{'' if add50 is None else f'{add50:+.2f}'} | "
                  f"{'' if add99 is None else f'{add99:+.2f}'} | "
                  f"{'' if in_time is None else f'{in_time:.1%}'} | {ratio} |")


if __name__ == "__main__":
    main()
