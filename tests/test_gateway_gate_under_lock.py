"""Issue 11 §1/§9 under the chaos bench's ledger lock window: while another process holds the
ledger's write lock, the gate thread must still recompute the gate at its cadence.

Found by ``bench/chaos.py``: the gate thread publishes open requests (a write) after each gate
computation, on a connection with the ledger's 15 s busy timeout; under a long write lock every
cycle waited 15 s, the gate was recomputed every ~15 s instead of every ``gate_cache_s``, and
requests were served for up to 15 s after billing went stale (38 in a 3-minute run).
"""

from __future__ import annotations

import time

import openai
import pytest

from spotctl.billing.poller import poll_once
from spotctl.config import parse_config
from spotctl.ledger.db import Ledger
from tests.fixtures_engines import gateway_key, start_gateway


def _cfg(tmp_path, lc, engine):
    return parse_config(
        lc.config_toml(extra=(
            f'[[tiers]]\nname = "fixed"\nmodel = "{engine.model}"\nendpoint = '
            f'"{engine.base_url}"\napi_key_env = "ENGINE_KEY"\nprovider = "lc"\n'
            '[budget]\ndaily_usd = 1000\n')),
        tmp_path / "spotctl.toml")


def _gate_becomes(handle, status: str, timeout: float) -> float:
    """Seconds until the gate thread (not this test) shows ``status``."""
    t0 = time.monotonic()  # clock-ok
    while handle.app.gate.status != status:
        assert time.monotonic() - t0 < timeout, (  # clock-ok
            f"the gate thread did not reach {status} in {timeout} s: {handle.app.gate}")
        time.sleep(0.02)  # clock-ok
    return time.monotonic() - t0  # clock-ok


def test_the_gate_closes_on_stale_billing_while_the_ledger_is_write_locked(
        localcloud, builtin_engine, tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINE_KEY", builtin_engine.api_key)
    lc = localcloud
    cfg = _cfg(tmp_path, lc, builtin_engine)
    lc.handle.cloud.create_vm("spotctl-fixed", "n3-H100x1")
    with Ledger(cfg.ledger_target) as led:
        for _ in range(3):
            lc.clock.advance(60)
            poll_once(cfg, led, lc.clock)
    key = gateway_key(cfg.ledger_target)
    handle = start_gateway(cfg, lc.clock)  # the gate thread runs every 0.05 s
    locker = Ledger(cfg.ledger_target)
    try:
        _gate_becomes(handle, "open", 10)
        client = openai.OpenAI(base_url=handle.base_url, api_key=key, max_retries=0)
        msg = [{"role": "user", "content": "hello"}]
        client.chat.completions.create(model=builtin_engine.model, messages=msg, max_tokens=3)
        locker.conn.execute("BEGIN IMMEDIATE")  # another writer holds the ledger
        time.sleep(0.5)  # clock-ok: the gate thread is in its cycle under the lock
        lc.clock.advance(cfg.billing.stale_after_s + 60)  # no poll since: billing unknown
        _gate_becomes(handle, "billing_stale", 3.0)
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model=builtin_engine.model, messages=msg,
                                           max_tokens=3)
        assert err.value.code == "billing_stale"
    finally:
        if locker.conn.in_transaction:
            locker.conn.execute("ROLLBACK")
        locker.close()
        handle.stop()
