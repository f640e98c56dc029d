"""The fleet journal (``fleet_events``): every change of every tier, with phase durations.

It is the daemon's only memory: what operation is under way, when a recovery began, when a
tier last served. Writes go through :func:`spotctl.ledger.writes.record_fleet_event`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from spotctl.clock import Clock, to_ms
from spotctl.fleet.base import TierState, TierStatus
from spotctl.ledger.db import Ledger
from spotctl.ledger.records import FleetEvent
from spotctl.ledger.writes import record_fleet_event

EVENTS = ("launching", "launched", "ready", "hibernating", "hibernated", "waking", "woke",
          "preempted", "fell_back", "returned_to_spot", "down", "failed")
# The tier serves after these (until a later event says otherwise).
SERVING = frozenset({"ready", "woke", "returned_to_spot"})
# An operation was started and its end is not in the journal yet.
UNFINISHED = frozenset({"launching", "launched", "waking", "hibernating", "preempted",
                        "fell_back"})
# A launch whose end is missing: relaunch (spot / on-demand by the retry window) if nothing runs.
LAUNCHING = frozenset({"launching", "launched", "preempted", "fell_back"})

_COLS = ("id, ts_ms, tier, event, operation_id, capacity, cloud, region, resource_id, endpoint, "
         "phases_json, detail")


@dataclass(frozen=True)
class JournalEntry:
    id: int
    ts_ms: int
    tier: str
    event: str
    operation_id: str | None = None
    capacity: str | None = None
    cloud: str | None = None
    region: str | None = None
    resource_id: str | None = None
    endpoint: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    detail: str | None = None

    def to_json(self) -> dict:
        from spotctl.clock import from_ms, iso

        return {"at": iso(from_ms(self.ts_ms)), "ts_ms": self.ts_ms, "tier": self.tier,
                "event": self.event, "operation_id": self.operation_id,
                "capacity": self.capacity, "cloud": self.cloud, "region": self.region,
                "resource_id": self.resource_id, "endpoint": self.endpoint,
                "phases": self.phases, "detail": self.detail}


def _entry(row: tuple) -> JournalEntry:
    return JournalEntry(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8],
                        row[9], json.loads(row[10]) if row[10] else {}, row[11])


class Journal:
    """Reads and writes one ledger's fleet journal; opens the ledger per call (short
    transactions, safe across the CLI, the daemon and the gateway)."""

    def __init__(self, ledger_path: Path, clock: Clock) -> None:
        self.ledger_path = Path(ledger_path)
        self.clock = clock

    def record(self, tier: str, event: str, op: str | None, status: TierStatus | None = None,
               phases: dict[str, float] | None = None, detail: str | None = None) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown fleet event {event!r}")
        with Ledger(self.ledger_path) as led:
            record_fleet_event(led, FleetEvent(
                ts_ms=to_ms(self.clock.now()), tier=tier, event=event, operation_id=op,
                capacity=status.capacity if status else None,
                cloud=status.cloud if status else None,
                region=status.region if status else None,
                resource_id=status.resource_id if status else None,
                endpoint=status.endpoint if status else None,
                phases={k: round(float(v), 3) for k, v in (phases or {}).items()},
                detail=detail))

    def last(self, tier: str, events: frozenset[str] | tuple[str, ...] | None = None
             ) -> JournalEntry | None:
        """The newest entry of the tier (of one of ``events`` if given)."""
        sql = f"SELECT {_COLS} FROM fleet_events WHERE tier = ?"  # noqa: S608 - constant columns
        args: list = [tier]
        if events:
            sql += f" AND event IN ({','.join('?' * len(events))})"
            args += sorted(events)
        with Ledger(self.ledger_path) as led:
            row = led.conn.execute(sql + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return _entry(row) if row else None

    def operation(self, op: str) -> list[JournalEntry]:
        """Every entry of one operation, oldest first."""
        with Ledger(self.ledger_path) as led:
            rows = led.conn.execute(
                f"SELECT {_COLS} FROM fleet_events WHERE operation_id = ? "  # noqa: S608
                "ORDER BY id", (op,)).fetchall()
        return [_entry(r) for r in rows]

    def last_request_ms(self, tier: str) -> int | None:
        """The gateway's last request to the tier (``tier_activity``)."""
        with Ledger(self.ledger_path) as led:
            row = led.conn.execute("SELECT last_request_ms FROM tier_activity WHERE tier = ?",
                                   (tier,)).fetchone()
        return row[0] if row else None


def read_events(ledger: Ledger, tier: str | None = None, since_ms: int = 0) -> list[JournalEntry]:
    """The journal, oldest first, for ``spotctl events``."""
    rows = ledger.conn.execute(
        f"SELECT {_COLS} FROM fleet_events WHERE ts_ms >= ? "  # noqa: S608 - constant columns
        "AND (? IS NULL OR tier = ?) ORDER BY id", (since_ms, tier, tier)).fetchall()
    return [_entry(r) for r in rows]


def derived_state(last: JournalEntry | None, backend: TierStatus) -> TierStatus:
    """The tier's state from the backend, corrected by the journal: a tier the journal says
    exists (serving or hibernated) but the provider no longer has was preempted."""
    if backend.state != TierState.ABSENT or last is None:
        return backend
    if last.event in SERVING | {"hibernated", "waking", "hibernating", "preempted",
                                "fell_back"}:
        return TierStatus(backend.tier, TierState.PREEMPTED, last.capacity, last.cloud,
                          last.region, None, last.resource_id, "gone from the provider")
    return backend
