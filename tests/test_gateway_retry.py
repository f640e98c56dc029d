"""Preemption under load: a request that failed before any byte reached the client is retried
(on another tier, or on the same one once it recovers); never once bytes were sent."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from spotctl.config import parse_config
from tests.fixtures_engines import gateway_key, start_builtin, start_gateway, wait_rows


def _engine(model: str, port: int | None = None):
    return start_builtin(model, port=port)


def _load(base, key, stop: threading.Event, results: list, stream: bool = False) -> None:
    with httpx.Client(base_url=base, timeout=60,
                      headers={"Authorization": f"Bearer {key}"}) as c:
        while not stop.is_set():
            body = {"model": "m", "prompt": "x y z", "max_tokens": 40, "stream": stream}
            try:
                r = c.post("/v1/completions", json=body)
                ok = r.status_code == 200 and (not stream or b"[DONE]" in r.content)
                results.append((r.status_code, ok, r.content[-200:]))
            except httpx.HTTPError as exc:
                results.append((0, False, type(exc).__name__))


def _until(pred, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout  # clock-ok
    while not pred():
        assert time.monotonic() < deadline, "timed out"  # clock-ok
        time.sleep(0.02)  # clock-ok


@pytest.fixture
def two_engines(monkeypatch):
    pa, ea = start_builtin("m", "--tokens-per-s", "400")
    pb, eb = start_builtin("m", "--tokens-per-s", "400")
    monkeypatch.setenv("ENGINE_KEY", ea.api_key)
    yield (pa, ea), (pb, eb)
    for p in (pa, pb):
        if p.poll() is None:
            p.terminate()
        p.wait(10)


def test_preemption_under_load_fails_no_non_streaming_request(two_engines, tmp_path, clock):
    (pa, ea), (_pb, eb) = two_engines
    cfg = parse_config(
        f'[[tiers]]\nname = "spot"\nmodel = "m"\nendpoint = "{ea.base_url}"\n'
        'api_key_env = "ENGINE_KEY"\npriority = 0\n'
        f'[[tiers]]\nname = "ondemand"\nmodel = "m"\nendpoint = "{eb.base_url}"\n'
        'api_key_env = "ENGINE_KEY"\npriority = 1\n', tmp_path / "spotctl.toml")
    key = gateway_key(cfg.ledger_path)
    handle = start_gateway(cfg, clock)
    try:
        stop, results = threading.Event(), []
        with ThreadPoolExecutor(8) as pool:
            futs = [pool.submit(_load, handle.url, key, stop, results) for _ in range(8)]
            _until(lambda: len(results) >= 20)  # load on the spot tier
            before = len(results)
            os.kill(pa.pid, signal.SIGKILL)  # preempted: the engine is gone mid-request
            _until(lambda: len(results) >= before + 40)  # load carries on
            stop.set()
            for f in futs:
                f.result()
        failed = [r for r in results if not r[1]]
        assert before > 10 and len(results) > before + 10
        assert failed == []
        rows = wait_rows(cfg.ledger_path, len(results))
        assert len(rows) == len(results) and {r["status"] for r in rows} == {"ok"}
        assert {r["tier"] for r in rows} == {"spot", "ondemand"}
    finally:
        handle.stop()


def test_a_single_tier_recovering_serves_the_requests_that_waited(tmp_path, clock, monkeypatch):
    from spotctl.localcloud.engines import free_port

    port = free_port()
    proc, engine = _engine("m", port)
    monkeypatch.setenv("ENGINE_KEY", engine.api_key)
    cfg = parse_config(
        f'[[tiers]]\nname = "only"\nmodel = "m"\nendpoint = "{engine.base_url}"\n'
        'api_key_env = "ENGINE_KEY"\n[gateway]\nwake_timeout_s = 20\nprobe_interval_s = 0.2\n',
        tmp_path / "spotctl.toml")
    key = gateway_key(cfg.ledger_path)
    handle = start_gateway(cfg, clock)
    restarted = None
    try:
        client = openai.OpenAI(base_url=handle.base_url, api_key=key, max_retries=0)
        client.completions.create(model="m", prompt="a", max_tokens=2)
        proc.kill()
        proc.wait(10)
        with ThreadPoolExecutor(4) as pool:
            futs = [pool.submit(client.completions.create, model="m", prompt=f"w{i}",
                                max_tokens=3) for i in range(4)]
            time.sleep(1.0)  # clock-ok: the engine is down for a second, then restarts
            restarted, _ = _engine("m", port)
            done = [f.result(timeout=30) for f in futs]
        assert all(d.usage.completion_tokens == 3 for d in done)
    finally:
        handle.stop()
        if restarted is not None and restarted.poll() is None:
            restarted.terminate()
            restarted.wait(10)


def test_a_stream_that_sent_bytes_is_never_retried(tmp_path, clock):
    import asyncio

    from tests.fixtures_engines import Script, ScriptedEngine, asgi_gateway, serve_asgi, tier_toml

    a = ScriptedEngine(Script(tokens=6, die_after=2), model="m")
    b = ScriptedEngine(model="m")
    with serve_asgi(a) as url_a, serve_asgi(b) as url_b:
        cfg = parse_config(tier_toml("a", "m", url_a, priority=0) +
                           tier_toml("b", "m", url_b, priority=1), tmp_path / "spotctl.toml")
        key = gateway_key(cfg.ledger_path)

        async def go():
            async with asgi_gateway(cfg, clock) as (_app, c):
                return await c.post("/v1/chat/completions", headers={
                    "Authorization": f"Bearer {key}"}, json={
                    "model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]})

        r = asyncio.run(go())
    assert r.status_code == 200 and r.content.count(b'"delta"') == 2
    assert b'"code":"upstream_error"' in r.content and b"[DONE]" not in r.content
    assert len(a.requests) == 1 and b.requests == []
    [row] = wait_rows(cfg.ledger_path, 1)
    assert row["status"] == "upstream_error" and row["tokens_estimated"] == 1
    assert row["completion_tokens"] == 2 and row["tier"] == "a"
