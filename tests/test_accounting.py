"""Invoice-true accounting: pure functions (with properties) and the ledger-backed report."""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotctl.accounting.bands import usd_per_mtok, weighted_percentile
from spotctl.accounting.observability import LOST, OK, provider_coverage
from spotctl.accounting.series import series_spend
from spotctl.accounting.window import parse_window
from spotctl.config import parse_config
from spotctl.errors import UsageError
from spotctl.ledger.records import BillingSample, CumulativeKind, PollRecord, UsageRecord
from spotctl.ledger.writes import record_poll, record_usage
from spotctl.services.cost import cost_report as build_cost_report
from spotctl.services.cost import spend_between

MIN = 60_000

increments = st.lists(st.integers(min_value=0, max_value=5_000_000), min_size=1, max_size=60)


def cumulative(incs: list[int], start: int = 0) -> list[tuple[int, int]]:
    out, total = [], start
    for i, inc in enumerate(incs):
        total += inc
        out.append(((i + 1) * MIN, total))
    return out


@settings(deadline=None)  # pure, but the shared 2-core box can stall any example
@given(increments, st.data())
def test_spend_is_additive_at_sample_times(incs, data):
    points = cumulative(incs)
    times = [t for t, _ in points]
    a, b, c = sorted(data.draw(st.lists(st.sampled_from(times), min_size=3, max_size=3)))
    whole = series_spend(points, a, c).micros
    assert whole == series_spend(points, a, b).micros + series_spend(points, b, c).micros


@settings(deadline=None)
@given(st.lists(st.integers(min_value=-3_000_000, max_value=5_000_000), min_size=1, max_size=60))
def test_spend_is_never_negative_and_decreases_are_not_refunds(steps):
    points, total = [], 10_000_000
    for i, step in enumerate(steps):
        total = max(0, total + step)
        points.append(((i + 1) * MIN, total))
    result = series_spend(points, 0, len(points) * MIN + 1)
    assert result.micros >= 0
    # held at the high-water mark: spend is the growth of the running maximum
    assert result.micros == max(c for _, c in points) - points[0][1]
    assert len(result.decreases) == sum(1 for a, b in itertools.pairwise(points)
                                        if b[1] < a[1])


def test_resource_created_inside_window_starts_from_zero():
    points = [(5 * MIN, 300), (6 * MIN, 400)]
    assert series_spend(points, 0, 10 * MIN, created_ms=4 * MIN).micros == 400
    # created before the window (no earlier sample known): count from its first sample
    assert series_spend(points, 0, 10 * MIN, created_ms=-MIN).micros == 100


def test_hundred_thousand_minute_samples_sum_exactly_to_the_cent():
    # 0.0416666 $/min would drift as floats; here every minute adds exactly 41_667 micros
    points = cumulative([41_667] * 100_000)
    result = series_spend(points, 0, 100_000 * MIN)
    assert result.micros == 41_667 * 99_999  # the first sample is the window's base
    assert sum(result.by_bucket.values()) == result.micros


def test_window_parsing():
    assert parse_window("90m").total_seconds() == 5400
    assert parse_window("7d").days == 7
    for bad in ("24x", "", "h", "-1h", "0h", "1.5h"):
        with pytest.raises(UsageError, match="90m, 24h, 7d"):
            parse_window(bad)


def test_coverage_gap_dark_tail_and_idle():
    t = [0, MIN, 2 * MIN, 10 * MIN, 11 * MIN]
    cov = provider_coverage("p", t, 0, 12 * MIN, gap_after_ms=150_000, stale_after_ms=180_000)
    assert cov.status == "degraded" and cov.dark_seconds == 8 * 60
    cov = provider_coverage("p", t, 0, 20 * MIN, gap_after_ms=150_000, stale_after_ms=180_000)
    assert cov.status == LOST and cov.known_until_ms == 11 * MIN
    cov = provider_coverage("p", [], 0, 20 * MIN, gap_after_ms=150_000, stale_after_ms=180_000)
    assert cov.status == LOST and cov.known_until_ms is None
    ok = provider_coverage("p", list(range(0, 21 * MIN, MIN)), 0, 20 * MIN,
                           gap_after_ms=150_000, stale_after_ms=180_000)
    assert ok.status == OK and ok.dark_seconds == 0


def test_band_math():
    assert usd_per_mtok(1_000_000, 0) is None
    assert usd_per_mtok(2_000_000, 1_000_000) == Decimal("2.0000")
    vals = [(Decimal(1), 10), (Decimal(2), 80), (Decimal(9), 10)]
    assert weighted_percentile(vals, 0.1) == 1
    assert weighted_percentile(vals, 0.5) == 2
    assert weighted_percentile(vals, 0.9) == 2
    assert weighted_percentile([], 0.5) is None


CFG = parse_config('[[providers]]\nname = "hs"\nkind = "hyperstack"\napi_key_env = "K"\n'
                   '[[tiers]]\nname = "big"\nmodel = "m"\n', "spotctl.toml")


def _poll(ledger, t, samples, outcome="ok"):
    record_poll(ledger, PollRecord("hs", t - 100, t, outcome, resources_seen=len(samples)),
                samples if outcome == "ok" else [])


