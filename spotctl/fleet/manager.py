"""Fleet operations with their journal: up (spot first, bounded fallback), hibernate, wake,
down, and the single steps the daemon takes (one launch attempt, a return to spot). Every
change is written to ``fleet_events`` with its phase durations; nothing is kept only in memory,
so a restarted daemon resumes from the journal and the backends.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spotctl.clock import Clock, to_ms
from spotctl.config import Config, TierConfig
from spotctl.errors import NoSpotCapacity, SpotctlError
from spotctl.fleet.base import (
    CapacityKind,
    EnumeratesMachines,
    PhaseTimings,
    Progress,
    TierState,
    TierStatus,
    no_progress,
)
from spotctl.fleet.journal import Journal, JournalEntry, derived_state
from spotctl.fleet.policy import TierPolicy, launch_capacity
from spotctl.fleet.registry import _BACKENDS, backend_for  # noqa: F401 - re-exported

SPOT_RETRY_SLEEP_S = 60.0


def new_op() -> str:
    return uuid.uuid4().hex[:12]


def no_spot(exc: SpotctlError) -> bool:
    """A refusal for lack of spot capacity (worth retrying). Backends raise the type; the
    message is never searched (a tier named "spot-llama" once retried any error forever)."""
    return isinstance(exc, NoSpotCapacity)


def tier_policy(tier: TierConfig) -> TierPolicy:
    return TierPolicy(tier.capacity, tier.spot_retry_minutes, tier.idle_minutes)


class FleetManager:
    def __init__(self, cfg: Config, clock: Clock, ledger_path: Path | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.ledger_path = Path(ledger_path or cfg.ledger_path)
        self.journal_ = Journal(self.ledger_path, clock)

    # -- journal --------------------------------------------------------------------------
    def journal(self, tier: str, event: str, op: str | None, status: TierStatus | None = None,
                timings: PhaseTimings | None = None, detail: str | None = None) -> None:
        self.journal_.record(tier, event, op, status, timings.phases if timings else None,
                             detail)

    def last_entry(self, tier: str) -> JournalEntry | None:
        return self.journal_.last(tier)

    def _backend(self, tier: TierConfig):
        return backend_for(tier, self.cfg, self.clock)

    def _lock_path(self, tier: TierConfig) -> Path:
        return Path(f"{self.ledger_path}.{tier.name}.fleet.lock")

    @contextmanager
    def tier_lock(self, tier: TierConfig) -> Iterator[None]:
        """One fleet operation per tier at a time, across processes (CLI, daemon, gateway):
        whoever comes second waits, then finds the work done instead of doing it twice."""
        fd = os.open(self._lock_path(tier), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def busy(self, tier: TierConfig) -> bool:
        """Whether another process (or thread) holds the tier's lock right now."""
        fd = os.open(self._lock_path(tier), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    # -- launching ------------------------------------------------------------------------
    def _launch(self, tier: TierConfig, capacity: CapacityKind, op: str,
                progress: Progress) -> TierStatus:
        """One launch attempt; journals ``launched`` once the machine exists and ``ready``
        (with every phase's duration) once a real completion succeeded."""
        backend = self._backend(tier)
        start = self.clock.monotonic()
        launched = {"done": False}

        def watch(phase: str, fraction: float | None, message: str) -> None:
            if phase != "provisioning" and not launched["done"]:
                launched["done"] = True
                try:
                    st = backend.status(tier)
                except SpotctlError:
                    st = None
                self.journal(tier.name, "launched", op, st, detail=f"{capacity}; now {phase}")
            progress(phase, fraction, message)

        status, timings = backend.up(tier, capacity, watch)
        timings.phases["total"] = self.clock.monotonic() - start
        self.journal(tier.name, "ready", op, status, timings)
        return status

    def launch_once(self, tier: TierConfig, capacity: CapacityKind, op: str,
                    progress: Progress = no_progress) -> TierStatus | None:
        """The daemon's step: one attempt under the tier lock. ``None`` when spot capacity is
        not there (try again next pass); other failures are journaled and raised."""
        with self.tier_lock(tier):
            current = self.status(tier)
            if current.state == TierState.READY:
                return current
            last = self.last_entry(tier.name)
            if capacity == "on-demand" and tier.capacity == "spot-first" and not any(
                    e.event == "fell_back" for e in self.journal_.operation(op)):
                self.journal(tier.name, "fell_back", op,
                             detail=f"no spot within spot_retry_minutes={tier.spot_retry_minutes}")
            elif last is None or last.operation_id != op or last.event in ("ready", "failed"):
                self.journal(tier.name, "launching", op, detail=f"capacity {capacity}")
            try:
                return self._launch(tier, capacity, op, progress)
            except SpotctlError as exc:
                if capacity == "spot" and no_spot(exc):
                    return None
                self.journal(tier.name, "failed", op, detail=exc.message)
                raise

    def up(self, tier: TierConfig, progress: Progress = no_progress,
           op: str | None = None) -> TierStatus:
        """Launch and wait: spot first (for up to ``spot_retry_minutes``), then on-demand."""
        with self.tier_lock(tier):
            current = self._backend(tier).status(tier)
            if current.state == TierState.READY:
                return current  # someone else launched it while we waited
            return self._up(tier, progress, op)

    def _up(self, tier: TierConfig, progress: Progress, op: str | None) -> TierStatus:
        op = op or new_op()
        self.journal(tier.name, "launching", op, detail=f"capacity {tier.capacity}")
        started_ms = to_ms(self.clock.now())
        policy = tier_policy(tier)
        fell_back = False
        while True:
            capacity = launch_capacity(policy, started_ms, to_ms(self.clock.now()))
            if capacity == "on-demand" and tier.capacity == "spot-first" and not fell_back:
                fell_back = True
                self.journal(tier.name, "fell_back", op,
                             detail=f"no spot within spot_retry_minutes={tier.spot_retry_minutes}")
            try:
                return self._launch(tier, capacity, op, progress)
            except SpotctlError as exc:
                if capacity == "spot" and no_spot(exc) and (
                        tier.capacity == "spot" or tier.spot_retry_minutes > 0):
                    progress("provisioning", None, f"no spot capacity; retrying ({exc.message})")
                    self.clock.sleep(SPOT_RETRY_SLEEP_S)
                    continue
                self.journal(tier.name, "failed", op, detail=exc.message)
                raise

    # -- hibernate / wake / down ------------------------------------------------------------
    def hibernate(self, tier: TierConfig, op: str | None = None) -> TierStatus:
        with self.tier_lock(tier):
            current = self._backend(tier).status(tier)
            if current.state == TierState.HIBERNATED:
                last = self.last_entry(tier.name)
                if last is not None and last.event == "hibernating":
                    self.journal(tier.name, "hibernated", last.operation_id, current,
                                 detail="finished (found hibernated)")
                return current
            op = op or new_op()
            self.journal(tier.name, "hibernating", op, current)
            try:
                status, timings = self._backend(tier).hibernate(tier)
            except SpotctlError as exc:
                self.journal(tier.name, "failed", op, detail=exc.message)
                raise
            self.journal(tier.name, "hibernated", op, status, timings)
            return status

    def wake(self, tier: TierConfig, progress: Progress = no_progress) -> TierStatus:
        with self.tier_lock(tier):
            current = self._backend(tier).status(tier)
            if current.state == TierState.READY:
                return current
            if current.state == TierState.ABSENT:
                return self._up(tier, progress, None)
            return self._wake(tier, progress)

    def _wake(self, tier: TierConfig, progress: Progress, op: str | None = None) -> TierStatus:
        op = op or new_op()
        self.journal(tier.name, "waking", op)
        t0 = self.clock.monotonic()
        try:
            status, timings = self._backend(tier).wake(tier, progress)
        except SpotctlError as exc:
            current = self._backend(tier).status(tier)
            if current.state in (TierState.ABSENT, TierState.PREEMPTED):
                # nothing to restore (preempted or downed while hibernated): relaunch
                return self._up(tier, progress, op)
            self.journal(tier.name, "failed", op, detail=exc.message)
            raise
        timings.phases["total"] = self.clock.monotonic() - t0
        self.journal(tier.name, "woke", op, status, timings)
        return status

    def finish(self, tier: TierConfig, last: JournalEntry,
               progress: Progress = no_progress) -> TierStatus:
        """Complete the operation ``last`` started (a dead process's), never a second launch:
        the machine exists, so wait for it (wake does that) and journal the end under the same
        operation id."""
        with self.tier_lock(tier):
            current = self._backend(tier).status(tier)
            if last.event == "hibernating":
                if current.state != TierState.HIBERNATED:
                    status, timings = self._backend(tier).hibernate(tier)
                    self.journal(tier.name, "hibernated", last.operation_id, status, timings,
                                 detail="finished after a restart")
                    return status
                self.journal(tier.name, "hibernated", last.operation_id, current,
                             detail="finished after a restart")
                return current
            end = "woke" if last.event == "waking" else "ready"
            if current.state == TierState.READY:
                self.journal(tier.name, end, last.operation_id, current,
                             detail="finished after a restart")
                return current
            t0 = self.clock.monotonic()
            status, timings = self._backend(tier).wake(tier, progress)
            timings.phases["total"] = self.clock.monotonic() - t0
            self.journal(tier.name, end, last.operation_id, status, timings,
                         detail="finished after a restart")
            return status

    def return_to_spot(self, tier: TierConfig, on_demand: TierStatus) -> TierStatus | None:
        """Launch the tier on spot beside its on-demand machine; once the spot one serves,
        release the on-demand one. ``None`` when spot capacity is still not there."""
        backend = self._backend(tier)
        if not isinstance(backend, EnumeratesMachines):
            return None  # SkyPilot: a cluster is one launch; it moves on the next recovery
        op = new_op()
        with self.tier_lock(tier):
            try:
                spot, timings = backend.up(tier, "spot")
            except SpotctlError as exc:
                if no_spot(exc):
                    return None
                raise
            if on_demand.resource_id and on_demand.resource_id != spot.resource_id:
                backend.delete_machine(tier, on_demand.resource_id)
            self.journal(tier.name, "returned_to_spot", op, spot, timings,
                         detail=f"released on-demand {on_demand.resource_id}")
            return spot

    def down(self, tier: TierConfig, delete_storage: bool = False) -> TierStatus:
        op = new_op()
        with self.tier_lock(tier):
            try:
                status = self._backend(tier).down(tier, delete_storage=delete_storage)
            except SpotctlError as exc:
                self.journal(tier.name, "failed", op, detail=f"down: {exc.message}")
                raise
            self.journal(tier.name, "down", op, detail="storage deleted" if delete_storage
                         else "weights storage kept")
        return status

    def status(self, tier: TierConfig) -> TierStatus:
        """The backend's view, corrected by the journal (vanished = preempted)."""
        return derived_state(self.last_entry(tier.name), self._backend(tier).status(tier))
