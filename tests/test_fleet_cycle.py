"""The whole fleet cycle on the local cloud, with real engines, the real gateway and the real
daemon logic: up, traffic, idle hibernation, wake on request, a spot preemption, fallback to
on-demand within spot_retry_minutes, back to spot, down. The ledger's spend equals the local
cloud's invoice and the journal has every transition with its phase durations."""

from __future__ import annotations

import json
import time

import openai

from spotctl.clock import to_ms
from spotctl.config import parse_config
from spotctl.fleet.base import TierState
from spotctl.fleet.manager import FleetManager
from spotctl.fleet.policy import SPOT_CHECK_MINUTES
from spotctl.gateway.upstreams import RoutingRuntime
from spotctl.ledger.db import Ledger
from spotctl.services.cost import spend_between
from spotctl.services.daemon import FleetDaemon
from spotctl.services.fleet import FleetRuntime
from tests.fixtures_engines import gateway_key, start_gateway


def _cfg(lc, tmp_path):
    return parse_config(lc.config_toml(extra=(
        '[[tiers]]\nname = "big"\nmodel = "tiny"\nbackend = "localcloud"\nprovider = "lc"\n'
        'capacity = "spot-first"\nspot_retry_minutes = 3\nidle_minutes = 10\n'
        'flavor = "n3-A100x1"\n[gateway]\nwake_timeout_s = 60\n')), tmp_path / "spotctl.toml")


def _minutes(daemon, lc, n):
    for _ in range(n):
        lc.clock.advance(60)
        daemon.run_once()


def _weights_on(lc, status) -> int:
    """The tier's one weights volume, attached to the VM ``status`` names; its id."""
    [vol] = lc.handle.cloud.list_volumes()
    vm_id = int(status.resource_id.split(":")[1])
    assert vol.attached_to == vm_id and lc.handle.cloud.get_vm(vm_id).volume_ids == [vol.id]
    return vol.id


