"""The shared ledger failing under a real PostgreSQL server (issue 14 §3): a restart under load,
an exhausted pool, a cut network. The gateway keeps serving from its last gate state for at most
``[billing] stale_after_s``, then fails closed with ``ledger_unreachable``; usage rows written
meanwhile go to the spool and reach the ledger after, none lost."""

from __future__ import annotations

import threading
import time

import openai
import pytest

from spotctl.config import parse_config
from spotctl.errors import LedgerUnavailable
from spotctl.ledger.db import Ledger
from spotctl.ledger.records import UsageRecord
from spotctl.ledger.usage import record_usage
from tests.fixtures_engines import gateway_key, start_gateway, tier_toml, wait_rows


def _cfg(tmp_path, url: str, engine, stale_after_s: int = 30):
    return parse_config(
        f'[ledger]\nurl = "{url}"\nquery_timeout_s = 2\npool_timeout_s = 2\n'
        f"[billing]\nstale_after_s = {stale_after_s}\n"
        f'[gateway]\nspool_dir = "{tmp_path / "spool"}"\n'
        + tier_toml("f", engine.model, engine.base_url, api_key_env="ENGINE_KEY"),
        tmp_path / "spotctl.toml")


def test_pool_exhausted_is_a_clear_error_and_recovers(pg_url):
    cfg = parse_config(f'[ledger]\nurl = "{pg_url}"\npool_size = 2\npool_timeout_s = 0.5\n')
    held = [Ledger(cfg.ledger_target), Ledger(cfg.ledger_target)]
    try:
        t0 = time.monotonic()
        with pytest.raises(LedgerUnavailable, match="pool exhausted") as err:
            Ledger(cfg.ledger_target)
        assert err.value.reason == "pool_exhausted"
        assert time.monotonic() - t0 < 5  # waits pool_timeout_s, not forever
    finally:
        held.pop().close()
    with Ledger(cfg.ledger_target) as led:  # a connection came back: it works again
        assert led.conn.execute("SELECT 1").fetchone() == (1,)
    held[0].close()


def test_a_restart_breaks_one_transaction_and_the_ledger_recovers(pg_server, pg_url):
    with Ledger(pg_url) as led:
        record_usage(led, [UsageRecord("a", 1, 2, "ok", completion_tokens=1)])
        pg_server.restart()
        # the connection died with the server: the next statement gets a fresh one
        assert led.conn.execute("SELECT count(*) FROM usage").fetchone() == (1,)
        with pytest.raises(LedgerUnavailable), led.transaction() as conn:
            conn.execute("INSERT INTO tier_activity (tier, last_request_ms) VALUES ('t', 1)")
            pg_server.stop()
            pg_server.start()
            # the transaction died with its connection: no statement of it may run on a new
            # one (the first insert would be silently gone), and its COMMIT must not succeed
            conn.execute("INSERT INTO tier_activity (tier, last_request_ms) VALUES ('u', 1)")
        with pytest.raises(LedgerUnavailable), led.transaction() as conn:
            conn.execute("INSERT INTO tier_activity (tier, last_request_ms) VALUES ('t', 1)")
            pg_server.restart()  # the link dies between the last statement and the COMMIT
        with led.transaction() as conn:  # the next transaction runs on a fresh connection
            conn.execute("INSERT INTO tier_activity (tier, last_request_ms) VALUES ('v', 1)")
    with Ledger(pg_url) as led:  # all or nothing: the broken transaction left no row
        assert led.conn.execute("SELECT tier FROM tier_activity").fetchall() == [("v",)]


def test_gateway_serves_through_a_database_restart_and_loses_no_row(
        pg_server, pg_url, builtin_engine, tmp_path, clock, monkeypatch):
    monkeypatch.setenv("ENGINE_KEY", builtin_engine.api_key)
    cfg = _cfg(tmp_path, pg_url, builtin_engine)
    key = gateway_key(cfg.ledger_target)
    handle = start_gateway(cfg, clock)
    ok, errors = [], []
    stop = threading.Event()

    def load() -> None:
        client = openai.OpenAI(base_url=handle.base_url, api_key=key, max_retries=0)
        while not stop.is_set():
            try:
                client.chat.completions.create(model=builtin_engine.model, max_tokens=4,
                                               messages=[{"role": "user", "content": "hi"}])
                ok.append(1)
            except openai.APIError as exc:
                errors.append(exc)

    try:
        deadline = time.monotonic() + 10
        while handle.app.gate.status != "open" and time.monotonic() < deadline:
            time.sleep(0.05)
        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        before = len(ok)
        pg_server.stop()
        time.sleep(2.0)  # the ledger is down: the gate's last state holds (< stale_after_s)
        during = len(ok) - before
        assert handle.app.gate.status == "open"
        pg_server.start()
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(30)
        assert errors == [] and during > 0  # served while the database was down
        rows = wait_rows(cfg.ledger_target, len(ok), timeout=30)  # spooled rows replayed
        assert len(rows) == len(ok)
        assert len({r["id"] for r in rows}) == len(ok)
    finally:
        stop.set()
        handle.stop()


def test_network_cut_closes_the_gate_after_stale_after_s(
        pg_server, pg_url, pg_proxy, builtin_engine, tmp_path, clock, monkeypatch):
    monkeypatch.setenv("ENGINE_KEY", builtin_engine.api_key)
    via_proxy = pg_url.replace(f":{pg_server.port}/", f":{pg_proxy.port}/")
    cfg = _cfg(tmp_path, via_proxy, builtin_engine, stale_after_s=60)
    key = gateway_key(cfg.ledger_target)
    handle = start_gateway(cfg, clock)
    client = openai.OpenAI(base_url=handle.base_url, api_key=key, max_retries=0)
    msg = [{"role": "user", "content": "hi"}]
    try:
        handle.app.refresh()
        assert handle.app.gate.status == "open"
        pg_proxy.cut()  # packets go nowhere; nothing resets the connections
        t0 = time.monotonic()
        handle.app.refresh()  # bounded by the client-side deadline, not TCP's minutes
        assert time.monotonic() - t0 < 15
        assert handle.app.gate.status == "open"  # the last state, younger than stale_after_s
        client.chat.completions.create(model=builtin_engine.model, max_tokens=2, messages=msg)
        clock.advance(61)
        handle.app.refresh()
        assert handle.app.gate.status == "ledger_unreachable"
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model=builtin_engine.model, max_tokens=2,
                                           messages=msg)
        assert err.value.status_code == 503 and err.value.code == "ledger_unreachable"
        pg_proxy.restore()
        deadline = time.monotonic() + 20
        while handle.app.gate.status != "open" and time.monotonic() < deadline:
            handle.app.refresh()
            time.sleep(0.1)
        assert handle.app.gate.status == "open"
        client.chat.completions.create(model=builtin_engine.model, max_tokens=2, messages=msg)
        rows = wait_rows(cfg.ledger_target, 3, timeout=20)  # the row served while cut, too
        assert sorted(r["status"] for r in rows) == ["ledger_unreachable", "ok", "ok"]
    finally:
        pg_proxy.restore()
        handle.stop()
