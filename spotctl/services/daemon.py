"""The daemon service (``spotctl daemon``): every minute, poll billing, detect preemption,
recover (spot again for up to ``spot_retry_minutes``, then on-demand, and back to spot when
capacity returns), probe engines and recover dead ones, hibernate idle tiers (never one with
open requests), finish any operation a previous process left half done, and report machines
that bill for a tier in no journal state (orphans).

Several daemons may run on one ledger (on one host or several, SQLite or PostgreSQL): each tier
is looked after by one of them at a time, the holder of the tier's *daemon lease*
(:func:`~spotctl.ledger.coordination.daemon_lease_name`), renewed every ttl/3 by a thread of its
own (``[fleet] lease_ttl_s``); the others stand by, and one of them takes a tier over once its
daemon stops renewing (killed, hung, cut off from the ledger), so within one lease period.

Each pass, for each tier it leads, the daemon takes the tier's *operation lease*
(:mod:`spotctl.fleet.lease`; a tier the CLI or a gateway is operating on is skipped and retried
when that lease ends), gathers :class:`~spotctl.fleet.policy.Facts` from the journal, the
gateways' activity, the backend and an engine probe *under that lease*, asks the pure
:func:`~spotctl.fleet.policy.decide`, and takes at most one bounded step (one launch attempt, not
a blocking retry loop) through :class:`~spotctl.fleet.manager.FleetManager`. Every provider call
and journal write of the step is fenced by the lease: a daemon whose lease was taken (it stalled
past the lease period) stops acting on the tier with one log line
(:class:`~spotctl.errors.LeaseLost`) and re-reads it under a new lease on its next pass. State
lives in the ledger and the backends only, so a restart at any moment resumes correctly.

Exit statuses of :func:`run_daemon`: 0 stopped by SIGTERM/SIGINT (its leases are released, so a
standing-by daemon takes over at once); 1 the billing thread died (:class:`DaemonDied`: the
supervisor restarts the daemon); 2 bad configuration. ``--once``: 1 when a fleet step failed, 4
when a billing poll failed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from spotctl.clock import Clock, to_ms
from spotctl.config import Config, TierConfig
from spotctl.errors import LeaseLost, SpotctlError
from spotctl.fleet.base import TierState, TierStatus
from spotctl.fleet.journal import OP_RECOVER, SERVING, STARTED_SERVING, JournalEntry
from spotctl.fleet.manager import FleetManager, new_op, tier_policy
from spotctl.fleet.policy import Action, Decision, Facts, decide
from spotctl.ledger.coordination import (
    Lease,
    acquire_lease,
    current_lease,
    daemon_lease_name,
    release_lease,
    tier_lease_name,
)
from spotctl.ledger.db import Ledger
from spotctl.ledger.journal import record_orphan

SERVING_OR_FAILED = SERVING | {"failed"}


class DaemonDied(SpotctlError):
    """A part of the daemon (the billing thread) died: the process exits 1 so that its
    supervisor (systemd ``Restart=always``) starts a fresh one."""


@dataclass
class PassResult:
    """What one pass did: a line per tier, and which steps failed."""

    lines: list[str] = field(default_factory=list)
    fleet_errors: list[str] = field(default_factory=list)
    billing_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.fleet_errors and not self.billing_errors


class FleetDaemon:
    def __init__(self, cfg: Config, clock: Clock, log: Callable[[str], None] = print, *,
                 manager: FleetManager | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.log = log
        self.manager = manager or FleetManager(cfg, clock)
        self._probe_failures: dict[str, tuple[int, str]] = {}
        self.holder = self.manager.holder
        self.ttl_ms = self.manager.lease_ttl_ms
        self._leads: dict[str, Lease] = {}  # tier -> this daemon's daemon lease
        self._next_try: dict[str, int] = {}  # tier -> when the keeper looks at its lease again
        self._retry_at: dict[str, int] = {}  # tier -> when to retry a step a busy lease stopped
        self._guard = threading.Lock()
        self._kick = threading.Event()
        self._kicked: set[str] = set()

    # -- which daemon looks after a tier ----------------------------------------------------
    def _lease_now(self) -> int:
        return to_ms(self.manager.lease_clock.now())  # leases are real time (fleet/lease.py)

    def lead(self, tier: TierConfig) -> tuple[Lease | None, Lease | None]:
        """Take or keep this daemon's lead on the tier: ``(our lease, None)``, or ``(None, the
        other daemon's)`` while another daemon leads it. A change is logged once."""
        now = self._lease_now()
        name = daemon_lease_name(tier.name)
        with Ledger(self.manager.ledger_target) as led:
            lease = acquire_lease(led, name, self.holder, now, self.ttl_ms)
            other = None if lease is not None else current_lease(led, name, now)
        with self._guard:
            had = self._leads.get(tier.name)
            if lease is not None:
                self._leads[tier.name] = lease
            else:
                self._leads.pop(tier.name, None)
        if lease is not None and had is None:
            self.log(f"tier {tier.name}: this daemon ({self.holder}) acts on the tier now "
                     f"(lease token {lease.token})")
        elif lease is None and had is not None:
            self.log(f"tier {tier.name}: lease lost to {other.holder if other else 'nobody'}; "
                     "standing by")
        return lease, other

    def release_leads(self) -> None:
        """Give up every tier this daemon leads (a clean stop: a standing-by daemon takes them
        over at its next look instead of waiting out the lease)."""
        with self._guard:
            leads, self._leads = dict(self._leads), {}
        if not leads:
            return
        try:
            with Ledger(self.manager.ledger_target) as led:
                for lease in leads.values():
                    release_lease(led, lease, self._lease_now())
        except SpotctlError as exc:
            self.log(f"daemon: could not release its leases ({exc.message}); they expire "
                     "on their own")

    # -- facts ------------------------------------------------------------------------------
    def facts(self, tier: TierConfig) -> tuple[Facts, TierStatus, JournalEntry | None]:
        m, j = self.manager, self.manager.journal_
        last = j.last(tier.name)
        status = m.status(tier)
        op_started = None
        if last is not None and last.operation_id:
            first = j.operation(last.operation_id)
            op_started = first[0].ts_ms if first else last.ts_ms
        serving = j.last(tier.name, STARTED_SERVING)
        spot_check = j.last(tier.name, frozenset({"returning_to_spot"}))
        last_request = m.last_request_ms(tier)
        facts = Facts(now_ms=to_ms(self.clock.now()), state=status.state,
                      capacity=status.capacity, last_event=last.event if last else None,
                      op_started_ms=op_started,
                      serving_since_ms=serving.ts_ms if serving else None,
                      last_request_ms=last_request,
                      operation=last.operation if last else None,
                      open_requests=m.open_requests(tier),
                      last_spot_check_ms=spot_check.ts_ms if spot_check else None)
        return facts, status, last

    # -- one tier ---------------------------------------------------------------------------
    def check_tier(self, tier: TierConfig) -> str:
        """One pass over one tier, if this daemon leads it, under the tier's operation lease;
        returns what was done (for the log)."""
        lead, other = self.lead(tier)
        if lead is None:
            return (f"standing by: daemon {other.holder if other else '(unknown)'} acts on the "
                    "tier")
        with self.manager.try_tier_lock(tier) as got:
            if not got:
                busy = self._busy(tier)
                return (f"another process ({busy.holder if busy else 'unknown'}) is operating "
                        "on the tier; retried when it is done")
            with self._guard:
                self._retry_at.pop(tier.name, None)
            try:
                what = self._step(tier)
                return what + self._report_orphans(tier)
            except LeaseLost as exc:
                self._probe_failures.pop(tier.name, None)
                return (f"{exc.message}: stopped acting on the tier (it is read afresh under a "
                        "new lease next time)")

    def _busy(self, tier: TierConfig) -> Lease | None:
        """Who holds the tier's operation lease; its step is retried when that lease ends."""
        now = self._lease_now()
        with Ledger(self.manager.ledger_target) as led:
            busy = current_lease(led, tier_lease_name(tier.name), now)
        with self._guard:
            self._retry_at[tier.name] = min(busy.expires_ms if busy else now,
                                            now + self.ttl_ms // 3)
        return busy

    def _probed(self, tier: TierConfig, facts: Facts, status: TierStatus,
                last: JournalEntry | None) -> Facts:
        """Probe a serving tier's engine; failures in a row are counted in memory (a restarted
        daemon starts counting again: it recovers later, never wrongly)."""
        if status.state != TierState.READY or last is None or last.event not in SERVING_OR_FAILED:
            self._probe_failures.pop(tier.name, None)
            return facts
        probe = self.manager.probe(tier, status.endpoint)
        if probe.ok:
            self._probe_failures.pop(tier.name, None)
            return facts
        n, _ = self._probe_failures.get(tier.name, (0, ""))
        self._probe_failures[tier.name] = (n + 1, probe.detail)
        self.log(f"tier {tier.name}: engine probe failed ({n + 1} in a row): {probe.detail}")
        return replace(facts, probe_failures=n + 1)

    def _step(self, tier: TierConfig) -> str:
        policy = tier_policy(tier, self.cfg)
        facts, status, last = self.facts(tier)
        facts = self._probed(tier, facts, status, last)
        decision = decide(policy, facts)
        if decision.action == Action.MARK_PREEMPTED:
            op = new_op()
            self.manager.journal(tier.name, "preempted", op, status, detail=decision.reason,
                                 operation=OP_RECOVER)
            if not decision.was_serving:
                self.manager.journal(tier.name, "down", op,
                                     detail="vanished while hibernated; the next request "
                                            "relaunches it")
                return "preempted while hibernated; relaunch on the next request"
            facts, status, last = self.facts(tier)
            decision = decide(policy, facts)
        return self._execute(tier, decision, status, last)

    def _execute(self, tier: TierConfig, d: Decision, status: TierStatus,
                 last: JournalEntry | None) -> str:
        m = self.manager
        if d.action == Action.NOTHING:
            return d.reason
        if d.action == Action.FINISH and last is not None:
            st = m.finish(tier, last)
            if st is None:
                return f"resumed: {last.event}; no spot capacity yet"
            return f"resumed: {last.event} finished ({st.state.value})"
        if d.action == Action.LAUNCH and last is not None and d.capacity is not None:
            op = last.operation_id or new_op()
            st = m.launch_once(tier, d.capacity, op)
            if st is None:
                return f"{d.reason}: no spot capacity yet"
            return f"{d.reason}: serving on {st.capacity} ({st.resource_id})"
        if d.action == Action.HIBERNATE:
            st = m.idle_hibernate(tier, d.reason)
            return f"hibernated: {d.reason}" if st is not None else \
                f"{d.reason}, but a request came while draining: serving on"
        if d.action == Action.ABORT_DRAIN and last is not None:
            m.abort_drain(tier, last, d.reason)
            return f"drain aborted: {d.reason}"
        if d.action == Action.STOP_DRAINED and last is not None:
            st = m.stop_drained(tier, last, d.reason)
            return f"{d.reason}: {st.state.value}"
        if d.action == Action.RECOVER_ENGINE:
            _, detail = self._probe_failures.pop(tier.name, (0, ""))
            st = m.recover_engine(tier, status, f"{d.reason} (last: {detail})")
            if st is None:
                return f"{d.reason}: machine replaced; no spot capacity yet"
            return f"{d.reason}: recovered, serving on {st.capacity} ({st.resource_id})"
        if d.action == Action.CHECK_SPOT:
            st = m.return_to_spot(tier, status)
            return "returned to spot" if st is not None else f"{d.reason} not yet"
        return d.reason

    def _report_orphans(self, tier: TierConfig) -> str:
        """Machines of the tier the journal does not account for: logged, and recorded once
        each as a billing anomaly ``orphan`` (``spotctl billing status``); ``spotctl down TIER
        --orphans`` deletes them."""
        report = self.manager.orphans(tier)
        if not report.machines:
            return ""
        now = to_ms(self.clock.now())
        if report.provider is not None:
            with Ledger(self.manager.ledger_target) as led:
                for mach in report.machines:
                    record_orphan(led, report.provider, None, mach.resource_id, now,
                                  f"tier {tier.name}: {mach.name} ({mach.state.value}, "
                                  f"{mach.capacity or 'capacity unknown'}) bills in no journal "
                                  "state")
        ids = ", ".join(f"{mach.resource_id} ({mach.state.value})" for mach in report.machines)
        return (f"; ORPHAN machine(s) billing in no journal state: {ids} "
                f"(`spotctl down {tier.name} --orphans` deletes them)")

    # -- passes -----------------------------------------------------------------------------
    def poll_billing(self, result: PassResult | None = None) -> None:
        from spotctl.billing.poller import poll_once

        if self.cfg.providers:
            with Ledger(self.cfg.ledger_target) as led:
                for o in poll_once(self.cfg, led, self.clock):
                    if not o.ok:
                        line = f"billing {o.provider}: FAILED {o.kind}: {o.message}"
                        self.log(line)
                        if result is not None:
                            result.billing_errors.append(line)

    def run_once(self) -> PassResult:
        """One pass: billing, then every tier; billing again if the fleet work took time. The
        tiers' leads are given up at the end (``daemon --once`` from cron)."""
        result = PassResult()
        self.poll_billing(result)
        before = self.clock.monotonic()
        try:
            self.check_tiers(result)
        finally:
            self.release_leads()
        if self.clock.monotonic() - before >= 30:
            self.poll_billing(result)
        return result

    def check_tiers(self, result: PassResult | None = None,
                    only: set[str] | None = None) -> PassResult:
        result = result if result is not None else PassResult()
        for tier in sorted(self.cfg.tiers, key=lambda t: t.priority):
            if not tier.fleet_managed or (only is not None and tier.name not in only):
                continue
            try:
                what = self.check_tier(tier)
            except SpotctlError as exc:
                what = f"error: {exc.message}"
                result.fleet_errors.append(f"tier {tier.name}: {exc.message}")
            line = f"tier {tier.name}: {what}"
            result.lines.append(line)
            self.log(line)
        return result

    def run(self, stop: threading.Event) -> None:
        """Billing polls run in their own thread, so a long recovery never stops them. If that
        thread dies, so does the daemon (:class:`DaemonDied`, exit 1): a daemon that looks
        alive but polls nothing would keep the gateway's gate closed for good."""
        from spotctl.billing.poller import run_daemon

        died: list[BaseException] = []
        billing = threading.Thread(target=self._billing_loop, args=(stop, run_daemon, died),
                                   name="billing", daemon=True)
        billing.start()
        keeper = threading.Thread(target=self._keep_leases, args=(stop,), name="leases",
                                  daemon=True)
        keeper.start()
        interval_ms = self.cfg.billing.poll_interval_s * 1000
        only: set[str] | None = None
        try:
            while not stop.is_set():
                self.check_tiers(only=only)
                only = None
                now = to_ms(self.clock.now())
                remaining = (interval_ms - now % interval_ms) / 1000
                while remaining > 0 and not stop.is_set():
                    if self._kick.is_set():  # a tier taken over, or a busy one free again
                        with self._guard:
                            only, self._kicked = self._kicked, set()
                            self._kick.clear()
                        break
                    step = min(remaining, 0.5)
                    self.clock.sleep(step)
                    remaining -= step
        finally:
            stop.set()
            keeper.join(timeout=30)
            self.release_leads()
        billing.join(timeout=30)
        if died:
            exc = died[0]
            raise DaemonDied(f"the billing thread died ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); exiting "
                             "so that the supervisor restarts the daemon")

    def _keep_leases(self, stop: threading.Event) -> None:
        """Renew this daemon's leads every ttl/3; try a tier another daemon leads when its
        lease ends (so a dead daemon's tiers are taken over within one lease period) and kick
        the main loop to act on a tier taken over, or on one whose busy operation lease ended.
        Short real-time ticks; times are the clock's."""
        from spotctl.fleet.lease import TICK_S

        tiers = [t for t in self.cfg.tiers if t.fleet_managed]
        while not stop.wait(TICK_S):
            now = self._lease_now()
            for tier in tiers:
                with self._guard:
                    due = self._next_try.get(tier.name, 0)
                    retry = self._retry_at.get(tier.name)
                    leading = tier.name in self._leads
                if retry is not None and now >= retry and leading:
                    with self._guard:
                        self._retry_at.pop(tier.name, None)
                    self._kick_tier(tier.name)
                if now < due:
                    continue
                try:
                    lease, other = self.lead(tier)
                except Exception as exc:  # the ledger is unreachable: try again shortly
                    with self._guard:
                        self._next_try[tier.name] = now + min(1_000, self.ttl_ms // 3)
                    if leading:
                        self.log(f"tier {tier.name}: could not renew the lease ("
                                 f"{type(exc).__name__}); retrying")
                    continue
                if lease is not None:
                    nxt = now + self.ttl_ms // 3
                    if not leading:
                        self._kick_tier(tier.name)
                else:
                    nxt = min(other.expires_ms, now + self.ttl_ms // 3) if other else now
                with self._guard:
                    self._next_try[tier.name] = nxt

    def _kick_tier(self, name: str) -> None:
        with self._guard:
            self._kicked.add(name)
        self._kick.set()

    def _billing_loop(self, stop: threading.Event, run_daemon,
                      died: list[BaseException]) -> None:
        if not self.cfg.providers:
            return
        try:
            with Ledger(self.cfg.ledger_target) as led:
                run_daemon(self.cfg, led, self.clock, stop,
                           log=lambda line: self.log(f"billing {line}"))
        except BaseException as exc:
            died.append(exc)
            self.log(f"billing thread died: {type(exc).__name__}: {exc}")
            stop.set()


def run_daemon(cfg: Config, clock: Clock, log: Callable[[str], None], *, once: bool = False,
               stop: threading.Event | None = None) -> int:
    """``spotctl daemon [--once]``: returns the process exit status (see the module doc);
    raises :class:`DaemonDied`."""
    from spotctl.errors import ExitCode

    d = FleetDaemon(cfg, clock, log)
    if once:
        result = d.run_once()
        if result.fleet_errors:
            return int(ExitCode.ERROR)
        if result.billing_errors:
            return int(ExitCode.OBSERVABILITY)
        return int(ExitCode.OK)
    stop = stop or threading.Event()
    log(f"daemon {d.holder}: {len(cfg.tiers)} tier(s), {len(cfg.providers)} provider(s)")
    d.run(stop)
    log("daemon: stopped")
    return int(ExitCode.OK)
