"""Chaos on the local cloud (issue 11's bar): real processes (the local cloud, the gateway, the
daemon) on one simulated timeline, traffic through the gateway, and faults for the whole run:

- preemptions: "abrupt" (the spot VM is reclaimed at once, spot capacity stays: recovery on
  spot), "graceful" (the VM is shut down first: its engine gets SIGTERM and drains its requests
  in flight with ``--shutdown-timeout``, refusing new ones, then the VM is reclaimed) and
  "capacity loss" (spot capacity withdrawn, then the VM reclaimed, abruptly or gracefully:
  recovery falls back to on-demand, and returns to spot when capacity comes back). Whether
  Hyperstack gives any notice before it reclaims a spot VM is unverified (none is documented),
  so none of them is announced to spotctl in advance: "graceful" is only the shutdown window;
- engine kills (SIGKILL: the engine process dies) and hangs (SIGSTOP: it keeps its port and
  answers nothing) on the serving VM;
- ``kill -9`` of the daemon while a fleet operation it runs is unfinished in the journal (every
  kind of step: launching, launched, returning_to_spot, draining, relaunching, hibernating ...),
  of the gateway while it wakes a tier, and of the gateway under load; restarts, sometimes two
  daemons at once;
- a second daemon started while one runs (it must exit 2);
- forward clock steps (the simulated clock jumps 10 to 30 minutes, for every process);
- host clock steps, back and forth: every spotctl process (gateway, daemon, CLI) reads the
  host's wall clock, which is stepped 10-60 minutes back, or 10-20 minutes ahead and later
  stepped back, while the provider (the local cloud) keeps true time and the processes'
  monotonic clock goes on (as NTP leaves a machine);
- ledger lock windows: another process holds ``BEGIN IMMEDIATE`` on the SQLite ledger for
  10-40 real seconds;
- disk-full windows for the gateway: RLIMIT_FSIZE = 1 byte on the gateway process for 5-30
  real seconds (every write that extends a file fails with EFBIG: ledger, spool, log);
- idle gaps in the traffic (the daemon hibernates the tier; the next request wakes it).

Afterwards, with the faults off, the bars:

- every VM the provider lists is the one the journal names (0 orphans), ``down`` leaves 0 VMs;
- the ledger's spend equals the local cloud's invoice to the micro-dollar (per resource and in
  total), and ``spotctl ledger check`` passes;
- 0 usage rows lost: every request a client saw complete has its row (joined by the
  ``x-request-id`` the gateway returns), with the tokens the client saw; every request an
  engine logged (``--enable-log-requests``: id, tokens produced) has a row, exact where the
  engine finished it and the gateway relayed its usage, marked estimated otherwise. What a
  ``kill -9`` of the gateway can lose is counted apart: rows not yet durable (the writer batches
  0.2 s; rows held in memory while neither the ledger nor the spool takes them) and requests in
  flight (no row is written before a request ends);
- every refused request carries a code from the README's table of gateway errors (a connection
  error while the gateway is dead is its own category);
- the gate never fails open: no request is served after billing has been unknown (no new
  successful poll for ``[billing] stale_after_s`` of simulated time, whatever the host's wall
  clock says) for longer than the slack (the gate's refresh and scheduling noise).

    .venv/bin/python bench/chaos.py [--minutes 6] [--speed 30] [--seed 11]

Exit 0 when every bar holds, 1 otherwise. Figures go to stdout (a JSON summary at the end).
"""

from __future__ import annotations

import argparse
import bisect
import collections
import contextlib
import json
import os
import random
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spotctl.clock import FileClock, iso, real_epoch, set_clock, to_ms  # noqa: E402
from spotctl.fleet.journal import UNFINISHED  # noqa: E402
from spotctl.ledger.db import Ledger  # noqa: E402
from spotctl.ledger.journal import fleet_events, last_fleet_event  # noqa: E402
from spotctl.ledger.usage import newest_ok_polls  # noqa: E402
from spotctl.localcloud.engines import free_port  # noqa: E402