def test_full_cycle_on_the_local_cloud(localcloud_engines, tmp_path):
    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path)
    tier = cfg.tiers[0]
    logs: list[str] = []
    daemon = FleetDaemon(cfg, lc.clock, logs.append)
    manager = FleetManager(cfg, lc.clock)
    start = to_ms(lc.clock.now())
    daemon.run_once()

    st = manager.up(tier)
    assert st.state == TierState.READY and st.capacity == "spot" and st.endpoint
    weights = _weights_on(lc, st)

    key = gateway_key(cfg.ledger_path)
    gw = start_gateway(cfg, lc.clock, RoutingRuntime(FleetRuntime(cfg, lc.clock)))
    client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    _minutes(daemon, lc, 2)
    gw.app.refresh()  # the gate re-reads billing health (it also does so every 0.05 s)
    for i in range(5):
        client.chat.completions.create(model="tiny", max_tokens=8,
                                       messages=[{"role": "user", "content": f"hello {i}"}])
    time.sleep(0.5)  # clock-ok: usage rows reach the ledger (writer flushes every 0.25 s)

    # idle for idle_minutes: the daemon hibernates the tier
    _minutes(daemon, lc, 12)
    assert manager.status(tier).state == TierState.HIBERNATED
    # a request wakes it (the gateway calls the fleet runtime), and is served
    gw.app.refresh()
    r = client.chat.completions.create(model="tiny", max_tokens=4,
                                       messages=[{"role": "user", "content": "wake up"}])
    assert r.usage.completion_tokens == 4
    assert manager.status(tier).state == TierState.READY

    # spot preemption while spot capacity is gone: retry spot, then fall back to on-demand
    vm_id = int(manager.status(tier).resource_id.split(":")[1])
    lc.control("POST", "/spot", available=False)
    lc.control("POST", f"/vms/{vm_id}/preempt")
    _minutes(daemon, lc, 1)
    assert manager.status(tier).state == TierState.PREEMPTED  # retrying spot, one try a pass
    _minutes(daemon, lc, 1)
    assert manager.status(tier).state == TierState.PREEMPTED
    _minutes(daemon, lc, 2)  # spot_retry_minutes = 3 have passed: on-demand
    st = manager.status(tier)
    assert st.state == TierState.READY and st.capacity == "on-demand", logs[-4:]
    assert _weights_on(lc, st) == weights  # the fallback reuses the tier's volume
    # spot capacity returns: the next spot check moves the tier back and releases on-demand
    lc.control("POST", "/spot", available=True)
    gw.app.refresh()
    client.chat.completions.create(model="tiny", max_tokens=2,
                                   messages=[{"role": "user", "content": "keep busy"}])
    time.sleep(0.4)  # clock-ok
    _minutes(daemon, lc, SPOT_CHECK_MINUTES)
    st = manager.status(tier)
    assert st.capacity == "spot" and st.state == TierState.READY, logs[-6:]
    live = [vm for vm in lc.handle.cloud.list_vms() if vm.state != "DELETED"]
    assert len(live) == 1  # the on-demand VM was released
    # spot → on-demand → spot kept one volume, now attached to the serving spot VM
    assert _weights_on(lc, st) == weights and st.resource_id == f"vm:{live[0].id}"
    manager.down(tier)
    _minutes(daemon, lc, 11)  # final totals of deleted VMs are fetched
    gw.stop()

    with Ledger(cfg.ledger_path) as led:
        events = led.conn.execute("SELECT event, phases_json FROM fleet_events ORDER BY id"
                                  ).fetchall()
        names = [e for e, _ in events]
        for expected in ("launching", "launched", "ready", "hibernating", "hibernated", "waking", "woke",
                         "preempted", "fell_back", "returned_to_spot", "down"):
            assert expected in names, (expected, names, logs)
        ready = json.loads(dict(events)["ready"])
        assert {"provisioning", "engine_loading", "first_completion"} <= set(ready)
        woke = json.loads(dict(events)["woke"])
        assert {"restoring", "first_completion"} <= set(woke)
        spend = spend_between(led, start, to_ms(lc.clock.now()), cfg)
        inv = lc.control("GET", "/invoice")["resources"]
        mine = {r.data.key[2]: r.spend.micros for r in spend.series if r.spend.micros}
        assert mine == {k: v for k, v in inv.items() if v}
        assert spend.micros == lc.control("GET", "/invoice")["total_micros"] and spend.complete
        assert spend_between(led, start, to_ms(lc.clock.now()), cfg,
                             tiers={"big"}).micros == spend.micros
        tokens = led.conn.execute("SELECT count(*), sum(completion_tokens) FROM usage "
                                  "WHERE status = 'ok'").fetchone()
        assert tokens == (7, 5 * 8 + 4 + 2)


def test_daemon_restarted_mid_wake_finishes_it_without_a_second_launch(localcloud_engines,
                                                                        tmp_path):
    """A wake was under way when its process died (journal says `waking`, the VM is
    RESTORING): a fresh daemon finishes the wake instead of launching another VM."""
    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path)
    tier = cfg.tiers[0]
    manager = FleetManager(cfg, lc.clock)
    manager.up(tier)
    manager.hibernate(tier)
    vm_id = int(manager.status(tier).resource_id.split(":")[1])
    manager.journal(tier.name, "waking", "op-killed")  # ... and then the process died
    lc.handle.cloud.restore(vm_id)
    daemon = FleetDaemon(cfg, lc.clock, lambda line: None)  # a fresh daemon, no memory
    what = daemon.check_tier(tier)
    assert what.startswith("resumed")
    st = manager.status(tier)
    assert st.state == TierState.READY and st.resource_id == f"vm:{vm_id}"
    vms = [vm for vm in lc.handle.cloud.list_vms() if vm.name == "spotctl-big"]
    assert len(vms) == 1  # no second launch
    with Ledger(cfg.ledger_path) as led:
        last = led.conn.execute("SELECT event FROM fleet_events ORDER BY id DESC LIMIT 1"
                                ).fetchone()[0]
    assert last == "woke"
