"""``spotctl daemon``: every minute, poll billing, detect preemption, recover (spot again for up
to ``spot_retry_minutes``, then on-demand, and back to spot when capacity returns), hibernate
idle tiers, and finish any operation a previous process left half done.

Each pass gathers :class:`~spotctl.fleet.policy.Facts` from the journal, the gateway's activity
and the backend, asks :func:`~spotctl.fleet.policy.decide`, and takes at most one bounded step
per tier (one launch attempt, not a blocking retry loop). State lives in the ledger and the
backends only, so a restart at any moment resumes correctly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from spotctl.clock import Clock, to_ms
from spotctl.config import Config, TierConfig
from spotctl.errors import SpotctlError
from spotctl.fleet.base import TierStatus
from spotctl.fleet.journal import LAUNCHING, SERVING, JournalEntry
from spotctl.fleet.manager import FleetManager, new_op, tier_policy
from spotctl.fleet.policy import Action, Decision, Facts, decide
from spotctl.ledger.db import Ledger

UNFINISHED = LAUNCHING | {"waking", "hibernating"}  # kept for callers of the old name


class FleetDaemon:
    def __init__(self, cfg: Config, clock: Clock, log: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.clock = clock
        self.log = log
        self.manager = FleetManager(cfg, clock)

    # -- facts ------------------------------------------------------------------------------
    def facts(self, tier: TierConfig) -> tuple[Facts, TierStatus, JournalEntry | None]:
        m, j = self.manager, self.manager.journal_
        busy = m.busy(tier)
        last = j.last(tier.name)
        status = m.status(tier)
        op_started = None
        if last is not None and last.operation_id:
            first = j.operation(last.operation_id)
            op_started = first[0].ts_ms if first else last.ts_ms
        serving = j.last(tier.name, SERVING)
        facts = Facts(now_ms=to_ms(self.clock.now()), state=status.state,
                      capacity=status.capacity, last_event=last.event if last else None,
                      op_started_ms=op_started,
                      serving_since_ms=serving.ts_ms if serving else None,
                      last_request_ms=j.last_request_ms(tier.name), busy=busy)
        return facts, status, last

    # -- one tier ---------------------------------------------------------------------------
    def check_tier(self, tier: TierConfig) -> str:
        """One pass over one tier; returns what was done (for the log)."""
        facts, status, last = self.facts(tier)
        decision = decide(tier_policy(tier), facts)
        if decision.action == Action.MARK_PREEMPTED:
            op = new_op()
            self.manager.journal(tier.name, "preempted", op, status, detail=decision.reason)
            if not decision.was_serving:
                self.manager.journal(tier.name, "down", op,
                                     detail="vanished while hibernated; the next request "
                                            "relaunches it")
                return "preempted while hibernated; relaunch on the next request"
            facts, status, last = self.facts(tier)
            decision = decide(tier_policy(tier), facts)
        return self._execute(tier, decision, status, last)

    def _execute(self, tier: TierConfig, d: Decision, status: TierStatus,
                 last: JournalEntry | None) -> str:
        m = self.manager
        if d.action == Action.NOTHING:
            return d.reason
        if d.action == Action.FINISH and last is not None:
            st = m.finish(tier, last)
            return f"resumed: {last.event} finished ({st.state.value})"
        if d.action == Action.LAUNCH and last is not None and d.capacity is not None:
            op = last.operation_id or new_op()
            st = m.launch_once(tier, d.capacity, op)
            if st is None:
                return f"{d.reason}: no spot capacity yet"
            return f"{d.reason}: serving on {st.capacity} ({st.resource_id})"
        if d.action == Action.HIBERNATE:
            m.hibernate(tier)
            return f"hibernated: {d.reason}"
        if d.action == Action.CHECK_SPOT:
            st = m.return_to_spot(tier, status)
            return "returned to spot" if st is not None else f"{d.reason} not yet"
        return d.reason

    # -- passes -----------------------------------------------------------------------------
    def poll_billing(self) -> None:
        from spotctl.billing.poller import poll_once

        if self.cfg.providers:
            with Ledger(self.cfg.ledger_path) as led:
                for o in poll_once(self.cfg, led, self.clock):
                    if not o.ok:
                        self.log(f"billing {o.provider}: FAILED {o.kind}: {o.message}")

    def run_once(self) -> None:
        """One pass: billing, then every tier; billing again if the fleet work took time."""
        self.poll_billing()
        before = self.clock.monotonic()
        self.check_tiers()
        if self.clock.monotonic() - before >= 30:
            self.poll_billing()

    def check_tiers(self) -> None:
        for tier in sorted(self.cfg.tiers, key=lambda t: t.priority):
            if not tier.fleet_managed:
                continue
            try:
                what = self.check_tier(tier)
            except SpotctlError as exc:
                what = f"error: {exc.message}"
            self.log(f"tier {tier.name}: {what}")

    def run(self, stop: threading.Event) -> None:
        """Billing polls run in their own thread, so a long recovery never stops them."""
        from spotctl.billing.poller import run_daemon

        billing = threading.Thread(target=self._billing_loop, args=(stop, run_daemon),
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

    def _billing_loop(self, stop: threading.Event, run_daemon) -> None:
        if not self.cfg.providers:
            return
        with Ledger(self.cfg.ledger_path) as led:
            run_daemon(self.cfg, led, self.clock, stop,
                       log=lambda line: self.log(f"billing {line}"))
