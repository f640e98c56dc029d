"""A preemption is journalled once: the daemon marks it, and a gateway wake that finds the tier
still gone continues the recovery instead of journalling a second preemption (the report listed
one spot loss as two, "gone from the provider" and "... (found by wake)")."""

from __future__ import annotations

from spotctl.config import parse_config
from spotctl.fleet.manager import FleetManager
from spotctl.ledger.db import Ledger
from spotctl.ledger.journal import fleet_events
from spotctl.services.daemon import FleetDaemon
from tests.fleet_helpers import live_vms


def test_one_spot_loss_is_one_preempted_entry(localcloud_engines, tmp_path):
    lc = localcloud_engines
    text = lc.config_toml(extra=(
        '[[tiers]]\nname = "big"\nmodel = "tiny"\nbackend = "localcloud"\nprovider = "lc"\n'
        'capacity = "spot-first"\nspot_retry_minutes = 3\nidle_minutes = 0\n'
        'flavor = "n3-A100x1"\n'))
    path = tmp_path / "spotctl.toml"
    path.write_text(text)
    cfg = parse_config(text, path)
    tier = cfg.tiers[0]
    manager = FleetManager(cfg, lc.clock)
    first = manager.up(tier)
    assert first.capacity == "spot"
    lc.control("POST", "/spot", available=False)
    lc.control("POST", f"/vms/{first.resource_id.split(':')[1]}/preempt")
    daemon = FleetDaemon(cfg, lc.clock, lambda line: None)
    daemon.check_tier(tier)  # marks the preemption; no spot capacity: recovery not done yet
    st = manager.wake(tier)  # a request arrives: the gateway wakes the tier (falls back)
    assert st.capacity == "on-demand" and [f"vm:{v.id}" for v in live_vms(lc)] == [st.resource_id]
    with Ledger(cfg.ledger_target) as led:
        events = [e.event for e in fleet_events(led, "big")]
    assert events.count("preempted") == 1, events
