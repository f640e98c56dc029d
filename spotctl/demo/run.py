"""`spotctl demo`: a simulated day on the embedded local cloud, in about a minute.

Everything is the real code in real processes: the local cloud (``spotctl localcloud serve``),
the gateway (``spotctl gateway``) and the daemon (``spotctl daemon``: billing polls, idle
hibernation, preemption recovery), all on one simulated timeline (a clock file written by the
local cloud, read by every process through ``SPOTCTL_CLOCK=file:...``). Traffic goes through
the gateway with the OpenAI SDK. The simulated day ends at the real present moment, so
``spotctl cost --window 24h`` right after the demo shows that day. No number is precomputed.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from spotctl.clock import FileClock, iso, real_epoch, to_ms
from spotctl.demo.scenario import DAY, DayScenario
from spotctl.errors import UsageError
from spotctl.localcloud.engines import free_port

TIER = "llama-demo"
MODEL = "llama-demo"
CONFIG_MARK = "# Written by `spotctl demo`"
CONFIG = CONFIG_MARK + """: a spot-first tier on the embedded local cloud.
[ledger]
path = "spotctl.db"

[billing]
poll_interval_s = 60
gap_after_s = 600      # the demo runs 1440x real time: allow for a loaded 2-core machine
stale_after_s = 900
timeout_s = 0.4
deleted_poll_every_s = 600

[[providers]]
name = "localcloud"
kind = "localcloud"
api_key_env = "SPOTCTL_LOCALCLOUD_KEY"
base_url = "{base_url}"

[[tiers]]
name = "{tier}"
model = "{model}"
backend = "localcloud"
provider = "localcloud"
flavor = "n3-H100x1"
capacity = "spot-first"
spot_retry_minutes = 20
idle_minutes = 45
# capacity of the emulated H100 for utilisation: Llama-3.1-8B FP8, vLLM 0.10.0, MLPerf
# Inference v5.1 server scenario (Red Hat): 5,103 output tokens/s on one H100
rated_output_tokens_per_s = 5103

[budget]
daily_usd = 200
timezone = "UTC"

[gateway]
listen = "127.0.0.1:{gateway_port}"
wake_timeout_s = 30
gate_cache_s = 0.1

