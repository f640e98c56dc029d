"""``spotctl daemon``: every minute, poll billing, detect preemption, recover (spot again for up
to ``spot_retry_minutes``, then on-demand, and back to spot when capacity returns), hibernate
idle tiers, and finish any operation a previous daemon left half done. State lives in the
ledger and the backends only, so a restart at any moment resumes correctly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from spotctl.clock import Clock, to_ms
from spotctl.config import Config, TierConfig
from spotctl.errors import SpotctlError
from spotctl.fleet.base import TierState
from spotctl.fleet.manager import FleetManager
from spotctl.ledger.db import Ledger

UNFINISHED = {"launching", "waking", "hibernating", "fell_back"}


class FleetDaemon:
    def __init__(self, cfg: Config, clock: Clock, log: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.clock = clock
        self.log = log
        self.manager = FleetManager(cfg, clock)

    def last_activity_ms(self, tier: str) -> int | None:
        with Ledger(self.cfg.ledger_path) as led:
            req = led.conn.execute("SELECT last_request_ms FROM tier_activity WHERE tier=?",
                                   (tier,)).fetchone()
            ev = led.conn.execute(
                "SELECT MAX(ts_ms) FROM fleet_events WHERE tier=? AND event IN "
                "('ready', 'woke', 'returned_to_spot')", (tier,)).fetchone()
        values = [v for v in ((req or [None])[0], ev[0]) if v is not None]
        return max(values) if values else None

    def check_tier(self, tier: TierConfig) -> str:
        """One pass over one tier; returns what was done (for the log)."""
        m = self.manager
        last = m.last_event(tier.name)
        status = m.status(tier)
        if last and last[0] in UNFINISHED:
            return self._resume(tier, last[0], status)
        if last is None or last[0] in ("down", "failed"):
            return "idle (not launched)"
        if status.state == TierState.PREEMPTED:
            m.journal(tier.name, "preempted", last[4], status, detail="capacity reclaimed")
            new = m.up(tier)  # under the tier lock: no second launch if a wake got there first
            return f"preempted; relaunched on {new.capacity}"
        if status.state == TierState.READY:
            idle_since = self.last_activity_ms(tier.name)
            now = to_ms(self.clock.now())
            if idle_since is not None and now - idle_since >= tier.idle_minutes * 60_000:
                m.hibernate(tier)
                return f"hibernated after {(now - idle_since) // 60_000} idle minutes"
            if status.capacity == "on-demand" and tier.capacity == "spot-first":
                return self._try_return_to_spot(tier, status)
        return status.state.value

    def _try_return_to_spot(self, tier: TierConfig, on_demand) -> str:
        from spotctl.fleet.manager import backend_for

        backend = backend_for(tier, self.cfg, self.clock)
        with self.manager.tier_lock(tier):
            try:
                spot, timings = backend.up(tier, "spot")
            except SpotctlError:
                return "on-demand (spot still unavailable)"
            if hasattr(backend, "delete_vm") and on_demand.resource_id:
                backend.delete_vm(tier, on_demand.resource_id)
            self.manager.journal(tier.name, "returned_to_spot", None, spot, timings,
                                 detail=f"released {on_demand.resource_id}")
        return "returned to spot"

    def _resume(self, tier: TierConfig, event: str, status) -> str:
        """Finish what a killed daemon (or CLI) left half done, without a second launch."""
        m = self.manager
        if event in ("launching", "fell_back"):
            if status.state == TierState.READY:
                m.journal(tier.name, "ready", None, status, detail="resumed after a restart")
                return "resumed: launch had finished"
            if status.state in (TierState.ABSENT, TierState.PREEMPTED):
                m.up(tier)
                return "resumed: launched"
            m.wake(tier)
            return "resumed: waited for the launch"
        if event == "waking":
            if status.state == TierState.READY:
                m.journal(tier.name, "woke", None, status, detail="resumed after a restart")
                return "resumed: wake had finished"
            m.wake(tier)
            return "resumed: woke"
        if event == "hibernating":
            if status.state == TierState.HIBERNATED:
                m.journal(tier.name, "hibernated", None, status, detail="resumed")
                return "resumed: hibernation had finished"
            m.hibernate(tier)
            return "resumed: hibernated"
        return "nothing to resume"

    def poll_billing(self) -> None:
        from spotctl.providers.poller import poll_once

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
        for tier in self.cfg.tiers:
            if not tier.fleet_managed:
                continue
            try:
                what = self.check_tier(tier)
            except SpotctlError as exc:
                what = f"error: {exc.message}"
            self.log(f"tier {tier.name}: {what}")

    def run(self, stop: threading.Event) -> None:
        """Billing polls run in their own thread, so a long recovery never stops them."""
        from spotctl.providers.poller import run_daemon

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
