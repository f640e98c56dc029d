"""Reads that feed the accounting: one read transaction returns everything a window needs.

:func:`read_window` opens one snapshot (``BEGIN`` … ``COMMIT``) and returns a plain
:class:`WindowData`: billing series (compressed), poll times, vanished resources, unconfirmed
credits, tokens, fleet events, gateway refusals, busy intervals and the newest capacity
measurement per tier. ``spotctl.accounting`` computes every figure from it without I/O, so
spend and tokens always come from the same snapshot.

Each read does index range scans and SQL aggregates, so Python touches O(series × buckets +
state changes) rows, not every sample, and never scans the whole ledger.

Time conventions (all epoch milliseconds, UTC):

* spend: a sample at ``t`` belongs to the window (start, end] and to the bucket holding ``t - 1``
  (so a sample exactly on a boundary closes the bucket before it);
* tokens: a request belongs to the window [start, end) and the bucket holding its completion
  time. Whole minutes come from the ``usage_minutes`` rollup; the partial minutes at both edges
  come from the ``usage`` rows, so a window need not start on a minute;
* buckets align to multiples of the bucket size since the epoch (clock hours for 1h), so two runs
  a minute apart share every bucket but the two at the edges.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from operator import itemgetter
from typing import TYPE_CHECKING

from spotctl.ledger.records import CumulativeKind

if TYPE_CHECKING:
    from spotctl.config import Config

SeriesKey = tuple[str, str, str]  # (provider, account, resource_id)
_first = itemgetter(0)
ENDED_STATES = frozenset({"deleted", "terminated"})
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
# No request outlives this ([gateway] total_timeout_s is capped well below it): bounds the scan
# for requests that started before a window's end.
MAX_REQUEST_MS = 86_400_000
GATE_REFUSALS = ("billing_stale", "budget_exhausted", "wake_timeout", "no_upstream",
                 "usage_unrecordable", "ledger_unreachable")

INVOICE_TRUE = frozenset(
    {str(CumulativeKind.RESOURCE_TOTAL), str(CumulativeKind.ACCOUNT_TOTAL),
     str(CumulativeKind.BALANCE_DERIVED)}
)


@dataclass
class SeriesData:
    """One cumulative series, compressed to what window accounting needs.

    ``points`` holds the last sample at or before the window start (the anchor), the first
    sample in the window, the last sample at or before every bucket boundary, both sides of
    every recorded decrease, and both sides of every change of state or spot flag. The positive
    increments over these points equal those over the full series, and between two consecutive
    points the resource's state and spot flag do not change. ``meta[ms]`` is the
    ``(state, spot, rate_micros_per_h)`` of the sample at ``ms``.
    """

    key: SeriesKey
    resource_kind: str
    cumulative_kind: str
    tier: str | None
    created_ms: int | None
    last_state: str | None = None
    last_ms: int | None = None
    points: list[tuple[int, int]] = field(default_factory=list)
    meta: dict[int, tuple[str | None, bool | None, int | None]] = field(default_factory=dict)
    # the provider's last successful poll before the series' first sample ever, when that poll
    # was at or after the window start (the resource did not exist at that poll)
    absent_at_ms: int | None = None

    @property
    def provider(self) -> str:
        return self.key[0]

    @property
    def resource_id(self) -> str:
        return self.key[2]

    @property
    def ended(self) -> bool:
        return (self.last_state or "").lower() in ENDED_STATES


@dataclass
class PollTimes:
    ok: list[int] = field(default_factory=list)  # preceded by the last one at/before start
    failed: list[tuple[int, str, str | None]] = field(default_factory=list)


@dataclass
class TokenTotals:
    prompt: int = 0
    output: int = 0
    requests: int = 0
    estimated: int = 0

    def add(self, other: TokenTotals) -> None:
        self.prompt += other.prompt
        self.output += other.output
        self.requests += other.requests
        self.estimated += other.estimated


@dataclass(frozen=True)
class EventRow:
    ts_ms: int
    tier: str
    event: str
    capacity: str | None = None
    resource_id: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    detail: str | None = None
    operation_id: str | None = None


@dataclass(frozen=True)
class BenchRow:
    """The newest saturation measurement of a tier (``spotctl bench``)."""

    tier: str
    finished_ms: int
    model: str | None
    engine_version: str | None
    accelerator: str | None
    output_tokens_per_s: float
    concurrency: int
    slo_broken: bool


@dataclass
class WindowData:
    """Everything a window's accounting needs, read in one snapshot. Plain data, no I/O."""

    start_ms: int
    end_ms: int
    bucket_ms: int | None  # None: the whole window is one bucket, keyed by its start
    series: list[SeriesData] = field(default_factory=list)
    polls: dict[str, PollTimes] = field(default_factory=dict)  # per watched provider
    vanished: list[tuple[str, str, int]] = field(default_factory=list)
    unconfirmed_credits: dict[str, int] = field(default_factory=dict)
    # tokens by (bucket start ms, tier); tier '' when no tier served the request
    tokens: dict[tuple[int, str], TokenTotals] = field(default_factory=dict)
    events: list[EventRow] = field(default_factory=list)  # in the window, oldest first
    events_before: dict[str, EventRow] = field(default_factory=dict)  # last per tier ≤ start
    resource_capacity: dict[str, str] = field(default_factory=dict)  # journal: rid -> capacity
    # requests refused or failed during preemptions: (ms, tier, status)
    refusals: list[tuple[int, str, str]] = field(default_factory=list)
    gate_closures: dict[str, int] = field(default_factory=dict)  # only when asked (report)
    busy: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # tier -> islands
    busy_resolution: str = "request"  # request | minute (see _busy_islands)
    bench: dict[str, list[BenchRow]] = field(default_factory=dict)  # newest first
    # request start times per tier inside each wake ((tier, waking ms) -> starts), and, when
    # asked for (advise), every request start per tier in the window
    held: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    arrivals: dict[str, list[int]] = field(default_factory=dict)
    # billed rates off the launch quote in the window (billing_reads.RateMismatch), oldest first
    rate_mismatches: list = field(default_factory=list)

    def bucket_start(self, ms: int) -> int:
        return self.start_ms if self.bucket_ms is None else ms - ms % self.bucket_ms

    @property
    def bucket_starts(self) -> list[int]:
        """Aligned bucket starts covering [start, end); the first and last may be partial."""
        if self.bucket_ms is None:
            return [self.start_ms]
        first = self.bucket_start(self.start_ms)
        return list(range(first, self.end_ms, self.bucket_ms))


