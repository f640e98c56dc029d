"""The daemon service (``spotctl daemon``): every minute, poll billing, detect preemption,
recover (spot again for up to ``spot_retry_minutes``, then on-demand, and back to spot when
capacity returns), probe engines and recover dead ones, hibernate idle tiers (never one with
open requests), finish any operation a previous process left half done, and report machines
that bill for a tier in no journal state (orphans).

Each pass takes each tier's lock (skipping a tier another process is operating on), gathers
:class:`~spotctl.fleet.policy.Facts` from the journal, the gateways' activity, the backend and
an engine probe *under that lock*, asks the pure :func:`~spotctl.fleet.policy.decide`, and takes
at most one bounded step (one launch attempt, not a blocking retry loop) through
:class:`~spotctl.fleet.manager.FleetManager`. State lives in the ledger and the backends only,
so a restart at any moment resumes correctly. One daemon per ledger (:func:`daemon_lock`).

Exit statuses of :func:`run_daemon`: 0 stopped by SIGTERM/SIGINT; 1 the billing thread died
(:class:`DaemonDied`: the supervisor restarts the daemon); 2 another daemon holds the ledger
(:class:`DaemonAlreadyRunning`). ``--once``: 1 when a fleet step failed, 4 when a billing poll
failed.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from spotctl.clock import Clock, to_ms
from spotctl.config import Config, TierConfig
from spotctl.errors import SpotctlError, UsageError
from spotctl.fleet.base import TierState, TierStatus
from spotctl.fleet.journal import SERVING, STARTED_SERVING, JournalEntry
from spotctl.fleet.manager import FleetManager, new_op, tier_policy
from spotctl.fleet.policy import Action, Decision, Facts, decide
from spotctl.ledger.db import Ledger
from spotctl.ledger.journal import record_orphan

SERVING_OR_FAILED = SERVING | {"failed"}


class DaemonAlreadyRunning(UsageError):
    """Another ``spotctl daemon`` holds this ledger's daemon lock (exit 2)."""


class DaemonDied(SpotctlError):
    """A part of the daemon (the billing thread) died: the process exits 1 so that its
    supervisor (systemd ``Restart=always``) starts a fresh one."""


@contextmanager
def daemon_lock(ledger_path: Path) -> Iterator[None]:
    """One daemon per ledger: two would each take the same decision and launch twice."""
    path = Path(f"{ledger_path}.daemon.lock")
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise DaemonAlreadyRunning(
                f"another spotctl daemon already runs for {ledger_path} (pid {holder}); "
                "one daemon per ledger") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


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
        """One pass over one tier under its lock; returns what was done (for the log)."""
        with self.manager.try_tier_lock(tier) as got:
            if not got:
                return "another process is operating on the tier; next pass"
            what = self._step(tier)
            return what + self._report_orphans(tier)

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
                                 operation="recover")
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
        """One pass: billing, then every tier; billing again if the fleet work took time."""
        result = PassResult()
        self.poll_billing(result)
        before = self.clock.monotonic()
        self.check_tiers(result)
        if self.clock.monotonic() - before >= 30:
            self.poll_billing(result)
        return result

    def check_tiers(self, result: PassResult | None = None) -> PassResult:
        result = result if result is not None else PassResult()
        for tier in sorted(self.cfg.tiers, key=lambda t: t.priority):
            if not tier.fleet_managed:
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
        interval_ms = self.cfg.billing.poll_interval_s * 1000
        while not stop.is_set():
            self.check_tiers()
            now = to_ms(self.clock.now())
            remaining = (interval_ms - now % interval_ms) / 1000
            while remaining > 0 and not stop.is_set():
                step = min(remaining, 0.5)
                self.clock.sleep(step)
                remaining -= step
        billing.join(timeout=30)
        if died:
            exc = died[0]
            raise DaemonDied(f"the billing thread died ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); exiting "
                             "so that the supervisor restarts the daemon")

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
    raises :class:`DaemonAlreadyRunning` / :class:`DaemonDied`."""
    from spotctl.errors import ExitCode

    with daemon_lock(cfg.ledger_path):
        d = FleetDaemon(cfg, clock, log)
        if once:
            result = d.run_once()
            if result.fleet_errors:
                return int(ExitCode.ERROR)
            if result.billing_errors:
                return int(ExitCode.OBSERVABILITY)
            return int(ExitCode.OK)
        stop = stop or threading.Event()
        log(f"daemon: {len(cfg.tiers)} tier(s), {len(cfg.providers)} provider(s)")
        d.run(stop)
        log("daemon: stopped")
        return int(ExitCode.OK)
