"""Exact windows (issue 12 §2) and the provider-clock-ahead case (issue 11 item 11).

Every expected figure here is computed by the test itself from the rows it wrote, never by
calling the code under test.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotctl.config import parse_config
from spotctl.ledger.db import Ledger
from spotctl.ledger.records import BillingSample, CumulativeKind, PollRecord, UsageRecord
from spotctl.ledger.writes import record_poll, record_usage
from spotctl.services.cost import spend_between

MIN = 60_000
T0 = 1_700_000_040_000  # a minute boundary

CFG = parse_config('[[providers]]\nname = "hs"\nkind = "hyperstack"\napi_key_env = "K"\n'
                   '[[tiers]]\nname = "big"\nmodel = "m"\n', "spotctl.toml")


def _poll(ledger, t, samples):
    record_poll(ledger, PollRecord("hs", t - 100, t, "ok", resources_seen=len(samples)), samples)


def _vm(t, cum, created_ms, rid="vm:1"):
    return BillingSample("hs", "acct", rid, "vm", t, cum, CumulativeKind.RESOURCE_TOTAL, "h",
                         tier="big", created_ms=created_ms, state="ACTIVE", spot=True)


def _clock_ahead_ledger(ledger):
    """Polls every minute at T0 + 30 s + k min. The VM really starts at about T0 + 1 min and
    accrues 10_000 µ$ a minute; the provider's clock is 5 minutes ahead of ours, so it says
    the VM was created at T0 + 6 min, after spotctl's first sample of it (T0 + 1.5 min)."""
    created_by_provider = T0 + 6 * MIN
    for k in range(0, 8):
        t = T0 + 30_000 + k * MIN
        samples = [] if k == 0 else [_vm(t, k * 10_000, created_by_provider)]
        _poll(ledger, t, samples)


def test_provider_clock_ahead_without_evidence_reports_incomplete(ledger):
    """The window starts after the last poll that did not list the VM: nothing in the ledger
    says when it was created (the provider's creation time is after our first sample), so the
    spend before its first sample is unknown: the window is incomplete, never silently short."""
    _clock_ahead_ledger(ledger)
    start, end = T0 + 45_000, T0 + 4 * MIN
    r = spend_between(ledger, start, end, CFG)
    # growth after the first sample in the window: 3 samples at 10_000 µ$ steps
    assert r.micros == 30_000 - 10_000
    assert r.complete is False
    assert any("clock" in reason for reason in r.reasons)


def test_provider_clock_ahead_with_an_empty_poll_in_the_window_is_exact(ledger):
    """A successful poll inside the window did not list the VM, so it was created inside the
    window whatever the provider's clock says: count it from zero, exactly, complete."""
    _clock_ahead_ledger(ledger)
    start, end = T0, T0 + 4 * MIN
    r = spend_between(ledger, start, end, CFG)
    # samples at T0+1.5, 2.5, 3.5 min: 10_000, 20_000, 30_000 from zero
    assert r.micros == 30_000
    assert r.complete is True


# -- tokens: exact at any millisecond ------------------------------------------------------------

usage_rows = st.lists(
    st.tuples(st.integers(min_value=0, max_value=10 * MIN),  # completion offset from T0
              st.integers(min_value=0, max_value=5_000),  # prompt tokens
              st.integers(min_value=0, max_value=5_000)),  # output tokens
    min_size=0, max_size=40)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=usage_rows, cuts=st.lists(st.integers(min_value=0, max_value=10 * MIN + 1),
                                      min_size=3, max_size=3), data=st.data())
def test_tokens_are_exact_and_additive_at_any_millisecond(tmp_path_factory, rows, cuts, data):
    from spotctl.services.cost import cost_report

    led = Ledger(tmp_path_factory.mktemp("tok") / "l.db")
    try:
        record_usage(led, [UsageRecord(f"r{i}", T0 + off - 1000, T0 + off, "ok", tier="big",
                                       prompt_tokens=p, completion_tokens=o)
                           for i, (off, p, o) in enumerate(rows)])
        a, b, c = (T0 + x for x in sorted(cuts))
        if a == c:
            c += 1
        b = max(a, min(b, c))
        bucket = data.draw(st.sampled_from([1, 5, 60])) * 60

        def out(lo, hi):
            if lo >= hi:
                return 0, 0
            rep = cost_report(led, CFG, lo, hi, bucket_s=bucket, min_tokens=1)
            assert sum(bk.output_tokens for bk in rep.buckets) == rep.total.output_tokens
            return rep.total.output_tokens, rep.total.prompt_tokens

        def truth(lo, hi):  # completed in [lo, hi), straight from the rows written
            sel = [(p, o) for off, p, o in rows if lo <= T0 + off < hi]
            return sum(o for _, o in sel), sum(p for p, _ in sel)

        assert out(a, c) == truth(a, c)
        left, right = out(a, b), out(b, c)
        assert out(a, c) == (left[0] + right[0], left[1] + right[1])
    finally:
        led.close()


