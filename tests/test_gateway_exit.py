"""Issue 11 §6: no row lost or zeroed on exit and timeouts (a ``finally`` always records)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import httpx

from spotctl.config import parse_config
from spotctl.ledger.check import check_ledger
from spotctl.ledger.db import Ledger
from spotctl.localcloud.engines import free_port
from tests.fixtures_engines import (
    Script,
    asgi_gateway,
    gateway_key,
    start_builtin,
    tier_toml,
    wait_rows,
)


def test_a_stream_past_total_timeout_is_recorded_estimated(scripted, tmp_path, clock):
    engine, url = scripted
    engine.script = Script(tokens=50, delay_s=0.1)  # 5 s of tokens
    cfg = parse_config(tier_toml("s", "scripted", url) + "[gateway]\ntotal_timeout_s = 1\n",
                       tmp_path / "spotctl.toml")
    key = gateway_key(cfg.ledger_path)

    async def go():
        async with asgi_gateway(cfg, clock) as (_app, c):
            return await c.post("/v1/chat/completions", headers={
                "Authorization": f"Bearer {key}"}, json={
                "model": "scripted", "stream": True, "messages": []})

    r = asyncio.run(go())
    relayed = r.content.count(b'"delta"')
    assert r.status_code == 200 and 3 <= relayed < 50
    assert b'"code":"upstream_timeout"' in r.content
    [row] = wait_rows(cfg.ledger_path, 1)
    assert row["status"] == "upstream_timeout" and row["tokens_estimated"] == 1
    assert row["completion_tokens"] == relayed and row["prompt_tokens"] > 0


def test_sigterm_with_streams_longer_than_the_grace_records_every_row(tmp_path):
    proc_e, engine = start_builtin("slow", "--tokens-per-s", "4", "--ttft-ms", "0")
    port = free_port()
    cfg_path = tmp_path / "spotctl.toml"
    cfg_path.write_text(
        f'[[tiers]]\nname = "s"\nmodel = "slow"\nendpoint = "{engine.base_url}"\n'
        f'api_key_env = "ENGINE_KEY"\n[gateway]\nlisten = "127.0.0.1:{port}"\n'
        "shutdown_grace_s = 1\n")
    cfg = parse_config(cfg_path.read_text(), cfg_path)
    key = gateway_key(cfg.ledger_path)
    env = {**os.environ, "SPOTCTL_CONFIG": str(cfg_path), "ENGINE_KEY": engine.api_key}
    env.pop("SPOTCTL_CLOCK", None)
    gw = subprocess.Popen([sys.executable, "-m", "spotctl", "gateway"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    received: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 20  # clock-ok
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline  # clock-ok
            time.sleep(0.05)  # clock-ok

        def stream(i: int) -> None:
            received[i] = 0
            body = {"model": "slow", "prompt": f"long {i}", "max_tokens": 200, "stream": True}
            try:
                with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=60,
                                  headers={"Authorization": f"Bearer {key}"}) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {") and '"text"' in line:
                            received[i] += 1
            except httpx.HTTPError:
                pass  # the gateway cut the stream at shutdown: expected

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30  # clock-ok
        while not (len(received) == 3 and all(v >= 1 for v in received.values())):
            assert time.monotonic() < deadline, received  # clock-ok: every stream under way
            time.sleep(0.05)  # clock-ok
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(30) is not None
        for t in threads:
            t.join(30)
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait(10)
        proc_e.kill()  # it would finish its (orphaned) slow streams before exiting
        proc_e.wait(10)
    rows = wait_rows(cfg.ledger_path, 3, timeout=2)
    assert len(rows) == 3
    cut = [r for r in rows if r["status"] == "gateway_shutdown"]
    assert cut and {r["status"] for r in rows} <= {"gateway_shutdown", "ok"}
    assert all(r["tokens_estimated"] == 1 for r in cut)
    assert sorted(r["completion_tokens"] for r in rows) >= sorted(received.values())
    assert all(r["completion_tokens"] >= 1 for r in rows)
    with Ledger(cfg.ledger_path) as led:
        assert all(c.ok for c in check_ledger(led))
