"""Issue 11 §3: a dead engine on a running VM is noticed and recovered. The daemon probes every
serving tier's engine; after ``[fleet] probe_failures`` failures in a row it journals the tier
``failed`` and recovers it: the backend restarts the engine where it can, else the machine is
replaced. The engines here are real processes; "dead" is a hung one (SIGSTOP: it keeps its port,
answers nothing), which no supervisor inside the VM would restart."""

from __future__ import annotations

import os
import signal

import httpx

from spotctl.fleet.base import TierState, TierStatus
from spotctl.fleet.localcloud import LocalCloudBackend
from spotctl.fleet.manager import FleetManager
from spotctl.ledger.db import Ledger
from spotctl.services.daemon import FleetDaemon
from tests.fleet_helpers import CrashingBackend, lc_config, live_vms, signal_engine


def _cfg(lc, tmp_path):
    return lc_config(lc, tmp_path / "spotctl.toml", (
        '[[tiers]]\nname = "big"\nmodel = "tiny"\nbackend = "localcloud"\nprovider = "lc"\n'
        'capacity = "spot-first"\nspot_retry_minutes = 3\nidle_minutes = 0\n'
        'flavor = "n3-A100x1"\n[fleet]\nprobe_failures = 3\nprobe_timeout_s = 0.5\n'))


def _events(cfg) -> list[tuple[str, str | None]]:
    with Ledger(cfg.ledger_path) as led:
        return list(led.conn.execute("SELECT event, operation FROM fleet_events ORDER BY id"))


def _serves(endpoint: str) -> bool:
    r = httpx.post(f"{endpoint}/v1/completions", json={"model": "tiny", "prompt": "hi",
                                                        "max_tokens": 2}, timeout=10)
    return r.status_code == 200


def test_a_hung_engine_is_replaced_after_n_failed_probes(localcloud_engines, tmp_path):
    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path)
    tier = cfg.tiers[0]
    manager = FleetManager(cfg, lc.clock)
    old = manager.up(tier)
    logs: list[str] = []
    daemon = FleetDaemon(cfg, lc.clock, logs.append)
    pid = signal_engine(old.endpoint, signal.SIGSTOP)
    try:
        for _ in range(2):
            lc.clock.advance(60)
            daemon.check_tier(tier)
        assert manager.status(tier).resource_id == old.resource_id  # 2 failures: not yet
        lc.clock.advance(60)
        what = daemon.check_tier(tier)
        assert "recovered" in what, logs
    finally:
        os.kill(pid, signal.SIGKILL)
    st = manager.status(tier)
    assert st.state == TierState.READY and st.resource_id != old.resource_id
    assert [f"vm:{vm.id}" for vm in live_vms(lc)] == [st.resource_id]  # the old VM is gone
    assert _serves(st.endpoint)
    events = _events(cfg)
    recovery = events[[e for e, _ in events].index("failed"):]
    assert [e for e, _ in recovery] == ["failed", "relaunching", "launching", "launched",
                                        "ready"], events
    assert {op for _, op in recovery} == {"recover"}
    assert "serving" in daemon.check_tier(tier)  # and probes pass again


def test_a_daemon_killed_mid_replacement_finishes_it(localcloud_engines, tmp_path):
    """The journal says `relaunching` (the old machine may still exist): the next daemon
    deletes it and launches, never leaving two."""
    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path)
    tier = cfg.tiers[0]
    manager = FleetManager(cfg, lc.clock)
    old = manager.up(tier)
    manager.journal(tier.name, "failed", "op-dead", old, detail="engine not serving",
                    operation="recover")
    manager.journal(tier.name, "relaunching", "op-dead", old)  # ... and then the process died
    assert manager.status(tier).state == TierState.PROVISIONING  # not offered to the gateway
    daemon = FleetDaemon(cfg, lc.clock, lambda line: None)
    lc.clock.advance(60)
    assert daemon.check_tier(tier).startswith("resumed: relaunching")
    st = manager.status(tier)
    assert st.state == TierState.READY and st.resource_id != old.resource_id
    assert [f"vm:{vm.id}" for vm in live_vms(lc)] == [st.resource_id]


class RestartingBackend(CrashingBackend):
    """A backend that can restart engines (RestartsEngine): here, the hung engine resumes."""

    def __init__(self, real) -> None:
        super().__init__(real)
        self.pids: list[int] = []
        self.restarts = 0

    def restart_engine(self, tier) -> TierStatus:
        self.restarts += 1
        for pid in self.pids:
            os.kill(pid, signal.SIGCONT)
        return self.real.status(tier)


def test_a_backend_that_can_restart_the_engine_keeps_the_machine(localcloud_engines, tmp_path):
    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path)
    tier = cfg.tiers[0]
    backend = RestartingBackend(LocalCloudBackend(cfg, lc.clock))
    manager = FleetManager(cfg, lc.clock, {"localcloud": backend})
    old = manager.up(tier)
    daemon = FleetDaemon(cfg, lc.clock, lambda line: None, manager=manager)
    backend.pids.append(signal_engine(old.endpoint, signal.SIGSTOP))
    for _ in range(3):
        lc.clock.advance(60)
        daemon.check_tier(tier)
    assert backend.restarts == 1
    st = manager.status(tier)
    assert st.resource_id == old.resource_id and st.state == TierState.READY
    assert _serves(st.endpoint)
    assert [e for e, _ in _events(cfg)][-3:] == ["failed", "restarting_engine", "ready"]
