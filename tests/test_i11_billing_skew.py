"""Issue 11, item 9: a billing poll stamped in the future is suspect, not fresh.

After the host's clock steps back (or the poller's host runs ahead), the newest successful poll
looks "younger than now": its age is negative, and a one-shot ``billing status`` or ``doctor``
used to call it fresh while the gateway's gate (which has its own check) was closed. Both now
agree with the gate: beyond ``[gateway] clock_skew_s`` the provider is ``suspect``, exit 4.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spotctl.cli.main import app
from spotctl.example_scenario import build_example
from spotctl.ledger.db import Ledger
from spotctl.testing import free_port, installed_clock, write_config

END = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)  # the example's newest poll: END + 0.2 s
KEY_ENV = "SPOTCTL_TEST_I11_SKEW_KEY"
runner = CliRunner()


def cli(*args: object):
    return runner.invoke(app, [str(a) for a in args], env={KEY_ENV: "k"})


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("skew")
    with Ledger(d / "spotctl.db") as ledger:
        build_example(ledger, END)
    return write_config(d, {
        "ledger": {"path": "spotctl.db"},
        "providers": [{"name": "example-cloud", "kind": "hyperstack", "api_key_env": KEY_ENV,
                       "base_url": f"http://127.0.0.1:{free_port()}/v1"}],
        "gateway": {"listen": f"127.0.0.1:{free_port()}", "clock_skew_s": 5}})


def test_billing_status_calls_a_poll_stamped_an_hour_ahead_suspect_exit_4(ws):
    with installed_clock(END - timedelta(hours=1)):  # the clock stepped back one hour
        result = cli("-c", ws, "billing", "status", "--json")
        table = cli("-c", ws, "billing", "status")
    assert result.exit_code == 4, result.output
    row = json.loads(result.stdout)["providers"][0]
    assert row["status"] == "suspect"
    assert row["last_good_ahead_s"] == 3600  # rounded down to the second
    assert "in the future" in row["last_error"]
    assert table.exit_code == 4 and "suspect" in table.stdout
    assert "Traceback" not in table.output


def test_within_the_skew_allowance_it_is_fresh(ws):
    with installed_clock(END - timedelta(seconds=4)):
        result = cli("-c", ws, "billing", "status", "--json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["providers"][0]
    assert row["status"] == "fresh" and row["last_good_ahead_s"] is None


def test_doctor_fails_billing_on_a_poll_stamped_ahead_exit_4(ws):
    with installed_clock(END - timedelta(hours=1)):
        result = cli("-c", ws, "doctor", "--json")
    assert result.exit_code == 4, result.output
    check = next(c for c in json.loads(result.stdout)["checks"]
                 if c["name"] == "billing example-cloud")
    assert check["status"] == "fail" and check["detail"].startswith("suspect")
    assert "in the future" in check["detail"]


def test_the_newest_poll_not_the_latest_stamp_decides(ws, tmp_path):
    """A live poller after a step back writes polls stamped "earlier" than the ones before the
    step: the newest (by insertion) is on time, so billing is fresh (as in the gate)."""
    import shutil

    from spotctl.clock import to_ms
    from spotctl.ledger.records import PollRecord
    from spotctl.ledger.writes import record_poll

    d = tmp_path / "w"
    shutil.copytree(ws.parent, d)
    now = END - timedelta(hours=1)
    with Ledger(d / "spotctl.db") as led:
        record_poll(led, PollRecord("example-cloud", to_ms(now) - 1000, to_ms(now) - 500, "ok"))
    with installed_clock(now):
        result = cli("-c", d / ws.name, "billing", "status", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["providers"][0]["status"] == "fresh"
