"""`cost` pauses Python's cyclic collector while it reads and computes a window (its passes
over every object of the imports cost 40-70 ms of a 30-day `cost`), and gives it back: an
in-process caller (CliRunner, a long-lived process) keeps its collector, also on an error. At
exit it freezes what is alive, so the interpreter's last collections skip it (30-45 ms)."""

from __future__ import annotations

import atexit
import gc
import json
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

import spotctl.services.cost as services_cost
from spotctl.cli.cost import collector_paused
from spotctl.cli.main import app
from spotctl.ledger.db import Ledger
from spotctl.ledger.records import BillingSample, CumulativeKind, PollRecord
from spotctl.ledger.writes import record_poll
from spotctl.testing import installed_clock, write_config

MIN = 60_000
H0 = 1_700_002_800_000  # a clock hour


def _config(tmp_path, ledger_target):
    with Ledger(ledger_target) as led:
        for m in range(1, 61):
            t = H0 + m * MIN
            record_poll(led, PollRecord("hs", t - 50, t, "ok", resources_seen=1), [
                BillingSample("hs", "acct", "vm:1", "vm", t, m * 40_000,
                              CumulativeKind.RESOURCE_TOTAL, "h", tier="big",
                              created_ms=H0 - MIN, state="ACTIVE", spot=True)])
    key = "url" if isinstance(ledger_target, str) else "path"
    return write_config(tmp_path, {
        "ledger": {key: str(ledger_target)},
        "providers": [{"name": "hs", "kind": "hyperstack", "api_key_env": "K"}],
        "tiers": [{"name": "big", "model": "m"}]})


def test_cost_pauses_the_collector_while_computing_and_gives_it_back(tmp_path, ledger_target,
                                                                    monkeypatch):
    cfg = _config(tmp_path, ledger_target)
    seen: list[bool] = []
    real = services_cost.cost_report

    def spy(*args, **kwargs):
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(services_cost, "cost_report", spy)
    assert gc.isenabled()
    with installed_clock(datetime.fromtimestamp((H0 + 60 * MIN) / 1000, UTC)):
        out = CliRunner().invoke(app, ["--config", str(cfg), "cost", "--window", "1h",
                                       "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["spend_usd"] == "2.360000"  # 59 minutes × 40,000 µ$
    assert seen == [False]  # paused during the read and the accounting
    assert gc.isenabled()  # and given back to the caller


def test_the_collector_comes_back_after_an_error_and_stays_off_if_it_was():
    with pytest.raises(RuntimeError), collector_paused():
        assert not gc.isenabled()
        raise RuntimeError("boom")
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()


def test_the_exit_freeze_is_registered_once_per_process(tmp_path, ledger_target, monkeypatch):
    import spotctl.cli.cost as cli_cost

    cfg = _config(tmp_path, ledger_target)
    registered: list = []
    monkeypatch.setattr(cli_cost, "_EXIT_FREEZE", [])  # as in a fresh process
    monkeypatch.setattr(atexit, "register", registered.append)
    with installed_clock(datetime.fromtimestamp((H0 + 60 * MIN) / 1000, UTC)):
        for _ in range(2):
            out = CliRunner().invoke(app, ["--config", str(cfg), "cost", "--json"])
            assert out.exit_code == 0, out.output
    assert registered == [gc.freeze]  # once per process, not once per command
