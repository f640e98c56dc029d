"""The fleet journal (``fleet_events``): every change of every tier, with phase durations.

It is the daemon's only memory: what operation is under way (and of which kind), when a
recovery began, when a tier last served. An operation journals its intent *before* it acts on
the provider (``launching``, ``returning_to_spot``, ``draining``, ``relaunching`` ...), so a
process killed at any point leaves an unfinished operation that the next daemon pass finishes or
undoes, never a machine nobody knows about. The SQL is in :mod:`spotctl.ledger.journal`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from spotctl.clock import Clock, to_ms
from spotctl.fleet.base import TierState, TierStatus
from spotctl.ledger.db import Ledger
from spotctl.ledger.journal import (
    FleetEntry,
    append_fleet_event,
    current_fleet_resource,
    fleet_operation,
    last_fleet_event,
)

JournalEntry = FleetEntry

EVENTS = frozenset({
    "launching", "launched", "ready", "hibernating", "hibernated", "waking", "woke",
    "preempted", "fell_back", "returning_to_spot", "returned_to_spot", "stayed_on_demand",
    "draining", "drain_aborted", "relaunching", "restarting_engine", "down", "failed",
    "orphan_deleted",
})
# Notes about machines that do not change the tier's state (the policy skips them).
NOTES = frozenset({"orphan_deleted"})
# The tier serves after these (until a later event says otherwise).
SERVING = frozenset({"ready", "woke", "returned_to_spot", "stayed_on_demand", "drain_aborted"})
# ... and it began serving on its current machine at the newest of these.
STARTED_SERVING = frozenset({"ready", "woke", "returned_to_spot"})
# An operation was started and its end is not in the journal yet.
UNFINISHED = frozenset({"launching", "launched", "waking", "hibernating", "preempted",
                        "fell_back", "returning_to_spot", "draining", "relaunching",
                        "restarting_engine"})
# The journal says a machine exists (serving, hibernated, or an operation on it under way).
EXISTS = SERVING | frozenset({"hibernated", "waking", "hibernating", "preempted", "fell_back",
                              "returning_to_spot", "draining"})

# Operation kinds (the ``operation`` column).
OP_UP, OP_WAKE, OP_HIBERNATE, OP_IDLE, OP_DOWN = "up", "wake", "hibernate", "idle", "down"
OP_RECOVER, OP_RETURN, OP_ORPHANS = "recover", "return_to_spot", "orphans"


class Journal:
    """Reads and writes one ledger's fleet journal; opens the ledger per call (short
    transactions, safe across the CLI, the daemon and the gateway)."""

    def __init__(self, ledger_path: Path | Any, clock: Clock) -> None:
        self.ledger_path = ledger_path  # a SQLite path or [ledger] (PostgreSQL)
        self.clock = clock

    def record(self, tier: str, event: str, op: str | None, status: TierStatus | None = None,
               phases: dict[str, float] | None = None, detail: str | None = None, *,
               operation: str | None = None,
               fence: Callable[[Any], None] | None = None) -> JournalEntry:
        """Append one entry. ``fence`` (the tier lease's check, see
        :mod:`spotctl.fleet.lease`) runs inside the write's transaction: when the lease was
        taken by another process it raises :class:`~spotctl.errors.LeaseLost` and nothing is
        written."""
        if event not in EVENTS:
            raise ValueError(f"unknown fleet event {event!r}")
        if operation is None and op is not None:
            first = self.operation(op)
            operation = first[0].operation if first else None
        entry = JournalEntry(
            ts_ms=to_ms(self.clock.now()), tier=tier, event=event, operation_id=op,
            operation=operation,
            capacity=status.capacity if status else None,
            cloud=status.cloud if status else None,
            region=status.region if status else None,
            resource_id=status.resource_id if status else None,
            endpoint=status.endpoint if status else None,
            phases={k: round(float(v), 3) for k, v in (phases or {}).items()},
            detail=detail,
            quoted_rate_micros_per_h=status.quoted_rate_micros_per_h if status else None)
        with Ledger(self.ledger_path) as led:
            new_id = append_fleet_event(led, entry, fence=fence)
        return JournalEntry(**{**entry.__dict__, "id": new_id})

    def last(self, tier: str, events: frozenset[str] | None = None) -> JournalEntry | None:
        """The newest state entry of the tier (of one of ``events`` if given); notes about
        machines are skipped."""
        with Ledger(self.ledger_path) as led:
            return last_fleet_event(led, tier, events, exclude=NOTES)

    def operation(self, op: str) -> list[JournalEntry]:
        """Every entry of one operation, oldest first."""
        with Ledger(self.ledger_path) as led:
            return fleet_operation(led, op)

    def current_resource(self, tier: str) -> str | None:
        """The machine the journal says the tier runs on (or is hibernated on): the resource
        of its newest entry that names one, unless the tier is down since."""
        with Ledger(self.ledger_path) as led:
            return current_fleet_resource(led, tier, SERVING | {"launched", "hibernated"})


def derived_state(last: JournalEntry | None, backend: TierStatus) -> TierStatus:
    """The tier's state from the backend, corrected by the journal: a tier the journal says
    exists (serving or hibernated) but the provider no longer has was preempted; a machine whose
    engine is being restarted or replaced is not serving."""
    if last is None:
        return backend
    if backend.state == TierState.READY and last.event in ("relaunching", "restarting_engine"):
        return TierStatus(backend.tier, TierState.PROVISIONING, backend.capacity, backend.cloud,
                          backend.region, None, backend.resource_id,
                          "engine being recovered")
    if backend.state != TierState.ABSENT:
        return backend
    if last.event in EXISTS:
        return TierStatus(backend.tier, TierState.PREEMPTED, last.capacity, last.cloud,
                          last.region, None, last.resource_id, "gone from the provider")
    return backend