def _vm(t, cum, rid="vm:1", tier="big", kind=CumulativeKind.RESOURCE_TOTAL, rkind="vm"):
    return BillingSample("hs", "acct", rid, rkind, t, cum, kind, "h", tier=tier, created_ms=0,
                         state="ACTIVE", spot=True)


def test_idle_fleet_with_healthy_billing_reads_exactly_zero(ledger):
    for m in range(0, 61):
        _poll(ledger, m * MIN, [_vm(m * MIN, 5_000_000)])  # nothing accrues
    r = spend_between(ledger, 0, 60 * MIN, CFG)
    assert (r.micros, r.complete, r.status) == (0, True, "ok")
    # no resources at all, billing healthy: still exactly zero and complete
    for m in range(61, 121):
        _poll(ledger, m * MIN, [])
    r = spend_between(ledger, 61 * MIN, 120 * MIN, CFG)
    assert (r.micros, r.complete, r.status) == (0, True, "ok")


def test_dark_tail_is_lost_and_incomplete_never_zero(ledger):
    for m in range(0, 31):
        _poll(ledger, m * MIN, [_vm(m * MIN, m * 40_000)])
    for m in range(31, 61):
        _poll(ledger, m * MIN, [], outcome="timeout")
    r = spend_between(ledger, 0, 60 * MIN, CFG)
    assert r.status == "lost" and not r.complete
    assert r.known_until_ms == 30 * MIN and r.micros == 30 * 40_000
    assert r.dark_seconds == 30 * 60


def test_account_series_not_double_counted_and_anomaly_recorded(ledger):
    for m in range(0, 11):
        cum = m * 10_000 if m != 5 else 20_000  # the provider reports a lower total once
        _poll(ledger, m * MIN, [_vm(m * MIN, cum),
                                _vm(m * MIN, 1_000_000 + m * 10_000, rid="account", tier=None,
                                    kind=CumulativeKind.ACCOUNT_TOTAL, rkind="account")])
    r = spend_between(ledger, 0, 10 * MIN, CFG)
    # 0→40k (+40k), 40k→20k (anomaly: held at 40k), 20k→60k (+20k above the high), →100k
    assert r.micros == 100_000
    assert r.anomalies == 1
    rows = ledger.conn.execute(
        "SELECT kind, observed_ms, previous_micros, current_micros FROM billing_anomalies"
    ).fetchall()
    assert rows == [("cumulative_decreased", 5 * MIN, 40_000, 20_000)]


def test_report_tiers_buckets_and_band(ledger):
    for m in range(0, 121):
        _poll(ledger, m * MIN, [_vm(m * MIN, m * 50_000)])  # $3/h
    rows = [UsageRecord(f"r{i}", 0, 10 * MIN + i * 1000, "ok", tier="big",
                        prompt_tokens=100, completion_tokens=1000) for i in range(50)]
    record_usage(ledger, rows)
    rep = build_cost_report(ledger, CFG, 0, 120 * MIN, bucket_s=3600, min_tokens=1)
    js = rep.to_json()
    assert js["spend_usd"] == "6.000000" and js["spend_complete"] is True
    assert js["output_tokens"] == 50_000 and js["prompt_tokens"] == 5_000
    assert js["usd_per_mtok_output"] == "120.0000"
    # the second hour served nothing: its $3 is zero-token spend
    assert js["zero_token_spend_usd"] == "3.000000" and js["zero_token_share"] == "0.500000"
    # time-weighted: requests were in flight from 0 to 10 min 49 s of the 2 h served
    idle = 1 - Decimal(649) / Decimal(7200)
    assert Decimal(js["idle_share"]) == idle.quantize(Decimal("0.000001"))
    assert js["spend_by_capacity"]["spot"] == "6.000000" and js["serving_seconds"] == 7200
    assert js["band"]["p50"] == "60.0000"
    assert [t["name"] for t in js["tiers"]] == ["big"]
    assert len(js["buckets"]) == 2
    assert js["observability"]["status"] == "ok"


def test_window_without_tokens_has_undefined_cost(ledger):
    for m in range(0, 11):
        _poll(ledger, m * MIN, [_vm(m * MIN, m * 1000)])
    js = build_cost_report(ledger, CFG, 0, 10 * MIN).to_json()
    assert js["usd_per_mtok_output"] is None and js["band"]["p50"] is None


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2_000_000), min_size=2, max_size=40),
       st.integers(min_value=1, max_value=6))
def test_ledger_path_equals_pure_reference(tmp_path_factory, incs, bucket_min):
    from spotctl.ledger.db import Ledger

    led = Ledger(tmp_path_factory.mktemp("l") / "l.db")
    points = cumulative(incs)
    for t, cum in points:
        _poll(led, t, [_vm(t, cum)])
    end = points[-1][0]
    ref = series_spend(points, 0, end, created_ms=0)
    rep = build_cost_report(led, CFG, 0, end, bucket_s=bucket_min * 60, min_tokens=1)
    assert rep.spend.micros == ref.micros
    assert sum(b.spend_micros for b in rep.buckets) == ref.micros
    led.close()
