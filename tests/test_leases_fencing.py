"""One actor per tier across hosts (issue 14 §2, daemons): the tier's lease with fencing.

Two "hosts" here are two fleet managers on two config files in two directories, sharing one
ledger (SQLite file or PostgreSQL database): before the lease, each host took a file lock beside
its own config, so on PostgreSQL both acted at once. A process whose lease another has taken
("simulated by expiring it": the lease row is expired and an intruder takes it, exactly what a
second daemon does once a stalled holder stops renewing) must neither launch, hibernate nor
delete, nor write the journal. Real processes (``kill -9``, takeover) are in
``tests/test_leases_daemons.py``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from spotctl.clock import SystemClock, to_ms
from spotctl.errors import LeaseLost
from spotctl.fleet.base import TierState
from spotctl.fleet.journal import Journal
from spotctl.fleet.manager import FleetManager
from spotctl.ledger.coordination import acquire_lease, current_lease
from spotctl.ledger.db import Ledger
from spotctl.services.daemon import FleetDaemon
from spotctl.services.fleet import FleetRuntime
from tests.fixtures_localcloud import _serve
from tests.fleet_helpers import lc_config, live_vms

TIER = (
    '[[tiers]]\nname = "big"\nmodel = "tiny"\nbackend = "localcloud"\nprovider = "lc"\n'
    'capacity = "spot-first"\nspot_retry_minutes = 3\nidle_minutes = 5\n'
    'flavor = "n3-A100x1"\n[gateway]\ngate_cache_s = 0.1\n[fleet]\ndrain_timeout_s = 3600\n')
INTRUDER = "intruder-host:4242:abcdef"


@pytest.fixture
def lc(monkeypatch, tmp_path, ledger_backend, request):
    """The local cloud with engines, and the parametrised backend's ledger."""
    from spotctl.localcloud.vm import VmRunner

    world = _serve(monkeypatch, VmRunner(tmp_path / "localcloud"))
    world.ledger_section = request.getfixturevalue("ledger_toml")
    yield world
    world.handle.stop()
    from spotctl.clock import set_clock

    set_clock(None)


def host_config(lc, tmp_path: Path, host: str):
    """The configuration of one host: its own directory and file, the shared ledger."""
    d = tmp_path / host
    d.mkdir(exist_ok=True)
    return lc_config(lc, d / "spotctl.toml", TIER)


def events(cfg) -> list[str]:
    with Ledger(cfg.ledger_target) as led:
        return [e for (e,) in led.conn.execute("SELECT event FROM fleet_events ORDER BY id")]


def real_ms() -> int:
    return to_ms(SystemClock().now())  # leases are real time (spotctl/fleet/lease.py)


def expire_and_take(cfg, tier: str = "big") -> int:
    """What a second daemon does to a holder that stopped renewing: the lease has expired, and
    the intruder takes it (a new fencing token). Returns the intruder's token."""
    now = real_ms()
    with Ledger(cfg.ledger_target) as led:
        with led.transaction() as conn:
            conn.execute("UPDATE leases SET expires_ms = ? WHERE name = ?",
                         (now - 1, f"fleet:{tier}"))
        lease = acquire_lease(led, f"fleet:{tier}", INTRUDER, now, 3_600_000)
    assert lease is not None
    return lease.token


class StealingJournal(Journal):
    """The journal of a process that stalls right after writing ``after`` (a GC pause, a VM
    suspended, a network partition): meanwhile its lease expires and another process takes
    it."""

    def __init__(self, target, clock, cfg, after: str) -> None:
        super().__init__(target, clock)
        self.cfg, self.after, self.stolen = cfg, after, False

    def record(self, tier, event, op, *args, **kwargs):
        entry = super().record(tier, event, op, *args, **kwargs)
        if event == self.after and not self.stolen:
            self.stolen = True
            expire_and_take(self.cfg)
        return entry


def stalling_manager(cfg, clock, after: str) -> FleetManager:
    manager = FleetManager(cfg, clock)
    manager.journal_ = StealingJournal(manager.ledger_target, clock, cfg, after)
    return manager


