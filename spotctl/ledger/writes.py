"""Everything that writes to the ledger. Each function is one transaction: all or nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from spotctl.ledger.db import Ledger
from spotctl.ledger.records import (
    Anomaly,
    BillingSample,
    CreditEvent,
    PollRecord,
)
from spotctl.ledger.usage import record_usage, touch_tiers  # moved to ledger/usage.py

__all__ = ["record_poll", "record_usage", "touch_tiers"]

_SAMPLE_SQL = """
INSERT INTO billing_samples (
    poll_id, provider, account, resource_id, resource_kind, tier, observed_ms, provider_ts,
    rate_micros_per_h, cumulative_micros, cumulative_kind, created_ms, state, spot,
    balance_micros, payload_sha256
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (provider, account, resource_id, observed_ms) DO NOTHING
"""

_SERIES_SQL = """
INSERT INTO billing_series (provider, account, resource_id, resource_kind, cumulative_kind, tier,
                            created_ms, first_ms, last_ms, last_state)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (provider, account, resource_id) DO UPDATE SET
    last_state = CASE WHEN excluded.last_ms >= last_ms THEN excluded.last_state ELSE last_state END,
    first_ms = min(first_ms, excluded.first_ms),
    last_ms = max(last_ms, excluded.last_ms),
    tier = coalesce(excluded.tier, tier),
    created_ms = coalesce(created_ms, excluded.created_ms)
"""


def record_poll(
    ledger: Ledger,
    poll: PollRecord,
    samples: Sequence[BillingSample] = (),
    credits: Iterable[CreditEvent] = (),
    anomalies: Iterable[Anomaly] = (),
) -> tuple[int, int]:
    """Write one provider's poll record with its samples, credits and anomalies, atomically.

    Samples already in the ledger (same provider, account, resource and observed time) are
    skipped, never doubled. (``ON CONFLICT DO NOTHING``, not ``INSERT OR IGNORE``: the latter
    would also silently drop rows that break a NOT NULL constraint.) Returns ``(poll_id, samples_inserted)``.
    """
    with ledger.transaction() as conn:
        cur = conn.execute(
            "INSERT INTO billing_polls (provider, started_ms, finished_ms, outcome, "
            "error_message, resources_seen) VALUES (?, ?, ?, ?, ?, ?)",
            (poll.provider, poll.started_ms, poll.finished_ms, poll.outcome,
             poll.error_message, poll.resources_seen),
        )
        poll_id = int(cur.lastrowid or 0)
        before = conn.total_changes
        conn.executemany(
            _SAMPLE_SQL,
            [
                (poll_id, s.provider, s.account, s.resource_id, s.resource_kind, s.tier,
                 s.observed_ms, s.provider_ts, s.rate_micros_per_h, s.cumulative_micros,
                 str(s.cumulative_kind), s.created_ms, s.state,
                 None if s.spot is None else int(s.spot), s.balance_micros, s.payload_sha256)
                for s in samples
            ],
        )
        inserted = conn.total_changes - before
        conn.executemany(_SERIES_SQL, [
            (s.provider, s.account, s.resource_id, s.resource_kind, str(s.cumulative_kind),
             s.tier, s.created_ms, s.observed_ms, s.observed_ms, s.state)
            for s in samples if s.cumulative_micros is not None])
        anomalies = [*anomalies, *_detect_decreases(conn, samples)]
        conn.executemany(
            "INSERT INTO credit_events (provider, account, event_id, occurred_ms, "
            "amount_micros, kind, confirmed) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (provider, account, event_id) DO NOTHING",
            [(c.provider, c.account, c.event_id, c.occurred_ms, c.amount_micros, c.kind,
              int(c.confirmed)) for c in credits],
        )
        conn.executemany(
            "INSERT INTO billing_anomalies (provider, account, resource_id, "
            "observed_ms, kind, previous_micros, current_micros, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (provider, account, resource_id, observed_ms, kind) DO NOTHING",
            [(a.provider, a.account, a.resource_id, a.observed_ms, a.kind, a.previous_micros,
              a.current_micros, a.detail) for a in anomalies],
        )
    return poll_id, inserted


def _detect_decreases(conn: sqlite3.Connection, samples: Sequence[BillingSample]) -> list[Anomaly]:
    """A cumulative lower than its series' previous sample is an anomaly, recorded at write time.

    Accounting reads these rows to find decreases without scanning every sample; `ledger check`
    verifies that none is missing. Also checks the next sample, for out-of-order writes.
    """
    found: list[Anomaly] = []
    for s in samples:
        if s.cumulative_micros is None:
            continue
        key = (s.provider, s.account, s.resource_id)
        prev = conn.execute(
            "SELECT observed_ms, cumulative_micros FROM billing_samples WHERE provider=? AND "
            "account=? AND resource_id=? AND observed_ms < ? AND cumulative_micros IS NOT NULL "
            "ORDER BY observed_ms DESC LIMIT 1", (*key, s.observed_ms)).fetchone()
        if prev is not None and s.cumulative_micros < prev[1]:
            found.append(Anomaly(s.provider, s.account, s.resource_id, s.observed_ms,
                                 "cumulative_decreased", prev[1], s.cumulative_micros))
        nxt = conn.execute(
            "SELECT observed_ms, cumulative_micros FROM billing_samples WHERE provider=? AND "
            "account=? AND resource_id=? AND observed_ms > ? AND cumulative_micros IS NOT NULL "
            "ORDER BY observed_ms ASC LIMIT 1", (*key, s.observed_ms)).fetchone()
        if nxt is not None and nxt[1] < s.cumulative_micros:
            found.append(Anomaly(s.provider, s.account, s.resource_id, nxt[0],
                                 "cumulative_decreased", s.cumulative_micros, nxt[1]))
    return found


def insert_many(conn, head: str, rows: Sequence[tuple], tail: str = "", *,
                chunk: int = 500) -> int:
    """Multi-row ``INSERT``: one statement per ``chunk`` rows (``head`` is
    ``INSERT INTO t (a, b)``, ``tail`` e.g. ``ON CONFLICT (id) DO NOTHING``); returns the rows
    inserted. Portable: both engines take ``VALUES (...), (...)``; 500 rows × 14 columns stays
    far under SQLite's 32,766 and PostgreSQL's 65,535 parameters per statement."""
    inserted = 0
    for i in range(0, len(rows), chunk):
        part = rows[i:i + chunk]
        marks = "(" + ", ".join("?" * len(part[0])) + ")"
        cur = conn.execute(f"{head} VALUES {', '.join([marks] * len(part))} {tail}",
                           [v for row in part for v in row])
        inserted += max(cur.rowcount, 0)
    return inserted
