"""Rows for ``spotctl status``: the backend's view joined with the ledger's (rate, idle, wake,
billing age) and every machine of the tier, orphans named. The $/h shown is the provider's own
current rate, never used for spend."""

from __future__ import annotations

from spotctl.clock import get_clock, to_ms
from spotctl.config import Config
from spotctl.errors import SpotctlError
from spotctl.fleet.manager import FleetManager
from spotctl.ledger.db import Ledger
from spotctl.ledger.journal import last_fleet_event, latest_vm_rate
from spotctl.ledger.usage import last_request_ms
from spotctl.money import usd_str


def tier_rows(cfg: Config, manager: FleetManager | None = None) -> list[dict]:
    clock = get_clock()
    now = to_ms(clock.now())
    manager = manager or FleetManager(cfg, clock)
    rows = []
    with Ledger(cfg.ledger_path) as led:
        for tier in cfg.tiers:
            machines = orphans = None
            if not tier.fleet_managed:
                st_state, st = "fixed", None
            else:
                try:
                    st = manager.status(tier)
                    st_state = st.state.value
                    report = manager.orphans(tier)
                    listed = manager.machines(tier)
                    machines = None if listed is None else len(listed)
                    orphans = [m.resource_id for m in report.machines]
                except SpotctlError as exc:
                    st, st_state = None, f"unknown ({exc.message})"
            rate = latest_vm_rate(led, tier.name)
            last_request = last_request_ms(led, tier.name)
            woke = last_fleet_event(led, tier.name, frozenset({"woke"}))
            rows.append({
                "tier": tier.name, "model": tier.public_model, "state": st_state,
                "capacity": st.capacity if st else None,
                "where": "/".join(x for x in (st.cloud, st.region) if x) if st else None,
                "endpoint": st.endpoint if st else tier.endpoint,
                "usd_per_hour": usd_str(rate[0], 4) if rate and rate[0] is not None else None,
                "idle_seconds": (now - last_request) // 1000 if last_request else None,
                "last_wake_ago_seconds": (now - woke.ts_ms) // 1000 if woke else None,
                "last_wake_duration_seconds": int(woke.phases.get("total", 0)) if woke else None,
                "billing_age_seconds": (now - rate[1]) // 1000 if rate else None,
                "machines": machines,
                "orphans": orphans,
            })
    return rows