def test_a_daemon_whose_lease_was_taken_launches_nothing(lc, tmp_path):
    """The tier's spot VM is preempted; the daemon journals the preemption, stalls, and its
    lease is taken meanwhile: it must not launch the replacement (the other holder will)."""
    cfg = host_config(lc, tmp_path, "a")
    tier = cfg.tiers[0]
    vm = FleetManager(cfg, lc.clock).up(tier)
    lc.control("POST", f"/vms/{vm.resource_id.split(':')[1]}/preempt")
    lc.clock.advance(60)
    logs: list[str] = []
    daemon = FleetDaemon(cfg, lc.clock, logs.append,
                         manager=stalling_manager(cfg, lc.clock, after="preempted"))
    line = daemon.check_tier(tier)
    assert "lost" in line and INTRUDER in line and "stopped acting" in line, line
    assert live_vms(lc) == []  # no replacement launched
    assert events(cfg)[-1] == "preempted"  # and nothing journaled after the lease moved on
    with Ledger(cfg.ledger_target) as led:
        assert current_lease(led, "fleet:big", real_ms()).holder == INTRUDER


def test_a_down_whose_lease_was_taken_deletes_nothing(lc, tmp_path):
    """`spotctl down` journals its intent (draining), stalls, and its lease is taken: the
    delete is refused with one line (exit 1), the machine stays, `down` is not journaled."""
    cfg = host_config(lc, tmp_path, "a")
    tier = cfg.tiers[0]
    st = FleetManager(cfg, lc.clock).up(tier)
    manager = stalling_manager(cfg, lc.clock, after="draining")
    with pytest.raises(LeaseLost) as err:
        manager.down(tier)
    assert err.value.exit_code == 1 and "\n" not in err.value.message
    assert [f"vm:{vm.id}" for vm in live_vms(lc)] == [st.resource_id]
    assert events(cfg)[-1] == "draining"


def test_an_idle_hibernation_whose_lease_was_taken_hibernates_nothing(lc, tmp_path):
    """The daemon drains an idle tier, stalls, and its lease is taken: the journal refuses its
    `hibernating` (fenced write) and the provider is asked for nothing."""
    cfg = host_config(lc, tmp_path, "a")
    tier = cfg.tiers[0]
    FleetManager(cfg, lc.clock).up(tier)
    lc.clock.advance(6 * 60)  # idle for more than idle_minutes
    daemon = FleetDaemon(cfg, lc.clock, lambda line: None,
                         manager=stalling_manager(cfg, lc.clock, after="draining"))
    line = daemon.check_tier(tier)
    assert "lost" in line, line
    assert [vm.state for vm in live_vms(lc)] == ["ACTIVE"]
    assert events(cfg)[-1] == "draining"


class GatedBackend:
    """A backend whose launches wait for a gate: host B is mid-launch for as long as the test
    wants (a slow provider)."""

    def __init__(self, real) -> None:
        self.real, self.name = real, real.name
        self.gate, self.entered = threading.Event(), threading.Event()

    def up(self, tier, capacity, progress=lambda *a: None):
        self.entered.set()
        assert self.gate.wait(60)
        return self.real.up(tier, capacity, progress)

    def __getattr__(self, name):
        return getattr(self.real, name)


def _in_thread(fn):
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_a_wake_from_a_gateway_while_another_host_launches_waits_for_it(lc, tmp_path):
    """Host B launches the tier (slowly); a request through host A's gateway wakes the tier
    meanwhile. Before: A's lock file was its own, A launched a second machine. Now A waits
    for B's lease, then finds the tier serving: one machine."""
    from spotctl.fleet.localcloud import LocalCloudBackend

    cfg_a, cfg_b = host_config(lc, tmp_path, "a"), host_config(lc, tmp_path, "b")
    tier = cfg_b.tiers[0]
    gated = GatedBackend(LocalCloudBackend(cfg_b, lc.clock))
    b = FleetManager(cfg_b, lc.clock, {"localcloud": gated})
    launching, b_out = _in_thread(lambda: b.up(tier))
    assert gated.entered.wait(30)
    runtime = FleetRuntime(cfg_a, lc.clock)  # what host A's gateway calls to wake a tier
    waking, a_out = _in_thread(lambda: runtime.wake(cfg_a.tiers[0]))
    time.sleep(1.0)  # clock-ok: A has had ample real time to launch if it were going to
    assert live_vms(lc) == [] and waking.is_alive()
    gated.gate.set()
    launching.join(120)
    waking.join(120)
    assert "error" not in b_out and "error" not in a_out, (b_out, a_out)
    assert a_out["value"].state == "serving" and a_out["value"].endpoint
    vms = live_vms(lc)
    assert len(vms) == 1 and f"vm:{vms[0].id}" == b_out["value"].resource_id
    assert events(cfg_a).count("launching") == 1


