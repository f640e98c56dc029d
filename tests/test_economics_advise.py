"""`spotctl advise`: the replay by hand, and a backtest that must be exact when the ledger's
day was run under the configured policy with constant rates."""

from __future__ import annotations

import json

from spotctl.accounting.advise import Rates, replay
from spotctl.ledger.db import Ledger
from spotctl.ledger.journal import FleetEntry, append_fleet_event
from spotctl.ledger.records import (
    BillingSample,
    CumulativeKind,
    PollRecord,
    UsageRecord,
)
from spotctl.ledger.writes import record_poll, record_usage
from tests.test_economics_compare import cli

MIN = 60_000
H = 3_600_000
H0 = 1_700_002_800_000


def test_replay_by_hand():
    islands = [(1 * H, 1 * H + 10 * MIN), (5 * H, 5 * H + 5 * MIN)]
    arrivals = [1 * H, 1 * H + 5_000, 1 * H + 20_000, 1 * H + 55_000, 5 * H, 5 * H + 1_000]
    rates = Rates(serving_spot=1_000_000, serving_on_demand=2_000_000, hibernated=100_000,
                  waking=500_000, wake_ms=60_000, storage_micros=7, tax_per_spot_hour=0)
    r = replay(islands, arrivals, 0, 10 * H, 30, "spot-first", rates, 1000)
    # gaps 60, 230 and 295 min all exceed 30: 30 min serving then hibernated, then a wake
    assert (r.wakes, r.waking_ms) == (2, 2 * MIN)
    assert r.serving_ms == (30 + 10 + 30 + 5 + 30 - 2) * MIN
    assert r.hibernated_ms == (30 + 200 + 265) * MIN
    # arrivals within 50 s of a wake's start wait over 10 s: 3 + 2 (the one at 55 s waits 5 s)
    assert r.held_over_10s == 5
    expected = round(1_000_000 * 103 / 60 + 100_000 * 495 / 60 + 500_000 * 2 / 60 + 7)
    assert r.spend_micros == expected
    never = replay(islands, arrivals, 0, 10 * H, None, "on-demand", rates, 1000)
    assert (never.wakes, never.spend_micros) == (0, 2_000_000 * 10 + 7)
    unknown = replay(islands, arrivals, 0, 10 * H,
                     5, "spot-first", Rates(None, 1, 1, 0, None, 0, 0), 1)
    assert unknown.spend_micros is None and "spot-first" in unknown.missing


def _state(m: int) -> str:
    """The day as run with idle timeout 30 min: serving, hibernated, restoring (1 min)."""
    if m < 30 or 61 <= m < 100 or 301 <= m < 335:
        return "ACTIVE"
    if m in (60, 300):
        return "RESTORING"
    return "HIBERNATED"


RATE = {"ACTIVE": 20_000, "HIBERNATED": 2_000, "RESTORING": 10_000}  # µ$ per minute


def _workspace(tmp_path):
    cfg = tmp_path / "spotctl.toml"
    cfg.write_text('[[providers]]\nname = "hs"\nkind = "hyperstack"\napi_key_env = "K"\n'
                   '[[tiers]]\nname = "big"\nmodel = "m"\nprovider = "hs"\nidle_minutes = 30\n'
                   'capacity = "spot-first"\n')
    with Ledger(tmp_path / "spotctl.db") as led:
        vm = 0
        for m in range(0, 601):
            if m:
                vm += RATE[_state(m - 1)]
            record_poll(led, PollRecord("hs", H0 + m * MIN - 50, H0 + m * MIN, "ok"), [
                BillingSample("hs", "a", "vm:1", "vm", H0 + m * MIN, vm,
                              CumulativeKind.RESOURCE_TOTAL, "h", tier="big", created_ms=H0,
                              state=_state(m), spot=True),
                BillingSample("hs", "a", "volume:1", "volume", H0 + m * MIN, 10 * m,
                              CumulativeKind.RESOURCE_TOTAL, "h", tier="big", created_ms=H0,
                              state="available")])
        for t, ev in ((-5 * MIN, "ready"), (30 * MIN, "hibernated"), (60 * MIN, "waking"),
                      (61 * MIN, "woke"), (100 * MIN, "hibernated"), (300 * MIN, "waking"),
                      (301 * MIN, "woke"), (335 * MIN, "hibernated")):
            append_fleet_event(led, FleetEntry(H0 + t, "big", ev, capacity="spot",
                                               resource_id="vm:1",
                                               phases={"restore": 40.0, "engine": 20.0}
                                               if ev == "woke" else {}))
        rows = [(60 * MIN, 70 * MIN), (60 * MIN + 5_000, 61 * MIN), (60 * MIN + 20_000, 61 * MIN),
                (300 * MIN, 305 * MIN), (300 * MIN + 1_000, 300 * MIN + 30_000)]
        record_usage(led, [UsageRecord(f"r{i}", H0 + a, H0 + b, "ok", tier="big",
                                       completion_tokens=500) for i, (a, b) in enumerate(rows)])
    return cfg


