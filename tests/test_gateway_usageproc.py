"""Issue 15: the usage writer runs in its own process. Its faults, for real: the writer killed
with SIGKILL mid-traffic, the writer frozen with SIGSTOP, and the gateway itself killed with
SIGKILL. Every row still lands exactly once, and while rows cannot be confirmed durable the
gate is closed (``usage_unrecordable``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from spotctl.config import parse_config
from spotctl.gateway import usageproc
from spotctl.ledger.check import check_ledger
from spotctl.ledger.db import Ledger
from tests.fixtures_engines import (
    asgi_gateway,
    gateway_key,
    gateway_process_config,
    tier_toml,
    wait_rows,
)

CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its reaper."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _ids(rows: list[dict]) -> set[str]:
    return {r["id"] for r in rows}


def test_a_writer_killed_mid_traffic_is_restarted_and_no_row_is_lost(scripted, tmp_path, clock):
    _engine, url = scripted
    cfg = parse_config(tier_toml("s", "scripted", url), tmp_path / "spotctl.toml")
    h = {"Authorization": f"Bearer {gateway_key(cfg.ledger_path)}"}

    async def go():
        async with asgi_gateway(cfg, clock) as (app, c):
            rec = app.recorder
            assert isinstance(rec, usageproc.ProcessRecorder)
            first = rec.writer_pid
            ids = []
            for i in range(60):
                r = await c.post("/v1/chat/completions", json=CHAT, headers=h)
                assert r.status_code == 200
                ids.append(r.headers["x-request-id"])
                if i == 30:
                    os.kill(first, signal.SIGKILL)  # rows shipped to it and not yet acked
            for _ in range(100):
                if rec.writer_pid != first and rec.durable and not rec.unconfirmed:
                    break
                await asyncio.sleep(0.05)
            return ids, first, rec.writer_pid, rec.restarts

    ids, first, second, restarts = asyncio.run(go())
    assert second != first and restarts >= 1
    rows = wait_rows(cfg.ledger_path, 60)
    assert len(rows) == 60 and _ids(rows) == set(ids)  # every row, once
    with Ledger(cfg.ledger_path) as led:
        assert all(r.ok for r in check_ledger(led))


def test_a_frozen_writer_closes_the_gate_until_it_confirms_rows(scripted, tmp_path, clock,
                                                                 monkeypatch):
    monkeypatch.setattr(usageproc, "STUCK_S", 0.5)
    _engine, url = scripted
    cfg = parse_config(tier_toml("s", "scripted", url), tmp_path / "spotctl.toml")
    h = {"Authorization": f"Bearer {gateway_key(cfg.ledger_path)}"}

    async def go():
        async with asgi_gateway(cfg, clock) as (app, c):
            pid = app.recorder.writer_pid
            os.kill(pid, signal.SIGSTOP)
            try:
                assert (await c.post("/v1/chat/completions", json=CHAT, headers=h)
                        ).status_code == 200
                closed = None
                for _ in range(100):  # the row waits unconfirmed past STUCK_S
                    r = await c.post("/v1/chat/completions", json=CHAT, headers=h)
                    if r.status_code == 503:
                        closed = r.json()["error"]["code"]
                        break
                    await asyncio.sleep(0.05)
                ready = (await c.get("/readyz")).json()
                not_durable = app.recorder.pending
            finally:
                os.kill(pid, signal.SIGCONT)
            for _ in range(100):
                if app.recorder.durable:
                    break
                await asyncio.sleep(0.05)
            after = (await c.post("/v1/chat/completions", json=CHAT, headers=h)).status_code
            return closed, ready, after, not_durable

    closed, ready, after, not_durable = asyncio.run(go())
    assert not_durable >= 1  # the metric _usage_rows_not_durable says so too
    assert closed == "usage_unrecordable"
    assert ready["ready"] is False and "confirmed no row" in ready["reason"]
    assert after == 200
    rows = wait_rows(cfg.ledger_path, 3)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(rows) == len(_ids(rows)) and len(ok) >= 2


def test_rows_shipped_before_the_gateway_is_killed_are_written(scripted, tmp_path):
    """SIGKILL to the gateway: the writer still writes what it was shipped, then exits."""
    _engine, url = scripted
    _, cfg, key, env, port = gateway_process_config(tmp_path, url, "workers = 1\n")
    proc = subprocess.Popen([sys.executable, "-m", "spotctl", "gateway"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10,
                          headers={"Authorization": f"Bearer {key}"}) as c:
            deadline = time.monotonic() + 30  # clock-ok: a real process starting
            while True:
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the gateway did not start"  # clock-ok
                time.sleep(0.05)  # clock-ok
            ids = [c.post("/v1/chat/completions", json=CHAT).headers["x-request-id"]
                   for _ in range(40)]
            time.sleep(3 * usageproc.SHIP_S)  # clock-ok: shipped, maybe not yet written
            writer = [int(p) for t in Path(f"/proc/{proc.pid}/task").glob("*/children")
                      for p in t.read_text().split()]  # any of its threads may have started it
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        assert len(writer) == 1
        deadline = time.monotonic() + 10  # clock-ok
        while _running(writer[0]) and time.monotonic() < deadline:  # clock-ok
            time.sleep(0.05)  # clock-ok
        assert not _running(writer[0]), "the writer outlived the gateway"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    rows = wait_rows(cfg.ledger_path, 40)
    assert _ids(rows) == set(ids)
