"""Chaos on the local cloud (issue 11's bar): real processes (the local cloud, the gateway, the
daemon) on one simulated timeline, traffic through the gateway, and faults for the whole run:

- preemptions: "abrupt" (the spot VM is reclaimed, spot capacity stays: recovery on spot) and
  "capacity loss" (spot capacity withdrawn, then the VM reclaimed: recovery falls back to
  on-demand, and returns to spot when capacity comes back). The local cloud gives no
  preemption notice, so neither is announced in advance;
- engine kills (SIGKILL: the engine process dies) and hangs (SIGSTOP: it keeps its port and
  answers nothing) on the serving VM;
- ``kill -9`` of the daemon while a fleet operation it runs is unfinished in the journal (every
  kind of step: launching, launched, returning_to_spot, draining, relaunching, hibernating ...),
  and of the gateway while it wakes a tier; restarts, sometimes two daemons at once;
- a second daemon started while one runs (it must exit 2);
- forward clock steps (the simulated clock jumps 10 to 30 minutes);
- idle gaps in the traffic (the daemon hibernates the tier; the next request wakes it).

Afterwards, with the faults off: every VM the provider lists is the one the journal names (0
orphans), ``down`` leaves 0 VMs, the ledger's spend equals the local cloud's invoice to the
micro-dollar (per resource and in total), and ``spotctl ledger check`` passes.

    .venv/bin/python bench/chaos.py [--minutes 6] [--speed 30] [--seed 11]

Exit 0 when every bar holds, 1 otherwise. Figures go to stdout (a JSON summary at the end).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spotctl.clock import FileClock, iso, real_epoch, to_ms
from spotctl.fleet.journal import UNFINISHED
from spotctl.ledger.db import Ledger
from spotctl.ledger.journal import fleet_events, last_fleet_event
from spotctl.localcloud.engines import free_port

PY = [sys.executable, "-m", "spotctl"]
TIER, MODEL = "big", "tiny"
ENGINE_PORT = 8000  # the tier's engine_port (the default)
DAEMON_OPS = {"recover", "idle", "return_to_spot", None}  # None: a step finishing a dead op
CONFIG = """\
[ledger]
path = "spotctl.db"
[billing]
poll_interval_s = 60
timeout_s = 5
deleted_poll_every_s = 60
[[providers]]
name = "lc"
kind = "localcloud"
api_key_env = "LC_KEY"
base_url = "{base_url}"
[[tiers]]
name = "{tier}"
model = "{model}"
backend = "localcloud"
provider = "lc"
capacity = "spot-first"
spot_retry_minutes = 4
idle_minutes = 6
flavor = "n3-A100x1"
[gateway]
listen = "127.0.0.1:{gateway_port}"
wake_timeout_s = 900
gate_cache_s = 0.5
workers = 1
[fleet]
drain_timeout_s = 60
probe_failures = 3
probe_timeout_s = 1.0
"""


def pid_listening_on(port: int, host: str) -> int | None:
    """The process listening on ``host:port`` (or on 0.0.0.0:port), from Linux /proc."""
    import socket

    inodes = set()
    for table in ("/proc/net/tcp",):
        try:
            with open(table) as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            addr_hex, port_hex = parts[1].rsplit(":", 1)
            addr = socket.inet_ntoa(bytes.fromhex(addr_hex)[::-1])
            if parts[3] == "0A" and int(port_hex, 16) == port and addr in (host, "0.0.0.0"):
                inodes.add(f"socket:[{parts[9]}]")
    for pid in (p for p in os.listdir("/proc") if p.isdigit()) if inodes else ():
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return int(pid)
        except OSError:
            continue
    return None


class World:
    def __init__(self, seed: int, speed: float) -> None:
        self.rng = random.Random(seed)
        self.dir = Path(tempfile.mkdtemp(prefix="spotctl-chaos-"))
        self.cloud_port, self.gateway_port = free_port(), free_port()
        self.base_url = f"http://127.0.0.1:{self.cloud_port}/v1"
        self.control = f"http://127.0.0.1:{self.cloud_port}/_control"
        self.config = self.dir / "spotctl.toml"
        self.config.write_text(CONFIG.format(base_url=self.base_url, tier=TIER, model=MODEL,
                                             gateway_port=self.gateway_port))
        self.ledger = self.dir / "spotctl.db"
        self.clock_file = self.dir / "clock.json"
        self.env = {**os.environ, "LC_KEY": "chaos-key", "SPOTCTL_LOCALCLOUD_KEY": "chaos-key",
                    "SPOTCTL_CONFIG": str(self.config), "NO_COLOR": "1",
                    "SPOTCTL_CLOCK": f"file:{self.clock_file}"}
        self.speed = speed
        self.procs: dict[str, subprocess.Popen] = {}
        self.extra_daemons: list[subprocess.Popen] = []
        self.stats: collections.Counter = collections.Counter()
        self.kills: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        self.clock: FileClock | None = None
        self.steps_seen: list[str] = []
        self.steps_killed: list[str] = []

    # -- processes ------------------------------------------------------------------------
    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "a")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([*PY, *args], env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def spotctl(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([*PY, *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def kill9(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    def stop(self, name: str) -> int | None:
        proc = self.procs.get(name)
        if proc is None:
            return None
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        return proc.returncode

    def wait_http(self, url: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s  # clock-ok: real wait for a socket
        while time.monotonic() < deadline:  # clock-ok
            try:
                if httpx.get(url, timeout=2).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # clock-ok
        raise SystemExit(f"{url} did not answer; logs in {self.dir}")

    # -- the provider and the journal ----------------------------------------------------------
    def vms(self) -> list[dict]:
        r = httpx.get(f"{self.base_url}/core/virtual-machines", timeout=10,
                      headers={"api_key": "chaos-key"})
        r.raise_for_status()
        return [vm for vm in r.json().get("instances", []) if vm.get("status") != "DELETED"]

    def control_post(self, path: str, **body) -> dict:
        r = httpx.post(f"{self.control}{path}", json=body or None, timeout=10)
        return r.json() if r.status_code < 500 else {}

    def last_event(self):
        try:
            with Ledger(self.ledger, readonly=True) as led:
                return last_fleet_event(led, TIER, exclude=frozenset({"orphan_deleted"}))
        except Exception:
            return None

    def sim_ms(self) -> int:
        assert self.clock is not None
        return to_ms(self.clock.now())


# -- traffic ---------------------------------------------------------------------------------------
class Traffic:
    def __init__(self, world: World, key: str) -> None:
        self.world = world
        self.key = key
        self.active = threading.Event()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True)
                        for i in range(3)]

    def start(self) -> None:
        self.active.set()
        for t in self.threads:
            t.start()

    def _loop(self, i: int) -> None:
        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.world.gateway_port}/v1",
                               api_key=self.key, max_retries=0, timeout=120)
        rng = random.Random(1000 + i)
        while not self.stop.is_set():
            if not self.active.wait(0.2):
                continue
            stream = rng.random() < 0.4
            try:
                if stream:
                    for _ in client.chat.completions.create(
                            model=MODEL, max_tokens=rng.randint(4, 40), stream=True,
                            messages=[{"role": "user", "content": "chaos " * rng.randint(2, 30)}]):
                        pass
                else:
                    client.chat.completions.create(
                        model=MODEL, max_tokens=rng.randint(4, 40),
                        messages=[{"role": "user", "content": "chaos " * rng.randint(2, 30)}])
                code = "ok"
            except openai.APIStatusError as exc:
                code = f"{exc.status_code} {getattr(exc, 'code', None) or ''}".strip()
            except openai.APIError as exc:
                code = type(exc).__name__
            with self.world.lock:
                self.world.stats[("stream " if stream else "plain ") + code] += 1
            time.sleep(rng.uniform(0.2, 0.8))  # clock-ok: real pacing


# -- faults -----------------------------------------------------------------------------------------
def operator_vms(world: World) -> list[dict]:
    """The local cloud operator's view: every live VM with its spot flag and address."""
    r = httpx.get(f"{world.control}/vms", timeout=10)
    r.raise_for_status()
    return [vm for vm in r.json() if vm.get("status") != "DELETED"]