def test_advise_backtest_is_exact_on_a_day_run_under_the_current_policy(tmp_path, capsys,
                                                                        monkeypatch):
    from spotctl.clock import from_ms, iso

    cfg = _workspace(tmp_path)
    code, out, err = cli(capsys, monkeypatch, "--config", str(cfg), "advise", "--window", "10h",
                         "--until", iso(from_ms(H0 + 600 * MIN)), "--json")
    assert code == 0, err
    t = json.loads(out)["tiers"][0]
    serving, hib, waking, storage = 103, 495, 2, 600  # minutes of each, by the timeline above
    actual = serving * 20_000 + hib * 2_000 + waking * 10_000 + storage * 10
    assert t["actual_spend_usd"] == f"{actual / 1e6:.6f}"
    assert t["backtest"]["policy"] == "30 min, spot-first"
    assert t["backtest"]["predicted_spend_usd"] == t["actual_spend_usd"]
    assert t["backtest"]["error"] == "0.0000"
    m = t["measured"]
    assert (m["serving_spot_usd_per_h"], m["hibernated_usd_per_h"], m["waking_usd_per_h"]) == (
        "1.200000", "0.120000", "0.600000")
    assert m["wake_seconds"] == 60.0
    by = {(p["idle_minutes"], p["capacity"]): p for p in t["policies"]}
    # never hibernating: 600 min of serving at $1.20/h plus storage
    assert by[(None, "spot-first")]["predicted_spend_usd"] == f"{(600 * 20_000 + 6_000) / 1e6:.6f}"
    assert by[(None, "spot-first")]["wakes"] == 0
    # 5 min: gaps 60, 230 and 295 min → 5 min serving each, 2 wakes
    five = by[(5, "spot-first")]
    s5 = (5 + 10 + 5 + 5 + 5 - 2)
    h5 = (55 + 225 + 290)
    assert five["predicted_spend_usd"] == f"{(s5 * 20_000 + h5 * 2_000 + 2 * 10_000 + 6_000) / 1e6:.6f}"
    # requests arriving within 50 s of a wake's start waited over 10 s: 3 + 2
    assert five["requests_held_over_10s"] == 5
    # no on-demand rate is known for this provider: said, not guessed
    assert by[(30, "on-demand")]["predicted_spend_usd"] is None
    assert t["recommendation"] == "5 min, spot-first"
    assert "5 min, spot-first" in t["sentence"] and "less than the current" in t["sentence"]
    # the per-wake figures in cost
    code, out, err = cli(capsys, monkeypatch, "--config", str(cfg), "cost", "--since",
                         iso(from_ms(H0)), "--until", iso(from_ms(H0 + 600 * MIN)), "--json")
    wakes = json.loads(out)["tiers"][0]["wakes"]
    assert [w["seconds"] for w in wakes] == [60.0, 60.0]
    assert [w["spend_usd"] for w in wakes] == ["0.010010", "0.010010"]  # restoring + volume
    assert [w["requests_held"] for w in wakes] == [3, 2]
    assert wakes[0]["phases"] == {"engine": 20.0, "restore": 40.0}
    assert wakes[0]["max_wait_s"] == 60.0


def test_a_local_cloud_tier_that_never_ran_on_spot_prices_spot_from_the_list(ledger):
    """measured_rates took `flavor.spot_per_min`, which the local cloud's flavors do not have
    (the spot price is the `<name>-spot` flavor's): advise on an on-demand-only day raised
    AttributeError."""
    from spotctl.config import parse_config
    from spotctl.localcloud.model import FLAVORS
    from spotctl.services.cost import cost_report
    from spotctl.services.economics import measured_rates

    cfg = parse_config('[[providers]]\nname = "lc"\nkind = "localcloud"\napi_key_env = "K"\n'
                       'base_url = "http://127.0.0.1:9/v1"\n[[tiers]]\nname = "big"\n'
                       'model = "m"\nprovider = "lc"\nbackend = "localcloud"\n'
                       'flavor = "n3-H100x1"\n', "spotctl.toml")
    for m in range(0, 31):
        record_poll(ledger, PollRecord("lc", H0 + m * MIN - 50, H0 + m * MIN, "ok"), [
            BillingSample("lc", "a", "vm:1", "vm", H0 + m * MIN, 40_000 * m,
                          CumulativeKind.RESOURCE_TOTAL, "h", rate_micros_per_h=2_400_000,
                          tier="big", created_ms=H0, state="ACTIVE", spot=False)])
    rep = cost_report(ledger, cfg, H0, H0 + 30 * MIN)
    rates = measured_rates(cfg, rep.data, rep.spend, "big", [], 0)
    assert rates.serving_on_demand == 2_400_000  # billed
    assert rates.serving_spot == FLAVORS["n3-H100x1-spot"].active_per_min * 60 == 1_440_000
    assert any("n3-H100x1-spot" in n for n in rates.notes)
