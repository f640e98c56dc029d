"""Fleet operations with their journal: up (spot first, bounded fallback), hibernate, wake,
down, and the recovery the daemon runs. Every change is written to ``fleet_events`` with its
phase durations; nothing is kept only in memory, so a restarted daemon resumes from the journal
and the backends.
"""

from __future__ import annotations

import fcntl
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spotctl.clock import Clock, to_ms
from spotctl.config import Config, TierConfig
from spotctl.errors import SpotctlError
from spotctl.fleet.base import PhaseTimings, Progress, TierState, TierStatus, no_progress
from spotctl.ledger.db import Ledger
from spotctl.ledger.records import FleetEvent
from spotctl.ledger.writes import record_fleet_event

_BACKENDS: dict[str, object] = {}
_LOCK = threading.Lock()


def backend_for(tier: TierConfig, cfg: Config, clock: Clock):
    """The tier's backend; SkyPilot is imported only when a tier uses it."""
    with _LOCK:
        key = f"{tier.backend}:{id(cfg)}"
        if key not in _BACKENDS:
            if tier.backend == "skypilot":
                from spotctl.fleet.skypilot import SkyPilotBackend

                _BACKENDS[key] = SkyPilotBackend(cfg, clock)
            else:
                from spotctl.fleet.hyperstack import HyperstackBackend

                _BACKENDS[key] = HyperstackBackend(cfg, clock, local=tier.backend == "localcloud")
        return _BACKENDS[key]


class FleetManager:
    def __init__(self, cfg: Config, clock: Clock, ledger_path: Path | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.ledger_path = ledger_path or cfg.ledger_path

    # -- journal --------------------------------------------------------------------------
    def journal(self, tier: str, event: str, op: str | None, status: TierStatus | None = None,
                timings: PhaseTimings | None = None, detail: str | None = None) -> None:
        with Ledger(self.ledger_path) as led:
            record_fleet_event(led, FleetEvent(
                ts_ms=to_ms(self.clock.now()), tier=tier, event=event, operation_id=op,
                capacity=status.capacity if status else None,
                cloud=status.cloud if status else None,
                region=status.region if status else None,
                resource_id=status.resource_id if status else None,
                endpoint=status.endpoint if status else None,
                phases=dict(timings.phases) if timings else {}, detail=detail))

    def last_event(self, tier: str) -> tuple | None:
        with Ledger(self.ledger_path) as led:
            return led.conn.execute(
                "SELECT event, ts_ms, capacity, resource_id, operation_id, detail FROM "
                "fleet_events WHERE tier=? ORDER BY id DESC LIMIT 1", (tier,)).fetchone()

    def _backend(self, tier: TierConfig):
        return backend_for(tier, self.cfg, self.clock)

    @contextmanager
    def tier_lock(self, tier: TierConfig) -> Iterator[None]:
        """One fleet operation per tier at a time, across processes (CLI, daemon, gateway):
        whoever comes second waits, then finds the work done instead of doing it twice."""
        path = Path(f"{self.ledger_path}.{tier.name}.fleet.lock")
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- operations -----------------------------------------------------------------------
    def up(self, tier: TierConfig, progress: Progress = no_progress,
           op: str | None = None) -> TierStatus:
        """Launch: spot first (for up to ``spot_retry_minutes``), then on-demand if allowed."""
        with self.tier_lock(tier):
            current = self._backend(tier).status(tier)
            if current.state == TierState.READY:
                return current  # someone else launched it while we waited
            return self._up(tier, progress, op)

    def _up(self, tier: TierConfig, progress: Progress, op: str | None) -> TierStatus:
        op = op or uuid.uuid4().hex[:12]
        backend = self._backend(tier)
        first = "on-demand" if tier.capacity == "on-demand" else "spot"
        self.journal(tier.name, "launching", op, detail=f"capacity {tier.capacity}")
        start = self.clock.monotonic()
        while True:
            try:
                status, timings = backend.up(tier, first, progress)
                break
            except SpotctlError as exc:
                waited = self.clock.monotonic() - start
                if first == "spot" and "spot" in str(exc).lower() and \
                        waited < tier.spot_retry_minutes * 60:
                    progress("provisioning", None, f"no spot capacity; retrying ({exc})")
                    self.clock.sleep(60)
                    continue
                if first == "spot" and tier.capacity == "spot-first":
                    self.journal(tier.name, "fell_back", op, detail=str(exc))
                    first = "on-demand"
                    continue
                self.journal(tier.name, "failed", op, detail=str(exc))
                raise
        timings.phases["total"] = self.clock.monotonic() - start
        self.journal(tier.name, "ready", op, status, timings)
        return status

    def hibernate(self, tier: TierConfig) -> TierStatus:
        with self.tier_lock(tier):
            current = self._backend(tier).status(tier)
            if current.state == TierState.HIBERNATED:
                return current
            op = uuid.uuid4().hex[:12]
            self.journal(tier.name, "hibernating", op)
            status, timings = self._backend(tier).hibernate(tier)
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

    def _wake(self, tier: TierConfig, progress: Progress) -> TierStatus:
        op = uuid.uuid4().hex[:12]
        self.journal(tier.name, "waking", op)
        t0 = self.clock.monotonic()
        try:
            status, timings = self._backend(tier).wake(tier, progress)
        except SpotctlError as exc:
            current = self._backend(tier).status(tier)
            if current.state in (TierState.ABSENT, TierState.PREEMPTED):
                # nothing to restore (preempted or downed while hibernated): relaunch
                return self._up(tier, progress, op)
            self.journal(tier.name, "failed", op, detail=str(exc))
            raise
        timings.phases["total"] = self.clock.monotonic() - t0
        self.journal(tier.name, "woke", op, status, timings)
        return status

    def down(self, tier: TierConfig, delete_storage: bool = False) -> TierStatus:
        op = uuid.uuid4().hex[:12]
        with self.tier_lock(tier):
            status = self._backend(tier).down(tier, delete_storage=delete_storage)
        self.journal(tier.name, "down", op, detail="storage deleted" if delete_storage
                     else "weights storage kept")
        return status

    def status(self, tier: TierConfig) -> TierStatus:
        status = self._backend(tier).status(tier)
        if status.state == TierState.ABSENT:
            last = self.last_event(tier.name)
            if last and last[0] in ("ready", "woke", "returned_to_spot", "hibernated"):
                # the journal says it should exist: it vanished under us (spot preemption)
                return TierStatus(tier.name, TierState.PREEMPTED, last[2],
                                  detail="gone from the provider")
        return status