def watched_providers(cfg: Config, polled: list[str]) -> list[str]:
    """Providers whose coverage matters: the configured ones (or, with none configured, every
    provider the ledger has polled, so a ledger can be read without its config). Lambda's
    estimates have no coverage to speak of."""
    if cfg.providers:
        return [p.name for p in cfg.providers if p.kind != "lambda"]
    return polled


def read_configured_window(
    ledger, cfg: Config, start_ms: int, end_ms: int, bucket_ms: int | None = None, *,
    providers: set[str] | None = None, tokens: bool = True, fleet: bool = True,
    arrivals: bool = False, closures: bool = False,
) -> WindowData:
    """:func:`read_window` with the watched providers taken from the config (every command,
    the gateway's gate, reconcile and the demo read a window this way)."""
    polled = [] if cfg.providers else polled_providers(ledger.conn)
    watched = [p for p in watched_providers(cfg, polled) if providers is None or p in providers]
    return read_window(ledger, start_ms, end_ms, bucket_ms, providers=providers,
                       watched=watched, tokens=tokens, fleet=fleet, arrivals=arrivals,
                       closures=closures)


def read_window(
    ledger, start_ms: int, end_ms: int, bucket_ms: int | None, *,
    providers: Iterable[str] | None = None, watched: Iterable[str] = (),
    tokens: bool = True, fleet: bool = True, arrivals: bool = False, closures: bool = False,
) -> WindowData:
    """Everything for the window (start, end] in one consistent snapshot.

    ``providers`` restricts the billing series (None: all); ``watched`` are the providers whose
    poll history decides observability. ``tokens`` and ``fleet`` may be turned off by callers
    that need only spend (the gateway's budget gate).
    """
    if bucket_ms is not None and (bucket_ms <= 0 or bucket_ms % MINUTE_MS):
        raise ValueError("the bucket size must be a positive whole number of minutes")
    data = WindowData(start_ms, end_ms, bucket_ms)
    providers = None if providers is None else set(providers)
    with ledger.snapshot() as conn:  # one consistent snapshot for every read below
        if fleet:
            from spotctl.ledger.billing_reads import rate_mismatches

            data.events, data.events_before = _events(conn, start_ms, end_ms)
            data.bench = latest_bench(conn, end_ms)
            data.rate_mismatches = [m for m in rate_mismatches(ledger, start_ms, end_ms)
                                    if providers is None or m.provider in providers]
        # fleet events are extra boundaries: spend between two events is exact at sample times
        data.series = _load_series(conn, start_ms, end_ms, bucket_ms, providers,
                                   extra=sorted({e.ts_ms for e in data.events}))
        for p in watched:
            data.polls[p] = PollTimes(_ok_poll_times(conn, p, start_ms, end_ms),
                                      _failed_polls(conn, p, start_ms, end_ms))
        data.vanished = _vanished(conn, start_ms, end_ms)
        data.unconfirmed_credits = _unconfirmed_credits(conn, start_ms, end_ms)
        if tokens:
            data.tokens = _tokens(conn, start_ms, end_ms, bucket_ms)
            data.busy, data.busy_resolution = _busy_islands(conn, start_ms, end_ms)
            if closures:
                data.gate_closures = _gate_closures(conn, start_ms, end_ms)
        if fleet or tokens:
            data.resource_capacity = _resource_capacity(conn, end_ms)
        if fleet and tokens:
            data.held = _held(conn, wake_intervals(data.events, end_ms))
            data.refusals = _refusals(conn, [(lo, hi) for _t, lo, hi in
                                             preemption_intervals(data.events, end_ms)])
        if arrivals:
            data.arrivals = _arrivals(conn, start_ms, end_ms)
    return data


# -- billing series ----------------------------------------------------------------------------

