"""Fleet operations with their journal: up (spot first, bounded fallback), hibernate, wake,
down, and the single steps the daemon takes (one launch attempt, a return to spot, finishing what
a dead process left half done, deleting orphans).

Two rules keep machines from billing unseen:

- **intent first**: every operation journals what it is about to do, under an operation id,
  *before* it asks the provider for anything (``launching``, ``returning_to_spot``,
  ``draining``, ``relaunching``); a process killed at any point leaves an unfinished operation
  that :meth:`FleetManager.finish` completes or undoes from the machines the provider lists;
- **one operation per tier**: the tier's lease in the ledger (:mod:`spotctl.fleet.lease`),
  across processes and hosts, re-entrant within a thread, held for the whole operation; state is
  re-read under it, so whoever comes second finds the work done. Every call that makes a
  provider launch, wake, hibernate or delete something is fenced by it (:class:`_Acting`), and so
  is every journal write: a process whose lease another has taken can do neither.

Every machine of a tier is considered (:class:`~spotctl.fleet.base.EnumeratesMachines`): ``down``
deletes all of them, and a machine the journal does not account for is an *orphan*.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spotctl.clock import Clock, SystemClock, to_ms
from spotctl.config import Config, TierConfig
from spotctl.engine.readiness import Probe, probe_engine
from spotctl.errors import FleetError, NoSpotCapacity, SpotctlError, UsageError, scrub, scrub_error
from spotctl.fleet.base import (
    CapacityKind,
    EnumeratesMachines,
    FleetBackend,
    Machine,
    PhaseTimings,
    Progress,
    RestartsEngine,
    TierState,
    TierStatus,
    no_progress,
)
from spotctl.fleet.journal import (
    OP_DOWN,
    OP_HIBERNATE,
    OP_IDLE,
    OP_ORPHANS,
    OP_RECOVER,
    OP_RETURN,
    OP_UP,
    OP_WAKE,
    UNFINISHED,
    Journal,
    JournalEntry,
    derived_state,
)
from spotctl.fleet.lease import TierLease, Waiting
from spotctl.fleet.policy import TierPolicy, launch_capacity
from spotctl.fleet.registry import Backends
from spotctl.fleet.tunnel import EngineReach
from spotctl.ledger.coordination import new_holder_id, tier_lease_name
from spotctl.ledger.db import Ledger

SPOT_RETRY_SLEEP_S = 60.0
DRAIN_POLL_S = 1.0  # clock seconds between two reads of the open requests while draining
DRAIN_POLL_REAL_S = 0.02  # ... and at least this much real time
OP_DOWN_STORAGE = "down_delete_storage"


def new_op() -> str:
    return uuid.uuid4().hex[:12]


def no_spot(exc: SpotctlError) -> bool:
    """A refusal for lack of spot capacity (worth retrying). Backends raise the type; the
    message is never searched (a tier named "spot-llama" once retried any error forever)."""
    return isinstance(exc, NoSpotCapacity)


def fleet_secrets(cfg: Config) -> tuple[str, ...]:
    """The values of every key the configuration names (providers' and engines'), read from the
    environment now: a provider's or SkyPilot's error text may echo any of them."""
    names = {p.api_key_env for p in cfg.providers} | {t.api_key_env for t in cfg.tiers}
    return tuple(sorted(v for n in names if n and (v := os.environ.get(n))))


def tier_policy(tier: TierConfig, cfg: Config | None = None) -> TierPolicy:
    fleet = cfg.fleet if cfg is not None else None
    if fleet is None:
        return TierPolicy(tier.capacity, tier.spot_retry_minutes, tier.idle_minutes)
    return TierPolicy(tier.capacity, tier.spot_retry_minutes, tier.idle_minutes,
                      fleet.probe_failures, int(fleet.drain_timeout_s))


def machine_status(tier: TierConfig, m: Machine) -> TierStatus:
    """A machine as a status (for the journal)."""
    return TierStatus(tier.name, m.state, m.capacity, None, None, m.endpoint, m.resource_id)


@dataclass(frozen=True)
class OrphanReport:
    tier: str
    provider: str | None
    machines: list[Machine]
    deleted: list[str]
    settled: bool  # False: an operation is under way; orphans cannot be told apart yet


class _Acting:
    """The provider calls that start or stop billing (launch, wake, hibernate, delete), each
    preceded by the tier lease's fence: a process whose lease was taken asks the provider for
    nothing. Reads (``status``, ``machines``) go to the backend itself.

    The boundary for a provider's error text too: an error a call raises has its message
    scrubbed (:func:`~spotctl.errors.scrub`, the configured keys included) before anyone
    journals, logs or shows it."""

    def __init__(self, backend: Any, lease: TierLease, secrets: tuple[str, ...] = ()) -> None:
        self._backend = backend
        self._lease = lease
        self._secrets = secrets

    @contextmanager
    def _scrubbed(self) -> Iterator[None]:
        try:
            yield
        except SpotctlError as exc:
            scrub_error(exc, self._secrets)
            raise

    def up(self, tier: TierConfig, capacity: CapacityKind, progress: Progress = no_progress
           ) -> tuple[TierStatus, PhaseTimings]:
        self._lease.fence()
        with self._scrubbed():
            return self._backend.up(tier, capacity, progress)

    def wake(self, tier: TierConfig, progress: Progress = no_progress
             ) -> tuple[TierStatus, PhaseTimings]:
        self._lease.fence()
        with self._scrubbed():
            return self._backend.wake(tier, progress)

    def hibernate(self, tier: TierConfig) -> tuple[TierStatus, PhaseTimings]:
        self._lease.fence()
        with self._scrubbed():
            return self._backend.hibernate(tier)

    def down(self, tier: TierConfig, *, delete_storage: bool = False) -> TierStatus:
        self._lease.fence()
        with self._scrubbed():
            return self._backend.down(tier, delete_storage=delete_storage)

    def delete_machine(self, tier: TierConfig, resource_id: str) -> None:
        self._lease.fence()
        with self._scrubbed():
            self._backend.delete_machine(tier, resource_id)

    def restart_engine(self, tier: TierConfig) -> TierStatus:
        self._lease.fence()
        with self._scrubbed():
            return self._backend.restart_engine(tier)


class FleetManager:
    """Fleet operations for one configuration. ``backends`` maps a backend kind to the backend
    object (or is a :class:`~spotctl.fleet.registry.Backends`); by default they are built from
    the configuration on first use. ``open_requests(tier) -> int`` tells how many requests the
    gateways have in flight to a tier (drains wait for them; default: the gateways' heartbeats
    in the ledger, :func:`spotctl.ledger.usage.open_requests`)."""

    def __init__(self, cfg: Config, clock: Clock,
                 backends: Backends | Mapping[str, FleetBackend] | None = None,
                 ledger_path: Path | None = None, *,
                 open_requests: Callable[[TierConfig], int] | None = None,
                 holder: str | None = None, lease_clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        if not isinstance(backends, Backends):
            backends = Backends(cfg, clock, backends)
        self.backends = backends
        self.ledger_path = Path(ledger_path or cfg.ledger_path)
        # what Ledger() opens: the given path, else [ledger] (a SQLite path or PostgreSQL url)
        self.ledger_target = ledger_path if ledger_path is not None else cfg.ledger_target
        self.journal_ = Journal(self.ledger_target, clock)
        self.open_requests = open_requests or self._ledger_open_requests
        self.reach = EngineReach()
        # this actor's name in the tiers' leases (host:pid:random); one per manager
        self.holder = holder or new_holder_id()
        self.lease_ttl_ms = int(cfg.fleet.lease_ttl_s * 1000)
        self.lease_clock = lease_clock or SystemClock()  # leases are real time (fleet/lease.py)
        self.on_wait: Waiting | None = None  # told who holds a tier's lease we wait for
        self._leases: dict[str, TierLease] = {}
        self._leases_guard = threading.Lock()

    # -- what the gateways are doing ---------------------------------------------------------
    def _ledger_open_requests(self, tier: TierConfig) -> int:
        """Requests in flight to the tier over every gateway (a gateway whose heartbeat went
        stale with requests in flight still counts them, up to the drain cap)."""
        from spotctl.ledger.usage import open_requests

        stale_ms = int(max(10.0, 5 * self.cfg.gateway.gate_cache_s) * 1000)
        with Ledger(self.ledger_target) as led:
            return open_requests(led, tier.name, to_ms(self.clock.now()), stale_ms,
                                 drain_cap_ms=int(self.cfg.fleet.drain_timeout_s * 1000))

    def last_request_ms(self, tier: TierConfig) -> int | None:
        """The later of the tier's last request start and completion, over every gateway."""
        from spotctl.ledger.usage import last_request_ms

        with Ledger(self.ledger_target) as led:
            return last_request_ms(led, tier.name)

    def _drain(self, tier: TierConfig, *, grace_only: bool = False) -> str | None:
        """Wait until the gateways have no request in flight to the tier, up to the drain cap
        (``[fleet] drain_timeout_s``). The gateways stop admitting to a ``draining`` tier within
        their refresh period, so an empty count is trusted only after that grace (with
        ``grace_only``, wait the grace and return). Returns why the wait ended early (the cap),
        ``None`` when drained."""
        cap = self.cfg.fleet.drain_timeout_s
        grace = min(cap, 2 * self.cfg.gateway.gate_cache_s + 1.0)
        if grace_only:
            cap = grace
        t0 = self.clock.monotonic()
        while True:
            waited = self.clock.monotonic() - t0
            n = self.open_requests(tier)
            if n <= 0 and waited >= grace:
                return None
            if waited >= cap:
                return f"drain cap of {cap:g} s reached with {n} request(s) in flight" if n \
                    else None
            self.clock.sleep(DRAIN_POLL_S)
            threading.Event().wait(DRAIN_POLL_REAL_S)  # the gateways run in real time
            self.keepalive(tier)

    # -- journal --------------------------------------------------------------------------
    def journal(self, tier: str, event: str, op: str | None, status: TierStatus | None = None,
                timings: PhaseTimings | None = None, detail: str | None = None, *,
                operation: str | None = None) -> JournalEntry:
        lease = self._leases.get(tier)
        if detail is not None:  # it may quote a provider's or an engine's error text
            detail = scrub(detail, fleet_secrets(self.cfg))
        return self.journal_.record(tier, event, op, status, timings.phases if timings else None,
                                    detail, operation=operation,
                                    fence=lease.journal_fence() if lease is not None else None)

    def last_entry(self, tier: str) -> JournalEntry | None:
        return self.journal_.last(tier)

    def backend(self, tier: TierConfig) -> FleetBackend:
        return self.backends.for_tier(tier)

    def _act(self, tier: TierConfig) -> _Acting:
        """The tier's backend for calls that start or stop billing, fenced by the lease."""
        return _Acting(self.backend(tier), self.lease(tier), fleet_secrets(self.cfg))

    # -- the tier's lease -------------------------------------------------------------------
    def lease(self, tier: TierConfig) -> TierLease:
        with self._leases_guard:
            lease = self._leases.get(tier.name)
            if lease is None:
                lease = self._leases[tier.name] = TierLease(
                    self.ledger_target, tier_lease_name(tier.name), self.holder,
                    self.lease_clock, self.lease_ttl_ms)
            return lease

    @contextmanager
    def tier_lock(self, tier: TierConfig) -> Iterator[None]:
        """One fleet operation per tier at a time, across processes and hosts (CLI, daemons,
        gateways): whoever comes second waits for the holder (``on_wait`` is told who it is),
        then finds the work done instead of doing it twice. Re-entrant within a thread."""
        lease = self.lease(tier)
        lease.acquire(blocking=True, on_wait=self.on_wait)
        try:
            yield
        finally:
            lease.release()

    @contextmanager
    def try_tier_lock(self, tier: TierConfig) -> Iterator[bool]:
        """The tier's lease if nobody holds it (yields True), else yields False at once."""
        lease = self.lease(tier)
        got = lease.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                lease.release()

    def keepalive(self, tier: TierConfig) -> None:
        """Renew the tier's lease if due, during a long wait on the clock (a drain, a spot
        retry): :class:`LeaseLost` when another process has taken it."""
        self.lease(tier).keepalive()

    # -- reading ----------------------------------------------------------------------------
    def status(self, tier: TierConfig) -> TierStatus:
        """The backend's view, corrected by the journal (vanished = preempted)."""
        return derived_state(self.last_entry(tier.name), self.backend(tier).status(tier))

    def machines(self, tier: TierConfig) -> list[Machine] | None:
        """Every machine of the tier; ``None`` when the backend cannot list them (SkyPilot)."""
        backend = self.backend(tier)
        if not isinstance(backend, EnumeratesMachines):
            return None
        return backend.machines(tier)

    def provider_name(self, tier: TierConfig) -> str | None:
        """The configured provider that bills the tier's machines."""
        if tier.provider:
            return tier.provider
        for p in self.cfg.providers:
            if p.kind == tier.backend:
                return p.name
        return None

    def orphans(self, tier: TierConfig) -> OrphanReport:
        """Machines of the tier the journal does not account for: every machine when the tier
        is down (or never launched), else every machine but the one it runs on. While an
        operation is under way nothing is called an orphan (its machine may not be journaled
        yet); take the tier lock for a stable answer."""
        machines = self.machines(tier)
        provider = self.provider_name(tier)
        if machines is None:
            return OrphanReport(tier.name, provider, [], [], True)
        last = self.last_entry(tier.name)
        if last is not None and last.event in UNFINISHED:
            return OrphanReport(tier.name, provider, [], [], False)
        current = self.journal_.current_resource(tier.name)
        return OrphanReport(tier.name, provider,
                            [m for m in machines if m.resource_id != current], [], True)

    # -- launching ------------------------------------------------------------------------
    def _launch(self, tier: TierConfig, capacity: CapacityKind, op: str,
                progress: Progress) -> TierStatus:
        """One launch attempt; journals ``launched`` once the machine exists and ``ready``
        (with every phase's duration) once a real completion succeeded."""
        backend = self.backend(tier)
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

        status, timings = self._act(tier).up(tier, capacity, watch)
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
            if current.state in (TierState.PROVISIONING, TierState.WAKING) and last is not None:
                return self.finish(tier, last, progress)  # a dead process's launch: wait for it
            if capacity == "on-demand" and tier.capacity == "spot-first" and not any(
                    e.event == "fell_back" for e in self.journal_.operation(op)):
                self.journal(tier.name, "fell_back", op,
                             detail=f"no spot within spot_retry_minutes={tier.spot_retry_minutes}")
            elif last is None or last.operation_id != op or last.event in ("ready", "failed"):
                self.journal(tier.name, "launching", op, detail=f"capacity {capacity}",
                             operation=OP_UP if last is None or last.operation_id != op
                             else None)
            try:
                return self._launch(tier, capacity, op, progress)
            except SpotctlError as exc:
                if capacity == "spot" and no_spot(exc):
                    return None
                self.journal(tier.name, "failed", op, detail=exc.message)
                raise

    def up(self, tier: TierConfig, progress: Progress = no_progress,
           op: str | None = None) -> TierStatus:
        """Launch and wait: spot first (for up to ``spot_retry_minutes``), then on-demand. A
        tier that exists is not launched again: a hibernated one is woken, a half-done launch is
        waited for, a failed machine is replaced."""
        with self.tier_lock(tier):
            current = self.status(tier)
            if current.state == TierState.READY:
                return current  # someone else launched it while we waited
            return self._bring_up(tier, current, progress, op, OP_UP)

    def _bring_up(self, tier: TierConfig, current: TierStatus, progress: Progress,
                  op: str | None, operation: str) -> TierStatus:
        last = self.last_entry(tier.name)
        if current.state in (TierState.HIBERNATED, TierState.HIBERNATING, TierState.WAKING):
            return self._wake(tier, progress, op)
        if current.state == TierState.PROVISIONING and last is not None and \
                last.event in UNFINISHED:
            return self.finish(tier, last, progress)
        if current.state == TierState.PREEMPTED and last is not None and \
                last.event in ("preempted", "fell_back"):
            # the daemon already journalled this loss: carry on with its recovery (one spot
            # loss is one `preempted` entry, whoever finds the tier gone first)
            return self._up(tier, progress, op or last.operation_id, operation)
        op = op or new_op()
        if current.state == TierState.PREEMPTED:
            self.journal(tier.name, "preempted", op, current,
                         detail=f"gone from the provider (found by {operation})",
                         operation=operation)
        elif current.state in (TierState.FAILED, TierState.PROVISIONING):
            self._replace(tier, op, current, operation, f"machine {current.state.value}")
        return self._up(tier, progress, op, operation)

    def _up(self, tier: TierConfig, progress: Progress, op: str | None,
            operation: str = OP_UP) -> TierStatus:
        op = op or new_op()
        self.journal(tier.name, "launching", op, detail=f"capacity {tier.capacity}",
                     operation=operation)
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
                    self.keepalive(tier)
                    continue
                self.journal(tier.name, "failed", op, detail=exc.message)
                raise

    def _replace(self, tier: TierConfig, op: str, current: TierStatus, operation: str,
                 why: str) -> None:
        """Delete the tier's machine(s) before launching a new one (intent journaled first)."""
        self.journal(tier.name, "relaunching", op, current, detail=f"replacing: {why}",
                     operation=operation)
        self._delete_tier_machines(tier, only=current.resource_id)

    def _delete_tier_machines(self, tier: TierConfig, only: str | None = None) -> list[str]:
        """Delete the tier's machines (``only`` that one, when given); returns what was
        deleted. Idempotent: a machine already gone is not asked for again. A backend that
        cannot list machines (SkyPilot: one cluster per tier) downs the tier instead."""
        backend = self.backend(tier)
        if not isinstance(backend, EnumeratesMachines):
            self._act(tier).down(tier)
            return []
        deleted = []
        for m in backend.machines(tier):
            if only is None or m.resource_id == only:
                self._act(tier).delete_machine(tier, m.resource_id)
                deleted.append(m.resource_id)
        return deleted

    # -- hibernate / wake / down ------------------------------------------------------------
    def hibernate(self, tier: TierConfig, op: str | None = None) -> TierStatus:
        with self.tier_lock(tier):
            current = self.status(tier)
            if current.state == TierState.HIBERNATED:
                last = self.last_entry(tier.name)
                if last is not None and last.event in ("hibernating", "draining"):
                    self.journal(tier.name, "hibernated", last.operation_id, current,
                                 detail="finished (found hibernated)")
                return current
            if current.state == TierState.ABSENT:
                raise UsageError(f"tier {tier.name!r} is not up: nothing to hibernate")
            op = op or new_op()
            if current.state == TierState.PREEMPTED:  # gone already: nothing bills, stay down
                self.journal(tier.name, "preempted", op, current, detail=current.detail,
                             operation=OP_HIBERNATE)
                self.journal(tier.name, "down", op, detail="nothing left to hibernate; the "
                                                           "next request relaunches it")
                return TierStatus(tier.name, TierState.ABSENT)
            self.journal(tier.name, "draining", op, current, operation=OP_HIBERNATE)
            return self._stop_hibernate(tier, op, current, self._drain(tier))

    def idle_hibernate(self, tier: TierConfig, why: str) -> TierStatus | None:
        """The daemon's idle hibernation: drain (journal ``draining``: the gateways stop
        admitting), and hibernate unless a request arrived meanwhile or one is still open: then
        ``drain_aborted`` and the tier serves on (``None``)."""
        with self.tier_lock(tier):
            current = self.status(tier)
            op = new_op()
            began = self.journal(tier.name, "draining", op, current, detail=why,
                                 operation=OP_IDLE)
            self._drain(tier, grace_only=True)  # the gateways see `draining`, then we look
            n = self.open_requests(tier)
            last = self.last_request_ms(tier)
            if n > 0 or (last is not None and last > began.ts_ms):
                self.journal(tier.name, "drain_aborted", op, current,
                             detail=f"{n} request(s) in flight" if n else
                             "a request arrived while draining")
                return None
            return self._stop_hibernate(tier, op, current, why)

    def abort_drain(self, tier: TierConfig, last: JournalEntry, why: str) -> TierStatus:
        with self.tier_lock(tier):
            current = self.status(tier)
            self.journal(tier.name, "drain_aborted", last.operation_id, current, detail=why)
            return current

    def _stop_hibernate(self, tier: TierConfig, op: str, current: TierStatus | None,
                        detail: str | None = None) -> TierStatus:
        self.journal(tier.name, "hibernating", op, current, detail=detail)
        try:
            status, timings = self._act(tier).hibernate(tier)
        except SpotctlError as exc:
            self.journal(tier.name, "failed", op, detail=exc.message)
            raise
        self.journal(tier.name, "hibernated", op, status, timings)
        return status

    def wake(self, tier: TierConfig, progress: Progress = no_progress) -> TierStatus:
        """Serve again: restore a hibernated tier, relaunch one that is gone (journaling the
        preemption, whoever finds it: the daemon or a request through the gateway)."""
        with self.tier_lock(tier):
            current = self.status(tier)
            if current.state == TierState.READY:
                return current
            return self._bring_up(tier, current, progress, None, OP_WAKE)

    def _wake(self, tier: TierConfig, progress: Progress, op: str | None = None) -> TierStatus:
        op = op or new_op()
        self.journal(tier.name, "waking", op, operation=OP_WAKE)
        t0 = self.clock.monotonic()
        try:
            status, timings = self._act(tier).wake(tier, progress)
        except SpotctlError as exc:
            current = self.status(tier)
            if current.state in (TierState.ABSENT, TierState.PREEMPTED):
                # nothing to restore (preempted or downed while hibernated): relaunch
                return self._up(tier, progress, op, OP_WAKE)
            self.journal(tier.name, "failed", op, detail=exc.message)
            raise
        timings.phases["total"] = self.clock.monotonic() - t0
        self.journal(tier.name, "woke", op, status, timings)
        return status

    def down(self, tier: TierConfig, delete_storage: bool = False) -> TierStatus:
        """Delete every machine of the tier (and its storage if asked). The intent is journaled
        first, so a process killed half-way leaves a down the daemon finishes."""
        op = new_op()
        with self.tier_lock(tier):
            current = self.status(tier)
            self.journal(tier.name, "draining", op, current,
                         operation=OP_DOWN_STORAGE if delete_storage else OP_DOWN)
            return self._stop_down(tier, op, delete_storage, self._drain(tier))

    def _stop_down(self, tier: TierConfig, op: str, delete_storage: bool,
                   detail: str | None = None) -> TierStatus:
        backend = self.backend(tier)
        deleted = self._delete_tier_machines(tier) if isinstance(backend, EnumeratesMachines) \
            else []
        status = self._act(tier).down(tier, delete_storage=delete_storage)
        left = self.machines(tier)
        if left:
            raise FleetError(f"tier {tier.name!r}: {len(left)} machine(s) still listed after "
                             "deleting them; `spotctl down` again finishes it")
        what = ("storage deleted" if delete_storage else "weights storage kept") + (
            f"; deleted {', '.join(deleted)}" if deleted else "")
        self.journal(tier.name, "down", op, detail=f"{detail}; {what}" if detail else what)
        return status

    def delete_orphans(self, tier: TierConfig) -> OrphanReport:
        """``spotctl down TIER --orphans``: delete the machines the journal does not account
        for; the tier itself is left as it is."""
        op = new_op()
        with self.tier_lock(tier):
            report = self.orphans(tier)
            deleted = []
            for m in report.machines:
                self._act(tier).delete_machine(tier, m.resource_id)
                self.journal(tier.name, "orphan_deleted", op, machine_status(tier, m),
                             detail=f"{m.name} ({m.state.value}) billed in no journal state",
                             operation=OP_ORPHANS)
                deleted.append(m.resource_id)
        return OrphanReport(report.tier, report.provider, report.machines, deleted,
                            report.settled)

    # -- finishing what a dead process left -------------------------------------------------
    def finish(self, tier: TierConfig, last: JournalEntry,
               progress: Progress = no_progress) -> TierStatus | None:
        """Complete the operation ``last`` started (a dead process's), never a second launch:
        wait for the machine that exists and journal the end under the same operation id; a
        return to spot or a replacement is completed or undone from the machines listed."""
        with self.tier_lock(tier):
            op = last.operation_id or new_op()
            if last.event == "returning_to_spot":
                return self._finish_return(tier, last)
            if last.event == "draining":
                return self.stop_drained(tier, last, "finished after a restart")
            if last.event == "relaunching":
                return self._relaunch_once(tier, op, last.resource_id, progress)
            if last.event == "restarting_engine":
                current = self.backend(tier).status(tier)
                if current.state == TierState.READY and self._engine_serves(tier, current):
                    self.journal(tier.name, "ready", op, current,
                                 detail="engine restarted (finished after a restart)")
                    return current
                self.journal(tier.name, "relaunching", op, current,
                             detail="the engine restart did not finish: replacing the machine")
                return self._relaunch_once(tier, op, current.resource_id or last.resource_id,
                                           progress)
            current = self.backend(tier).status(tier)
            if last.event == "hibernating":
                if current.state != TierState.HIBERNATED:
                    status, timings = self._act(tier).hibernate(tier)
                    self.journal(tier.name, "hibernated", op, status, timings,
                                 detail="finished after a restart")
                    return status
                self.journal(tier.name, "hibernated", op, current,
                             detail="finished after a restart")
                return current
            end = "woke" if last.event == "waking" else "ready"
            if current.state == TierState.READY:
                self.journal(tier.name, end, op, current, detail="finished after a restart")
                return current
            t0 = self.clock.monotonic()
            status, timings = self._act(tier).wake(tier, progress)
            timings.phases["total"] = self.clock.monotonic() - t0
            self.journal(tier.name, end, op, status, timings, detail="finished after a restart")
            return status

    def stop_drained(self, tier: TierConfig, last: JournalEntry, why: str) -> TierStatus:
        """End a drain: hibernate or down, as its operation says."""
        with self.tier_lock(tier):
            op = last.operation_id or new_op()
            if last.operation in (OP_DOWN, OP_DOWN_STORAGE):
                return self._stop_down(tier, op, last.operation == OP_DOWN_STORAGE, why)
            current = self.backend(tier).status(tier)
            if current.state == TierState.HIBERNATED:
                self.journal(tier.name, "hibernated", op, current, detail=why)
                return current
            return self._stop_hibernate(tier, op, current, why)

    # -- a dead engine ------------------------------------------------------------------------
    def probe(self, tier: TierConfig, endpoint: str | None) -> Probe:
        """One engine probe (``GET /v1/models``, ``[fleet] probe_timeout_s``), through the
        tier's SSH tunnel when it has one."""
        if not endpoint:
            return Probe(False, "no endpoint")
        try:
            url = self.reach.endpoint(tier, endpoint)
        except SpotctlError as exc:
            return Probe(False, f"tunnel: {exc.message}")
        key = os.environ.get(tier.api_key_env) if tier.api_key_env else None
        return probe_engine(url or endpoint, key, tier.public_model,
                            timeout_s=self.cfg.fleet.probe_timeout_s)

    def _engine_serves(self, tier: TierConfig, status: TierStatus) -> bool:
        return self.probe(tier, status.endpoint).ok

    def recover_engine(self, tier: TierConfig, status: TierStatus, why: str,
                       progress: Progress = no_progress) -> TierStatus | None:
        """The engine on a running machine stopped answering: journal the tier ``failed``,
        then restart the engine where the backend can (:class:`RestartsEngine`), else replace
        the machine (one launch attempt; ``None`` when spot is not there yet, the daemon's next
        pass goes on). Every step is journaled under one operation."""
        with self.tier_lock(tier):
            op = new_op()
            self.journal(tier.name, "failed", op, status, detail=f"engine not serving: {why}",
                         operation=OP_RECOVER)
            backend = self.backend(tier)
            if isinstance(backend, RestartsEngine):
                self.journal(tier.name, "restarting_engine", op, status)
                t0 = self.clock.monotonic()
                try:
                    st = self._act(tier).restart_engine(tier)
                except SpotctlError as exc:
                    self.journal(tier.name, "relaunching", op, status,
                                 detail=f"engine restart failed ({exc.message}): replacing "
                                        "the machine")
                else:
                    self.journal(tier.name, "ready", op, st,
                                 PhaseTimings({"total": self.clock.monotonic() - t0}),
                                 detail="engine restarted")
                    return st
            else:
                self.journal(tier.name, "relaunching", op, status,
                             detail="replacing the machine (the backend cannot restart engines)")
            return self._relaunch_once(tier, op, status.resource_id, progress)

    def _relaunch_once(self, tier: TierConfig, op: str, resource_id: str | None,
                       progress: Progress) -> TierStatus | None:
        """Delete the machine being replaced (it may still exist), then one launch attempt;
        ``None``: no spot yet (the journal says ``launching``, the next pass retries)."""
        self._delete_tier_machines(tier, only=resource_id)
        first = self.journal_.operation(op)
        started = first[0].ts_ms if first else to_ms(self.clock.now())
        capacity = launch_capacity(tier_policy(tier), started, to_ms(self.clock.now()))
        self.journal(tier.name, "launching", op, detail=f"capacity {capacity}")
        return self.launch_once(tier, capacity, op, progress)

    # -- return to spot -----------------------------------------------------------------------
    def return_to_spot(self, tier: TierConfig, on_demand: TierStatus | None = None,
                       progress: Progress = no_progress) -> TierStatus | None:
        """Launch the tier on spot beside its on-demand machine; once the spot one serves,
        release the on-demand one. ``None`` when the tier stays on on-demand (no spot capacity,
        or nothing to do any more: the state is re-read under the lock)."""
        backend = self.backend(tier)
        if not isinstance(backend, EnumeratesMachines):
            return None  # SkyPilot: a cluster is one launch; it moves on the next recovery
        with self.tier_lock(tier):
            last = self.last_entry(tier.name)
            current = self.status(tier)
            if last is None or last.event in UNFINISHED or last.event in ("down", "failed") \
                    or current.state != TierState.READY or current.capacity != "on-demand" \
                    or (on_demand is not None and on_demand.resource_id != current.resource_id):
                return None  # someone else moved the tier meanwhile
            op = new_op()
            self.journal(tier.name, "returning_to_spot", op, current,
                         detail=f"launching spot beside on-demand {current.resource_id}",
                         operation=OP_RETURN)
            try:
                spot, timings = self._act(tier).up(tier, "spot", progress)
            except SpotctlError as exc:
                gone = self._delete_spot_attempts(tier, backend, current.resource_id)
                why = "no spot capacity" if no_spot(exc) else f"spot launch failed: {exc.message}"
                self.journal(tier.name, "stayed_on_demand", op, current,
                             detail=why + (f"; deleted {', '.join(gone)}" if gone else ""))
                return None
            # requests in flight on the on-demand machine finish before it goes (new ones go
            # to spot once the gateways refresh), up to the drain cap
            cut = self._drain(tier)
            return self._release_on_demand(tier, backend, op, spot, timings,
                                           current.resource_id, cut)

    def _release_on_demand(self, tier: TierConfig, backend: EnumeratesMachines, op: str,
                           spot: TierStatus, timings: PhaseTimings | None,
                           on_demand_id: str | None, note: str | None = None) -> TierStatus:
        for m in backend.machines(tier):
            if m.resource_id == on_demand_id and m.resource_id != spot.resource_id:
                self._act(tier).delete_machine(tier, m.resource_id)
        self.journal(tier.name, "returned_to_spot", op, spot, timings,
                     detail=f"released on-demand {on_demand_id}" + (f"; {note}" if note else ""))
        return spot

    def _delete_spot_attempts(self, tier: TierConfig, backend: EnumeratesMachines,
                              keep: str | None) -> list[str]:
        gone = []
        for m in backend.machines(tier):
            if m.resource_id != keep:
                self._act(tier).delete_machine(tier, m.resource_id)
                gone.append(m.resource_id)
        return gone

    def _finish_return(self, tier: TierConfig, last: JournalEntry) -> TierStatus:
        """A return to spot whose process died: keep a spot machine that already serves (and
        release the on-demand one), else delete the half-made spot machine and stay on demand
        (the next spot check tries again)."""
        backend = self.backend(tier)
        op = last.operation_id or new_op()
        on_demand = last.resource_id
        assert isinstance(backend, EnumeratesMachines)
        others = [m for m in backend.machines(tier) if m.resource_id != on_demand]
        serving = [m for m in others if m.state == TierState.READY and
                   self.probe(tier, m.endpoint).ok]
        if serving:
            spot = max(serving, key=lambda m: m.created_ms or 0)
            for m in others:
                if m.resource_id != spot.resource_id:
                    self._act(tier).delete_machine(tier, m.resource_id)
            return self._release_on_demand(tier, backend, op, machine_status(tier, spot), None,
                                           on_demand)
        for m in others:
            self._act(tier).delete_machine(tier, m.resource_id)
        current = self.backend(tier).status(tier)
        gone = ", ".join(m.resource_id for m in others)
        self.journal(tier.name, "stayed_on_demand", op, current,
                     detail="return to spot interrupted" + (f"; deleted {gone}" if gone else ""))
        return current
