"""Reads that feed the accounting. Each does index range scans and SQL aggregates so that Python
touches O(series × buckets) rows, not every sample, and never scans the whole ledger.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from spotctl.ledger.records import CumulativeKind

SeriesKey = tuple[str, str, str]  # (provider, account, resource_id)
ENDED_STATES = frozenset({"deleted", "terminated"})


@dataclass
class SeriesData:
    """One cumulative series, compressed to what window accounting needs.

    ``points`` holds the last sample at or before the window start (the anchor), the first
    sample in the window, the last sample of every bucket, and both sides of every recorded
    decrease. The positive increments over these points equal those over the full series.
    """

    key: SeriesKey
    resource_kind: str
    cumulative_kind: str
    tier: str | None
    created_ms: int | None
    last_state: str | None = None
    last_ms: int | None = None
    points: list[tuple[int, int]] = field(default_factory=list)

    @property
    def provider(self) -> str:
        return self.key[0]

    @property
    def ended(self) -> bool:
        return (self.last_state or "").lower() in ENDED_STATES


def load_series(
    conn: sqlite3.Connection, start_ms: int, end_ms: int, bucket_ms: int,
    providers: Iterable[str] | None = None,
) -> list[SeriesData]:
    """Every series with a sample in (start_ms, end_ms], compressed per bucket.

    The series come from the ``billing_series`` catalogue; each series' points are found by one
    index seek per bucket boundary, so the cost is O(series × buckets), whatever the ledger's size.
    """
    prov = set(providers) if providers is not None else None
    series: dict[SeriesKey, SeriesData] = {}
    for p, a, r, rkind, ckind, tier, created, last_ms, last_state in conn.execute(
        "SELECT provider, account, resource_id, resource_kind, cumulative_kind, tier, created_ms,"
        " last_ms, last_state FROM billing_series WHERE last_ms > ? AND first_ms <= ?",
        (start_ms, end_ms)):
        if prov is not None and p not in prov:
            continue
        data = SeriesData((p, a, r), rkind, ckind, tier, created)
        data.last_ms, data.last_state = last_ms, last_state
        series[(p, a, r)] = data
    for key, data in series.items():
        # the anchor (last sample at/before start) and the last sample at/before each boundary
        data.points.extend(conn.execute(
            "WITH RECURSIVE b(t) AS (SELECT ? UNION ALL SELECT min(t + ?, ?) FROM b WHERE t < ?) "
            "SELECT s.observed_ms, s.cumulative_micros FROM b JOIN billing_samples s ON s.id = ("
            "SELECT id FROM billing_samples WHERE provider=? AND account=? AND resource_id=? "
            "AND observed_ms <= b.t AND cumulative_micros IS NOT NULL "
            "ORDER BY observed_ms DESC LIMIT 1)",
            (start_ms, bucket_ms, end_ms, end_ms, *key)))
        first = conn.execute(
            "SELECT observed_ms, cumulative_micros FROM billing_samples WHERE provider=? AND "
            "account=? AND resource_id=? AND observed_ms > ? AND cumulative_micros IS NOT NULL "
            "ORDER BY observed_ms ASC LIMIT 1", (*key, start_ms)).fetchone()
        if first:
            data.points.append(tuple(first))
    if not series:
        return []
    for prov_name, account, rid, ms, _before, after in conn.execute(
        "SELECT provider, account, resource_id, observed_ms, previous_micros, current_micros "
        "FROM billing_anomalies WHERE kind='cumulative_decreased' AND observed_ms > ? "
        "AND observed_ms <= ?", (start_ms, end_ms)):
        data = series.get((prov_name, account, rid))
        if data is None:
            continue
        prev = conn.execute(
            "SELECT observed_ms, cumulative_micros FROM billing_samples WHERE provider=? AND "
            "account=? AND resource_id=? AND observed_ms < ? AND cumulative_micros IS NOT NULL "
            "ORDER BY observed_ms DESC LIMIT 1", (prov_name, account, rid, ms)).fetchone()
        if prev:
            data.points.append(tuple(prev))
        data.points.append((ms, after))
    for data in series.values():
        data.points = sorted(set(data.points))
    return list(series.values())


def ok_poll_times(
    conn: sqlite3.Connection, provider: str, start_ms: int, end_ms: int
) -> list[int]:
    """Finish times of successful polls in (start, end], preceded by the last one at/before start."""
    anchor = conn.execute(
        "SELECT MAX(finished_ms) FROM billing_polls WHERE provider=? AND outcome='ok' "
        "AND finished_ms <= ?", (provider, start_ms)).fetchone()[0]
    rows = [r[0] for r in conn.execute(
        "SELECT finished_ms FROM billing_polls WHERE provider=? AND outcome='ok' "
        "AND finished_ms > ? AND finished_ms <= ? ORDER BY finished_ms",
        (provider, start_ms, end_ms))]
    return ([anchor] if anchor is not None else []) + rows


def failed_polls(
    conn: sqlite3.Connection, provider: str, start_ms: int, end_ms: int
) -> list[tuple[int, str, str | None]]:
    return list(conn.execute(
        "SELECT finished_ms, outcome, error_message FROM billing_polls WHERE provider=? AND "
        "outcome != 'ok' AND finished_ms > ? AND finished_ms <= ? ORDER BY finished_ms",
        (provider, start_ms, end_ms)))


def polled_providers(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT provider FROM billing_polls")]


def vanished(conn: sqlite3.Connection, start_ms: int, end_ms: int) -> list[tuple[str, str, int]]:
    """Resources that vanished in the window and never reappeared (live or with a final total)
    by its end: their spend after the last sample is unknown. Returns their last sample time."""
    return list(conn.execute(
        "SELECT a.provider, a.resource_id, coalesce(c.last_ms, a.observed_ms) "
        "FROM billing_anomalies a LEFT JOIN billing_series c ON c.provider = a.provider AND "
        "c.account = a.account AND c.resource_id = a.resource_id WHERE a.kind='vanished' AND "
        "a.observed_ms > ? AND a.observed_ms <= ? AND NOT EXISTS (SELECT 1 FROM billing_samples "
        "s WHERE s.provider = a.provider AND s.account = a.account AND "
        "s.resource_id = a.resource_id AND s.observed_ms > a.observed_ms AND s.observed_ms <= ?)",
        (start_ms, end_ms, end_ms)))


def unconfirmed_credits(
    conn: sqlite3.Connection, start_ms: int, end_ms: int
) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for provider, amount in conn.execute(
        "SELECT provider, amount_micros FROM credit_events WHERE confirmed=0 AND "
        "occurred_ms > ? AND occurred_ms <= ?", (start_ms, end_ms)):
        out[provider] += amount
    return dict(out)


@dataclass
class TokenBuckets:
    """Tokens served, by bucket index and tier (from the per-minute rollup)."""

    prompt: dict[tuple[int, str], int] = field(default_factory=dict)
    output: dict[tuple[int, str], int] = field(default_factory=dict)
    requests: dict[tuple[int, str], int] = field(default_factory=dict)
    estimated_requests: int = 0


def token_buckets(
    conn: sqlite3.Connection, start_ms: int, end_ms: int, bucket_ms: int
) -> TokenBuckets:
    """Tokens by completion time. The rollup is per minute, so the window is taken in whole
    minutes: a request counts when its completion minute starts inside [start, end)."""
    out = TokenBuckets()
    for k, tier, req, prompt, output, est in conn.execute(
        "SELECT (minute_ms - ?) / ? AS k, tier, SUM(requests), SUM(prompt_tokens), "
        "SUM(completion_tokens), SUM(estimated_requests) FROM usage_minutes "
        "WHERE minute_ms >= ? AND minute_ms < ? GROUP BY k, tier",
        (start_ms, bucket_ms, start_ms, end_ms)):
        key = (max(0, k), tier)
        out.prompt[key] = out.prompt.get(key, 0) + prompt
        out.output[key] = out.output.get(key, 0) + output
        out.requests[key] = out.requests.get(key, 0) + req
        out.estimated_requests += est
    return out


INVOICE_TRUE = frozenset(
    {str(CumulativeKind.RESOURCE_TOTAL), str(CumulativeKind.ACCOUNT_TOTAL),
     str(CumulativeKind.BALANCE_DERIVED)}
)
