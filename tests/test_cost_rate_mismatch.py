"""`cost` shows billed rates off the launch quote (``rate_mismatch`` anomalies) in its window:
a count and the worst one, per tier, per provider and in total, in --json, the table and the
HTML report; never in spend."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from spotctl.accounting.html_report import render_html
from spotctl.cli.main import app
from spotctl.clock import to_ms
from spotctl.config import parse_config
from spotctl.ledger.records import Anomaly, BillingSample, CumulativeKind, PollRecord
from spotctl.ledger.writes import record_poll
from spotctl.services.cost import cost_report
from spotctl.testing import installed_clock, write_config

MIN = 60_000
H0 = 1_700_002_800_000  # a clock hour: 2023-11-14T23:00:00Z
HOUR = 3_600_000
QUOTE = 2_500_000  # $2.50/h quoted at launch


def _cfg(extra: str = ""):
    return parse_config(
        '[[providers]]\nname = "hs"\nkind = "hyperstack"\napi_key_env = "K"\n'
        '[[tiers]]\nname = "big"\nmodel = "m"\n[[tiers]]\nname = "small"\nmodel = "s"\n'
        + extra, "spotctl.toml")


def _write(ledger) -> None:
    """vm:1 (tier big) and vm:2 (tier small) bill every minute for 2 h; vm:1 billed $2.75/h
    (+10 %) at 30 min and $3.25/h (+30 %) at 60 min, vm:2 $2.30/h (-8 %) at 90 min, and vm:1
    $5/h (+100 %) at -10 min, before the window."""
    off = {("vm:1", 30): 2_750_000, ("vm:1", 60): 3_250_000, ("vm:2", 90): 2_300_000,
           ("vm:1", -10): 5_000_000}
    for m in range(-20, 121):
        t = H0 + m * MIN
        samples, anomalies = [], []
        for rid, tier in (("vm:1", "big"), ("vm:2", "small")):
            rate = off.get((rid, m), QUOTE)
            samples.append(BillingSample("hs", "acct", rid, "vm", t, (m + 20) * 40_000,
                                         CumulativeKind.RESOURCE_TOTAL, "h",
                                         rate_micros_per_h=rate, tier=tier, created_ms=H0 - HOUR,
                                         state="ACTIVE", spot=True))
            if rate != QUOTE:
                anomalies.append(Anomaly("hs", "acct", rid, t, "rate_mismatch", QUOTE, rate))
        record_poll(ledger, PollRecord("hs", t - 50, t, "ok", resources_seen=2), samples,
                    anomalies=anomalies)



def test_cost_counts_rate_mismatches_per_tier_provider_and_total(ledger):
    _write(ledger)
    js = cost_report(ledger, _cfg(), H0, H0 + 2 * HOUR, min_tokens=1).to_json()
    total = js["rate_mismatches"]
    assert total["count"] == 3  # the one before the window is not in it
    assert total["worst"] == {"provider": "hs", "resource_id": "vm:1",
                              "at": "2023-11-15T00:00:00Z",  # H0 + 60 min
                              "quoted_usd_per_hour": "2.500000",
                              "billed_usd_per_hour": "3.250000", "off_pct": "30.00"}
    tiers = {t["name"]: t["rate_mismatches"] for t in js["tiers"]}
    assert tiers["big"]["count"] == 2 and tiers["big"]["worst"]["off_pct"] == "30.00"
    assert tiers["small"] == {"count": 1, "worst": {
        "provider": "hs", "resource_id": "vm:2", "at": "2023-11-15T00:30:00Z",
        "quoted_usd_per_hour": "2.500000", "billed_usd_per_hour": "2.300000",
        "off_pct": "-8.00"}}
    assert [(p["name"], p["rate_mismatches"]["count"]) for p in js["providers"]] == [("hs", 3)]
    # price, not spend: 2 h of 40,000 µ$ a minute per VM, whatever the billed rate says
    assert js["spend_usd"] == "9.600000"
    # a tier filter keeps that tier's mismatches only
    js = cost_report(ledger, _cfg(), H0, H0 + 2 * HOUR, tiers={"small"}).to_json()
    assert js["rate_mismatches"]["count"] == 1
    assert js["rate_mismatches"]["worst"]["resource_id"] == "vm:2"
    # a window without any: zero and no worst
    js = cost_report(ledger, _cfg(), H0 + 100 * MIN, H0 + 2 * HOUR).to_json()
    assert js["rate_mismatches"] == {"count": 0, "worst": None}


def test_cost_table_and_html_report_show_the_count_and_the_worst(tmp_path, ledger_target):
    from spotctl.ledger.db import Ledger

    with Ledger(ledger_target) as led:
        _write(led)
        rep = cost_report(led, _cfg(), H0, H0 + 2 * HOUR, min_tokens=1)
    page = render_html(rep)
    assert "billed rate ≠ quote" in page
    assert "2; worst vm:1 billed $3.2500/h vs quoted $2.5000/h (+30.00 %)" in page
    assert "3; worst vm:1 billed $3.2500/h" in page  # the provider's row
    key = "url" if isinstance(ledger_target, str) else "path"
    cfg = write_config(tmp_path, {
        "ledger": {key: str(ledger_target)},
        "providers": [{"name": "hs", "kind": "hyperstack", "api_key_env": "K"}],
        "tiers": [{"name": "big", "model": "m"}, {"name": "small", "model": "s"}]})
    end = datetime.fromtimestamp((H0 + 2 * HOUR) / 1000, UTC)
    with installed_clock(end):
        assert to_ms(end) == H0 + 2 * HOUR
        out = CliRunner().invoke(app, ["--config", str(cfg), "cost", "--window", "2h"],
                                 env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert out.exit_code == 0, out.output
    line = next(x for x in out.output.splitlines() if "off the launch quote" in x)
    assert line.startswith("3 billed rates off the launch quote (big 2, small 1); worst: vm:1 "
                           "(hs) billed $3.25/h vs quoted $2.50/h (+30.0 %) at "
                           "2023-11-15T00:00:00Z")


@pytest.mark.parametrize("quote, billed, off", [(0, 1_000_000, None), (1_000_000, 1_000_001,
                                                                          "0.00")])
def test_the_worst_mismatch_without_a_quote_is_the_worst(quote, billed, off):
    from spotctl.accounting.report import rate_mismatch_json
    from spotctl.ledger.billing_reads import RateMismatch

    items = [RateMismatch("hs", "vm:1", H0, 1_000_000, 2_000_000),
             RateMismatch("hs", "vm:2", H0 + MIN, quote, billed)]
    worst = rate_mismatch_json(items)["worst"]
    if off is None:  # no quote at all: infinitely off, the worst
        assert worst["resource_id"] == "vm:2" and worst["off_pct"] is None
    else:
        assert worst["resource_id"] == "vm:1" and worst["off_pct"] == "100.00"