def test_thirty_second_load_test_is_counted(ledger):
    """`cost --since T` right after a 30-second CI load test that started mid-minute."""
    from spotctl.services.cost import cost_report

    start = T0 + 17_000
    record_usage(ledger, [UsageRecord(f"r{i}", start + i * 1000, start + i * 1000 + 500, "ok",
                                      tier="big", prompt_tokens=10, completion_tokens=100)
                          for i in range(30)])
    rep = cost_report(ledger, CFG, start, start + 31_000, min_tokens=1)
    assert rep.total.output_tokens == 3000 and rep.total.prompt_tokens == 300


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(incs=st.lists(st.integers(min_value=0, max_value=3_000_000), min_size=2, max_size=30),
       picks=st.lists(st.integers(min_value=0, max_value=29), min_size=3, max_size=3))
def test_spend_is_additive_at_sample_times_through_the_ledger(tmp_path_factory, incs, picks):
    led = Ledger(tmp_path_factory.mktemp("sp") / "l.db")
    try:
        total, pts = 0, []
        for i, inc in enumerate(incs):
            total += inc
            t = T0 + (i + 1) * MIN + 7_000
            pts.append((t, total))
            _poll(led, t, [_vm(t, total, T0)])
        times = [t for t, _ in pts]
        a, b, c = sorted(times[min(p, len(times) - 1)] for p in picks)

        def spend(lo, hi):
            return spend_between(led, lo, hi, CFG, bucket_ms=3_600_000).micros if hi > lo else 0

        def truth(lo, hi):  # growth of the running total between the two sample times
            return dict(pts)[hi] - dict(pts)[lo]

        assert spend(a, c) == truth(a, c) == spend(a, b) + spend(b, c)
    finally:
        led.close()


def test_buckets_align_to_clock_hours_so_the_band_does_not_move(ledger):
    """Two runs a minute apart share every bucket but the edges: the same interior figures."""
    from spotctl.services.cost import cost_report

    hour = 3_600_000
    h0 = T0 - T0 % hour
    for m in range(0, 5 * 60 + 1):
        t = h0 + m * MIN
        _poll(ledger, t, [_vm(t, m * 50_000, h0)])
    record_usage(ledger, [UsageRecord(f"u{m}", h0 + m * MIN + 1, h0 + m * MIN + 20_000, "ok",
                                      tier="big", completion_tokens=100 + m % 7 * 50)
                          for m in range(5 * 60)])
    r1 = cost_report(ledger, CFG, h0 + 10 * MIN, h0 + 4 * hour + 10 * MIN, min_tokens=1)
    r2 = cost_report(ledger, CFG, h0 + 11 * MIN, h0 + 4 * hour + 11 * MIN, min_tokens=1)
    starts1 = [b.start_ms for b in r1.buckets]
    assert starts1[0] == h0 + 10 * MIN and starts1[1] == h0 + hour  # the first is partial
    assert all(s % hour == 0 for s in starts1[1:])
    inner1 = {b.start_ms: (b.spend_micros, b.output_tokens) for b in r1.buckets[1:-1]}
    inner2 = {b.start_ms: (b.spend_micros, b.output_tokens) for b in r2.buckets[1:-1]}
    assert inner1 == inner2 and len(inner1) == 3
    # every full hour: 60 sample steps of 50_000 µ$
    assert all(sp == 60 * 50_000 for sp, _ in inner1.values())


def test_accounting_is_pure():
    """No module of spotctl/accounting opens the ledger, reads a window, imports sqlite3 or
    runs SQL: its callers read one snapshot (spotctl.ledger.queries) and pass it in."""
    import ast
    from pathlib import Path

    import spotctl.accounting as pkg

    offenders = []
    for path in sorted(Path(pkg.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        type_only = {id(n) for f in ast.walk(tree) if isinstance(f, ast.If)
                     and getattr(f.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(f)}
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                if name in ("sqlite3", "spotctl.ledger.db") or name.startswith(
                        ("spotctl.services", "httpx")):
                    offenders.append(f"{path.name}: imports {name}")
            if isinstance(node, ast.Attribute) and node.attr in (
                    "execute", "executemany", "conn", "snapshot", "transaction"):
                offenders.append(f"{path.name}: .{node.attr}")
            name = getattr(node, "id", None) or getattr(node, "attr", None)
            if name in ("read_window", "read_configured_window", "polled_providers"):
                offenders.append(f"{path.name}: reads the ledger ({name})")
    assert offenders == []
