"""Issue 11 §2: no machine bills for a tier unseen. A process killed while a spot VM is being
created, two actors deciding at once, and ``down`` must not leave a machine nobody knows about;
machines that bill in no journal state are reported (log, billing anomaly, ``status``) and
``spotctl down TIER --orphans`` deletes them. Also §11: a preemption found by a wake through
the gateway is journaled."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from spotctl.config import parse_config
from spotctl.fleet.base import TierState
from spotctl.fleet.localcloud import LocalCloudBackend
from spotctl.fleet.manager import FleetManager
from spotctl.ledger.db import Ledger
from spotctl.services.daemon import FleetDaemon
from spotctl.services.fleet import status_rows
from tests.fleet_helpers import CrashingBackend, Killed, lc_config, live_vms


def _cfg(lc, tmp_path, extra: str = ""):
    return lc_config(lc, tmp_path / "spotctl.toml", (
        '[[tiers]]\nname = "big"\nmodel = "tiny"\nbackend = "localcloud"\nprovider = "lc"\n'
        'capacity = "spot-first"\nspot_retry_minutes = 3\nidle_minutes = 0\n'
        'flavor = "n3-A100x1"\n' + extra))


def _events(cfg) -> list[str]:
    with Ledger(cfg.ledger_path) as led:
        return [e for (e,) in led.conn.execute("SELECT event FROM fleet_events ORDER BY id")]


def _on_demand(lc, cfg, tier) -> FleetManager:
    """The tier serving on on-demand (no spot within spot_retry_minutes), then spot is back."""
    manager = FleetManager(cfg, lc.clock)
    lc.control("POST", "/spot", available=False)
    st = manager.up(tier)
    assert st.capacity == "on-demand" and st.state == TierState.READY
    lc.control("POST", "/spot", available=True)
    return manager


def test_daemon_killed_while_the_spot_vm_is_created_leaves_no_second_vm(localcloud_engines,
                                                                          tmp_path):
    """kill -9 of the daemon while the return-to-spot VM is CREATING, then a fresh daemon: one
    VM serves in the end (spot), nothing else bills, and the journal accounts for it."""
    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path)
    tier = cfg.tiers[0]
    _on_demand(lc, cfg, tier)
    crashing = CrashingBackend(LocalCloudBackend(cfg, lc.clock), crash_on_create=True)
    dying = FleetDaemon(cfg, lc.clock, lambda line: None,
                        manager=FleetManager(cfg, lc.clock, {"localcloud": crashing}))
    with pytest.raises(Killed):
        for _ in range(10):  # the spot check comes within SPOT_CHECK_MINUTES
            lc.clock.advance(60)
            dying.check_tier(tier)
    assert len(live_vms(lc)) == 2  # the on-demand VM and the half-made spot VM
    # its lease period passes (leases are real time; a real kill -9 and the takeover within
    # one lease period: tests/test_leases_daemons.py)
    dying.release_leads()
    logs: list[str] = []
    fresh = FleetDaemon(cfg, lc.clock, logs.append)  # a new process: no memory
    for _ in range(12):
        lc.clock.advance(60)
        fresh.check_tier(tier)
    vms = live_vms(lc)
    assert len(vms) == 1, (vms, logs)
    st = fresh.manager.status(tier)
    assert st.state == TierState.READY and st.capacity == "spot", logs
    assert st.resource_id == f"vm:{vms[0].id}"
    assert not fresh.manager.orphans(tier).machines
    events = _events(cfg)
    assert events.count("returning_to_spot") >= 2 and events[-1] == "returned_to_spot", events


def test_a_stale_return_to_spot_decision_launches_nothing(localcloud_engines, tmp_path):
    """Two actors decided 'back to spot' from the same state; the second, once it gets the
    tier lock, re-reads the state and does nothing (before: a second spot VM)."""
    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path)
    tier = cfg.tiers[0]
    manager = _on_demand(lc, cfg, tier)
    seen = manager.status(tier)  # both decide from this
    other = FleetManager(cfg, lc.clock)
    assert other.return_to_spot(tier, seen) is not None
    assert manager.return_to_spot(tier, seen) is None
    vms = live_vms(lc)
    assert len(vms) == 1 and vms[0].spot


def test_down_deletes_every_machine_of_the_tier(localcloud_engines, tmp_path):
    """A second VM of the tier (left by a crashed process, found by name or label): down
    deletes both, and the journal says down only once nothing is left."""
    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path)
    tier = cfg.tiers[0]
    manager = FleetManager(cfg, lc.clock)
    manager.up(tier)
    lc.control("POST", "/vms", name="spotctl-big", flavor="n3-A100x1", spot=True)
    lc.control("POST", "/vms", name="other-name", flavor="n3-A100x1",
               labels=["spotctl-tier=big"])
    rows = {r["tier"]: r for r in status_rows(cfg, manager)}
    assert rows["big"]["machines"] == 3 and len(rows["big"]["orphans"]) == 2
    manager.down(tier)
    assert live_vms(lc) == []
    assert _events(cfg)[-2:] == ["draining", "down"]


def test_orphans_are_reported_recorded_and_deleted_on_request(localcloud_engines, tmp_path):
    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path)
    tier = cfg.tiers[0]
    manager = FleetManager(cfg, lc.clock)
    serving = manager.up(tier)
    orphan = lc.control("POST", "/vms", name="spotctl-big", flavor="n3-A100x1")
    lc.clock.advance(120)
    logs: list[str] = []
    daemon = FleetDaemon(cfg, lc.clock, logs.append)
    daemon.check_tiers()
    daemon.check_tiers()
    assert any("ORPHAN" in line and f"vm:{orphan['id']}" in line for line in logs), logs
    with Ledger(cfg.ledger_path) as led:
        rows = led.conn.execute("SELECT provider, resource_id, kind FROM billing_anomalies"
                                ).fetchall()
    assert rows == [("lc", f"vm:{orphan['id']}", "orphan")]  # once, not once per pass
    from spotctl.cli.main import app

    result = CliRunner().invoke(app, ["--config", str(cfg.source), "down", "big", "--orphans"])
    assert result.exit_code == 0, result.output
    assert f"vm:{orphan['id']}" in result.output
    vms = live_vms(lc)
    assert [f"vm:{vm.id}" for vm in vms] == [serving.resource_id]  # the tier still serves
    st = manager.status(tier)
    assert st.state == TierState.READY and st.resource_id == serving.resource_id
    assert _events(cfg)[-1] == "orphan_deleted"
    assert "serving" in daemon.check_tier(tier)  # a note, not a state change


def test_billing_status_shows_orphans_and_exits_4_while_one_is_unresolved(localcloud_engines,
                                                                          tmp_path):
    """`billing status` names the orphan machines the daemon recorded (table column, JSON field
    per provider) and exits 4 while one is unresolved, though billing itself is fresh; once
    `down --orphans` deleted it, the orphan reads resolved and the exit is 0."""
    import json

    from spotctl.cli.main import app

    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path)
    tier = cfg.tiers[0]
    FleetManager(cfg, lc.clock).up(tier)
    orphan = f"vm:{lc.control('POST', '/vms', name='spotctl-big', flavor='n3-A100x1')['id']}"
    lc.clock.advance(120)
    FleetDaemon(cfg, lc.clock, lambda line: None).check_tiers()
    runner = CliRunner()

    def cli(*args):
        return runner.invoke(app, ["--config", str(cfg.source), *args])

    assert cli("poll-billing").exit_code == 0
    result = cli("billing", "status", "--json")
    assert result.exit_code == 4, result.output
    (lc_row,) = json.loads(result.stdout)["providers"]
    assert lc_row["status"] == "fresh"  # the exit 4 is the orphan's
    assert [(o["resource_id"], o["resolved"]) for o in lc_row["orphans"]] == [(orphan, False)]
    table = cli("billing", "status")
    assert table.exit_code == 4 and f"1 unresolved: {orphan}" in table.output
    assert cli("down", "big", "--orphans").exit_code == 0
    result = cli("billing", "status", "--json")
    assert result.exit_code == 0, result.output
    (lc_row,) = json.loads(result.stdout)["providers"]
    assert [(o["resource_id"], o["resolved"]) for o in lc_row["orphans"]] == [(orphan, True)]


def test_a_preemption_found_by_a_wake_is_journaled(localcloud_engines, tmp_path):
    """The gateway wakes a tier whose spot VM vanished before the daemon noticed: `events`
    shows the preemption, then the relaunch."""
    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path)
    tier = cfg.tiers[0]
    manager = FleetManager(cfg, lc.clock)
    vm = manager.up(tier)
    lc.control("POST", f"/vms/{vm.resource_id.split(':')[1]}/preempt")
    st = manager.wake(tier)  # what the gateway's runtime calls
    assert st.state == TierState.READY
    events = _events(cfg)
    tail = events[events.index("ready") + 1:]
    assert tail[:2] == ["preempted", "launching"] and tail[-1] == "ready", events


def test_a_dead_billing_thread_takes_the_daemon_down(localcloud, tmp_path, monkeypatch):
    """'database is locked' killed the billing thread while the process lived on, polling
    nothing: now the daemon stops and exits non-zero, so its supervisor restarts it."""
    import sqlite3
    import threading

    import spotctl.billing.poller as poller
    from spotctl.services.daemon import DaemonDied

    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(poller, "run_daemon", locked)
    cfg = parse_config(localcloud.config_toml(), tmp_path / "spotctl.toml")
    daemon = FleetDaemon(cfg, localcloud.clock, lambda line: None)
    stop = threading.Event()
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            daemon.run(stop)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout=20)
    stop.set()
    t.join(timeout=20)
    assert outcome and isinstance(outcome[0], DaemonDied), outcome
    assert outcome[0].exit_code == 1 and "database is locked" in outcome[0].message


def test_daemon_once_exits_non_zero_when_a_step_failed(tmp_path):
    """A tier whose provider cannot be reached: exit 1 (the fleet step failed); billing that
    fails with no tier: exit 4. Both used to exit 0."""
    from spotctl.cli.main import app
    from spotctl.localcloud.engines import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"
    base = (f'[billing]\ntimeout_s = 1\n[[providers]]\nname = "lc"\nkind = "localcloud"\n'
            f'api_key_env = "LC_KEY"\nbase_url = "{dead}"\n')
    tiers = ('[[tiers]]\nname = "big"\nmodel = "tiny"\nbackend = "localcloud"\n'
             'provider = "lc"\n')
    runner = CliRunner()
    for text, code in ((base + tiers, 1), (base, 4)):
        path = tmp_path / f"c{code}.toml"
        path.write_text(text)
        result = runner.invoke(app, ["--config", str(path), "daemon", "--once"],
                               env={"LC_KEY": "k"})
        assert result.exit_code == code, (text, result.output, result.exception)
