"""Interruption tax and net spot savings on a hand-made day, figures computed by hand."""

from __future__ import annotations

from decimal import Decimal

from spotctl.clock import from_ms, iso
from spotctl.config import parse_config
from spotctl.ledger.journal import FleetEntry, append_fleet_event
from spotctl.ledger.records import (
    BillingSample,
    CumulativeKind,
    PollRecord,
    UsageRecord,
)
from spotctl.ledger.writes import record_poll, record_usage
from spotctl.services.cost import cost_report

MIN = 60_000
H0 = 1_700_002_800_000

CFG = parse_config('[[providers]]\nname = "hs"\nkind = "hyperstack"\napi_key_env = "K"\n'
                   '[[tiers]]\nname = "big"\nmodel = "m"\nprovider = "hs"\n', "spotctl.toml")


def _s(m, rid, kind, cum, state, spot, rate, created):
    return BillingSample("hs", "acct", rid, kind, H0 + m * MIN, cum,
                         CumulativeKind.RESOURCE_TOTAL, "h", rate_micros_per_h=rate, tier="big",
                         created_ms=H0 + created * MIN, state=state, spot=spot)


def _preempted_day(ledger, od_samples: bool = True):
    """Spot VM ($1.44/h) serves 0–60 min and is preempted at 60 min 10 s; an on-demand VM
    ($2.40/h) is created at 62, ACTIVE from 64, serving again at 65; a volume bills $0.006/h."""
    for m in range(0, 121):
        samples = [_s(m, "volume:1", "volume", 100 * m, "available", None, 6_000, 0)]
        if m <= 60:
            samples.append(_s(m, "vm:1", "vm", 24_000 * m, "ACTIVE", True, 1_440_000, 0))
        elif m == 61:
            samples.append(_s(m, "vm:1", "vm", 24_000 * 60, "deleted", True, None, 0))
        if m >= 62:
            state = "CREATING" if m < 64 else "ACTIVE"
            rate = 2_400_000 if od_samples else None
            samples.append(_s(m, "vm:2", "vm", 40_000 * max(0, m - 64), state,
                              False if od_samples else None, rate, 62))
        record_poll(ledger, PollRecord("hs", H0 + m * MIN - 50, H0 + m * MIN, "ok"), samples)
    for t, ev, cap, rid in ((0, "ready", "spot", "vm:1"), (60 * MIN + 10_000, "preempted", "spot",
                                                           "vm:1"),
                            (62 * MIN, "fell_back", "on-demand", "vm:2"),
                            (65 * MIN, "ready", "on-demand", "vm:2")):
        append_fleet_event(ledger, FleetEntry(H0 + t, "big", ev, capacity=cap, resource_id=rid))
    rows = [UsageRecord(f"x{i}", H0 + (61 + i) * MIN, H0 + (61 + i) * MIN + 5, "no_upstream",
                        tier="big") for i in range(3)]
    rows.append(UsageRecord("early", H0 + 30 * MIN, H0 + 30 * MIN + 5, "no_upstream", tier="big"))
    rows.append(UsageRecord("ok", H0 + 70 * MIN, H0 + 70 * MIN + 500, "ok", tier="big",
                            completion_tokens=100))
    record_usage(ledger, rows)


def test_interruption_tax_and_net_spot_savings(ledger):
    _preempted_day(ledger)
    js = cost_report(ledger, CFG, H0, H0 + 120 * MIN, min_tokens=1).to_json()
    assert js["spend_by_capacity"] == {
        "spot": "1.440000",  # 60 spot minutes at 24,000 µ$
        "on_demand": "2.240000",  # minutes 65…120 at 40,000 µ$
        "hibernated": "0.000000", "storage": "0.012000", "other": "0.000000"}
    tax = js["interruption_tax"]
    assert tax["preemptions"] == 1 and tax["requests_refused"] == 3
    assert tax["minutes"] == "4.8"  # 60:10 → 65:00
    # (60:10, 65:00] at sample times: the new VM's first ACTIVE minute + 5 volume minutes
    assert tax["spend_usd"] == "0.040500"
    sv = js["spot_savings_estimate"]
    assert sv["estimate"] is True
    # the spot VM's last sample before it vanished was ACTIVE at 60: 61 spot minutes of
    # machine time, at the billed on-demand rate of the fallback VM ($2.40/h = 40,000 µ$/min)
    assert sv["spot_hours"] == str((Decimal(61) / 60).quantize(Decimal("0.0001")))
    assert sv["on_demand_equivalent_usd"] == "2.440000"
    assert sv["gross_savings_usd"] == "1.000000"  # 2.44 − 1.44
    assert sv["net_savings_usd"] == "0.959500"  # − 0.0405
    tier = js["tiers"][0]
    source = tier["spot_savings_estimate"]["on_demand_rate_source"]
    # one rate for the window, and the label says it is an approximation and where it is from
    assert source.startswith("billed") and "approximation" in source
    assert iso(from_ms(H0 + 120 * MIN)) in source  # the newest on-demand sample
    # estimates never enter spend
    assert js["spend_usd"] == "3.692000"