HOST_OFFSET_ENV = "SPOTCTL_CHAOS_HOST_OFFSET"
AS_SPOTCTL = "--as-spotctl"
PY = [sys.executable, "-m", "spotctl"]  # the local cloud: the provider keeps true time
HOST = [sys.executable, str(Path(__file__).resolve()), AS_SPOTCTL]  # spotctl on the host clock
TIER, MODEL = "big", "tiny"
ENGINE_PORT = 8000  # the tier's engine_port (the default)
STALE_AFTER_S = 180
CONFIG = """\
[ledger]
path = "spotctl.db"
[billing]
poll_interval_s = 60
timeout_s = 5
deleted_poll_every_s = 60
stale_after_s = {stale_after_s}
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
vllm_args = ["--enable-log-requests"]
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


# -- the host's clock ------------------------------------------------------------------------------
class HostClock:
    """The host's clock as NTP may leave it: the wall clock is the simulation's plus an offset
    the bench steps (back or ahead) through a file, while the monotonic clock is the
    simulation's and never steps. The provider (the local cloud) keeps the simulation's time."""

    def __init__(self, sim: FileClock, offset_path: Path) -> None:
        self.sim = sim
        self.offset_path = offset_path
        self._mtime = -1
        self._offset = 0.0
        self._lock = threading.Lock()

    def offset_s(self) -> float:
        with self._lock:
            try:
                mtime = self.offset_path.stat().st_mtime_ns
                if mtime != self._mtime:
                    self._offset = float(json.loads(self.offset_path.read_text())["offset_s"])
                    self._mtime = mtime
            except (OSError, ValueError, KeyError):
                pass
            return self._offset

    def now(self):
        return self.sim.now() + timedelta(seconds=self.offset_s())

    def monotonic(self) -> float:
        return self.sim.monotonic()

    def sleep(self, seconds: float) -> None:
        self.sim.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await self.sim.asleep(seconds)

    @staticmethod
    def write(path: Path, offset_s: float) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"offset_s": offset_s}))
        os.replace(tmp, path)


def run_spotctl_on_host_clock(argv: list[str]) -> None:
    """``bench/chaos.py --as-spotctl ARGS``: spotctl with the host clock installed."""
    spec = os.environ["SPOTCTL_CLOCK"]
    assert spec.startswith("file:"), spec
    set_clock(HostClock(FileClock(spec.removeprefix("file:")), Path(os.environ[HOST_OFFSET_ENV])))
    sys.argv = ["spotctl", *argv]
    from spotctl.cli.main import run

    run()


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


@dataclass
class Window:
    kind: str
    start: float  # real monotonic
    end: float | None = None
    detail: dict = field(default_factory=dict)


class World:
    def __init__(self, seed: int, speed: float) -> None:
        self.rng = random.Random(seed)
        self.dir = Path(tempfile.mkdtemp(prefix="spotctl-chaos-"))
        self.cloud_port, self.gateway_port = free_port(), free_port()
        self.base_url = f"http://127.0.0.1:{self.cloud_port}/v1"
        self.control = f"http://127.0.0.1:{self.cloud_port}/_control"
        self.config = self.dir / "spotctl.toml"
        self.config.write_text(CONFIG.format(base_url=self.base_url, tier=TIER, model=MODEL,
                                             gateway_port=self.gateway_port,
                                             stale_after_s=STALE_AFTER_S))
        self.ledger = self.dir / "spotctl.db"
        self.clock_file = self.dir / "clock.json"
        self.offset_file = self.dir / "host-offset.json"
        HostClock.write(self.offset_file, 0.0)
        self.lc_tmp = self.dir / "lc-tmp"  # the local cloud's VMs (and their engines' logs)
        self.lc_tmp.mkdir()
        self.env = {**os.environ, "LC_KEY": "chaos-key", "SPOTCTL_LOCALCLOUD_KEY": "chaos-key",
                    "SPOTCTL_CONFIG": str(self.config), "NO_COLOR": "1", "SPOTCTL_DEBUG": "1",
                    "SPOTCTL_CLOCK": f"file:{self.clock_file}",
                    HOST_OFFSET_ENV: str(self.offset_file)}
        self.speed = speed
        self.procs: dict[str, subprocess.Popen] = {}
        self.extra_daemons: list[subprocess.Popen] = []
        self.stats: collections.Counter = collections.Counter()
        self.kills: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        self.clock: FileClock | None = None
        self.steps_seen: list[str] = []
        self.steps_killed: list[str] = []
        self.host_offset_s = 0.0
        self.windows: list[Window] = []
        self.gateway_kills: list[float] = []  # real monotonic
        self.gateway_down: list[Window] = []  # from a kill -9 to /healthz answering again
        self.disk_full: Window | None = None
        self.locker: subprocess.Popen | None = None
        self.lock_window: Window | None = None

    # -- processes ------------------------------------------------------------------------
    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "a")  # noqa: SIM115 - closed with the process
        cmd = PY if name == "localcloud" else HOST
        env = {**self.env, "TMPDIR": str(self.lc_tmp)} if name == "localcloud" else self.env
        proc = subprocess.Popen([*cmd, *args], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        if name == "gateway" and self.disk_full is not None:
            fsize_limit(proc.pid, True)  # the disk is still full for the new process
        return proc

    def spotctl(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([*HOST, *args], env=self.env, capture_output=True,
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

    def kill9_gateway(self, why: str) -> None:
        """kill -9 the gateway, restart it at once (as systemd would after a moment)."""
        t = time.monotonic()  # clock-ok
        self.kill9("gateway")
        self.gateway_kills.append(t)
        down = Window("gateway_down", t, detail={"why": why})
        time.sleep(self.rng.uniform(0, 1.5))  # clock-ok: down for a moment
        self.start("gateway", "gateway")
        self.wait_http(f"http://127.0.0.1:{self.gateway_port}/healthz")
        down.end = time.monotonic()  # clock-ok
        self.gateway_down.append(down)

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

    # -- host clock, ledger lock, disk full ---------------------------------------------------------
    def step_host_clock(self, offset_s: float) -> None:
        before = self.host_offset_s
        HostClock.write(self.offset_file, offset_s)
        self.host_offset_s = offset_s
        w = Window("host_clock_step", time.monotonic(), time.monotonic(),  # clock-ok
                   {"from_s": before, "to_s": offset_s})
        self.windows.append(w)
        self.stats["host clock stepped " + ("back" if offset_s < before else "ahead")] += 1

    def lock_ledger(self, seconds: float) -> bool:
        if self.locker is not None and self.locker.poll() is None:
            return False
        code = ("import sqlite3, sys, time\n"
                "c = sqlite3.connect(sys.argv[1], timeout=120, isolation_level=None)\n"
                "c.execute('BEGIN IMMEDIATE')\n"
                "print('locked', flush=True)\n"
                "time.sleep(float(sys.argv[2]))  # clock-ok\n"
                "c.execute('ROLLBACK')\n")
        self.locker = subprocess.Popen([sys.executable, "-c", code, str(self.ledger),
                                        str(seconds)], stdout=subprocess.PIPE, text=True,
                                       start_new_session=True)
        w = self.lock_window = Window("ledger_lock", time.monotonic(),  # clock-ok
                                      detail={"seconds": seconds})
        locker = self.locker

        def watch() -> None:
            line = locker.stdout.readline() if locker.stdout else ""
            if line.startswith("locked"):
                w.start = time.monotonic()  # clock-ok: the lock is held from here
                self.windows.append(w)
            locker.wait()
            w.end = time.monotonic()  # clock-ok

        threading.Thread(target=watch, daemon=True).start()
        return True

    def unlock_ledger(self) -> None:
        if self.locker is not None and self.locker.poll() is None:
            os.killpg(self.locker.pid, signal.SIGKILL)
            self.locker.wait(30)

    def fill_disk(self, on: bool) -> bool:
        proc = self.procs.get("gateway")
        if on:
            if self.disk_full is not None:
                return False
            self.disk_full = Window("disk_full", time.monotonic())  # clock-ok
            self.windows.append(self.disk_full)
        elif self.disk_full is None:
            return False
        else:
            self.disk_full.end = time.monotonic()  # clock-ok
            self.disk_full = None
        if proc is not None and proc.poll() is None:
            fsize_limit(proc.pid, on)
        return True


def fsize_limit(pid: int, full: bool) -> None:
    """The disk is full for ``pid`` (no file it writes may grow past 1 byte), or not."""
    limit = 1 if full else resource.RLIM_INFINITY
    with contextlib.suppress(ProcessLookupError, PermissionError):
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


# -- traffic ---------------------------------------------------------------------------------------
@dataclass
class Req:
    n: int
    stream: bool
    include_usage: bool
    t0: float  # real monotonic, before sending
    t1: float = 0.0
    outcome: str = ""  # ok | http | inband | connection | timeout | other
    status: int | None = None
    code: str | None = None
    rid: str | None = None
    prompt: int | None = None
    completion: int | None = None
    chunks: int = 0


def _code(exc) -> str | None:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("code") is not None:
            return str(err["code"])
    return getattr(exc, "code", None)


class Traffic:
    def __init__(self, world: World, key: str) -> None:
        self.world = world
        self.key = key
        self.active = threading.Event()
        self.stop = threading.Event()
        self.requests: list[Req] = []
        self._n = 0
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True)
                        for i in range(3)]

    def start(self) -> None:
        self.active.set()
        for t in self.threads:
            t.start()

    def _one(self, client, rng: random.Random, req: Req) -> None:
        import openai

        messages = [{"role": "user", "content": "chaos " * rng.randint(2, 30)}]
        max_tokens = rng.randint(4, 40)
        try:
            if req.stream:
                opts = {"stream_options": {"include_usage": True}} if req.include_usage else {}
                with client.chat.completions.with_streaming_response.create(
                        model=MODEL, max_tokens=max_tokens, stream=True, messages=messages,
                        **opts) as resp:
                    req.rid = resp.headers.get("x-request-id")
                    finished = False
                    for chunk in resp.parse():
                        if chunk.choices:
                            if chunk.choices[0].delta.content:
                                req.chunks += 1
                            if chunk.choices[0].finish_reason:
                                finished = True
                        if chunk.usage is not None:
                            req.prompt = chunk.usage.prompt_tokens
                            req.completion = chunk.usage.completion_tokens
                    req.outcome = "ok" if finished else "cut"
                    req.status = 200
            else:
                raw = client.chat.completions.with_raw_response.create(
                    model=MODEL, max_tokens=max_tokens, messages=messages)
                req.rid = raw.headers.get("x-request-id")
                out = raw.parse()
                req.status = 200
                req.outcome = "ok"
                if out.usage is not None:
                    req.prompt = out.usage.prompt_tokens
                    req.completion = out.usage.completion_tokens
        except openai.APIStatusError as exc:
            req.outcome, req.status, req.code = "http", exc.status_code, _code(exc)
            req.rid = exc.response.headers.get("x-request-id")
        except openai.APITimeoutError:
            req.outcome = "timeout"
        except openai.APIConnectionError:
            req.outcome = "connection"
        except openai.APIError as exc:  # an in-band error event in a stream
            req.outcome, req.code = "inband", _code(exc)
        except httpx.TransportError:  # the connection broke while a body was read
            req.outcome = "connection"
        except Exception as exc:  # counted, never hidden
            req.outcome, req.code = "other", type(exc).__name__
        req.t1 = time.monotonic()  # clock-ok

    def _loop(self, i: int) -> None:
        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.world.gateway_port}/v1",
                               api_key=self.key, max_retries=0, timeout=150)
        rng = random.Random(1000 + i)
        while not self.stop.is_set():
            if not self.active.wait(0.2):
                continue
            stream = rng.random() < 0.4
            with self.world.lock:
                self._n += 1
                req = Req(self._n, stream, stream and rng.random() < 0.5,
                          time.monotonic())  # clock-ok
                self.requests.append(req)
            self._one(client, rng, req)
            with self.world.lock:
                label = req.outcome + ("" if req.code is None else f" {req.code}")
                if req.status and req.status != 200:
                    label = f"{req.status} {req.code or ''}".strip()
                self.world.stats[("stream " if stream else "plain ") + label] += 1
            time.sleep(rng.uniform(0.2, 0.8))  # clock-ok: real pacing


# -- the gate's truth: when was billing known? ---------------------------------------------------
class BillingOracle(threading.Thread):
    """Samples (real time, simulated time) and notes when each successful billing poll appears
    in the ledger, to tell afterwards whether billing was known when a request was served."""

    def __init__(self, world: World) -> None:
        super().__init__(daemon=True, name="oracle")
        self.world = world
        self.samples: list[tuple[float, int]] = []
        self.polls: list[tuple[float, int]] = []  # (real, sim) when a new ok poll appeared
        self.halt = threading.Event()

    def run(self) -> None:
        after = 0
        led = None
        while not self.halt.is_set():
            real, sim = time.monotonic(), self.world.sim_ms()  # clock-ok
            self.samples.append((real, sim))
            try:
                if led is None:
                    led = Ledger(self.world.ledger, readonly=True)
                new = newest_ok_polls(led, after)
            except Exception:
                new = []
                if led is not None:
                    with contextlib.suppress(Exception):
                        led.close()
                    led = None
            if new:
                after = max(pid for pid, _p, _f in new)
                self.polls.append((time.monotonic(), self.world.sim_ms()))  # clock-ok
            self.halt.wait(0.2)
        if led is not None:
            led.close()

    def sim_at(self, real: float) -> int | None:
        i = bisect.bisect_right(self.samples, (real, 1 << 62)) - 1
        return self.samples[i][1] if i >= 0 else None

    def unknown_throughout(self, t_from: float, t_to: float, stale_ms: int) -> bool:
        """Billing was unknown at ``t_from`` and no successful poll appeared until ``t_to``."""
        i = bisect.bisect_right(self.polls, (t_from, 1 << 62)) - 1
        if i + 1 < len(self.polls) and self.polls[i + 1][0] <= t_to:
            return False
        sim = self.sim_at(t_from)
        if i < 0 or sim is None:
            return False  # before the first poll: the gateway never opened (not judged)
        return sim - self.polls[i][1] > stale_ms


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


def preempt(world: World, withdraw_capacity: bool, graceful: bool = False) -> bool:
    """Reclaim every spot VM: at once, or ``graceful`` (the local cloud's shutdown window: the
    engine drains, then the VM goes; provider notice is unverified for Hyperstack)."""
    spot = [vm for vm in operator_vms(world) if vm.get("spot")]
    if not spot:
        return False
    if withdraw_capacity:
        world.control_post("/spot", available=False)
    mode = "graceful" if graceful else "abrupt"
    for vm in spot:
        world.control_post(f"/vms/{vm['id']}/preempt", mode=mode)
    world.stats[f"preemptions ({mode})"] += 1
    return True


def start_daemon(world: World, two: bool = False) -> None:
    world.start("daemon", "daemon")
    if two:  # a second at once: exactly one may run
        log = open(world.dir / "daemon.log", "a")  # noqa: SIM115 - closed with the process
        extra = subprocess.Popen([*HOST, "daemon"], env=world.env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        world.extra_daemons.append(extra)


def reap_extra_daemons(world: World) -> None:
    """Two daemons were started at once: both run, one acts on the tier (its lease), the other
    stands by. Either exiting is counted (a crash unless killed); the one left is the daemon
    from now on."""
    for p in list(world.extra_daemons):
        first = world.procs["daemon"]
        if p.poll() is not None:
            world.extra_daemons.remove(p)
            world.stats[f"two daemons at once: the second exited {p.returncode}"] += 1
        elif first.poll() is not None:
            world.extra_daemons.remove(p)
            world.stats[f"two daemons at once: the first exited {first.returncode}"] += 1
            world.procs["daemon"] = p


FAULTS = {  # kind: weight
    "preempt": 2, "preempt_graceful": 2, "preempt_capacity": 3, "engine_kill": 1,
    "engine_hang": 1, "clock_step": 1,
    "idle_gap": 2, "second_daemon": 1, "cli_hibernate": 1, "ledger_lock": 2, "disk_full": 2,
    "host_clock": 2, "gateway_kill": 1,
}


def chaos(world: World, traffic: Traffic, minutes: float) -> None:
    rng = world.rng
    deadline = time.monotonic() + minutes * 60  # clock-ok: the run's real length
    next_fault = world.sim_ms() + 5 * 60_000
    spot_back_at: int | None = None
    idle_until: int | None = None
    host_back_at: int | None = None  # simulated ms: the host clock's excursion ends
    disk_back_at: float | None = None  # real monotonic: the disk-full window ends
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
                killed_steps.add(step)
                world.kills[f"{who} during {last.operation or '?'}:{last.event}"] += 1
                last_kill = time.monotonic()  # clock-ok
                if who == "gateway":
                    world.kill9_gateway(f"during {last.operation}:{last.event}")
                else:
                    world.kill9(who)
                    time.sleep(rng.uniform(0, 1.5))  # clock-ok: down for a moment
                    if who == "daemon":
                        start_daemon(world, two=rng.random() < 0.3)
        if world.procs["daemon"].poll() is not None and not world.extra_daemons:
            world.stats[f"daemon exited by itself ({world.procs['daemon'].returncode})"] += 1
            start_daemon(world)
        if world.procs["gateway"].poll() is not None:
            world.stats[f"gateway exited by itself ({world.procs['gateway'].returncode})"] += 1
            world.start("gateway", "gateway")
            world.wait_http(f"http://127.0.0.1:{world.gateway_port}/healthz")
        if spot_back_at is not None and now >= spot_back_at:
            world.control_post("/spot", available=True)
            spot_back_at = None
        if idle_until is not None and now >= idle_until:
            traffic.active.set()
            idle_until = None
        if host_back_at is not None and now >= host_back_at:
            world.step_host_clock(0.0)  # back on time (a step back when it was ahead)
            host_back_at = None
        if disk_back_at is not None and time.monotonic() >= disk_back_at:  # clock-ok
            world.fill_disk(False)
            disk_back_at = None
        if now >= next_fault:
            fault = rng.choices(list(FAULTS), weights=list(FAULTS.values()))[0]
            done = True
            if fault == "preempt":
                done = preempt(world, withdraw_capacity=False)
            elif fault == "preempt_graceful":
                done = preempt(world, withdraw_capacity=False, graceful=True)
            elif fault == "preempt_capacity":
                done = preempt(world, withdraw_capacity=True, graceful=rng.random() < 0.5)
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
            elif fault == "ledger_lock":
                done = world.lock_ledger(rng.uniform(10, 40))
            elif fault == "disk_full":
                done = world.fill_disk(True)
                if done:
                    disk_back_at = time.monotonic() + rng.uniform(5, 30)  # clock-ok
            elif fault == "host_clock":
                if host_back_at is None:
                    back = rng.random() < 0.5
                    world.step_host_clock(-rng.randint(10, 60) * 60.0 if back
                                          else rng.randint(10, 20) * 60.0)
                    host_back_at = now + rng.randint(5, 15) * 60_000
                else:
                    done = False
            elif fault == "gateway_kill":
                if time.monotonic() - last_kill > 2:  # clock-ok
                    world.kills["gateway under load"] += 1
                    last_kill = time.monotonic()  # clock-ok
                    world.kill9_gateway("under load")
                else:
                    done = False
            world.stats[f"fault {fault}" + ("" if done else " (nothing to hit)")] += 1
            next_fault = world.sim_ms() + rng.randint(4, 10) * 60_000
        time.sleep(0.05)  # clock-ok
    world.steps_seen = sorted(f"{o}:{e}" for o, e in seen_steps)
    world.steps_killed = sorted(f"{o}:{e}" for o, e in killed_steps)


def settle(world: World, traffic: Traffic, sim_minutes: int = 25) -> dict:
    """Faults off, spot back, host clock on time, traffic on: let the daemon finish everything
    it must."""
    world.control_post("/spot", available=True)
    world.fill_disk(False)
    world.unlock_ledger()
    if world.host_offset_s:
        world.step_host_clock(0.0)
    traffic.active.set()
    deadline = time.monotonic() + 60  # clock-ok
    while world.extra_daemons and time.monotonic() < deadline:  # clock-ok
        reap_extra_daemons(world)
        time.sleep(0.1)  # clock-ok
    if world.procs["daemon"].poll() is not None:
        start_daemon(world)
    if world.procs["gateway"].poll() is not None:
        world.start("gateway", "gateway")
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
    from spotctl.config import load_config
    from spotctl.services.cost import spend_between

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


# -- the accounting of every request ------------------------------------------------------------------
def documented_codes(readme: Path) -> set[tuple[int, str]]:
    """(HTTP status, code) pairs of the README's table of gateway errors."""
    text = readme.read_text()
    section = text[text.index("## Gateway errors"):]
    section = section[:section.index("\n## ", 5)]
    out = set()
    for line in section.splitlines():
        m = re.match(r"\|\s*(\d{3})\s*\|(.*?)\|", line)
        if m:
            for code in re.findall(r"`([a-z_]+)`", m.group(2)):
                out.add((int(m.group(1)), code))
    return out