def _load_series(
    conn: sqlite3.Connection, start_ms: int, end_ms: int, bucket_ms: int | None,
    providers: Iterable[str] | None = None, extra: Iterable[int] = (),
) -> list[SeriesData]:
    """Every series with a sample in (start_ms, end_ms], compressed per bucket and state run.

    The series come from the ``billing_series`` catalogue. Their points come from a few
    statements, whatever the number of series: the last sample at or before the window's ends
    and every fleet event (one index seek per series and boundary); for buckets of whole hours
    the last sample of every clock hour in the window (a range scan of ``billing_series_hours``
    per series), for other bucket sizes the last sample at or before every aligned boundary
    (one seek each); the first sample in the window; both sides of every change of state or
    spot flag (``billing_state_changes``) and of every recorded decrease (``billing_anomalies``).
    O(series × (hours or buckets) + changes): never a scan of the window's samples.
    """
    prov = sorted(set(providers)) if providers is not None else None
    where = "c.last_ms > ? AND c.first_ms <= ?"
    args: list = [start_ms, end_ms]
    if prov is not None:
        if not prov:
            return []
        where += f" AND c.provider IN ({', '.join('?' * len(prov))})"
        args += prov
    series: dict[SeriesKey, SeriesData] = {}
    for p, a, r, rkind, ckind, tier, created, first_ms, last_ms, last_state in conn.execute(
        "SELECT c.provider, c.account, c.resource_id, c.resource_kind, c.cumulative_kind, c.tier,"  # noqa: S608
        " c.created_ms, c.first_ms, c.last_ms, c.last_state FROM billing_series c "
        f"WHERE {where}", args):
        data = SeriesData((p, a, r), rkind, ckind, tier, created)
        data.last_ms, data.last_state = last_ms, last_state
        if first_ms > start_ms:
            absent = conn.execute(
                "SELECT MAX(finished_ms) FROM billing_polls WHERE provider=? AND outcome='ok' "
                "AND finished_ms < ?", (p, first_ms)).fetchone()[0]
            if absent is not None and absent >= start_ms:
                data.absent_at_ms = absent
        series[(p, a, r)] = data
    if not series:
        return []
    rows: dict[SeriesKey, set[tuple]] = defaultdict(set)

    def collect(sql: str, params: list) -> None:
        for row in conn.execute(sql, params):
            key = row[:3]
            if key in series:
                rows[key].add(row[3:])

    # the last sample at or before each boundary: the window's ends and the fleet events (one
    # index seek per series and boundary), and the aligned bucket boundaries
    fixed = sorted({start_ms, end_ms, *(t for t in extra if start_ms < t < end_ms)})
    times = f"x(t) AS (VALUES {', '.join('(?)' for _ in fixed)})"
    point_of = ("SELECT c.provider, c.account, c.resource_id, s.observed_ms, "
                "s.cumulative_micros, s.state, s.spot, s.rate_micros_per_h "
                "FROM billing_series c CROSS JOIN bt JOIN billing_samples s ON s.id = (SELECT id "
                "FROM billing_samples WHERE provider=c.provider AND account=c.account AND "
                "resource_id=c.resource_id AND observed_ms <= bt.t AND cumulative_micros IS NOT "
                "NULL ORDER BY observed_ms DESC LIMIT 1) WHERE " + where)
    first_b = None if bucket_ms is None else start_ms - start_ms % bucket_ms + bucket_ms
    if first_b is None or first_b >= end_ms or bucket_ms % HOUR_MS == 0:
        collect(f"WITH {times}, bt(t) AS (SELECT t FROM x) {point_of}",  # noqa: S608
                [*fixed, *args])
    else:  # a recursive CTE of the boundary times: one seek per series and boundary
        collect("WITH RECURSIVE b(t) AS (SELECT ? UNION ALL SELECT t + ? FROM b WHERE "  # noqa: S608
                f"t + ? < ?), {times}, bt(t) AS (SELECT t FROM b UNION SELECT t FROM x) "
                f"{point_of}", [first_b, bucket_ms, bucket_ms, end_ms, *fixed, *args])
    if first_b is not None and first_b < end_ms and bucket_ms % HOUR_MS == 0:
        # whole hours: the last sample of every clock hour in the window, from the hourly
        # catalogue (one range scan per series). A superset of the boundary points: the last
        # sample at or before an hour is that hour's last, or an earlier hour's, or the anchor.
        collect(
            "SELECT c.provider, c.account, c.resource_id, h.observed_ms, h.cumulative_micros, "  # noqa: S608
            "h.state, h.spot, h.rate_micros_per_h FROM billing_series c JOIN "
            "billing_series_hours h ON h.provider = c.provider AND h.account = c.account AND "
            "h.resource_id = c.resource_id AND h.hour_ms > ? AND h.hour_ms < ? "
            f"WHERE {where} AND h.observed_ms > ? AND h.observed_ms <= ?",
            [start_ms - HOUR_MS, end_ms, *args, start_ms, end_ms])
    # the first sample in the window (a series that starts inside it)
    collect(
        "SELECT c.provider, c.account, c.resource_id, s.observed_ms, s.cumulative_micros, "  # noqa: S608
        "s.state, s.spot, s.rate_micros_per_h FROM billing_series c JOIN billing_samples s "
        "ON s.id = (SELECT id FROM billing_samples WHERE provider=c.provider AND "
        "account=c.account AND resource_id=c.resource_id AND observed_ms > ? AND "
        "cumulative_micros IS NOT NULL ORDER BY observed_ms LIMIT 1) "
        f"WHERE {where}", [start_ms, *args])
    # both sides of every change of state or spot flag, and of every recorded decrease
    for table, cond in (("billing_state_changes", ""),
                        ("billing_anomalies", " AND e.kind = 'cumulative_decreased'")):
        # (each sample found by a correlated seek from the catalogue row: a plain join let
        # SQLite scan the window's samples when the catalogue had no statistics)
        collect(
            "SELECT e.provider, e.account, e.resource_id, s.observed_ms, s.cumulative_micros, "  # noqa: S608
            f"s.state, s.spot, s.rate_micros_per_h FROM {table} e JOIN "
            "billing_samples s ON s.id = (SELECT id FROM billing_samples WHERE "
            "provider=e.provider AND account=e.account AND resource_id=e.resource_id AND "
            "observed_ms = e.observed_ms AND cumulative_micros IS NOT NULL) "
            f"WHERE e.observed_ms > ? AND e.observed_ms <= ?{cond} "
            "UNION ALL SELECT e.provider, e.account, e.resource_id, s.observed_ms, "
            "s.cumulative_micros, s.state, s.spot, s.rate_micros_per_h "
            f"FROM {table} e JOIN billing_samples s ON s.id = (SELECT id FROM "
            "billing_samples WHERE provider=e.provider AND account=e.account AND "
            "resource_id=e.resource_id AND observed_ms < e.observed_ms AND "
            "cumulative_micros IS NOT NULL ORDER BY observed_ms DESC LIMIT 1) "
            f"WHERE e.observed_ms > ? AND e.observed_ms <= ?{cond}",
            [start_ms, end_ms, start_ms, end_ms])
    for key, data in series.items():
        pts = sorted(rows.get(key, ()), key=_first)
        data.points = [(ms, cum) for ms, cum, _st, _sp, _r in pts]
        data.meta = {ms: (st, None if sp is None else bool(sp), rate)
                     for ms, _c, st, sp, rate in pts}
    return list(series.values())


