"""What the billing poller and billing health read from the ledger (the only home of their SQL).

Adapters are pure translators: ``poll(now_ms, prior) -> PollResult``. The poller reads the
:class:`PriorState` of a provider here, hands it to the adapter, and writes the result with
:func:`record_poll_mapped` (``ledger.writes.record_poll`` with sqlite's errors mapped to
:class:`~spotctl.errors.LedgerError`, so that a locked ledger is a failed poll of kind
``ledger``, never a crash).

Price truth: :func:`quoted_rates` reads the newest rate the provider quoted at launch for each
resource (``fleet_events.quoted_rate_micros_per_h``, journaled by the fleet); the adapter compares
each poll's billed rate with it and records a ``rate_mismatch`` anomaly;
:func:`rate_mismatches` is the read function for ``billing status``, ``cost``, ``/metrics`` and
the gate.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from spotctl.errors import LedgerError
from spotctl.ledger.db import Ledger
from spotctl.ledger.records import Anomaly, BillingSample, CreditEvent, PollRecord


@dataclass(frozen=True)
class PreviousAccount:
    observed_ms: int
    cumulative_micros: int
    balance_micros: int


@dataclass(frozen=True)
class LastSample:
    observed_ms: int
    cumulative_micros: int | None
    state: str | None
    rate_micros_per_h: int | None = None


@dataclass(frozen=True)
class PriorState:
    """What the ledger remembers of one provider between polls (nothing lives only in memory)."""

    live_before: frozenset[str] = frozenset()  # resources live at the last successful poll
    finalized: frozenset[str] = frozenset()  # resources whose final total is recorded
    last_deleted_poll_ms: int | None = None  # Hyperstack: last read of deleted=true
    account: PreviousAccount | None = None  # balance-derived providers: the last account row
    last_samples: dict[str, LastSample] = field(default_factory=dict)  # estimate-only providers
    quotes: dict[str, int] = field(default_factory=dict)  # resource -> quoted micro-$/h
    rate_tolerance_pct: float = 5.0


def _mapped(fn):
    def wrapper(*args, **kw):
        try:
            return fn(*args, **kw)
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger: {type(exc).__name__}: {exc}") from None
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@_mapped
def prior_state(ledger: Ledger, provider: str, *, rate_tolerance_pct: float = 5.0) -> PriorState:
    conn = ledger.conn
    last_ok = conn.execute(
        "SELECT MAX(observed_ms) FROM billing_samples WHERE provider=? AND resource_id='account'",
        (provider,)).fetchone()[0]
    live = frozenset(r[0] for r in conn.execute(
        "SELECT resource_id FROM billing_series WHERE provider=? AND resource_kind != 'account' "
        "AND coalesce(last_state, '') != 'deleted' AND last_ms = ?", (provider, last_ok)))
    finalized = frozenset(r[0] for r in conn.execute(
        "SELECT resource_id FROM billing_series WHERE provider=? AND last_state='deleted'",
        (provider,)))
    last_deleted = conn.execute(
        "SELECT MAX(observed_ms) FROM billing_samples WHERE provider=? AND "
        "resource_id='account' AND state='deleted_polled'", (provider,)).fetchone()[0]
    row = conn.execute(
        "SELECT observed_ms, cumulative_micros, balance_micros FROM billing_samples WHERE "
        "provider=? AND resource_id='account' AND cumulative_micros IS NOT NULL AND "
        "balance_micros IS NOT NULL ORDER BY observed_ms DESC LIMIT 1", (provider,)).fetchone()
    account = PreviousAccount(*row) if row else None
    last: dict[str, LastSample] = {}
    for rid, observed, cum, state, rate in conn.execute(
            "SELECT s.resource_id, s.observed_ms, s.cumulative_micros, s.state, "
            "s.rate_micros_per_h "
            "FROM billing_samples s JOIN billing_series c ON c.provider = s.provider AND "
            "c.account = s.account AND c.resource_id = s.resource_id AND "
            "c.last_ms = s.observed_ms WHERE s.provider=? AND s.resource_id != 'account' AND "
            "coalesce(c.last_state, '') != 'deleted'", (provider,)):
        last[rid] = LastSample(observed, cum, state, rate)
    return PriorState(live, finalized, last_deleted, account, last, quoted_rates(ledger),
                      rate_tolerance_pct)


def _has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    cur = conn.execute(f"SELECT * FROM {table} LIMIT 0")  # noqa: S608 - fixed names
    return column in {d[0] for d in cur.description or ()}


@_mapped
def quoted_rates(ledger: Ledger) -> dict[str, int]:
    """Per billing resource id, the newest rate quoted at its launch (micro-$/h), if the fleet
    journaled one."""
    conn = ledger.conn
    if not _has_column(conn, "fleet_events", "quoted_rate_micros_per_h"):
        return {}
    out: dict[str, int] = {}
    for rid, rate in conn.execute(
            "SELECT resource_id, quoted_rate_micros_per_h FROM fleet_events WHERE "
            "resource_id IS NOT NULL AND quoted_rate_micros_per_h IS NOT NULL ORDER BY ts_ms, id"):
        out[rid] = int(rate)
    return out


@dataclass(frozen=True)
class RateMismatch:
    provider: str
    resource_id: str
    observed_ms: int
    quoted_micros_per_h: int
    billed_micros_per_h: int

    @property
    def off_pct(self) -> float:
        q = self.quoted_micros_per_h
        return 0.0 if q == 0 else (self.billed_micros_per_h - q) * 100.0 / q


@_mapped
def rate_mismatches(ledger: Ledger, since_ms: int, until_ms: int | None = None,
                    provider: str | None = None) -> list[RateMismatch]:
    """Every ``rate_mismatch`` anomaly in (since, until]: the billed rate differed from the
    launch quote by more than ``[billing] rate_tolerance_pct``. Oldest first."""
    sql = ("SELECT provider, resource_id, observed_ms, previous_micros, current_micros FROM "
           "billing_anomalies WHERE kind='rate_mismatch' AND observed_ms > ?")
    args: list = [since_ms]
    if until_ms is not None:
        sql += " AND observed_ms <= ?"
        args.append(until_ms)
    if provider is not None:
        sql += " AND provider = ?"
        args.append(provider)
    return [RateMismatch(p, r, o, q or 0, b or 0)
            for p, r, o, q, b in ledger.conn.execute(sql + " ORDER BY observed_ms", args)]


@dataclass(frozen=True)
class HealthFacts:
    last_finished_ms: int | None
    last_outcome: str | None
    good_finished_ms: int | None
    good_started_ms: int | None
    error: tuple[str, str | None, int] | None  # outcome, message, finished_ms of the last error
    regressed_since_good: bool
    rate_mismatch_since_good: RateMismatch | None


@_mapped
def health_facts(ledger: Ledger, provider: str) -> HealthFacts:
    conn = ledger.conn
    last = conn.execute(
        "SELECT finished_ms, outcome FROM billing_polls WHERE provider=? "
        "ORDER BY started_ms DESC LIMIT 1", (provider,)).fetchone()
    good = conn.execute(
        "SELECT finished_ms, started_ms FROM billing_polls WHERE provider=? AND outcome='ok' "
        "ORDER BY finished_ms DESC LIMIT 1", (provider,)).fetchone()
    err = conn.execute(
        "SELECT outcome, error_message, finished_ms FROM billing_polls WHERE provider=? AND "
        "outcome != 'ok' ORDER BY started_ms DESC LIMIT 1", (provider,)).fetchone()
    regressed = False
    mismatch = None
    if good is not None:
        regressed = conn.execute(
            "SELECT 1 FROM billing_anomalies WHERE provider=? AND kind='cumulative_decreased' "
            "AND observed_ms >= ? LIMIT 1", (provider, good[1])).fetchone() is not None
        row = conn.execute(
            "SELECT provider, resource_id, observed_ms, previous_micros, current_micros FROM "
            "billing_anomalies WHERE provider=? AND kind='rate_mismatch' AND observed_ms >= ? "
            "ORDER BY observed_ms DESC LIMIT 1", (provider, good[1])).fetchone()
        if row is not None:
            mismatch = RateMismatch(row[0], row[1], row[2], row[3] or 0, row[4] or 0)
    return HealthFacts(last[0] if last else None, last[1] if last else None,
                       good[0] if good else None, good[1] if good else None,
                       tuple(err) if err else None, regressed, mismatch)  # type: ignore[arg-type]


def record_poll_mapped(ledger: Ledger, poll: PollRecord, samples: Sequence[BillingSample] = (),
                       credits: Iterable[CreditEvent] = (), anomalies: Iterable[Anomaly] = ()
                       ) -> tuple[int, int]:
    """``ledger.writes.record_poll``, with sqlite's errors ("database is locked", a full disk)
    mapped to :class:`LedgerError`: one transaction, all or nothing."""
    from spotctl.ledger.writes import record_poll

    try:
        return record_poll(ledger, poll, samples, credits, anomalies)
    except sqlite3.Error as exc:
        raise LedgerError(f"ledger: {type(exc).__name__}: {exc}") from None