def test_a_hibernate_while_another_host_hibernates_the_tier_does_it_once(lc, tmp_path):
    """Host B hibernates the tier (draining first); host A's `spotctl hibernate` comes in
    meanwhile. Before: both drained and both asked the provider to hibernate (the second
    failed on a VM already HIBERNATING). Now A waits, then finds it hibernated."""
    cfg_a, cfg_b = host_config(lc, tmp_path, "a"), host_config(lc, tmp_path, "b")
    tier = cfg_b.tiers[0]
    FleetManager(cfg_b, lc.clock).up(tier)
    draining = threading.Event()
    release = threading.Event()

    def open_requests(_tier) -> int:  # B's drain sees one request in flight until released
        draining.set()
        return 0 if release.is_set() else 1

    b = FleetManager(cfg_b, lc.clock, open_requests=open_requests)
    hib_b, b_out = _in_thread(lambda: b.hibernate(tier))
    assert draining.wait(30)
    a = FleetManager(cfg_a, lc.clock, open_requests=lambda _t: 0)
    waited: list = []
    a.on_wait = waited.append
    hib_a, a_out = _in_thread(lambda: a.hibernate(cfg_a.tiers[0]))
    time.sleep(1.0)  # clock-ok: A has had ample real time to hibernate if it were going to
    assert hib_a.is_alive() and [vm.state for vm in live_vms(lc)] == ["ACTIVE"]
    release.set()
    hib_b.join(120)
    hib_a.join(120)
    assert "error" not in b_out and "error" not in a_out, (b_out, a_out)
    assert b_out["value"].state == TierState.HIBERNATED
    assert a_out["value"].state == TierState.HIBERNATED
    assert [w.holder for w in waited] == [b.holder]  # A was told whom it waited for
    ev = events(cfg_a)
    assert ev.count("draining") == 1 and ev.count("hibernating") == 1, ev


def test_a_lease_is_its_holders_until_another_takes_it(ledger):
    """The fence keeps a lease its holder still has, even one that lapsed unnoticed (a long
    pause) while nobody took it: nobody else can have acted. Once taken, it refuses."""
    from spotctl.ledger.coordination import keep_lease

    a = acquire_lease(ledger, "fleet:t", "host-a", 1_000, 10_000)
    kept = keep_lease(ledger, a, 50_000, 10_000)  # lapsed at 11 000; nobody took it
    assert kept.token == a.token and kept.expires_ms == 60_000
    assert acquire_lease(ledger, "fleet:t", "host-b", 55_000, 10_000) is None
    b = acquire_lease(ledger, "fleet:t", "host-b", 60_000, 10_000)
    assert b is not None and b.token == a.token + 1
    with pytest.raises(LeaseLost, match="host-b"):
        keep_lease(ledger, kept, 60_001, 10_000)


def test_spotctl_hibernate_waits_for_the_host_operating_on_the_tier(lc, tmp_path):
    """Another host holds the tier's lease (it operates on the tier, then dies without
    releasing it): `spotctl hibernate` says whom it waits for, waits until that lease ends,
    then hibernates."""
    from typer.testing import CliRunner

    from spotctl.cli.main import app

    cfg = host_config(lc, tmp_path, "a")
    FleetManager(cfg, lc.clock).up(cfg.tiers[0])
    with Ledger(cfg.ledger_target) as led:
        held = acquire_lease(led, "fleet:big", INTRUDER, real_ms(), 1_500)
    assert held is not None
    t0 = time.monotonic()  # clock-ok
    result = CliRunner().invoke(app, ["--config", str(cfg.source), "hibernate", "big"])
    waited = time.monotonic() - t0  # clock-ok
    assert result.exit_code == 0, result.output
    assert f"waiting for {INTRUDER}" in result.output
    assert waited >= 1.0  # not before the other host's lease ended
    assert [vm.state for vm in live_vms(lc)] == ["HIBERNATED"]
