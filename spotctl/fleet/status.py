"""Rows for ``spotctl status``: the backend's view joined with the ledger's (rate, idle, wake,
billing age). The $/h shown is the provider's own current rate, never used for spend."""

from __future__ import annotations

import json

from spotctl.clock import get_clock, to_ms
from spotctl.config import Config
from spotctl.errors import SpotctlError
from spotctl.fleet.manager import FleetManager
from spotctl.ledger.db import Ledger
from spotctl.money import usd_str


def tier_rows(cfg: Config) -> list[dict]:
    clock = get_clock()
    now = to_ms(clock.now())
    manager = FleetManager(cfg, clock)
    rows = []
    with Ledger(cfg.ledger_path) as led:
        for tier in cfg.tiers:
            if not tier.fleet_managed:
                st_state, st = "fixed", None
            else:
                try:
                    st = manager.status(tier)
                    st_state = st.state.value
                except SpotctlError as exc:
                    st, st_state = None, f"unknown ({exc.message})"
            rate = led.conn.execute(
                "SELECT rate_micros_per_h, observed_ms FROM billing_samples WHERE tier=? AND "
                "resource_kind='vm' ORDER BY observed_ms DESC LIMIT 1", (tier.name,)).fetchone()
            act = led.conn.execute("SELECT last_request_ms FROM tier_activity WHERE tier=?",
                                   (tier.name,)).fetchone()
            wake = led.conn.execute(
                "SELECT phases_json FROM fleet_events WHERE tier=? AND event='woke' "
                "ORDER BY id DESC LIMIT 1", (tier.name,)).fetchone()
            wake_s = None
            if wake and wake[0]:
                wake_s = int(json.loads(wake[0]).get("total", 0))
            rows.append({
                "tier": tier.name, "model": tier.public_model, "state": st_state,
                "capacity": st.capacity if st else None,
                "where": "/".join(x for x in (st.cloud, st.region) if x) if st else None,
                "endpoint": st.endpoint if st else tier.endpoint,
                "usd_per_hour": usd_str(rate[0], 4) if rate and rate[0] is not None else None,
                "idle_seconds": (now - act[0]) // 1000 if act else None,
                "last_wake_seconds": wake_s,
                "billing_age_seconds": (now - rate[1]) // 1000 if rate else None,
            })
    return rows
