"""Utilisation, full-load $/Mtok and spend by capacity, against figures computed by hand."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotctl.config import parse_config
from spotctl.ledger.db import Ledger
from spotctl.ledger.queries import BenchRecord, record_bench_run
from spotctl.ledger.records import BillingSample, CumulativeKind, PollRecord, UsageRecord
from spotctl.ledger.writes import record_poll, record_usage
from spotctl.services.cost import cost_report

MIN = 60_000
H0 = 1_700_002_800_000  # a clock hour


def cfg(extra: str = ""):
    return parse_config('[[providers]]\nname = "hs"\nkind = "hyperstack"\napi_key_env = "K"\n'
                        f'[[tiers]]\nname = "big"\nmodel = "m"\n{extra}', "spotctl.toml")


def _sample(t, rid, kind, cum, state, spot, tier="big"):
    return BillingSample("hs", "acct", rid, kind, H0 + t, cum, CumulativeKind.RESOURCE_TOTAL,
                         "h", tier=tier, created_ms=H0, state=state, spot=spot)


def _day(ledger):
    """A spot VM serves 2 h at $3/h, then hibernates 1 h at $0.12/h; a volume bills
    $0.006/h all along; 720 requests of 1000 output tokens in the first 2 h."""
    for m in range(0, 181):
        vm = 50_000 * min(m, 120) + 2_000 * max(0, m - 120)
        state = "ACTIVE" if m < 120 else "HIBERNATED"
        record_poll(ledger, PollRecord("hs", H0 + m * MIN - 50, H0 + m * MIN, "ok"), [
            _sample(m * MIN, "vm:1", "vm", vm, state, True),
            _sample(m * MIN, "volume:1", "volume", 100 * m, "available", None)])
    record_usage(ledger, [UsageRecord(f"r{i}", H0 + i * 10_000, H0 + i * 10_000 + 5_000, "ok",
                                      tier="big", prompt_tokens=50, completion_tokens=1000)
                          for i in range(720)])


def test_utilisation_and_full_load_from_the_rated_capacity(ledger):
    _day(ledger)
    js = cost_report(ledger, cfg("rated_output_tokens_per_s = 500\n"), H0, H0 + 180 * MIN,
                     min_tokens=1).to_json()
    tier = js["tiers"][0]
    assert js["spend_usd"] == "6.138000"
    assert js["spend_by_capacity"] == {"spot": "6.000000", "on_demand": "0.000000",
                                       "hibernated": "0.120000", "storage": "0.018000",
                                       "other": "0.000000"}
    assert tier["serving_seconds"] == 7200 and tier["capacity_source"] == "rated"
    # 720,000 tokens ÷ (500 tok/s × 7,200 s)
    assert Decimal(tier["utilisation"]) == Decimal("0.2")
    # $6 over 2 h serving = $3/h; 500 tok/s = 1.8 Mtok/h; 3 / 1.8
    assert Decimal(tier["usd_per_mtok_at_full_load"]) == (Decimal(3) / Decimal("1.8")).quantize(
        Decimal("0.0001"))
    assert tier["billed_usd_per_h_serving"] == "3.0000"
    assert js["utilisation"] == tier["utilisation"]
    # requests were in flight 5 s of every 10 s while serving: half of the serving time idle
    assert Decimal(js["idle_share"]) == Decimal("0.5")


def test_a_bench_for_the_current_model_wins_over_the_rated_figure(ledger):
    _day(ledger)
    for model, tps, t in (("m", 1000.0, 10 * MIN), ("other-model", 9999.0, 20 * MIN)):
        record_bench_run(ledger, BenchRecord("big", H0, H0 + t, model, None, "H100:1", tps, 64,
                                             2000, True, {}, {}, 10, 0, 1, 1, [], []))
    js = cost_report(ledger, cfg("rated_output_tokens_per_s = 500\n"), H0, H0 + 180 * MIN,
                     min_tokens=1).to_json()
    tier = js["tiers"][0]
    assert tier["capacity_source"] == "bench" and tier["capacity_output_tokens_per_s"] == "1000.0"
    assert Decimal(tier["utilisation"]) == Decimal("0.1")
    assert Decimal(tier["usd_per_mtok_at_full_load"]) == (Decimal(3) / Decimal("3.6")).quantize(
        Decimal("0.0001"))


def test_no_capacity_means_null_not_zero(ledger):
    _day(ledger)
    js = cost_report(ledger, cfg(), H0, H0 + 180 * MIN, min_tokens=1).to_json()
    assert js["utilisation"] is None and js["usd_per_mtok_at_full_load"] is None
    assert js["tiers"][0]["utilisation"] is None


states = st.sampled_from(["ACTIVE", "HIBERNATED", "CREATING", "SHUTOFF", None])
spots = st.sampled_from([True, False, None])


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.integers(0, 90_000), states, spots), min_size=2, max_size=40),
       vol=st.lists(st.integers(0, 500), min_size=2, max_size=40),
       cut=st.integers(0, 45), bucket=st.sampled_from([1, 7, 60]))
def test_spend_by_capacity_sums_exactly_to_spend(tmp_path_factory, steps, vol, cut, bucket):
    led = Ledger(tmp_path_factory.mktemp("cap") / "l.db")
    try:
        vm = vv = 0
        for m, (inc, state, spot) in enumerate(steps):
            vm += inc
            vv += vol[m % len(vol)]
            record_poll(led, PollRecord("hs", H0 + m * MIN - 50, H0 + m * MIN, "ok"), [
                _sample(m * MIN, "vm:1", "vm", vm, state, spot),
                _sample(m * MIN, "volume:9", "volume", vv, "available", None, tier=None)])
        lo = H0 + min(cut, len(steps) - 1) * MIN + 13_000
        js = cost_report(led, cfg(), lo, H0 + len(steps) * MIN, bucket_s=bucket * 60,
                         min_tokens=1).to_json()
        parts = js["spend_by_capacity"]
        assert sum(Decimal(v) for v in parts.values()) == Decimal(js["spend_usd"])
        for b in js["buckets"]:
            assert sum(Decimal(v) for v in b["spend_by_capacity"].values()) == Decimal(
                b["spend_usd"])
        # independently: the volume's growth after the window's anchor is storage
        anchor = max(i for i in range(len(steps)) if H0 + i * MIN <= lo)
        vol_growth = sum(vol[m % len(vol)] for m in range(anchor + 1, len(steps)))
        assert Decimal(parts["storage"]) * 1_000_000 == vol_growth
    finally:
        led.close()


def test_idle_share_falls_back_to_minutes_on_heavy_traffic(ledger, monkeypatch):
    """Past a bound on the window's requests, busy time comes from the per-minute rollup (a
    minute with a completion is busy): bounded cost, and the resolution is said."""
    from spotctl.ledger import queries

    _day(ledger)
    exact = cost_report(ledger, cfg(), H0, H0 + 180 * MIN, min_tokens=1).to_json()
    assert exact["idle_share_resolution"] == "request" and exact["idle_share"] == "0.500000"
    monkeypatch.setattr(queries, "BUSY_EXACT_MAX_REQUESTS", 100)
    coarse = cost_report(ledger, cfg(), H0, H0 + 180 * MIN, min_tokens=1).to_json()
    # every one of the 120 serving minutes saw completions: no idle minute
    assert coarse["idle_share_resolution"] == "minute" and coarse["idle_share"] == "0.000000"


def test_a_fixed_endpoint_tier_billed_by_its_provider_has_a_utilisation(ledger):
    """Issue 13 §1: utilisation applies to a fixed-endpoint tier whose `provider` names who
    bills its VM, attributed by the name spotctl-<tier> or the label spotctl-tier=<tier>."""
    from spotctl.billing.base import tier_for_resource

    c = cfg('endpoint = "http://10.0.0.5:8000"\nprovider = "hs"\n'
            'rated_output_tokens_per_s = 500\n')
    assert not c.tier("big").fleet_managed  # spotctl runs no machine of it
    assert tier_for_resource("spotctl-big", [], c) == "big"
    assert tier_for_resource("my-own-h100", ["spotctl-tier=big"], c) == "big"
    assert tier_for_resource("my-own-h100", [], c) is None
    _day(ledger)  # the provider's samples, attributed to the tier as the poller does
    js = cost_report(ledger, c, H0, H0 + 180 * MIN, min_tokens=1).to_json()
    tier = js["tiers"][0]
    assert tier["name"] == "big" and tier["serving_seconds"] == 7200  # from the VM's states
    assert Decimal(tier["utilisation"]) == Decimal("0.2")  # 720,000 ÷ (500 × 7,200)
    assert Decimal(tier["usd_per_mtok_at_full_load"]) == (Decimal(3) / Decimal("1.8")).quantize(
        Decimal("0.0001"))