def usage_rows(ledger: Path) -> dict[str, dict]:
    con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        cur = con.execute("SELECT id, status, prompt_tokens, completion_tokens, "
                          "tokens_estimated, stream, http_status, tier FROM usage")
        cols = [d[0] for d in cur.description]
        return {r[0]: dict(zip(cols, r, strict=True)) for r in cur.fetchall()}
    finally:
        con.close()


def engine_lines(lc_tmp: Path) -> dict[str, list[dict]]:
    """Every line the engines logged (``--enable-log-requests``), by request id, from every
    VM's unit logs (engines killed or not)."""
    out: dict[str, list[dict]] = collections.defaultdict(list)
    for log in lc_tmp.glob("spotctl-localcloud-*/vms/*/*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("request {"):
                with contextlib.suppress(ValueError):
                    e = json.loads(line.removeprefix("request "))
                    out[e["request_id"]].append(e)
    return out


def _during(t0: float, t1: float, windows: list[Window]) -> bool:
    return any(w.start <= t1 and (w.end is None or w.end >= t0) for w in windows)


def accounting(world: World, traffic: Traffic, oracle: BillingOracle, rows: dict[str, dict],
               engine: dict[str, list[dict]], slack_s: float) -> dict:
    reqs = [r for r in traffic.requests if r.t1]
    kills = world.gateway_kills
    loss_window_s = 2.0  # a row becomes durable within BATCH_S (0.2 s) + a write: 2 s is ample

    def before_kill(r: Req) -> bool:
        return any(r.t1 <= k <= r.t1 + loss_window_s for k in kills)

    # 1. every request a client saw complete has its row, with the client's tokens
    ok = [r for r in reqs if r.outcome == "ok"]
    missing, lost_at_kill, mismatched, no_rid, estimated_ok = [], [], [], [], []
    for r in ok:
        if r.rid is None:
            no_rid.append(r.n)
            continue
        row = rows.get(r.rid)
        if row is None:
            (lost_at_kill if before_kill(r) else missing).append(r.rid)
            continue
        if row["status"] != "ok" or row["tokens_estimated"]:
            estimated_ok.append(r.rid)
            continue
        want_completion = r.completion if r.completion is not None else r.chunks
        if row["completion_tokens"] != want_completion or (
                r.prompt is not None and row["prompt_tokens"] != r.prompt):
            mismatched.append({"rid": r.rid, "client": [r.prompt, want_completion],
                               "ledger": [row["prompt_tokens"], row["completion_tokens"]]})
    # refused requests with an id have their row too
    refused_rows_missing = [r.rid for r in reqs if r.outcome == "http" and r.rid and
                            r.rid not in rows and not before_kill(r)]
    refused_rows_lost_at_kill = [r.rid for r in reqs if r.outcome == "http" and r.rid and
                                 r.rid not in rows and before_kill(r)]

    # 2. what the engines produced is in the ledger
    mine = [e for rid, es in engine.items() if rid.startswith("gw-") for e in es]
    eng_gen = sum(e["generation_tokens"] for e in mine)
    eng_prompt = sum(e["prompt_tokens"] for e in mine)
    exact_equal = exact_differ = 0
    differ = []
    engine_no_row = {"requests": 0, "generation_tokens": 0, "in_flight_at_a_kill": 0}
    estimated_vs_engine = {"rows": 0, "ledger_completion": 0, "engine_generation": 0}
    retried_extra = 0
    not_gateway = {"requests": 0, "generation_tokens": 0}
    for rid, es in engine.items():
        if not rid.startswith("gw-"):  # the fleet's own readiness completions, not a client's
            not_gateway["requests"] += 1
            not_gateway["generation_tokens"] += sum(e["generation_tokens"] for e in es)
            continue
        row = rows.get(rid)
        # a retried request has a line per attempt (engines' logs are not in time order): the
        # row is the attempt that answered
        match = [e for e in es if row is not None and e["finished"] and (
            e["prompt_tokens"], e["generation_tokens"]) == (row["prompt_tokens"],
                                                            row["completion_tokens"])]
        last = match[0] if match else max(es, key=lambda e: e["generation_tokens"])
        retried_extra += sum(e["generation_tokens"] for e in es) - last["generation_tokens"]
        if row is None:
            engine_no_row["requests"] += 1
            engine_no_row["generation_tokens"] += sum(e["generation_tokens"] for e in es)
            continue
        if row["tokens_estimated"]:
            estimated_vs_engine["rows"] += 1
            estimated_vs_engine["ledger_completion"] += row["completion_tokens"]
            estimated_vs_engine["engine_generation"] += last["generation_tokens"]
        elif row["status"] == "ok":
            if match:
                exact_equal += 1
            else:
                exact_differ += 1
                if len(differ) < 10:
                    differ.append({"rid": rid, "engine": es, "ledger": row})
    # requests in flight at a kill -9 of the gateway: the client saw the connection break
    in_flight_at_kill = [r for r in reqs if r.outcome == "connection" and
                         any(r.t0 <= k <= r.t1 for k in kills)]
    engine_no_row["in_flight_at_a_kill"] = len(in_flight_at_kill)
    # rows that reached an engine the engines never logged: the engine died mid-request
    rows_engine_died = [rid for rid, row in rows.items()
                        if rid not in engine and row["tokens_estimated"]]
    exact_rows_without_engine_line = [rid for rid, row in rows.items()
                                      if rid not in engine and row["status"] == "ok"
                                      and not row["tokens_estimated"]]
    led_exact = [r for r in rows.values() if not r["tokens_estimated"]]
    led_est = [r for r in rows.values() if r["tokens_estimated"]]

    # 3. every refused request carries a documented code
    documented = documented_codes(ROOT / "README.md")
    doc_codes = {c for _s, c in documented}
    refusals: collections.Counter = collections.Counter()
    undocumented: collections.Counter = collections.Counter()
    for r in reqs:
        if r.outcome == "ok":
            continue
        if r.outcome == "http":
            label = f"HTTP {r.status} {r.code}"
            if (r.status, r.code) not in documented:
                undocumented[label] += 1
        elif r.outcome == "inband":
            label = f"stream ended by an in-band error {r.code}"
            if r.code not in doc_codes:
                undocumented[label] += 1
        elif r.outcome in ("connection", "timeout"):
            dead = _during(r.t0, r.t1, world.gateway_down) or any(
                r.t0 <= k <= r.t1 for k in kills)
            label = (f"{r.outcome} error while the gateway was killed -9 / restarting" if dead
                     else f"{r.outcome} error while the gateway was up")
            if not dead:
                undocumented[label] += 1
        else:
            label = f"{r.outcome} {r.code}"
            undocumented[label] += 1
        refusals[label] += 1

    # 4. the gate never fails open
    stale_ms = STALE_AFTER_S * 1000
    fail_open = [r.rid or r.n for r in ok
                 if oracle.unknown_throughout(r.t0 - slack_s, r.t0, stale_ms)]
    return {
        "requests": len(reqs), "completed_ok": len(ok),
        "rows_in_ledger": len(rows),
        "ok_without_row": len(missing), "ok_without_row_ids": missing[:10],
        "ok_rows_lost_at_gateway_kill": len(lost_at_kill),
        "ok_rows_lost_at_gateway_kill_max_s_before_kill": max(
            (min(k - r.t1 for k in kills if k >= r.t1) for r in ok if r.rid in lost_at_kill),
            default=None),
        "ok_without_request_id": len(no_rid),
        "ok_row_not_ok_or_estimated": len(estimated_ok),
        "ok_tokens_differ": len(mismatched), "ok_tokens_differ_examples": mismatched[:5],
        "refused_without_row": len(refused_rows_missing),
        "refused_rows_lost_at_gateway_kill": len(refused_rows_lost_at_kill),
        "engine": {"requests_logged": len(engine), "generation_tokens": eng_gen,
                   "fleet_readiness_completions": not_gateway,
                   "prompt_tokens": eng_prompt, "exact_rows_equal": exact_equal,
                   "exact_rows_differ": exact_differ, "differ_examples": differ,
                   "logged_without_row": engine_no_row,
                   "estimated_rows_vs_engine": estimated_vs_engine,
                   "tokens_of_retried_attempts": retried_extra,
                   "rows_estimated_engine_died": len(rows_engine_died),
                   "exact_ok_rows_without_engine_line": len(exact_rows_without_engine_line)},
        "ledger": {"exact_rows": len(led_exact),
                   "exact_completion_tokens": sum(r["completion_tokens"] for r in led_exact),
                   "exact_prompt_tokens": sum(r["prompt_tokens"] for r in led_exact),
                   "estimated_rows": len(led_est),
                   "estimated_completion_tokens": sum(r["completion_tokens"] for r in led_est),
                   "statuses": dict(collections.Counter(r["status"] for r in rows.values()))},
        "refusals": dict(sorted(refusals.items())),
        "undocumented_refusals": dict(sorted(undocumented.items())),
        "served_while_billing_unknown": len(fail_open),
        "served_while_billing_unknown_ids": fail_open[:10],
        "gateway_kills": len(kills),
        "windows": dict(collections.Counter(w.kind for w in world.windows)),
        "window_seconds": {k: round(sum((w.end or w.start) - w.start for w in world.windows
                                        if w.kind == k), 1)
                           for k in ("ledger_lock", "disk_full")},
        "host_clock_steps_back": sum(1 for w in world.windows if w.kind == "host_clock_step"
                                     and w.detail["to_s"] < w.detail["from_s"]),
    }


def dump(world: World, traffic: Traffic, oracle: BillingOracle, t0: float) -> None:
    """Every request, window and poll of the run (real seconds from the start), in the run's
    directory, for a closer look."""
    import dataclasses

    with open(world.dir / "requests.jsonl", "w") as fh:
        for r in traffic.requests:
            d = dataclasses.asdict(r)
            d["t0"], d["t1"] = round(r.t0 - t0, 3), round(r.t1 - t0, 3) if r.t1 else None
            d["sim0"] = oracle.sim_at(r.t0)
            fh.write(json.dumps(d) + "\n")
    (world.dir / "timeline.json").write_text(json.dumps({
        "windows": [{"kind": w.kind, "start": round(w.start - t0, 3),
                     "end": None if w.end is None else round(w.end - t0, 3), **w.detail}
                    for w in world.windows + world.gateway_down],
        "gateway_kills": [round(k - t0, 3) for k in world.gateway_kills],
        "polls": [(round(r - t0, 3), s) for r, s in oracle.polls]}, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=6.0, help="real minutes of chaos")
    ap.add_argument("--speed", type=float, default=30.0, help="simulated seconds per second")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--slack-s", type=float, default=2.0,
                    help="real seconds the gate may take to close once billing is unknown")
    args = ap.parse_args(argv)
    world = World(args.seed, args.speed)
    t0 = time.monotonic()  # clock-ok
    sim_start = real_epoch() - 86_400
    world.start("localcloud", "localcloud", "serve", "--listen", f"127.0.0.1:{world.cloud_port}",
                "--speed", str(args.speed), "--start", iso(_utc(sim_start)), "--clock-file",
                str(world.clock_file), "--engine", "builtin", "--dark-hang-s", "1")
    world.wait_http(f"{world.control}/health")
    world.clock = FileClock(world.clock_file)
    start_ms = world.sim_ms() - 2 * 3_600_000  # host clock steps back stamp samples earlier
    key = world.spotctl("keys", "create", "chaos").stdout.strip().split()[-1]
    traffic = Traffic(world, key)
    oracle = BillingOracle(world)
    summary: dict = {"speed": args.speed, "minutes": args.minutes, "seed": args.seed,
                     "dir": str(world.dir)}
    rows: dict[str, dict] = {}
    engine: dict[str, list[dict]] = {}
    try:
        r = world.spotctl("up", TIER)
        if r.returncode != 0:
            raise SystemExit(f"up failed: {r.stderr.strip()}")
        world.start("gateway", "gateway")
        world.wait_http(f"http://127.0.0.1:{world.gateway_port}/healthz")
        start_daemon(world)
        oracle.start()
        traffic.start()
        chaos(world, traffic, args.minutes)
        summary["settle"] = settle(world, traffic)
        traffic.stop.set()
        for t in traffic.threads:
            t.join(180)
        oracle.halt.set()
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
        summary["gateway_exit_on_sigterm"] = world.stop("gateway")  # its last rows written
        check = world.spotctl("ledger", "check")
        summary["ledger_check_exit"] = check.returncode
        if check.returncode:
            summary["ledger_check"] = (check.stdout + check.stderr)[-2000:]
        with Ledger(world.ledger, readonly=True) as led:
            events = collections.Counter(e.event for e in fleet_events(led, TIER))
        summary["journal"] = dict(sorted(events.items()))
        rows = usage_rows(world.ledger)
        engine = engine_lines(world.lc_tmp)  # before the local cloud stops (it removes them)
        summary["spool_files_left"] = [p.name for p in world.dir.glob("spotctl.db.spool/*")
                                       if p.stat().st_size]
    finally:
        traffic.stop.set()
        oracle.halt.set()
        world.unlock_ledger()
        for name in ("gateway", "daemon", "cli"):
            world.stop(name)
        for p in world.extra_daemons:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        world.stop("localcloud")
    summary["kills"] = dict(sorted(world.kills.items()))
    summary["stats"] = {k if isinstance(k, str) else str(k): v
                        for k, v in sorted(world.stats.items(), key=lambda kv: str(kv[0]))}
    acc = summary["usage"] = accounting(world, traffic, oracle, rows, engine, args.slack_s)
    dump(world, traffic, oracle, t0)
    summary["real_seconds"] = round(time.monotonic() - t0, 1)  # clock-ok
    s = summary.get("settle", {})
    eng = acc["engine"]
    bars = {
        "0 orphan VMs at settle": s.get("orphans_at_settle") == [] and s.get("live_vms") == 1,
        "0 VMs after down": summary.get("vms_after_down") == 0,
        "invoice = ledger": bool(summary.get("invoice", {}).get("equal")),
        "ledger check clean": summary.get("ledger_check_exit") == 0,
        "every completed request has its row, with its tokens": (
            acc["ok_without_row"] == 0 and acc["ok_tokens_differ"] == 0
            and acc["ok_without_request_id"] == 0 and acc["ok_row_not_ok_or_estimated"] == 0
            and acc["refused_without_row"] == 0),
        "engine tokens = ledger tokens (exact rows), the rest estimated": (
            eng["exact_rows_differ"] == 0 and eng["exact_ok_rows_without_engine_line"] == 0
            and eng["logged_without_row"]["requests"]
            <= eng["logged_without_row"]["in_flight_at_a_kill"]),
        "every refused request carries a documented code": not acc["undocumented_refusals"],
        "the gate never failed open": acc["served_while_billing_unknown"] == 0,
        "no usage left in the spool": not summary.get("spool_files_left"),
        "no spotctl process crashed (exited by itself, or a traceback)": not crashes(world,
                                                                                 summary),
    }
    summary["crashes"] = crashes(world, summary)
    summary["steps_seen_unfinished"] = world.steps_seen
    summary["steps_killed"] = world.steps_killed
    summary["bars"] = bars
    print(json.dumps(summary, indent=2, default=str))
    return 0 if all(bars.values()) else 1


def crashes(world: World, summary: dict) -> dict[str, int]:
    """Processes that ended without being killed, and tracebacks in any log (a daemon or a
    gateway must handle every fault this bench makes: one line, and go on)."""
    out = {k: v for k, v in summary.get("stats", {}).items()
           if "exited by itself" in k or k.startswith("two daemons at once")}
    for name in ("daemon.log", "gateway.log", "cli.log"):
        path = world.dir / name
        n = path.read_text(errors="replace").count("Traceback (most recent call last)") \
            if path.exists() else 0
        if n:
            out[f"tracebacks in {name}"] = n
    return out


def _utc(epoch: float):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == AS_SPOTCTL:
        run_spotctl_on_host_clock(sys.argv[2:])
    else:
        raise SystemExit(main())
