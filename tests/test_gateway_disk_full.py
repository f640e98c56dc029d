"""Issue 11 §1 under the chaos bench's disk-full window: a full disk refuses the gateway's log
writes too (its stderr is a file, as with ``spotctl gateway 2>>gateway.log``). Found by
``bench/chaos.py``: the first log line the usage writer tried to write raised EFBIG, killed the
writer thread and the gate thread, and the gateway went on serving with its gate frozen open and
its rows never written (80 rows lost in a 3-minute run).
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time

import httpx

from spotctl.ledger.check import check_ledger
from spotctl.ledger.db import Ledger
from tests.fixtures_engines import gateway_process_config, prlimit_tree, wait_rows

CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout  # clock-ok
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"  # clock-ok
        time.sleep(0.05)  # clock-ok


def _status(c: httpx.Client, path: str) -> int:
    try:
        return c.get(path).status_code
    except httpx.HTTPError:
        return 0


def test_a_full_disk_that_refuses_log_lines_loses_no_row_and_closes_the_gate(scripted,
                                                                           tmp_path):
    _engine, url = scripted
    _, cfg, key, env, port = gateway_process_config(tmp_path, url)
    with Ledger(cfg.ledger_path) as led:
        led.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    log = tmp_path / "gateway.log"
    log.write_bytes(b"an earlier run's lines\n" * 4000)  # ~90 KiB: past the limit below
    limit = 40 * 1024
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "spotctl", "gateway"], env=env,
                                stdout=out, stderr=out)
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10,
                          headers={"Authorization": f"Bearer {key}"}) as c:
            _wait(lambda: _status(c, "/readyz") == 200, 30, "the gateway")
            prlimit_tree(proc.pid, (limit, resource.RLIM_INFINITY))
            codes = []
            # until the spool is full too, and the gate closes: how many rows fit in the 40 KiB
            # of WAL and spool depends on how the writer batched them (~600 when fast)
            for _ in range(5000):
                r = c.post("/v1/chat/completions", json=CHAT)
                codes.append(r.status_code)
                if r.status_code == 503:
                    assert r.json()["error"]["code"] == "usage_unrecordable"
                    break
            assert proc.poll() is None
            assert codes[-1] == 503, f"the gate never closed ({codes.count(200)} served)"
            prlimit_tree(proc.pid,
                             (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            _wait(lambda: _status(c, "/readyz") == 200, 20, "the gate to reopen")
            assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    rows = wait_rows(cfg.ledger_path, len(codes) + 1)
    assert len(rows) == len(codes) + 1 == len({r["id"] for r in rows})
    assert sum(r["status"] == "ok" for r in rows) == codes.count(200) + 1
    with Ledger(cfg.ledger_path) as led:
        assert all(r.ok for r in check_ledger(led))
