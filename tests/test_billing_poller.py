"""The poller: every error is a recorded, classified poll (a locked ledger too) and the daemon
never exits on one; exclude_billing rows are not spend; price truth (rate_mismatch)."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from spotctl.billing.health import provider_health
from spotctl.billing.poller import poll_once, run_daemon
from spotctl.clock import to_ms
from spotctl.config import parse_config
from spotctl.ledger.billing_reads import rate_mismatches
from spotctl.ledger.db import Ledger
from spotctl.services.cost import spend_between


def _cfg(lc, tmp_path, extra=""):
    return parse_config(lc.config_toml(extra=extra), tmp_path / "spotctl.toml")


@pytest.mark.usefixtures("ledger_backend")
def test_exclude_billing_rows_are_not_spend(localcloud, tmp_path):
    """D10: a resource Hyperstack flags exclude_billing is not counted (it is not billed)."""
    lc = localcloud
    cloud = lc.handle.cloud
    cfg = _cfg(lc, tmp_path)
    start = to_ms(lc.clock.now())
    vm = cloud.create_vm("spotctl-a", "n3-L40x1")
    free = cloud.create_volume("promo", 500)
    lc.control("POST", "/exclude", resource=f"volume:{free.id}")
    with Ledger(cfg.ledger_target) as led:
        for _ in range(30):
            lc.clock.advance(60)
            assert all(o.ok for o in poll_once(cfg, led, lc.clock))
        spend = spend_between(led, start, to_ms(lc.clock.now()), cfg)
        ids = {r for (r,) in led.conn.execute("SELECT DISTINCT resource_id FROM billing_samples")}
    assert f"volume:{free.id}" not in ids and f"vm:{vm.id}" in ids
    assert free.total_micros > 0  # the provider reports a total, flagged: not spend
    assert spend.micros == lc.control("GET", "/invoice")["total_micros"] > 0


@pytest.mark.usefixtures("ledger_backend")
def test_a_rate_off_its_launch_quote_is_a_rate_mismatch(localcloud, tmp_path):
    lc = localcloud
    cloud = lc.handle.cloud
    cfg = _cfg(lc, tmp_path)  # [billing] rate_tolerance_pct: 5 by default
    vm = cloud.create_vm("spotctl-a", "n3-L40x1")
    lc.clock.advance(120)
    with Ledger(cfg.ledger_target) as led:
        # the fleet journals the launch quote with its `ready` event
        led.conn.execute("INSERT INTO fleet_events (ts_ms, tier, event, resource_id, "
                         "quoted_rate_micros_per_h) VALUES (?, 'a', 'ready', ?, ?)",
                         (to_ms(lc.clock.now()), f"vm:{vm.id}", 990_000))  # $0.99/h
        for _ in range(3):
            lc.clock.advance(60)
            poll_once(cfg, led, lc.clock)
        assert rate_mismatches(led, 0) == []  # billed as quoted
        lc.control("POST", "/rate", resource=f"vm:{vm.id}", percent=112)  # overbilled
        for _ in range(3):
            lc.clock.advance(60)
            poll_once(cfg, led, lc.clock)
        found = rate_mismatches(led, 0)
        [health] = provider_health(led, cfg, to_ms(lc.clock.now()))
    assert found and {m.resource_id for m in found} == {f"vm:{vm.id}"}
    assert found[-1].billed_micros_per_h == 990_000 * 112 // 100
    assert round(found[-1].off_pct) == 12
    assert health.status == "fresh" and health.rate_mismatch is not None
    assert health.to_json()["rate_mismatch"]["off_pct"] == pytest.approx(12.0, abs=0.1)


def test_billing_status_shows_the_rate_mismatch(localcloud, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from spotctl.cli.main import app

    lc = localcloud
    vm = lc.handle.cloud.create_vm("spotctl-a", "n3-L40x1")
    lc.clock.advance(120)
    cfg_path = tmp_path / "spotctl.toml"
    cfg_path.write_text(lc.config_toml())
    cfg = parse_config(cfg_path.read_text(), cfg_path)
    with Ledger(cfg.ledger_target) as led:
        led.conn.execute("INSERT INTO fleet_events (ts_ms, tier, event, resource_id, "
                         "quoted_rate_micros_per_h) VALUES (0, 'a', 'ready', ?, 500000)",
                         (f"vm:{vm.id}",))
        lc.clock.advance(60)
        poll_once(cfg, led, lc.clock)
    out = CliRunner().invoke(app, ["--config", str(cfg_path), "billing", "status", "--json"])
    assert out.exit_code == 0, out.output
    [row] = __import__("json").loads(out.output)["providers"]
    assert row["rate_mismatch"]["quoted_usd_per_hour"] == "0.500000"
    out = CliRunner().invoke(app, ["--config", str(cfg_path), "billing", "status"])
    assert "rate" in out.output and "+98" in out.output


def test_a_locked_ledger_is_a_recorded_failed_poll_and_the_daemon_goes_on(localcloud, tmp_path,
                                                                         monkeypatch):
    """Issue 11 §5: "database is locked" while writing a poll is a failed poll of kind
    `ledger` (recorded when the ledger can take it), and poll-billing --daemon backs off and
    keeps polling instead of exiting."""
    from spotctl.ledger import writes

    lc = localcloud
    lc.handle.cloud.create_vm("spotctl-a", "n3-L40x1")
    cfg = _cfg(lc, tmp_path)
    real = writes.record_poll
    fails = {"n": 2}

    def locked(ledger, poll, *a, **kw):
        if poll.outcome == "ok" and fails["n"] > 0:
            fails["n"] -= 1
            raise sqlite3.OperationalError("database is locked")
        return real(ledger, poll, *a, **kw)

    monkeypatch.setattr(writes, "record_poll", locked)
    lines: list[str] = []
    stop = threading.Event()

    def log(line: str) -> None:
        lines.append(line)
        if sum("ok," in ln for ln in lines) >= 2:
            stop.set()

    with Ledger(cfg.ledger_target) as led:
        run_daemon(cfg, led, lc.clock, stop, log=log)
        outcomes = [o for (o,) in led.conn.execute(
            "SELECT outcome FROM billing_polls ORDER BY id")]
    assert sum("FAILED ledger" in ln for ln in lines) == 2
    assert outcomes == ["ledger", "ledger", "ok", "ok"]


def test_the_daemon_survives_an_unexpected_error(localcloud, tmp_path, monkeypatch):
    from spotctl.billing import poller

    cfg = _cfg(localcloud, tmp_path)
    calls = {"n": 0}
    real = poller.poll_once

    def boom(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug")
        return real(*a, **kw)

    monkeypatch.setattr(poller, "poll_once", boom)
    lines: list[str] = []
    stop = threading.Event()

    def log(line):
        lines.append(line)
        if "ok," in line:
            stop.set()

    with Ledger(cfg.ledger_target) as led:
        run_daemon(cfg, led, localcloud.clock, stop, log=log)
    assert "RuntimeError" in lines[0] and any("ok," in ln for ln in lines)


def test_overlapping_one_shot_runs_take_turns_on_one_lock(tmp_path):
    # poll_lock (whole run) and poll_slot (per provider, SQLite) share one lock file
    from spotctl.billing.poller import poll_lock
    from spotctl.errors import ExitCode, SpotctlError
    from spotctl.ledger.coordination import file_lock, poll_lock_path

    ledger_path = tmp_path / "ledger.db"
    with poll_lock(ledger_path):
        with pytest.raises(SpotctlError) as info, poll_lock(ledger_path, wait_s=0.2):
            pass
        assert info.value.exit_code == ExitCode.OK and "holds the lock" in info.value.message
        with file_lock(poll_lock_path(ledger_path), 0.2) as got:
            assert got is False
    with poll_lock(ledger_path, wait_s=0.2):  # released: the next run gets it at once
        pass
