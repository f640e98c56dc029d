"""Issue 11 §1: never serve what cannot be recorded, never drop a usage row.

Real faults, no mocks: a read-only ledger file (chattr +i as root, mode 0444 otherwise), a full
disk (RLIMIT_FSIZE on a real gateway process: the kernel answers EFBIG, SQLite "database or
disk is full"), and a long write lock held by another connection.

The read-only and disk-full cases are SQLite-only: they break the ledger's file, and a
PostgreSQL ledger has none on this host (its failures -- a restart, a cut network, an exhausted
pool -- are tests/test_ledger_failures.py). The long write lock runs on both backends: the
ledger's write lock is SQLite's ``BEGIN IMMEDIATE`` or PostgreSQL's transaction-scoped advisory
lock (spotctl/ledger/backend.py), which the usage writer waits for just as briefly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

from spotctl.config import parse_config
from spotctl.gateway.spool import decode
from spotctl.ledger.check import check_ledger
from spotctl.ledger.db import Ledger
from tests.fixtures_engines import (
    asgi_gateway,
    gateway_key,
    gateway_process_config,
    prlimit_tree,
    tier_toml,
    wait_rows,
)

CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@contextlib.contextmanager
def read_only(path: Path):
    """The file refuses writes, for root too (the immutable flag), until the block ends."""
    root = os.geteuid() == 0
    if root:
        subprocess.run(["chattr", "+i", str(path)], check=True)
    else:
        path.chmod(0o444)
    try:
        yield
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o600)


def _spooled(spool_dir: Path) -> list:
    rows = []
    for f in spool_dir.glob("usage-*.jsonl"):
        rows += decode(f.read_bytes())
    return rows


def _wait(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout  # clock-ok
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"  # clock-ok
        time.sleep(0.05)  # clock-ok


def test_read_only_ledger_spools_rows_and_replays_them_once(scripted, tmp_path, clock):
    _engine, url = scripted
    cfg = parse_config(tier_toml("s", "scripted", url), tmp_path / "spotctl.toml")
    key = gateway_key(cfg.ledger_path)
    spool_dir = tmp_path / "spotctl.db.spool"
    h = {"Authorization": f"Bearer {key}"}

    async def go():
        async with asgi_gateway(cfg, clock) as (app, c):
            with read_only(cfg.ledger_path):
                codes = [(await c.post("/v1/chat/completions", json=CHAT, headers=h)).status_code
                         for _ in range(12)]
                # durable within a second: in the spool, fsync'ed, 0600
                for _ in range(60):
                    if len(_spooled(spool_dir)) == 12:
                        break
                    await asyncio.sleep(0.05)
                spooled = _spooled(spool_dir)
                modes = {stat.S_IMODE(f.stat().st_mode) for f in spool_dir.glob("*.jsonl")}
                ready = (await c.get("/readyz")).status_code
                with Ledger(cfg.ledger_path, readonly=True) as led:
                    in_ledger = led.conn.execute("SELECT count(*) FROM usage").fetchone()[0]
            for _ in range(100):  # writable again: replayed
                if app.recorder.spool_rows == 0:
                    break
                await asyncio.sleep(0.05)
            return codes, spooled, modes, ready, in_ledger

    codes, spooled, modes, ready, in_ledger = asyncio.run(go())
    assert codes == [200] * 12 and in_ledger == 0
    assert len(spooled) == 12 and modes == {0o600}
    assert ready == 200  # spooled rows are durable: serving goes on
    rows = wait_rows(cfg.ledger_path, 12)
    assert len(rows) == 12 and {r["id"] for r in rows} == {r.id for r in spooled}
    assert _spooled(spool_dir) == []
    with Ledger(cfg.ledger_path) as led:
        assert all(r.ok for r in check_ledger(led))


def test_when_neither_ledger_nor_spool_can_take_rows_the_gate_closes(scripted, tmp_path, clock):
    _engine, url = scripted
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool directory should go")
    cfg = parse_config(tier_toml("s", "scripted", url) +
                       f'[gateway]\nspool_dir = "{blocker}/spool"\n', tmp_path / "spotctl.toml")
    key = gateway_key(cfg.ledger_path)
    h = {"Authorization": f"Bearer {key}"}

    async def go():
        async with asgi_gateway(cfg, clock) as (app, c):
            with read_only(cfg.ledger_path):
                first = await c.post("/v1/chat/completions", json=CHAT, headers=h)
                for _ in range(100):
                    if not app.recorder.durable:
                        break
                    await asyncio.sleep(0.05)
                refused = await c.post("/v1/chat/completions", json=CHAT, headers=h)
                ready = await c.get("/readyz")
            for _ in range(100):
                if app.recorder.durable:
                    break
                await asyncio.sleep(0.05)
            again = await c.post("/v1/chat/completions", json=CHAT, headers=h)
            return first, refused, ready, again

    first, refused, ready, again = asyncio.run(go())
    assert first.status_code == 200
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "usage_unrecordable"
    assert ready.status_code == 503 and ready.json()["gate"] == "usage_unrecordable"
    assert again.status_code == 200
    rows = wait_rows(cfg.ledger_path, 3)
    assert [r["status"] for r in rows] == ["ok", "usage_unrecordable", "ok"]


def test_a_long_write_lock_does_not_hold_rows_in_memory(scripted, tmp_path, clock, ledger_toml):
    _engine, url = scripted
    spool_dir = tmp_path / "spool"
    cfg = parse_config(ledger_toml + tier_toml("s", "scripted", url) +
                       f'[gateway]\nspool_dir = "{spool_dir}"\n', tmp_path / "spotctl.toml")
    key = gateway_key(cfg.ledger_target)
    h = {"Authorization": f"Bearer {key}"}

    async def go():
        async with asgi_gateway(cfg, clock) as (app, c):
            locker = Ledger(cfg.ledger_target)
            locker.conn.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            try:
                codes = [(await c.post("/v1/chat/completions", json=CHAT, headers=h)).status_code
                         for _ in range(8)]
                await asyncio.sleep(1.5)
                spooled = len(_spooled(spool_dir))
            finally:
                locker.conn.execute("ROLLBACK")
                locker.close()
            for _ in range(100):
                if app.recorder.spool_rows == 0:
                    break
                await asyncio.sleep(0.05)
            return codes, spooled

    codes, spooled = asyncio.run(go())
    assert codes == [200] * 8
    assert spooled == 8  # durable within 1.5 s although the ledger was locked
    rows = wait_rows(cfg.ledger_target, 8)
    assert len(rows) == 8 and len({r["id"] for r in rows}) == 8


# -- disk full, in a real gateway process ------------------------------------------------------
@contextlib.contextmanager
def gateway_process(cfg_path: Path, env: dict, fsize: int | None = None):
    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))

    proc = subprocess.Popen([sys.executable, "-m", "spotctl", "gateway"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=limit)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def test_disk_full_spools_then_closes_the_gate_and_loses_nothing(scripted, tmp_path):
    # one process: the disk is full from the start here, and with workers their shared
    # metrics files (1 MiB each, prometheus-client's multiprocess mode) cannot even be created;
    # tests/test_gateway_disk_full.py fills the disk under the default workers once they run
    _engine, url = scripted
    cfg_path, cfg, key, env, port = gateway_process_config(tmp_path, url, "workers = 1\n")
    with Ledger(cfg.ledger_path) as led:
        led.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    base = f"http://127.0.0.1:{port}"
    limit = 40 * 1024  # no file may grow past 40 KiB: the WAL takes a batch or two, no more
    with gateway_process(cfg_path, env, fsize=limit) as proc, \
            httpx.Client(base_url=base, timeout=10,
                         headers={"Authorization": f"Bearer {key}"}) as c:
        _wait(lambda: _up(base), 20, "the gateway")
        codes = []
        for _ in range(2000):  # until the spool is full too
            r = c.post("/v1/chat/completions", json=CHAT)
            codes.append(r.status_code)
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "usage_unrecordable"
                break
        assert codes[-1] == 503, "the gate never closed"
        assert c.get("/readyz").status_code == 503
        with Ledger(cfg.ledger_path) as led:
            in_ledger = led.conn.execute("SELECT count(*) FROM usage").fetchone()[0]
        served = codes.count(200)
        assert served - in_ledger >= 20  # the spool took rows while the ledger could not
        prlimit_tree(proc.pid,
                         (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # space again
        _wait(lambda: c.get("/readyz").status_code == 200, 20, "the gate to reopen")
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
    rows = wait_rows(cfg.ledger_path, len(codes) + 1)
    assert len(rows) == len(codes) + 1 == len({r["id"] for r in rows})
    assert sum(r["status"] == "ok" for r in rows) == served + 1
    assert not list((tmp_path / "spotctl.db.spool").glob("*.jsonl"))
    with Ledger(cfg.ledger_path) as led:
        assert all(r.ok for r in check_ledger(led))


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
