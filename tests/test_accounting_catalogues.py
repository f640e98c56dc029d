"""The window read's catalogues (schema 7 -> 8): the last sample per series and clock hour,
the changes of state or spot flag, and the hourly usage rollup.

A window's accounting reads a compressed series (points at hour ends, state changes and
decreases) and tokens from rollups. These tests hold the compressed read to the full data:

* spend, spend by capacity and billed time per bucket equal those of the *full* series (every
  sample the test wrote after the window's anchor), for random series with state changes,
  spot flips, decreases, gaps and out-of-order writes, random windows at any millisecond and
  every kind of bucket (minutes, hours, days, one bucket);
* tokens per bucket and the busy islands equal figures the test computes from the usage rows it
  wrote, across many hours;
* the catalogues are written in the writer's transaction, the migration builds the same
  catalogues from an existing ledger, and ``ledger check`` names each one that is broken.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotctl.accounting.capacity import classify
from spotctl.accounting.series import series_spend
from spotctl.ledger import queries
from spotctl.ledger.check import check_ledger
from spotctl.ledger.db import Ledger
from spotctl.ledger.records import BillingSample, CumulativeKind, PollRecord, UsageRecord
from spotctl.ledger.schema import MIGRATIONS
from spotctl.ledger.writes import record_poll, record_usage

MIN = 60_000
HOUR = 3_600_000
H0 = 1_700_002_800_000  # a clock hour
STATES = [("ACTIVE", True), ("ACTIVE", False), ("HIBERNATED", True), ("BUILD", True),
          ("ACTIVE", None)]


def _random_series(rng: random.Random, minutes: int, rid: str) -> list[tuple]:
    """(observed_ms, cumulative, state, spot) of one VM: mostly growing, with state runs,
    spot flips, a few decreases and gaps in the samples."""
    rows, cum, state = [], 0, STATES[0]
    t = rng.randrange(0, 40) * 1_000
    while t < minutes * MIN:
        if rng.random() < 0.05:
            state = rng.choice(STATES)
        cum += rng.choice([0, 0, 1_000, 5_000, 50_000])
        if rng.random() < 0.01:
            cum = max(0, cum - rng.randrange(1, 200_000))  # the provider's total went down
        rows.append((H0 + t, cum, *state))
        t += rng.choice([MIN] * 20 + [2 * MIN, 17 * MIN, 95 * MIN]) + rng.randrange(-900, 900)
    return rows


def _write_series(ledger, series: dict[str, list[tuple]], rng: random.Random) -> None:
    """One poll per sample time; a sixth of the samples arrive late (out of order)."""
    polls: dict[int, list[BillingSample]] = {}
    for rid, rows in series.items():
        for ms, cum, state, spot in rows:
            polls.setdefault(ms, []).append(BillingSample(
                "hs", "acct", rid, "vm", ms, cum, CumulativeKind.RESOURCE_TOTAL, "h",
                rate_micros_per_h=3_000_000, tier="big", created_ms=H0 - HOUR, state=state,
                spot=spot))
    times = sorted(polls)
    late = {t for t in times if rng.random() < 1 / 6}
    for t in [t for t in times if t not in late] + sorted(late, reverse=True):
        record_poll(ledger, PollRecord("hs", t - 50, t, "ok", resources_seen=1), polls[t])


def _full(rows: list[tuple], start: int) -> tuple[list[tuple[int, int]], list]:
    """The full series from the window's anchor on: every sample after the last one at or
    before ``start`` (the anchor itself included), with its capacity label."""
    anchor = [r for r in rows if r[0] <= start][-1:]
    kept = anchor + [r for r in rows if r[0] > start]
    return ([(ms, cum) for ms, cum, _s, _p in kept],
            [classify("vm", state, spot) for _ms, _c, state, spot in kept])


def _assert_window_matches_full_series(ledger, series, start, end, bucket_ms):
    data = queries.read_window(ledger, start, end, bucket_ms, tokens=False, fleet=False)
    got = {s.resource_id: s for s in data.series}
    expected_ids = {rid for rid, rows in series.items()
                    if any(start < r[0] <= end for r in rows) or
                    (any(r[0] <= start for r in rows) and any(r[0] > end for r in rows))}
    assert expected_ids <= set(got)
    for rid, s in got.items():
        points, labels = _full(series[rid], start)
        want = series_spend(points, start, end, created_ms=s.created_ms, from_zero=False,
                            bucket_ms=bucket_ms, labels=labels)
        mine = series_spend(s.points, start, end, created_ms=s.created_ms, from_zero=False,
                            bucket_ms=bucket_ms,
                            labels=[classify("vm", *s.meta[ms][:2]) for ms, _ in s.points])
        assert mine.micros == want.micros, rid
        assert mine.by_bucket_label == want.by_bucket_label, rid
        assert mine.ms_by_bucket_label == want.ms_by_bucket_label, rid
        assert mine.decreases == want.decreases, rid
        # every point is a real sample, with its own state and flag
        stored = {ms: (state, spot) for ms, _c, state, spot in series[rid]}
        assert all(stored[ms] == s.meta[ms][:2] for ms, _ in s.points), rid


buckets = st.sampled_from([None, 15 * MIN, HOUR, 2 * HOUR, 24 * HOUR])


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), cuts=st.lists(st.integers(0, 20 * HOUR), min_size=2,
                                                max_size=2, unique=True), bucket=buckets)
def test_compressed_window_equals_the_full_series(tmp_path_factory, seed, cuts, bucket):
    rng = random.Random(seed)
    series = {f"vm:{i}": _random_series(rng, 20 * 60, f"vm:{i}") for i in range(2)}
    led = Ledger(tmp_path_factory.mktemp("cat") / "l.db")
    try:
        _write_series(led, series, rng)
        start, end = (H0 + c for c in sorted(cuts))
        _assert_window_matches_full_series(led, series, start, end, bucket)
        assert [r.name for r in check_ledger(led) if not r.ok] == []
    finally:
        led.close()


@pytest.mark.parametrize("seed", [1, 2])
def test_compressed_window_equals_the_full_series_on_both_backends(ledger, seed):
    rng = random.Random(seed)
    series = {f"vm:{i}": _random_series(rng, 12 * 60, f"vm:{i}") for i in range(2)}
    _write_series(ledger, series, rng)
    for start, end, bucket in [(H0 + 7 * MIN + 3, H0 + 11 * HOUR + 1, HOUR),
                               (H0 - HOUR, H0 + 13 * HOUR, 2 * HOUR),
                               (H0 + 2 * HOUR, H0 + 9 * HOUR + 5 * MIN, 15 * MIN),
                               (H0 + HOUR + 1, H0 + 5 * HOUR, None)]:
        _assert_window_matches_full_series(ledger, series, start, end, bucket)
    # the hourly catalogue really compresses: far fewer points than samples in the window
    start, end = H0 + 7 * MIN + 3, H0 + 11 * HOUR + 1
    data = queries.read_window(ledger, start, end, HOUR, tokens=False, fleet=False)
    for s in data.series:
        samples = sum(start < r[0] <= end for r in series[s.resource_id])
        assert 0 < len([ms for ms, _ in s.points if start < ms <= end]) < samples / 2
    assert [r.name for r in check_ledger(ledger) if not r.ok] == []


# -- tokens and busy islands from the rollups -------------------------------------------------

def _usage(rng: random.Random, hours: int) -> list[UsageRecord]:
    """Bursts and silences over ``hours``, per tier: whole busy hours, partly busy hours, hours
    busy but for one minute, idle hours."""
    rows = []
    for h in range(hours):
        for tier in ("a", "b", None):
            mode = rng.choice(["idle", "full", "part", "all but one"])
            if mode == "idle":
                continue
            gap = rng.randrange(60)
            for m in range(60):
                if (mode == "part" and rng.random() < 0.6) or (mode == "all but one" and m == gap):
                    continue
                for _ in range(rng.randrange(1, 3)):
                    done = H0 + h * HOUR + m * MIN + rng.randrange(0, MIN)
                    rows.append(UsageRecord(f"u{len(rows)}", done - rng.randrange(0, 3_000), done,
                                            "ok", tier=tier, prompt_tokens=rng.randrange(0, 500),
                                            completion_tokens=rng.randrange(0, 900),
                                            tokens_estimated=rng.random() < 0.1))
    rng.shuffle(rows)  # the gateway writes in completion order only roughly
    return rows


def _expected_tokens(rows, start, end, bucket_ms):
    out: dict[tuple[int, str], list[int]] = {}
    for r in rows:
        if start <= r.completed_ms < end:
            b = start if bucket_ms is None else r.completed_ms - r.completed_ms % bucket_ms
            t = out.setdefault((b, r.tier or ""), [0, 0, 0, 0])
            t[0] += r.prompt_tokens
            t[1] += r.completion_tokens
            t[2] += 1
            t[3] += int(r.tokens_estimated)
    return out


def _expected_busy_minutes(rows, start, end):
    """Minute resolution: a minute in which a request of the tier completed is busy (clipped
    to the window), merged into islands."""
    minutes: dict[str, set[int]] = {}
    for r in rows:
        m = r.completed_ms - r.completed_ms % MIN
        if m + MIN > start and m < end:
            minutes.setdefault(r.tier or "", set()).add(m)
    out = {}
    for tier, ms in minutes.items():
        spans: list[tuple[int, int]] = []
        for m in sorted(ms):
            lo, hi = max(m, start), min(m + MIN, end)
            if spans and spans[-1][1] >= lo:
                spans[-1] = (spans[-1][0], hi)
            else:
                spans.append((lo, hi))
        out[tier] = spans
    return out


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), cuts=st.lists(st.integers(0, 9 * HOUR), min_size=2,
                                                max_size=2, unique=True), bucket=buckets)
def test_tokens_and_busy_minutes_from_the_rollups_equal_the_rows(tmp_path_factory, seed, cuts,
                                                                 bucket, monkeypatch):
    rng = random.Random(seed)
    rows = _usage(rng, 9)
    led = Ledger(tmp_path_factory.mktemp("tok") / "l.db")
    try:
        for i in range(0, len(rows), 300):  # batches, as the gateway writes them
            record_usage(led, rows[i:i + 300])
        start, end = (H0 + c for c in sorted(cuts))
        with led.snapshot() as conn:
            got = queries._tokens(conn, start, end, bucket)
            monkeypatch.setattr(queries, "BUSY_EXACT_MAX_REQUESTS", -1)
            busy, resolution = queries._busy_islands(conn, start, end)
        assert {k: [v.prompt, v.output, v.requests, v.estimated] for k, v in got.items()
                } == _expected_tokens(rows, start, end, bucket)
        assert resolution == "minute"
        assert busy == _expected_busy_minutes(rows, start, end)
        assert [r.name for r in check_ledger(led) if not r.ok] == []
    finally:
        led.close()


def test_tokens_and_busy_minutes_on_both_backends(ledger, monkeypatch):
    rng = random.Random(7)
    rows = _usage(rng, 6)
    record_usage(ledger, rows[: len(rows) // 2])
    record_usage(ledger, rows[len(rows) // 2:])
    record_usage(ledger, rows[:50])  # a replayed batch adds nothing
    monkeypatch.setattr(queries, "BUSY_EXACT_MAX_REQUESTS", -1)
    for start, end, bucket in [(H0 + 5 * MIN + 17, H0 + 5 * HOUR + 59_999, HOUR),
                               (H0, H0 + 6 * HOUR, None), (H0 + 1, H0 + 4 * HOUR, 15 * MIN)]:
        with ledger.snapshot() as conn:
            got = queries._tokens(conn, start, end, bucket)
            busy, _ = queries._busy_islands(conn, start, end)
        assert {k: [v.prompt, v.output, v.requests, v.estimated] for k, v in got.items()
                } == _expected_tokens(rows, start, end, bucket)
        assert busy == _expected_busy_minutes(rows, start, end)
    assert [r.name for r in check_ledger(ledger) if not r.ok] == []


# -- the migration, and ledger check ------------------------------------------------------------

def test_the_migration_builds_the_catalogues_of_an_existing_ledger(tmp_path):
    """A ledger written before schema 8 (no catalogues) gets the same catalogues from the
    migration as the writers keep: `ledger check` is clean and the windows are exact."""
    from spotctl.ledger.db import _statements

    path = tmp_path / "old.db"
    with Ledger(path) as led:  # today's writers, then back to the schema-7 tables
        rng = random.Random(3)
        series = {"vm:1": _random_series(rng, 8 * 60, "vm:1")}
        _write_series(led, series, rng)
        rows = _usage(rng, 8)
        record_usage(led, rows)
        for table in ("billing_series_hours", "billing_state_changes", "usage_hours"):
            led.conn.execute(f"DROP TABLE {table}")
        led.conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    assert len(MIGRATIONS) == 8 and "billing_series_hours" in MIGRATIONS[7]
    assert list(_statements(MIGRATIONS[7]))  # the migration parses into statements
    with Ledger(path) as led:  # migrates 7 -> 8
        assert led.schema_version() == 8
        assert [r.name for r in check_ledger(led) if not r.ok] == []
        assert led.conn.execute("SELECT count(*) FROM billing_state_changes").fetchone()[0] > 0
        _assert_window_matches_full_series(led, series, H0 + 30 * MIN + 1, H0 + 7 * HOUR, HOUR)


@pytest.mark.parametrize("table, tamper, broken", [
    ("billing_state_changes", "DELETE FROM billing_state_changes WHERE observed_ms = "
     "(SELECT min(observed_ms) FROM billing_state_changes)",
     "every change of state or spot flag is catalogued"),
    ("billing_series_hours", "UPDATE billing_series_hours SET cumulative_micros = "
     "cumulative_micros + 1 WHERE hour_ms = (SELECT min(hour_ms) FROM billing_series_hours)",
     "each series' last sample per hour is catalogued"),
    ("usage_hours", "UPDATE usage_hours SET busy_minutes = busy_minutes - 1 WHERE hour_ms = "
     "(SELECT min(hour_ms) FROM usage_hours)",
     "hourly usage rollup agrees with the minute rollup"),
])
def test_ledger_check_names_a_broken_catalogue(ledger, table, tamper, broken):
    rng = random.Random(11)
    _write_series(ledger, {"vm:1": _random_series(rng, 6 * 60, "vm:1")}, rng)
    record_usage(ledger, _usage(rng, 3) or [UsageRecord("x", H0, H0 + 1, "ok", tier="a")])
    assert [r.name for r in check_ledger(ledger) if not r.ok] == []
    ledger.conn.execute(tamper)
    assert [r.name for r in check_ledger(ledger) if not r.ok] == [broken]


def test_rebuilding_the_catalogues_gives_what_the_writers_keep(ledger):
    """``rebuild_catalogues`` (for bulk loaders) and the writers agree; the writers may keep a
    change row that a late sample made stale, never miss one."""
    rng = random.Random(5)
    _write_series(ledger, {f"vm:{i}": _random_series(rng, 5 * 60, f"vm:{i}") for i in range(2)},
                  rng)
    record_usage(ledger, _usage(rng, 4))

    def tables():
        conn = ledger.conn
        return [sorted(tuple(r) for r in conn.execute(f"SELECT * FROM {t}"))
                for t in ("billing_series_hours", "billing_state_changes", "usage_hours")]

    kept = tables()
    with ledger.transaction() as conn:
        queries.rebuild_catalogues(conn)
    rebuilt = tables()
    assert rebuilt[0] == kept[0] and rebuilt[2] == kept[2] and rebuilt[0]
    assert set(rebuilt[1]) <= set(kept[1]) and rebuilt[1]
    assert [r.name for r in check_ledger(ledger) if not r.ok] == []


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reqs=st.lists(st.tuples(st.integers(0, 4 * HOUR), st.integers(0, 20 * MIN),
                               st.sampled_from(["a", "b", None])), max_size=60),
       cuts=st.lists(st.integers(0, 4 * HOUR), min_size=2, max_size=2, unique=True))
def test_busy_islands_at_request_resolution_equal_the_union_of_requests(tmp_path_factory, reqs,
                                                                       cuts):
    """Up to BUSY_EXACT_MAX_REQUESTS requests: per tier, the union of [started, completed] of
    the requests (touching ones merge), clipped to the window."""
    led = Ledger(tmp_path_factory.mktemp("busy") / "l.db")
    try:
        record_usage(led, [UsageRecord(f"r{i}", H0 + s, H0 + s + d, "ok", tier=t)
                           for i, (s, d, t) in enumerate(reqs)])
        start, end = (H0 + c for c in sorted(cuts))
        with led.snapshot() as conn:
            busy, resolution = queries._busy_islands(conn, start, end)
        assert resolution == "request"
        want: dict[str, list[tuple[int, int]]] = {}
        for tier in {t or "" for _s, _d, t in reqs}:
            spans = sorted((H0 + s, H0 + s + d) for s, d, t in reqs if (t or "") == tier
                           and start < H0 + s + d < end + queries.MAX_REQUEST_MS
                           and H0 + s < end)
            merged: list[list[int]] = []
            for lo, hi in spans:
                if merged and lo <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], hi)
                else:
                    merged.append([lo, hi])
            clipped = [(max(lo, start), min(hi, end)) for lo, hi in merged]
            if [c for c in clipped if c[1] > c[0]]:
                want[tier] = [c for c in clipped if c[1] > c[0]]
        assert busy == want
    finally:
        led.close()