def _ok_poll_times(conn: sqlite3.Connection, provider: str, start_ms: int, end_ms: int
                   ) -> list[int]:
    anchor = conn.execute(
        "SELECT MAX(finished_ms) FROM billing_polls WHERE provider=? AND outcome='ok' "
        "AND finished_ms <= ?", (provider, start_ms)).fetchone()[0]
    rows = [r[0] for r in conn.execute(
        "SELECT finished_ms FROM billing_polls WHERE provider=? AND outcome='ok' "
        "AND finished_ms > ? AND finished_ms <= ? ORDER BY finished_ms",
        (provider, start_ms, end_ms))]
    return ([anchor] if anchor is not None else []) + rows


def _failed_polls(conn: sqlite3.Connection, provider: str, start_ms: int, end_ms: int
                  ) -> list[tuple[int, str, str | None]]:
    return [tuple(r) for r in conn.execute(
        "SELECT finished_ms, outcome, error_message FROM billing_polls WHERE provider=? AND "
        "(outcome < 'ok' OR outcome > 'ok') AND finished_ms > ? AND finished_ms <= ? "  # index
        "ORDER BY finished_ms",
        (provider, start_ms, end_ms))]


def polled_providers(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT provider FROM billing_polls")]


def _vanished(conn: sqlite3.Connection, start_ms: int, end_ms: int) -> list[tuple[str, str, int]]:
    """Resources that vanished in the window and never reappeared (live or with a final total)
    by its end: their spend after the last sample is unknown. Returns their last sample time."""
    return [tuple(r) for r in conn.execute(
        "SELECT a.provider, a.resource_id, coalesce(c.last_ms, a.observed_ms) "
        "FROM billing_anomalies a LEFT JOIN billing_series c ON c.provider = a.provider AND "
        "c.account = a.account AND c.resource_id = a.resource_id WHERE a.kind='vanished' AND "
        "a.observed_ms > ? AND a.observed_ms <= ? AND NOT EXISTS (SELECT 1 FROM billing_samples "
        "s WHERE s.provider = a.provider AND s.account = a.account AND "
        "s.resource_id = a.resource_id AND s.observed_ms > a.observed_ms AND s.observed_ms <= ?)",
        (start_ms, end_ms, end_ms))]


def _unconfirmed_credits(conn: sqlite3.Connection, start_ms: int, end_ms: int) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for provider, amount in conn.execute(
        "SELECT provider, amount_micros FROM credit_events WHERE confirmed=0 AND "
        "occurred_ms > ? AND occurred_ms <= ?", (start_ms, end_ms)):
        out[provider] += amount
    return dict(out)


# -- tokens, requests ----------------------------------------------------------------------------

def _ceil(ms: int, unit: int) -> int:
    return -(-ms // unit) * unit


def _rollup_ranges(lo: int, hi: int, hours: bool) -> tuple[tuple[int, int] | None,
                                                          list[tuple[int, int]]]:
    """Split the minute-aligned range [lo, hi) into whole clock hours (read from
    ``usage_hours``; None when there are none or ``hours`` is False) and the minutes left at
    both edges (read from ``usage_minutes``)."""
    h_lo, h_hi = _ceil(lo, HOUR_MS), hi - hi % HOUR_MS
    if not hours or h_lo >= h_hi:
        return None, [(lo, hi)] if lo < hi else []
    return (h_lo, h_hi), [(a, b) for a, b in ((lo, h_lo), (h_hi, hi)) if a < b]


def _tokens(conn: sqlite3.Connection, start_ms: int, end_ms: int, bucket_ms: int | None
            ) -> dict[tuple[int, str], TokenTotals]:
    """Tokens of requests completed in [start, end), by aligned bucket and tier: whole hours
    from the hourly rollup (when every hour lies in one bucket), the remaining whole minutes
    from the minute rollup, the partial minutes at both edges from the usage rows.
    O(hours + minutes at the edges + requests in the edge minutes)."""
    out: dict[tuple[int, str], TokenTotals] = {}

    def add(ms: int, tier: str, req: int, prompt: int, output: int, est: int) -> None:
        key = (start_ms if bucket_ms is None else ms - ms % bucket_ms, tier or "")
        tot = out.get(key)
        if tot is None:
            tot = out[key] = TokenTotals()
        tot.prompt += prompt or 0
        tot.output += output or 0
        tot.requests += req or 0
        tot.estimated += est or 0

    whole_lo = _ceil(start_ms, MINUTE_MS)  # first minute starting at/after start
    whole_hi = end_ms - end_ms % MINUTE_MS  # minutes starting before this end before `end`
    edges: list[tuple[int, int]]
    if whole_lo < whole_hi:
        width = bucket_ms or 1 << 62  # one bucket: every minute maps to 0, then to start_ms
        hours, minutes = _rollup_ranges(whole_lo, whole_hi,
                                        bucket_ms is None or bucket_ms % HOUR_MS == 0)
        if hours is not None and width == HOUR_MS:  # the rows are the buckets
            for hour, tier, req, prompt, output, est in conn.execute(
                "SELECT hour_ms, tier, requests, prompt_tokens, completion_tokens, "
                "estimated_requests FROM usage_hours WHERE hour_ms >= ? AND hour_ms < ?", hours):
                add(hour, tier, req, prompt, output, est)
        elif hours is not None:
            for hour, tier, req, prompt, output, est in conn.execute(
                "SELECT hour_ms - hour_ms % ? AS b, tier, SUM(requests), SUM(prompt_tokens), "
                "SUM(completion_tokens), SUM(estimated_requests) FROM usage_hours "
                "WHERE hour_ms >= ? AND hour_ms < ? GROUP BY b, tier", (width, *hours)):
                add(hour, tier, req, prompt, output, est)
        for lo, hi in minutes:
            for minute, tier, req, prompt, output, est in conn.execute(
                "SELECT minute_ms - minute_ms % ? AS b, tier, SUM(requests), SUM(prompt_tokens), "
                "SUM(completion_tokens), SUM(estimated_requests) FROM usage_minutes "
                "WHERE minute_ms >= ? AND minute_ms < ? GROUP BY b, tier", (width, lo, hi)):
                add(minute, tier, req, prompt, output, est)
        edges = [(start_ms, whole_lo), (whole_hi, end_ms)]
    else:
        edges = [(start_ms, end_ms)]
    for lo, hi in edges:
        if lo >= hi:
            continue
        for done, tier, prompt, output, est in conn.execute(
            "SELECT completed_ms, tier, prompt_tokens, completion_tokens, tokens_estimated "
            "FROM usage WHERE completed_ms >= ? AND completed_ms < ?", (lo, hi)):
            add(done, tier or "", 1, prompt, output, est)
    return out


BUSY_EXACT_MAX_REQUESTS = 50_000


def _busy_islands(conn: sqlite3.Connection, start_ms: int, end_ms: int
                  ) -> tuple[dict[str, list[tuple[int, int]]], str]:
    """Per tier, when some request was in flight, clipped to the window, and the resolution.

    Up to ``BUSY_EXACT_MAX_REQUESTS`` requests in the window: the union of the requests'
    [started, completed] intervals (gaps and islands, in SQL) — resolution ``request``. Beyond
    that (a month of heavy traffic), the per-minute rollup: a minute in which some request
    completed counts as busy — resolution ``minute`` (bounded cost, said in the output). A
    clock hour whose 60 minutes were all busy comes from the hourly rollup as one span, so
    this costs O(hours + busy minutes of the partly busy hours).
    """
    hours, minutes = _rollup_ranges(start_ms - start_ms % MINUTE_MS, _ceil(end_ms, MINUTE_MS),
                                    True)
    n = 0
    if hours is not None:
        n += conn.execute("SELECT coalesce(SUM(requests), 0) FROM usage_hours WHERE "
                          "hour_ms >= ? AND hour_ms < ?", hours).fetchone()[0]
    for lo, hi in minutes:
        n += conn.execute("SELECT coalesce(SUM(requests), 0) FROM usage_minutes WHERE "
                          "minute_ms >= ? AND minute_ms < ?", (lo, hi)).fetchone()[0]
    if n > BUSY_EXACT_MAX_REQUESTS:
        spans: dict[str, list[tuple[int, int]]] = defaultdict(list)

        def span(tier: str, lo: int, width: int) -> None:
            lo, hi = max(lo, start_ms), min(lo + width, end_ms)
            if hi > lo:
                spans[tier].append((lo, hi))

        for lo, hi in minutes:
            for tier, minute in conn.execute(
                "SELECT tier, minute_ms FROM usage_minutes WHERE minute_ms >= ? AND "
                "minute_ms < ? AND requests > 0", (lo, hi)):
                span(tier, minute, MINUTE_MS)
        if hours is not None:
            partly: set[tuple[int, str]] = set()
            for tier, hour, busy in conn.execute(
                "SELECT tier, hour_ms, busy_minutes FROM usage_hours WHERE hour_ms >= ? AND "
                "hour_ms < ? AND busy_minutes > 0", hours):
                if busy >= 60:
                    span(tier, hour, HOUR_MS)
                else:
                    partly.add((hour, tier))
            # the busy minutes of the partly busy hours: one minute-range per run of such hours
            runs: list[list[int]] = []
            for hour in sorted({h for h, _t in partly}):
                if runs and runs[-1][1] == hour:
                    runs[-1][1] = hour + HOUR_MS
                else:
                    runs.append([hour, hour + HOUR_MS])
            if runs:
                for tier, minute in conn.execute(
                    f"WITH r(lo, hi) AS (VALUES {', '.join('(?, ?)' for _ in runs)}) "  # noqa: S608
                    "SELECT m.tier, m.minute_ms FROM r JOIN usage_minutes m ON "
                    "m.minute_ms >= r.lo AND m.minute_ms < r.hi WHERE m.requests > 0",
                    [t for run in runs for t in run]):
                    if (minute - minute % HOUR_MS, tier) in partly:
                        span(tier, minute, MINUTE_MS)
        out: dict[str, list[tuple[int, int]]] = {}
        for tier, parts in spans.items():
            merged: list[tuple[int, int]] = []
            for lo, hi in sorted(parts):
                if merged and merged[-1][1] >= lo:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
                else:
                    merged.append((lo, hi))
            out[tier] = merged
        return out, "minute"
    # gaps and islands over the requests sorted by (tier, start, end): a request that starts
    # after every earlier one of its tier has ended opens a new island (one sorted read; the
    # window-function form of this took 3x longer on SQLite)
    out = defaultdict(list)
    cur: str | None = None
    lo = hi = ended = 0  # the island's first start and last end; the tier's latest end so far

    def close(tier: str | None, lo: int, hi: int) -> None:
        lo, hi = max(lo, start_ms), min(hi, end_ms)
        if tier is not None and hi > lo:
            out[tier].append((lo, hi))

    for tier, s, e in conn.execute(
        "SELECT coalesce(tier, ''), started_ms, completed_ms FROM usage WHERE completed_ms > ? "
        "AND completed_ms < ? AND started_ms < ? ORDER BY 1, 2, 3",
        (start_ms, end_ms + MAX_REQUEST_MS, end_ms)):
        if tier != cur or s > ended:
            close(cur, lo, hi)
            cur, lo, hi, ended = tier, s, e, e
        else:
            hi, ended = max(hi, e), max(ended, e)
    close(cur, lo, hi)
    return dict(out), "request"


def _refusals(conn: sqlite3.Connection, intervals: Iterable[tuple[int, int]]
              ) -> list[tuple[int, str, str]]:
    """Requests refused or failed, completed inside the given intervals: (ms, tier, status)."""
    out: set[tuple[int, str, str]] = set()
    for lo, hi in intervals:
        out.update((r[0], r[1] or "", r[2]) for r in conn.execute(
            "SELECT completed_ms, tier, status FROM usage WHERE completed_ms >= ? AND "
            "completed_ms <= ? AND status != 'ok' AND status != 'client_cancelled'", (lo, hi)))
    return sorted(out)


def _gate_closures(conn: sqlite3.Connection, start_ms: int, end_ms: int) -> dict[str, int]:
    """Requests the gate refused in [start, end), by reason (scans the window's usage rows:
    only the HTML report asks)."""
    marks = ", ".join("?" * len(GATE_REFUSALS))
    return dict(conn.execute(
        f"SELECT status, count(*) FROM usage WHERE completed_ms >= ? AND completed_ms < ? "  # noqa: S608
        f"AND status IN ({marks}) GROUP BY status", (start_ms, end_ms, *GATE_REFUSALS)))


def preemption_intervals(events: list[EventRow], end_ms: int) -> list[tuple[str, int, int]]:
    """(tier, preempted ms, serving again ms or the window's end) for every preemption. A
    second ``preempted`` of a tier before it served again (the daemon and a gateway wake may
    both journal it) is the same interruption, counted once."""
    out = []
    open_until: dict[str, int] = {}
    for i, ev in enumerate(events):
        if ev.event != "preempted" or ev.ts_ms < open_until.get(ev.tier, -1):
            continue
        back = next((e.ts_ms for e in events[i + 1:] if e.tier == ev.tier and e.event in
                     ("ready", "woke", "returned_to_spot")), end_ms)
        open_until[ev.tier] = back
        out.append((ev.tier, ev.ts_ms, back))
    return out


# -- fleet journal, capacity --------------------------------------------------------------------

_EVENT_COLS = "ts_ms, tier, event, capacity, resource_id, phases_json, detail, operation_id"


def _event(row: tuple) -> EventRow:
    return EventRow(row[0], row[1], row[2], row[3], row[4],
                    json.loads(row[5]) if row[5] else {}, row[6], row[7])


def _events(conn: sqlite3.Connection, start_ms: int, end_ms: int
            ) -> tuple[list[EventRow], dict[str, EventRow]]:
    events = [_event(r) for r in conn.execute(
        f"SELECT {_EVENT_COLS} FROM fleet_events WHERE ts_ms > ? AND ts_ms <= ? "  # noqa: S608
        "ORDER BY ts_ms, id", (start_ms, end_ms))]
    before: dict[str, EventRow] = {}
    for r in conn.execute(
        f"SELECT {_EVENT_COLS} FROM fleet_events f WHERE id = (SELECT id FROM fleet_events g "  # noqa: S608
        "WHERE g.tier = f.tier AND g.ts_ms <= ? ORDER BY g.ts_ms DESC, g.id DESC LIMIT 1)",
        (start_ms,)):
        before[r[1]] = _event(r)
    return events, before


def wake_intervals(events: list[EventRow], end_ms: int) -> list[tuple[str, int, int]]:
    """(tier, waking ms, woke ms or the window's end) for every ``waking`` event."""
    out = []
    for i, ev in enumerate(events):
        if ev.event != "waking":
            continue
        done = next((e.ts_ms for e in events[i + 1:] if e.tier == ev.tier and e.event in
                     ("woke", "ready", "failed", "down", "preempted", "hibernated")), end_ms)
        out.append((ev.tier, ev.ts_ms, done))
    return out


def _held(conn: sqlite3.Connection, intervals: list[tuple[str, int, int]]
          ) -> dict[tuple[str, int], list[int]]:
    """Start times of the requests to a tier that arrived while it was waking."""
    out: dict[tuple[str, int], list[int]] = {}
    for tier, lo, hi in intervals:
        out[(tier, lo)] = [r[0] for r in conn.execute(
            "SELECT started_ms FROM usage WHERE completed_ms >= ? AND completed_ms < ? AND "
            "started_ms >= ? AND started_ms <= ? AND (tier = ? OR tier IS NULL) "
            "ORDER BY started_ms", (lo, hi + MAX_REQUEST_MS, lo, hi, tier))]
    return out


def _arrivals(conn: sqlite3.Connection, start_ms: int, end_ms: int) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for tier, started in conn.execute(
        "SELECT coalesce(tier, ''), started_ms FROM usage WHERE completed_ms >= ? AND "
        "completed_ms < ? AND started_ms >= ? AND started_ms < ? ORDER BY started_ms",
        (start_ms, end_ms + MAX_REQUEST_MS, start_ms, end_ms)):
        out[tier].append(started)
    return dict(out)


def _resource_capacity(conn: sqlite3.Connection, end_ms: int) -> dict[str, str]:
    """The capacity (spot | on-demand) the journal recorded for each billing resource."""
    out: dict[str, str] = {}
    for rid, cap in conn.execute(
        "SELECT resource_id, capacity FROM fleet_events WHERE resource_id IS NOT NULL AND "
        "capacity IS NOT NULL AND ts_ms <= ? ORDER BY ts_ms, id", (end_ms,)):
        out[rid] = cap
    return out


def latest_bench(conn: sqlite3.Connection, until_ms: int) -> dict[str, list[BenchRow]]:
    """``spotctl bench`` results per tier finished at or before ``until_ms``, newest first."""
    out: dict[str, list[BenchRow]] = defaultdict(list)
    for row in conn.execute(
        "SELECT tier, finished_ms, model, engine_version, accelerator, output_tokens_per_s, "
        "concurrency, slo_broken FROM bench_runs WHERE finished_ms <= ? "
        "ORDER BY finished_ms DESC, id DESC", (until_ms,)):
        out[row[0]].append(BenchRow(row[0], row[1], row[2], row[3], row[4], float(row[5]),
                                    int(row[6]), bool(row[7])))
    return dict(out)


# -- catalogues kept by the writers, in their transaction (schema 7 -> 8) ------------------------

_NEIGHBOURS_SQL = (
    "SELECT observed_ms, state, spot FROM (SELECT observed_ms, state, spot FROM billing_samples "
    "WHERE provider=? AND account=? AND resource_id=? AND observed_ms < ? AND "
    "cumulative_micros IS NOT NULL ORDER BY observed_ms DESC LIMIT 1) AS p "
    "UNION ALL SELECT observed_ms, state, spot FROM billing_samples WHERE provider=? AND "
    "account=? AND resource_id=? AND observed_ms = ? AND cumulative_micros IS NOT NULL "
    "UNION ALL SELECT observed_ms, state, spot FROM (SELECT observed_ms, state, spot FROM "
    "billing_samples WHERE provider=? AND account=? AND resource_id=? AND observed_ms > ? AND "
    "cumulative_micros IS NOT NULL ORDER BY observed_ms LIMIT 1) AS n")


_HOUR_POINT_SQL = (
    "INSERT INTO billing_series_hours (provider, account, resource_id, hour_ms, observed_ms, "
    "cumulative_micros, state, spot, rate_micros_per_h) SELECT provider, account, resource_id, "
    "?, observed_ms, cumulative_micros, state, spot, rate_micros_per_h FROM billing_samples "
    "WHERE provider=? AND account=? AND resource_id=? AND observed_ms = ? AND "
    "cumulative_micros IS NOT NULL ON CONFLICT (provider, account, resource_id, hour_ms) "
    "DO UPDATE SET observed_ms = excluded.observed_ms, "
    "cumulative_micros = excluded.cumulative_micros, state = excluded.state, "
    "spot = excluded.spot, rate_micros_per_h = excluded.rate_micros_per_h "
    "WHERE excluded.observed_ms >= billing_series_hours.observed_ms")


def catalogue_samples(conn, samples: Iterable) -> None:
    """Keep the accounting's catalogues of billing samples for the just-written ``samples``
    (``BillingSample``-like: provider, account, resource_id, observed_ms, cumulative_micros).
    Call inside the transaction that wrote them; reads the stored rows, so a sample skipped as
    a duplicate changes nothing.

    * ``billing_state_changes``: each stored sample is compared with the stored samples just
      before and after it in its series (so out-of-order writes are caught too);
    * ``billing_series_hours``: the sample replaces its hour's row when it is the hour's latest.
    """
    changes: set[tuple[str, str, str, int]] = set()
    hours: set[tuple[int, str, str, str, int]] = set()
    for s in samples:
        if s.cumulative_micros is None:
            continue
        key = (s.provider, s.account, s.resource_id)
        hours.add((s.observed_ms - 1 - (s.observed_ms - 1) % HOUR_MS, *key, s.observed_ms))
        rows = sorted(conn.execute(_NEIGHBOURS_SQL, (*key, s.observed_ms) * 3).fetchall())
        for (_ms, state, spot), (ms, state2, spot2) in pairwise(rows):
            if state != state2 or _spot(spot) != _spot(spot2):
                changes.add((*key, ms))
    if changes:
        conn.executemany(
            "INSERT INTO billing_state_changes (provider, account, resource_id, observed_ms) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (provider, account, resource_id, observed_ms) "
            "DO NOTHING", sorted(changes))
    if hours:
        conn.executemany(_HOUR_POINT_SQL, sorted(hours))


def _spot(value) -> bool | None:
    return None if value is None else bool(value)



_HOUR_SQL = (
    "INSERT INTO usage_hours (hour_ms, tier, requests, prompt_tokens, completion_tokens, "
    "estimated_requests, busy_minutes) SELECT ?, tier, sum(requests), sum(prompt_tokens), "
    "sum(completion_tokens), sum(estimated_requests), "
    "sum(CASE WHEN requests > 0 THEN 1 ELSE 0 END) FROM usage_minutes "
    "WHERE minute_ms >= ? AND minute_ms < ? AND tier = ? GROUP BY tier "
    "ON CONFLICT (hour_ms, tier) DO UPDATE SET requests = excluded.requests, "
    "prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens, "
    "estimated_requests = excluded.estimated_requests, busy_minutes = excluded.busy_minutes")


def roll_up_hours(conn, minutes: Iterable[tuple[int, str]]) -> None:
    """Rewrite the ``usage_hours`` rows of the hours holding these ``(minute_ms, tier)`` rows of
    ``usage_minutes`` from those minutes (idempotent). Call inside the transaction that wrote
    the minutes."""
    hours = sorted({(m - m % HOUR_MS, tier) for m, tier in minutes})
    conn.executemany(_HOUR_SQL, [(h, h, h + HOUR_MS, tier) for h, tier in hours])


def rebuild_catalogues(conn) -> None:
    """Rebuild every catalogue of schema 8 from the rows they summarise (the same statements
    as the migration). For bulk loaders that insert rows with SQL instead of the writers (the
    benchmarks' generated ledgers); call inside their transaction."""
    for table in ("billing_series_hours", "billing_state_changes", "usage_hours"):
        conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
    conn.execute(
        "INSERT INTO billing_series_hours (provider, account, resource_id, hour_ms, observed_ms, "
        "cumulative_micros, state, spot, rate_micros_per_h) SELECT s.provider, s.account, "
        "s.resource_id, l.hour_ms, s.observed_ms, s.cumulative_micros, s.state, s.spot, "
        "s.rate_micros_per_h FROM billing_samples s JOIN (SELECT provider, account, resource_id, "
        "observed_ms - 1 - (observed_ms - 1) % 3600000 AS hour_ms, max(observed_ms) AS last_ms "
        "FROM billing_samples WHERE cumulative_micros IS NOT NULL GROUP BY provider, account, "
        "resource_id, observed_ms - 1 - (observed_ms - 1) % 3600000) AS l ON "
        "s.provider = l.provider AND s.account = l.account AND s.resource_id = l.resource_id "
        "AND s.observed_ms = l.last_ms")
    conn.execute(
        "INSERT INTO billing_state_changes (provider, account, resource_id, observed_ms) "
        "SELECT provider, account, resource_id, observed_ms FROM (SELECT provider, account, "
        "resource_id, observed_ms, state, spot, LAG(observed_ms) OVER w AS prev_ms, "
        "LAG(state) OVER w AS prev_state, LAG(spot) OVER w AS prev_spot FROM billing_samples "
        "WHERE cumulative_micros IS NOT NULL WINDOW w AS (PARTITION BY provider, account, "
        "resource_id ORDER BY observed_ms)) AS s WHERE prev_ms IS NOT NULL AND "
        "(state IS DISTINCT FROM prev_state OR spot IS DISTINCT FROM prev_spot)")
    conn.execute(
        "INSERT INTO usage_hours (hour_ms, tier, requests, prompt_tokens, completion_tokens, "
        "estimated_requests, busy_minutes) SELECT minute_ms - minute_ms % 3600000, tier, "
        "sum(requests), sum(prompt_tokens), sum(completion_tokens), sum(estimated_requests), "
        "sum(CASE WHEN requests > 0 THEN 1 ELSE 0 END) FROM usage_minutes "
        "GROUP BY minute_ms - minute_ms % 3600000, tier")


# -- writes of the econ commands (one transaction each) ------------------------------------------

@dataclass(frozen=True)
class BenchRecord:
    tier: str
    started_ms: int
    finished_ms: int
    model: str | None
    engine_version: str | None
    accelerator: str | None
    output_tokens_per_s: float
    concurrency: int
    slo_ttft_ms: int
    slo_broken: bool
    ttft_ms: dict
    itl_ms: dict
    requests: int
    errors: int
    prompt_tokens: int
    output_tokens: int
    mix: list
    steps: list


def _us(ms: float | None) -> int | None:
    return None if ms is None else round(ms * 1000)


def record_bench_run(ledger, rec: BenchRecord) -> int:
    """Append one ``spotctl bench`` result; returns its id."""
    with ledger.transaction() as conn:
        row = conn.execute(
            "INSERT INTO bench_runs (tier, started_ms, finished_ms, model, engine_version, "
            "accelerator, output_tokens_per_s, concurrency, slo_ttft_ms, slo_broken, "
            "ttft_p50_us, ttft_p90_us, ttft_p99_us, itl_p50_us, itl_p90_us, itl_p99_us, "
            "requests, errors, prompt_tokens, output_tokens, mix_json, steps_json) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "RETURNING id",
            (rec.tier, rec.started_ms, rec.finished_ms, rec.model, rec.engine_version,
             rec.accelerator, rec.output_tokens_per_s, rec.concurrency, rec.slo_ttft_ms,
             int(rec.slo_broken), *(_us(d.get(q)) for d in (rec.ttft_ms, rec.itl_ms)
                                     for q in ("p50", "p90", "p99")),
             rec.requests, rec.errors, rec.prompt_tokens, rec.output_tokens,
             json.dumps(rec.mix), json.dumps(rec.steps))).fetchone()
        return int(row[0])


def bench_runs(conn: sqlite3.Connection, tier: str | None = None) -> list[dict]:
    """Every bench result (newest first), for ``spotctl bench --history`` and the report."""
    cur = conn.execute(
        "SELECT id, tier, started_ms, finished_ms, model, engine_version, accelerator, "
        "output_tokens_per_s, concurrency, slo_ttft_ms, slo_broken, ttft_p50_us, ttft_p90_us, "
        "ttft_p99_us, itl_p50_us, itl_p90_us, itl_p99_us, requests, errors, prompt_tokens, "
        "output_tokens, mix_json, steps_json FROM bench_runs WHERE (? IS NULL OR tier = ?) "
        "ORDER BY finished_ms DESC, id DESC", (tier, tier))
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