def test_a_preemption_journalled_twice_is_one_interruption(ledger):
    _preempted_day(ledger)
    append_fleet_event(ledger, FleetEntry(H0 + 61 * MIN, "big", "preempted", capacity="spot",
                                          resource_id="vm:1"))  # a gateway wake saw it too
    tax = cost_report(ledger, CFG, H0, H0 + 120 * MIN, min_tokens=1).to_json()["interruption_tax"]
    assert tax["preemptions"] == 1 and tax["minutes"] == "4.8"
    assert tax["spend_usd"] == "0.040500"


def test_unknown_on_demand_rate_is_said_not_guessed(ledger):
    _preempted_day(ledger, od_samples=False)
    js = cost_report(ledger, CFG, H0, H0 + 120 * MIN, min_tokens=1).to_json()
    sv = js["spot_savings_estimate"]
    assert sv["net_savings_usd"] is None and sv["on_demand_equivalent_usd"] is None
    assert sv["unknown_rates"] and "unknown" in sv["unknown_rates"][0]
    # the unflagged fallback VM's capacity comes from the journal: still on-demand
    assert js["spend_by_capacity"]["on_demand"] == "2.240000"


def test_local_cloud_price_list_gives_the_on_demand_rate(ledger):
    from spotctl.localcloud.model import FLAVORS

    cfg = parse_config('[[providers]]\nname = "hs"\nkind = "localcloud"\napi_key_env = "K"\n'
                       'base_url = "http://127.0.0.1:9/v1"\n[[tiers]]\nname = "big"\n'
                       'model = "m"\nprovider = "hs"\nbackend = "localcloud"\n'
                       'flavor = "n3-H100x1"\n', "spotctl.toml")
    for m in range(0, 31):
        record_poll(ledger, PollRecord("hs", H0 + m * MIN - 50, H0 + m * MIN, "ok"),
                    [_s(m, "vm:1", "vm", 24_000 * m, "ACTIVE", True, 1_440_000, 0)])
    sv = cost_report(ledger, cfg, H0, H0 + 30 * MIN).to_json()["spot_savings_estimate"]
    od_per_min = FLAVORS["n3-H100x1"].active_per_min
    assert Decimal(sv["on_demand_equivalent_usd"]) * 1_000_000 == 30 * od_per_min
    assert Decimal(sv["net_savings_usd"]) * 1_000_000 == 30 * (od_per_min - 24_000)
    # a tier configured with the spot flavor: its on-demand rate is still the base flavor's
    from spotctl.services.cost import local_flavor

    spot_named = parse_config('[[providers]]\nname = "hs"\nkind = "localcloud"\n'
                              'api_key_env = "K"\nbase_url = "http://127.0.0.1:9/v1"\n'
                              '[[tiers]]\nname = "big"\nmodel = "m"\nprovider = "hs"\n'
                              'backend = "localcloud"\nflavor = "n3-H100x1-spot"\n',
                              "spotctl.toml")
    assert local_flavor(spot_named, "big") is FLAVORS["n3-H100x1"]
    sv = cost_report(ledger, spot_named, H0, H0 + 30 * MIN).to_json()["spot_savings_estimate"]
    assert Decimal(sv["on_demand_equivalent_usd"]) * 1_000_000 == 30 * od_per_min


def test_a_window_where_spot_lost_money_says_so(ledger):
    """The spot VM billed more than the price list's on-demand rate: net savings negative, and
    the closing sentence says spot lost money, with the figure computed by hand."""
    from spotctl.accounting.sentences import spot_sentence
    from spotctl.localcloud.model import FLAVORS

    cfg = parse_config('[[providers]]\nname = "hs"\nkind = "localcloud"\napi_key_env = "K"\n'
                       'base_url = "http://127.0.0.1:9/v1"\n[[tiers]]\nname = "big"\n'
                       'model = "m"\nprovider = "hs"\nbackend = "localcloud"\n'
                       'flavor = "n3-H100x1"\n', "spotctl.toml")
    od_per_min = FLAVORS["n3-H100x1"].active_per_min
    spot_per_min = od_per_min + 10_000  # a spot price above on-demand
    for m in range(0, 31):
        record_poll(ledger, PollRecord("hs", H0 + m * MIN - 50, H0 + m * MIN, "ok"),
                    [_s(m, "vm:1", "vm", spot_per_min * m, "ACTIVE", True, spot_per_min * 60, 0)])
    rep = cost_report(ledger, cfg, H0, H0 + 30 * MIN)
    sv = rep.to_json()["spot_savings_estimate"]
    assert sv["net_savings_usd"] == "-0.300000"  # 30 min × 10,000 µ$
    assert spot_sentence(rep) == ("Spot lost money in this window: an estimated $0.30 more than "
                                  "on-demand for the same 0.5 h.")
