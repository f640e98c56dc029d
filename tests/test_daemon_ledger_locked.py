"""A ledger locked past the busy timeout is an error of the tree, not a crash.

Found by ``bench/chaos.py``'s ledger-lock window: the daemon took its tier's lease while another
process held SQLite's write lock for longer than the busy timeout; ``sqlite3.OperationalError``
left ``Ledger.transaction`` unmapped, went through the daemon's step (which handles
:class:`~spotctl.errors.SpotctlError`), printed a traceback and ended the daemon with exit 1.
Now the step fails with one line and the daemon goes on; the tier is looked after once the lock
is gone."""

from __future__ import annotations

import sqlite3

import pytest

from spotctl.clock import SystemClock, to_ms
from spotctl.config import parse_config
from spotctl.errors import LedgerError
from spotctl.ledger import db as ledger_db
from spotctl.ledger.coordination import acquire_lease
from spotctl.ledger.db import Ledger
from spotctl.services.daemon import FleetDaemon


def _locker(path) -> sqlite3.Connection:
    """Another process's connection holding the write lock."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_a_transaction_on_a_locked_ledger_raises_a_ledger_error(tmp_path, monkeypatch):
    path = tmp_path / "spotctl.db"
    Ledger(path).close()
    monkeypatch.setattr(ledger_db, "BUSY_TIMEOUT_MS", 100)
    locker = _locker(path)
    try:
        with Ledger(path) as led:
            with pytest.raises(LedgerError, match="database is locked"):
                acquire_lease(led, "daemon:big", "me", to_ms(SystemClock().now()), 30_000)
            assert not led.conn.in_transaction
    finally:
        locker.rollback()
        locker.close()
    with Ledger(path) as led:  # and once the lock is gone, the same call works
        assert acquire_lease(led, "daemon:big", "me", to_ms(SystemClock().now()), 30_000)


def test_the_daemon_step_on_a_locked_ledger_fails_in_one_line_and_the_daemon_goes_on(
        localcloud_engines, tmp_path, monkeypatch):
    lc = localcloud_engines
    cfg = parse_config(lc.config_toml(extra=(
        '[[tiers]]\nname = "big"\nmodel = "tiny"\nbackend = "localcloud"\nprovider = "lc"\n'
        'capacity = "spot-first"\nflavor = "n3-A100x1"\n')), tmp_path / "spotctl.toml")
    logs: list[str] = []
    daemon = FleetDaemon(cfg, lc.clock, logs.append)
    daemon.check_tiers()  # creates the ledger; the tier is down: nothing to do
    monkeypatch.setattr(ledger_db, "BUSY_TIMEOUT_MS", 100)
    locker = _locker(cfg.ledger_path)
    try:
        result = daemon.check_tiers()  # raised sqlite3.OperationalError before
    finally:
        locker.rollback()
        locker.close()
    assert len(result.fleet_errors) == 1
    assert result.fleet_errors[0].startswith("tier big: ledger: OperationalError: database is "
                                             "locked"), result.fleet_errors
    assert "\n" not in result.fleet_errors[0]
    after = daemon.check_tiers()
    assert after.fleet_errors == [], after.fleet_errors