[fleet]
# simulated seconds: at 1441x the gateways publish their open requests every ~2.4 simulated
# minutes (gate_cache_s of real time), so a drain must be able to wait longer than that
drain_timeout_s = 1800
"""


@dataclass
class Stats:
    codes: Counter = field(default_factory=Counter)
    prompt: int = 0
    completion: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def requests(self) -> int:
        return sum(self.codes.values())


class Demo:
    def __init__(self, workdir: Path, *, seconds: float = 60.0, engine: str = "builtin",
                 scenario: DayScenario | None = None, log=print) -> None:
        self.dir = workdir.resolve()
        self.seconds = seconds
        self.engine = engine
        self.scenario = scenario or DayScenario()
        self.log = log
        self.procs: dict[str, subprocess.Popen] = {}
        self.stats = Stats()
        self.events_done: set[int] = set()
        self.key = ""
        self.env = dict(os.environ)

    # -- set-up ---------------------------------------------------------------------------
    def prepare(self) -> None:
        import shutil

        if self.dir.exists():  # only a previous demo workspace is replaced, never anything else
            cfg = self.dir / "spotctl.toml"
            ours = cfg.is_file() and cfg.read_text(encoding="utf-8").startswith(CONFIG_MARK)
            if not ours and (not self.dir.is_dir() or any(self.dir.iterdir())):
                raise UsageError(f"{self.dir} exists and is not a demo workspace; give "
                                 "another --dir")
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.cloud_port, self.gateway_port = free_port(), free_port()
        self.base_url = f"http://127.0.0.1:{self.cloud_port}/v1"
        self.control = f"http://127.0.0.1:{self.cloud_port}/_control"
        cfg = CONFIG.format(base_url=self.base_url, tier=TIER, model=MODEL,
                            gateway_port=self.gateway_port)
        self.config_path = self.dir / "spotctl.toml"
        _write_private(self.config_path, cfg)
        lc_key = "lc-" + secrets.token_urlsafe(16)
        _write_private(self.dir / "env", f"SPOTCTL_LOCALCLOUD_KEY={lc_key}\n")
        self.clock_file = self.dir / "clock.json"
        self.env.update({"SPOTCTL_LOCALCLOUD_KEY": lc_key, "SPOTCTL_CONFIG": str(self.config_path),
                         "SPOTCTL_CLOCK": f"file:{self.clock_file}", "NO_COLOR": "1"})
        now = real_epoch()
        self.real_start = now
        self.day_start = datetime.fromtimestamp(now, UTC) - DAY
        # simulated time catches up with real time after `seconds`: speed = 1 + day/seconds
        self.speed = 1 + DAY.total_seconds() / self.seconds

    def spotctl(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "spotctl", *args], env=self.env,  # noqa: S603
                              capture_output=True, text=True, timeout=600, check=False, **kw)

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "spotctl", *args],  # noqa: S603
                                env=self.env,
                                stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_cloud(self) -> None:
        self.start("localcloud", "localcloud", "serve", "--listen",
                   f"127.0.0.1:{self.cloud_port}", "--speed", f"{self.speed:.4f}", "--start",
                   iso(self.day_start), "--clock-file", str(self.clock_file), "--engine",
                   "builtin", "--dark-hang-s", "1")
        self.wait_http(f"{self.control}/health")
        self.clock = FileClock(self.clock_file)

    def wait_http(self, url: str, timeout_s: float = 30) -> None:
        waited = 0.0
        while waited < timeout_s:
            try:
                if httpx.get(url, timeout=2).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            threading.Event().wait(0.1)
            waited += 0.1
        raise RuntimeError(f"{url} did not answer; see the logs in {self.dir}")

    def sim_offset(self) -> timedelta:
        return self.clock.now() - self.day_start

    # -- the day --------------------------------------------------------------------------
    def run_day(self, on_tick=None) -> None:
        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.gateway_port}/v1",
                               api_key=self.key, max_retries=0, timeout=60)
        pool = ThreadPoolExecutor(16)
        import random

        rng = random.Random(7)  # noqa: S311 - traffic shape, not security
        owed = 0.0
        last = self.sim_offset()
        while True:
            now = self.sim_offset()
            if now >= DAY:
                break
            self._scripted_events(now)
            elapsed_min = (now - last).total_seconds() / 60
            owed += self.scenario.rate_per_min(now) * elapsed_min
            last = now
            while owed >= 1:
                owed -= 1
                pool.submit(self._request, client, rng.randint(*self.scenario.max_tokens),
                            rng.randint(3, 60))
            if on_tick:
                on_tick(self)
            threading.Event().wait(0.05)
        # the day has reached the present: follow real time before waiting for the requests
        # still in flight, so the simulated clock does not run past it while we wait
        httpx.post(f"{self.control}/clock", json={"real": True}, timeout=10)
        pool.shutdown(wait=True)

    def _request(self, client, max_tokens: int, words: int) -> None:
        import openai

        prompt = " ".join(["word"] * words)
        try:
            stream = client.chat.completions.create(
                model=MODEL, max_tokens=max_tokens, stream=True,
                messages=[{"role": "user", "content": prompt}])
            for _ in stream:
                pass
            code = "ok"
        except openai.APIStatusError as exc:
            code = str(getattr(exc, "code", None) or exc.status_code)
        except openai.APIError as exc:
            code = type(exc).__name__
        with self.stats.lock:
            self.stats.codes[code] += 1

    def _scripted_events(self, now: timedelta) -> None:
        for i, ev in enumerate(self.scenario.events):
            if i in self.events_done or now < ev.at:
                continue
            self.events_done.add(i)
            if ev.kind == "preempt":
                vms = httpx.get(f"{self.base_url}/core/virtual-machines", timeout=10,
                                headers={"api_key": self.env["SPOTCTL_LOCALCLOUD_KEY"]}).json()
                spot = [vm for vm in vms.get("instances", [])  # spot = a "-spot" flavor
                        if str((vm.get("flavor") or {}).get("name", "")).endswith("-spot")]
                httpx.post(f"{self.control}/spot", json={"available": False}, timeout=10)
                for vm in spot:
                    httpx.post(f"{self.control}/vms/{vm['id']}/preempt", timeout=10)
                self._later(timedelta(hours=2), lambda: httpx.post(
                    f"{self.control}/spot", json={"available": True}, timeout=10))
            elif ev.kind == "billing_dark":
                httpx.post(f"{self.control}/faults", json={"kind": "billing_dark",
                                                           "minutes": ev.minutes}, timeout=10)

    def _later(self, after: timedelta, action) -> None:
        due = self.sim_offset() + after

        def wait() -> None:
            while self.sim_offset() < due:
                threading.Event().wait(0.05)
            action()

        threading.Thread(target=wait, daemon=True).start()

    # -- tear-down --------------------------------------------------------------------------
    def finish(self) -> None:
        """At the real present: release the tier, record final totals."""
        self.spotctl("down", TIER)
        self.spotctl("poll-billing")  # the deleted VM's final total, right now

    def stop_all(self) -> None:
        for name in ("gateway", "daemon", "localcloud"):
            proc = self.procs.get(name)
            if proc and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


__all__ = ["Demo", "to_ms"]
