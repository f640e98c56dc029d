"""Two real ``spotctl daemon`` processes, two config files, one ledger (SQLite file or
PostgreSQL database): one acts on the tier at a time (issue 14 §2, daemons).

The world: the local cloud in this process on a simulated clock shared through a file
(``SPOTCTL_CLOCK=file:...``, 30× real time), VMs that boot real engines, and the daemons as
real processes. Before the lease: on PostgreSQL both daemons acted (each took a lock file beside
its own config), so both relaunched a preempted tier; on SQLite the second daemon exited 2 and
nothing took over from a daemon killed mid-operation until someone restarted one."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from spotctl.clock import SystemClock, set_clock, to_ms
from spotctl.config import parse_config
from spotctl.fleet.base import TierState
from spotctl.fleet.manager import FleetManager
from spotctl.ledger.coordination import current_lease
from spotctl.ledger.db import Ledger
from spotctl.localcloud.runner import serve_in_thread
from spotctl.localcloud.simclock import SteerableClock
from tests.fleet_helpers import live_vms

SPEED = 30.0  # simulated seconds per real second
TTL_S = 3.0  # [fleet] lease_ttl_s (leases are real time)
KEY = "lc-lease-key-51c0"
CONFIG = """\
{ledger}
[billing]
poll_interval_s = 60
timeout_s = 2
[[providers]]
name = "lc"
kind = "localcloud"
api_key_env = "LC_KEY"
base_url = "{base_url}"
[[tiers]]
name = "big"
model = "tiny"
backend = "localcloud"
provider = "lc"
capacity = "spot-first"
spot_retry_minutes = 3
idle_minutes = {idle_minutes}
flavor = "n3-A100x1"
[gateway]
gate_cache_s = 0.5
[fleet]
lease_ttl_s = {ttl}
drain_timeout_s = 30
probe_timeout_s = 2
"""


def real_ms() -> int:
    return to_ms(SystemClock().now())


@dataclass
class World:
    dir: Path
    clock: SteerableClock
    handle: object
    ledger_toml: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def config(self, host: str, idle_minutes: int = 60):
        d = self.dir / host
        d.mkdir(exist_ok=True)
        text = CONFIG.format(ledger=self.ledger_toml.strip(), base_url=self.handle.base_url,
                             idle_minutes=idle_minutes, ttl=TTL_S)
        (d / "spotctl.toml").write_text(text)
        return parse_config(text, d / "spotctl.toml")

    def start_daemon(self, host: str) -> subprocess.Popen:
        env = {**os.environ, "SPOTCTL_CONFIG": str(self.dir / host / "spotctl.toml"),
               "SPOTCTL_CLOCK": f"file:{self.dir / 'clock.json'}", "LC_KEY": KEY,
               "NO_COLOR": "1"}
        log = open(self.dir / f"{host}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "spotctl", "daemon"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs[host] = proc
        return proc

    def log(self, host: str) -> str:
        return (self.dir / f"{host}.log").read_text()

    def holder(self, host: str) -> str:
        m = wait_for(lambda: re.search(r"daemon (\S+): \d+ tier", self.log(host)), 60,
                     f"daemon {host} did not start")
        return m.group(1)

    def events(self, cfg) -> list[str]:
        with Ledger(cfg.ledger_target) as led:
            return [e for (e,) in led.conn.execute(
                "SELECT event FROM fleet_events ORDER BY id")]

    def lease(self, cfg, name: str = "daemon:big"):
        with Ledger(cfg.ledger_target) as led:
            return current_lease(led, name, real_ms())


def wait_for(cond, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s  # clock-ok: a real wait for real processes
    while time.monotonic() < deadline:  # clock-ok
        value = cond()
        if value:
            return value
        time.sleep(0.05)  # clock-ok
    pytest.fail(f"{what} within {timeout_s} s")


@pytest.fixture
def world(tmp_path, monkeypatch, request):
    from spotctl.localcloud.vm import VmRunner

    ledger_toml = request.getfixturevalue("ledger_toml")
    clock = SteerableClock(datetime(2026, 11, 1, tzinfo=UTC), speed=SPEED,
                           path=tmp_path / "clock.json")
    set_clock(clock)
    monkeypatch.setenv("LC_KEY", KEY)
    handle = serve_in_thread(clock, KEY, launcher=VmRunner(tmp_path / "localcloud"),
                             control=clock, dark_hang_s=3.0)
    w = World(tmp_path, clock, handle, ledger_toml)
    try:
        yield w
    finally:
        for proc in w.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
        handle.stop()
        set_clock(None)


def vms_created(w: World) -> int:
    return sum(1 for e in w.handle.cloud.events if e.kind == "creating")


def test_two_daemons_on_one_ledger_relaunch_once_and_hibernate_once(world, ledger_backend):
    """Both daemons run (two config files, one ledger); the tier's spot VM is preempted, then
    the tier goes idle: one relaunch, one hibernation, each journaled once; the standing-by
    daemon says so; SIGTERM to the acting daemon hands the tier over at once."""
    w = world
    cfg_a = w.config("a", idle_minutes=2)
    w.config("b", idle_minutes=2)
    tier = cfg_a.tiers[0]
    vm = FleetManager(cfg_a, w.clock).up(tier)
    w.start_daemon("a")
    w.start_daemon("b")
    wait_for(lambda: all("tier big:" in w.log(h) for h in "ab"), 60,
             "both daemons did not make a pass")
    before = vms_created(w)
    w.handle.cloud.preempt(int(vm.resource_id.split(":")[1]))
    wait_for(lambda: "ready" in w.events(cfg_a)[w.events(cfg_a).index("preempted"):]
             if "preempted" in w.events(cfg_a) else False, 120, "the tier was not relaunched")
    wait_for(lambda: "hibernated" in w.events(cfg_a), 120, "the idle tier was not hibernated")
    assert vms_created(w) - before == 1  # one relaunch
    ev = w.events(cfg_a)
    assert ev.count("preempted") == 1 and ev.count("launched") == 2, ev  # up + the relaunch
    assert ev.count("draining") == 1 and ev.count("hibernating") == 1, ev
    assert [p.poll() for p in w.procs.values()] == [None, None]  # both ran throughout
    holders = {w.holder("a"): "a", w.holder("b"): "b"}
    lead = w.lease(cfg_a)
    acting = holders[lead.holder]
    standing = "b" if acting == "a" else "a"
    assert "standing by" in w.log(standing), w.log(standing)
    assert "acts on the tier now" in w.log(acting)
    # a clean stop gives the tier up: the other daemon takes it at its next look (ttl/3)
    stopped_ms = real_ms()
    w.procs[acting].send_signal(signal.SIGTERM)
    assert w.procs[acting].wait(60) == 0
    other = next(h for h, host in holders.items() if host == standing)
    taken = wait_for(lambda: (lease := w.lease(cfg_a)) and lease.holder == other and lease,
                     30, "the standing-by daemon did not take the tier over")
    with Ledger(cfg_a.ledger_target) as led:
        acquired = led.conn.execute("SELECT acquired_ms FROM leases WHERE name = ?",
                                    ("daemon:big",)).fetchone()[0]
    print(f"takeover after SIGTERM: {acquired - stopped_ms} ms (lease_ttl_s {TTL_S:g})")
    assert taken.token > lead.token and acquired - stopped_ms < TTL_S * 1000


def test_kill_the_acting_daemon_mid_launch_and_the_other_takes_over(world, ledger_backend):
    """kill -9 of the daemon that is relaunching a preempted tier, while the new VM is being
    created: the other daemon takes the tier within one lease period and finishes that launch
    (waits for the VM it finds), never launching a second one."""
    w = world
    cfg_a, cfg_b = w.config("a"), w.config("b")
    tier = cfg_a.tiers[0]
    vm = FleetManager(cfg_a, w.clock).up(tier)
    w.start_daemon("a")
    wait_for(lambda: "tier big: serving" in w.log("a"), 60, "daemon a did not make a pass")
    w.start_daemon("b")
    wait_for(lambda: "standing by" in w.log("b"), 30, "daemon b did not stand by")
    b = w.holder("b")
    before = vms_created(w)
    w.handle.cloud.preempt(int(vm.resource_id.split(":")[1]))
    wait_for(lambda: any(v.state == "CREATING" for v in live_vms(w)), 60,
             "daemon a did not start the relaunch")
    w.procs["a"].kill()  # kill -9, mid-launch: its leases stay until they expire
    killed_ms = real_ms()
    w.procs["a"].wait(30)
    lease = wait_for(lambda: (lease := w.lease(cfg_a)) and lease.holder == b and lease, 30,
                     "daemon b did not take the tier over")
    with Ledger(cfg_a.ledger_target) as led:
        acquired = led.conn.execute("SELECT acquired_ms FROM leases WHERE name = ?",
                                    ("daemon:big",)).fetchone()[0]
    # within one lease period of the kill (plus a tick and a noisy machine's slack)
    print(f"takeover after kill -9: {acquired - killed_ms} ms (lease_ttl_s {TTL_S:g})")
    assert 0 <= acquired - killed_ms <= TTL_S * 1000 + 1_500, acquired - killed_ms
    assert lease.token >= 2
    wait_for(lambda: w.events(cfg_a)[-1] == "ready", 120, "daemon b did not finish the launch")
    vms = live_vms(w)
    assert len(vms) == 1 and vms_created(w) - before == 1, vms  # a's VM, no second one
    st = FleetManager(cfg_b, w.clock).status(cfg_b.tiers[0])
    assert st.state == TierState.READY and st.resource_id == f"vm:{vms[0].id}"
    # b logs its step once it has also looked for orphans
    wait_for(lambda: "resumed: " in w.log("b"), 30, "daemon b did not say it resumed a's launch")
