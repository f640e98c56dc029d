"""The fleet's SQL: the journal (``fleet_events``), what the fleet reads of the gateway's activity,
the figures ``spotctl status`` shows, and orphan machines recorded as billing anomalies.

Portable SQL only (``?`` placeholders, ``ON CONFLICT``, ``RETURNING``), for the PostgreSQL
backend to come. Every write is one short transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spotctl.ledger.db import Ledger

_COLS = ("id, ts_ms, tier, event, operation_id, capacity, cloud, region, resource_id, endpoint, "
         "phases_json, detail, operation, quoted_rate_micros_per_h")

# A machine that bills for a tier the journal does not know (see spotctl.fleet).
ORPHAN_KIND = "orphan"


@dataclass(frozen=True)
class FleetEntry:
    """One row of the fleet journal. ``id`` is 0 until written."""

    ts_ms: int
    tier: str
    event: str
    operation_id: str | None = None
    operation: str | None = None  # the operation's kind: up, wake, hibernate, down, recover, ...
    capacity: str | None = None
    cloud: str | None = None
    region: str | None = None
    resource_id: str | None = None
    endpoint: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    detail: str | None = None
    quoted_rate_micros_per_h: int | None = None
    id: int = 0

    def to_json(self) -> dict:
        from spotctl.clock import from_ms, iso

        return {"at": iso(from_ms(self.ts_ms)), "ts_ms": self.ts_ms, "tier": self.tier,
                "event": self.event, "operation_id": self.operation_id,
                "operation": self.operation, "capacity": self.capacity, "cloud": self.cloud,
                "region": self.region, "resource_id": self.resource_id,
                "endpoint": self.endpoint, "phases": self.phases, "detail": self.detail,
                "quoted_rate_micros_per_h": self.quoted_rate_micros_per_h}


def _entry(row: tuple) -> FleetEntry:
    return FleetEntry(id=row[0], ts_ms=row[1], tier=row[2], event=row[3], operation_id=row[4],
                      capacity=row[5], cloud=row[6], region=row[7], resource_id=row[8],
                      endpoint=row[9], phases=json.loads(row[10]) if row[10] else {},
                      detail=row[11], operation=row[12], quoted_rate_micros_per_h=row[13])


# -- the journal ------------------------------------------------------------------------------
def append_fleet_event(ledger: Ledger, e: FleetEntry, *,
                       fence: Callable[[Any], None] | None = None) -> int:
    """Append one entry; returns its id. ``fence(conn)`` runs first in the same transaction
    (the tier lease's check: it raises, and nothing is written, when the lease was lost)."""
    with ledger.transaction() as conn:
        if fence is not None:
            fence(conn)
        row = conn.execute(
            "INSERT INTO fleet_events (ts_ms, tier, event, operation_id, operation, capacity, "
            "cloud, region, resource_id, endpoint, phases_json, detail, "
            "quoted_rate_micros_per_h) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "RETURNING id",
            (e.ts_ms, e.tier, e.event, e.operation_id, e.operation, e.capacity, e.cloud,
             e.region, e.resource_id, e.endpoint,
             json.dumps(e.phases, sort_keys=True) if e.phases else None, e.detail,
             e.quoted_rate_micros_per_h)).fetchone()
    return int(row[0])


def last_fleet_event(ledger: Ledger, tier: str, events: frozenset[str] | None = None, *,
                     exclude: frozenset[str] = frozenset()) -> FleetEntry | None:
    """The tier's newest entry (of one of ``events`` if given, never one of ``exclude``)."""
    sql = f"SELECT {_COLS} FROM fleet_events WHERE tier = ?"  # noqa: S608 - constant columns
    args: list = [tier]
    if events:
        sql += f" AND event IN ({','.join('?' * len(events))})"
        args += sorted(events)
    if exclude:
        sql += f" AND event NOT IN ({','.join('?' * len(exclude))})"
        args += sorted(exclude)
    row = ledger.conn.execute(sql + " ORDER BY id DESC LIMIT 1", args).fetchone()
    return _entry(row) if row else None


def fleet_operation(ledger: Ledger, operation_id: str) -> list[FleetEntry]:
    """Every entry of one operation, oldest first."""
    rows = ledger.conn.execute(
        f"SELECT {_COLS} FROM fleet_events WHERE operation_id = ? "  # noqa: S608
        "ORDER BY id", (operation_id,)).fetchall()
    return [_entry(r) for r in rows]


def fleet_events(ledger: Ledger, tier: str | None = None, since_ms: int = 0) -> list[FleetEntry]:
    """The journal, oldest first (``spotctl events``)."""
    sql = f"SELECT {_COLS} FROM fleet_events WHERE ts_ms >= ?"  # noqa: S608 - constant columns
    args: list = [since_ms]
    if tier is not None:
        sql += " AND tier = ?"
        args.append(tier)
    return [_entry(r) for r in ledger.conn.execute(sql + " ORDER BY id", args)]


def current_fleet_resource(ledger: Ledger, tier: str, events: frozenset[str]) -> str | None:
    """The resource of the tier's newest entry of one of ``events`` that names one, unless the
    tier was journaled ``down`` since."""
    marks = ",".join("?" * len(events))
    row = ledger.conn.execute(
        "SELECT resource_id FROM fleet_events WHERE tier = ? AND resource_id IS NOT NULL AND "  # noqa: S608 - placeholders only
        f"event IN ({marks}) AND id > coalesce((SELECT max(id) FROM fleet_events "
        "WHERE tier = ? AND event = 'down'), 0) ORDER BY id DESC LIMIT 1",
        (tier, *sorted(events), tier)).fetchone()
    return row[0] if row else None


# -- spotctl status ----------------------------------------------------------------------------
def latest_vm_rate(ledger: Ledger, tier: str) -> tuple[int | None, int] | None:
    """The provider's newest billed rate for the tier's machines and when it was observed."""
    row = ledger.conn.execute(
        "SELECT rate_micros_per_h, observed_ms FROM billing_samples WHERE tier = ? AND "
        "resource_kind = 'vm' ORDER BY observed_ms DESC LIMIT 1", (tier,)).fetchone()
    return (row[0], int(row[1])) if row else None


# -- orphans -------------------------------------------------------------------------------------
def record_orphan(ledger: Ledger, provider: str, account: str | None, resource_id: str,
                  observed_ms: int, detail: str) -> bool:
    """Record a machine that bills for a tier in no journal state, as a billing anomaly of kind
    ``orphan`` (shown by ``spotctl billing status``; never counted in spend). One row per
    machine: a machine already recorded is not recorded again. Returns whether a row was added.

    ``account`` is the billing account the machine's samples carry; ``None``: the one the
    ledger already has for this resource, else ``default`` (the Hyperstack adapter's)."""
    with ledger.transaction() as conn:
        if account is None:
            row = conn.execute("SELECT account FROM billing_series WHERE provider = ? AND "
                               "resource_id = ? ORDER BY last_ms DESC LIMIT 1",
                               (provider, resource_id)).fetchone()
            account = row[0] if row else "default"
        seen = conn.execute("SELECT 1 FROM billing_anomalies WHERE provider = ? AND "
                            "resource_id = ? AND kind = ?",
                            (provider, resource_id, ORPHAN_KIND)).fetchone()
        if seen:
            return False
        conn.execute(
            "INSERT INTO billing_anomalies (provider, account, resource_id, observed_ms, kind, "
            "detail) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (provider, account, resource_id, observed_ms, kind) DO NOTHING",
            (provider, account, resource_id, observed_ms, ORPHAN_KIND, detail))
    return True


def orphan_anomalies(ledger: Ledger, provider: str | None = None) -> list[tuple[str, str, int,
                                                                            str | None]]:
    """Recorded orphans: ``(provider, resource_id, observed_ms, detail)``, oldest first."""
    sql = ("SELECT provider, resource_id, observed_ms, detail FROM billing_anomalies "
           "WHERE kind = ?")
    args: list = [ORPHAN_KIND]
    if provider is not None:
        sql += " AND provider = ?"
        args.append(provider)
    return [(r[0], r[1], int(r[2]), r[3])
            for r in ledger.conn.execute(sql + " ORDER BY observed_ms, id", args)]