def engine_signal(world: World, sig: int) -> bool:
    """Signal the engine of the serving VM (it listens on the VM's address, the tier's
    engine_port)."""
    active = [vm for vm in operator_vms(world) if vm.get("status") == "ACTIVE" and vm.get("ip")]
    if not active:
        return False
    vm = max(active, key=lambda v: v["id"])
    pid = pid_listening_on(ENGINE_PORT, vm["ip"])
    if pid is None:
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def preempt(world: World, withdraw_capacity: bool) -> bool:
    spot = [vm for vm in operator_vms(world) if vm.get("spot")]
    if not spot:
        return False
    if withdraw_capacity:
        world.control_post("/spot", available=False)
    for vm in spot:
        world.control_post(f"/vms/{vm['id']}/preempt")
    return True


def start_daemon(world: World, two: bool = False) -> None:
    world.start("daemon", "daemon")
    if two:  # a second at once: exactly one may run
        log = open(world.dir / "daemon.log", "a")  # noqa: SIM115 - closed with the process
        extra = subprocess.Popen([*PY, "daemon"], env=world.env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        world.extra_daemons.append(extra)


def reap_extra_daemons(world: World) -> None:
    """Two daemons were started at once: the one that exits 2 lost the lock; the other is the
    daemon from now on."""
    for p in list(world.extra_daemons):
        first = world.procs["daemon"]
        if p.poll() is not None:
            world.extra_daemons.remove(p)
            world.stats[f"two daemons at once: the second exited {p.returncode}"] += 1
        elif first.poll() is not None:
            world.extra_daemons.remove(p)
            world.stats[f"two daemons at once: the first exited {first.returncode}"] += 1
            world.procs["daemon"] = p


def chaos(world: World, traffic: Traffic, minutes: float) -> None:
    rng = world.rng
    deadline = time.monotonic() + minutes * 60  # clock-ok: the run's real length
    next_fault = world.sim_ms() + 5 * 60_000
    spot_back_at: int | None = None
    idle_until: int | None = None
    last_kill = 0.0
    last_seen = 0
    killed_steps: set[tuple[str | None, str]] = set()
    seen_steps: set[tuple[str | None, str]] = set()
    while time.monotonic() < deadline:  # clock-ok
        now = world.sim_ms()
        reap_extra_daemons(world)
        # kill -9 whoever runs an unfinished fleet step (each kind of step at least once)
        last = world.last_event()
        if last is not None and last.event in UNFINISHED and last.id != last_seen:
            last_seen = last.id  # decide once per journal entry
            step = (last.operation, last.event)
            seen_steps.add(step)
            who = {"wake": "gateway", "up": "gateway", "hibernate": "cli"}.get(
                last.operation or "", "daemon")
            p = 1.0 if step not in killed_steps else 0.2
            alive = world.procs.get(who) is not None and world.procs[who].poll() is None
            if alive and rng.random() < p and time.monotonic() - last_kill > 2:  # clock-ok
                world.kill9(who)
                killed_steps.add(step)
                world.kills[f"{who} during {last.operation or '?'}:{last.event}"] += 1
                last_kill = time.monotonic()  # clock-ok
                time.sleep(rng.uniform(0, 1.5))  # clock-ok: down for a moment
                if who == "gateway":
                    world.start("gateway", "gateway")
                    world.wait_http(f"http://127.0.0.1:{world.gateway_port}/healthz")
                elif who == "daemon":
                    start_daemon(world, two=rng.random() < 0.3)
        if world.procs["daemon"].poll() is not None and not world.extra_daemons:
            world.stats[f"daemon exited by itself ({world.procs['daemon'].returncode})"] += 1
            start_daemon(world)
        if spot_back_at is not None and now >= spot_back_at:
            world.control_post("/spot", available=True)
            spot_back_at = None
        if idle_until is not None and now >= idle_until:
            traffic.active.set()
            idle_until = None
        if now >= next_fault:
            fault = rng.choices(
                ["preempt", "preempt_capacity", "engine_kill", "engine_hang", "clock_step",
                 "idle_gap", "second_daemon", "cli_hibernate"],
                weights=[2, 3, 1, 1, 1, 2, 1, 1])[0]
            done = True
            if fault == "preempt":
                done = preempt(world, withdraw_capacity=False)
            elif fault == "preempt_capacity":
                done = preempt(world, withdraw_capacity=True)
                spot_back_at = now + rng.randint(6, 15) * 60_000
            elif fault == "engine_kill":
                done = engine_signal(world, signal.SIGKILL)
            elif fault == "engine_hang":
                done = engine_signal(world, signal.SIGSTOP)
            elif fault == "clock_step":
                world.control_post("/clock", advance_minutes=rng.randint(10, 30))
            elif fault == "idle_gap":
                traffic.active.clear()
                idle_until = now + rng.randint(8, 14) * 60_000
            elif fault == "cli_hibernate":  # an operator's hibernate (killed mid-way, maybe)
                if world.procs.get("cli") is None or world.procs["cli"].poll() is not None:
                    world.start("cli", "hibernate", TIER)
            elif fault == "second_daemon":
                r = world.spotctl("daemon", "--once", timeout=120)
                world.stats[f"daemon --once beside the daemon: exit {r.returncode}"] += 1
            world.stats[f"fault {fault}" + ("" if done else " (nothing to hit)")] += 1
            next_fault = world.sim_ms() + rng.randint(4, 10) * 60_000
        time.sleep(0.05)  # clock-ok
    world.steps_seen = sorted(f"{o}:{e}" for o, e in seen_steps)
    world.steps_killed = sorted(f"{o}:{e}" for o, e in killed_steps)


def settle(world: World, traffic: Traffic, sim_minutes: int = 25) -> dict:
    """Faults off, spot back, traffic on: let the daemon finish everything it must."""
    world.control_post("/spot", available=True)
    traffic.active.set()
    deadline = time.monotonic() + 60  # clock-ok
    while world.extra_daemons and time.monotonic() < deadline:  # clock-ok
        reap_extra_daemons(world)
        time.sleep(0.1)  # clock-ok
    if world.procs["daemon"].poll() is not None:
        start_daemon(world)
    end = world.sim_ms() + sim_minutes * 60_000
    while world.sim_ms() < end:
        time.sleep(0.2)  # clock-ok
    traffic.active.clear()
    time.sleep(3)  # clock-ok: requests in flight end
    last = world.last_event()
    vms = world.vms()
    with Ledger(world.ledger, readonly=True) as led:
        from spotctl.ledger.journal import current_fleet_resource, orphan_anomalies

        current = current_fleet_resource(led, TIER, frozenset({
            "ready", "woke", "returned_to_spot", "stayed_on_demand", "drain_aborted",
            "launched", "hibernated"}))
        orphan_rows = orphan_anomalies(led)
    orphans = [f"vm:{vm['id']}" for vm in vms if f"vm:{vm['id']}" != current]
    return {"last_event": last.event if last else None, "live_vms": len(vms),
            "journal_machine": current, "orphans_at_settle": orphans,
            "orphan_anomalies_recorded": len(orphan_rows),
            "orphan_anomalies": [r[1] for r in orphan_rows]}


def invoice_check(world: World, start_ms: int) -> dict:
    from spotctl.accounting.spend import spend_between
    from spotctl.config import load_config

    cfg = load_config(world.config)
    invoice = httpx.get(f"{world.control}/invoice", timeout=10).json()
    with Ledger(world.ledger, readonly=True) as led:
        spend = spend_between(led, start_ms, world.sim_ms(), cfg)
    mine = {r.data.key[2]: r.spend.micros for r in spend.series if r.spend.micros}
    theirs = {k: v for k, v in invoice["resources"].items() if v}
    return {"invoice_micros": invoice["total_micros"], "ledger_micros": spend.micros,
            "equal": spend.micros == invoice["total_micros"] and mine == theirs,
            "resources": len(theirs),
            "differing_resources": sorted(k for k in set(mine) | set(theirs)
                                          if mine.get(k) != theirs.get(k)),
            "spend_complete": spend.complete}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=6.0, help="real minutes of chaos")
    ap.add_argument("--speed", type=float, default=30.0, help="simulated seconds per second")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args(argv)
    world = World(args.seed, args.speed)
    t0 = time.monotonic()  # clock-ok
    sim_start = real_epoch() - 86_400
    world.start("localcloud", "localcloud", "serve", "--listen", f"127.0.0.1:{world.cloud_port}",
                "--speed", str(args.speed), "--start", iso(_utc(sim_start)), "--clock-file",
                str(world.clock_file), "--engine", "builtin", "--dark-hang-s", "1")
    world.wait_http(f"{world.control}/health")
    world.clock = FileClock(world.clock_file)
    start_ms = world.sim_ms() - 60_000
    key = world.spotctl("keys", "create", "chaos").stdout.strip().split()[-1]
    traffic = Traffic(world, key)
    summary: dict = {"speed": args.speed, "minutes": args.minutes, "seed": args.seed,
                     "dir": str(world.dir)}
    try:
        r = world.spotctl("up", TIER)
        if r.returncode != 0:
            raise SystemExit(f"up failed: {r.stderr.strip()}")
        world.start("gateway", "gateway")
        world.wait_http(f"http://127.0.0.1:{world.gateway_port}/healthz")
        start_daemon(world)
        traffic.start()
        chaos(world, traffic, args.minutes)
        summary["settle"] = settle(world, traffic)
        traffic.stop.set()
        summary["daemon_exit_on_sigterm"] = world.stop("daemon")
        r = world.spotctl("down", TIER, "--delete-storage", "--yes")
        summary["down_exit"] = r.returncode
        summary["vms_after_down"] = len(world.vms())
        # nothing bills any more: fetch every final total (deleted resources are polled every
        # [billing] deleted_poll_every_s), then compare at a standstill
        for _ in range(2):
            world.control_post("/clock", advance_minutes=2)
            world.spotctl("poll-billing")
        summary["invoice"] = invoice_check(world, start_ms)
        check = world.spotctl("ledger", "check")
        summary["ledger_check_exit"] = check.returncode
        with Ledger(world.ledger, readonly=True) as led:
            events = collections.Counter(e.event for e in fleet_events(led, TIER))
        summary["journal"] = dict(sorted(events.items()))
    finally:
        traffic.stop.set()
        for name in ("gateway", "daemon", "cli"):
            world.stop(name)
        for p in world.extra_daemons:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        world.stop("localcloud")
    summary["kills"] = dict(sorted(world.kills.items()))
    summary["stats"] = {k if isinstance(k, str) else str(k): v
                        for k, v in sorted(world.stats.items(), key=lambda kv: str(kv[0]))}
    summary["real_seconds"] = round(time.monotonic() - t0, 1)  # clock-ok
    s = summary.get("settle", {})
    bars = {
        "0 orphan VMs at settle": s.get("orphans_at_settle") == [] and s.get("live_vms") == 1,
        "0 VMs after down": summary.get("vms_after_down") == 0,
        "invoice = ledger": bool(summary.get("invoice", {}).get("equal")),
        "ledger check clean": summary.get("ledger_check_exit") == 0,
    }
    summary["steps_seen_unfinished"] = world.steps_seen
    summary["steps_killed"] = world.steps_killed
    summary["bars"] = bars
    print(json.dumps(summary, indent=2, default=str))
    return 0 if all(bars.values()) else 1


def _utc(epoch: float):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC)


if __name__ == "__main__":
    raise SystemExit(main())
