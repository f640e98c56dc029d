"""``spotctl demo``: the whole tool on the embedded local cloud, a simulated day in ~a minute.

One call runs it all: the workspace, the local cloud, a gateway key, ``up`` of the tier, the
daemon and the gateway, the day's traffic (:mod:`spotctl.demo.run`), the tier's release, and the
``cost`` and ``events`` read back from the ledger afterwards. While the day runs, ``on_view``
receives what a person watching wants to see (simulated time, requests, spend, gate, tier).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from spotctl.clock import from_ms, iso, to_ms
from spotctl.errors import UsageError

READ_BACK = (["cost", "--window", "24h"], ["events", "--since", "24h"])
REFRESH_S = 0.5


@dataclass
class DemoView:
    sim_ms: int = 0
    codes: dict[str, int] = field(default_factory=dict)  # outcome → requests ("ok", 429, …)
    spend_micros: int = 0  # the last 24 simulated hours, read from the ledger
    spend_status: str = "ok"  # its observability
    gate: str = "?"  # the gateway's /readyz
    tiers: str = "?"

    @property
    def sim_time(self) -> str:
        return iso(from_ms(self.sim_ms))[:16].replace("T", " ")


@dataclass
class DemoResult:
    directory: Path
    config_path: Path
    took_s: float  # real seconds
    read_back: list[tuple[list[str], str]]  # (spotctl args, what the command printed)


def run_demo(directory: Path, *, seconds: float = 60.0, engine: str = "builtin",
             log: Callable[[str], None] = print,
             on_view: Callable[[DemoView], None] | None = None,
             width: int = 100) -> DemoResult:
    """Run the demo in ``directory`` (only a previous demo workspace there is replaced). A
    failure stops every process it started and is a usage error naming the logs; ``width``:
    the columns the read-back commands' tables fit."""
    import importlib.util
    import json

    from spotctl.demo.run import TIER, Demo

    if importlib.util.find_spec("openai") is None:
        raise UsageError("spotctl demo drives its traffic with the OpenAI SDK: "
                         "pip install 'spotctl[demo]' (make demo installs it)")
    if engine != "builtin":
        raise UsageError("--engine vllm is not wired into the demo yet; the real vLLM "
                         "engine runs in `make test` (tests/test_vllm_real.py)")
    if not 20 <= seconds <= 3600:
        raise UsageError("--seconds must be between 20 and 3600")
    d = Demo(directory, seconds=seconds, engine=engine)
    t0 = time.monotonic()  # clock-ok: the demo's own real duration, for people
    try:
        d.prepare()
        log(f"spotctl demo: workspace {d.dir} — local cloud, gateway and daemon from the real "
            f"code; one simulated day at {d.speed:.0f}x")
        d.start_cloud()
        out = d.spotctl("keys", "create", "demo", "--json")
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        d.key = json.loads(out.stdout)["key"]
        log(f"up {TIER} (spot first)…")
        out = d.spotctl("up", TIER)
        if out.returncode != 0:
            raise RuntimeError(f"spotctl up failed: {out.stderr.strip()}")
        d.start("daemon", "daemon")
        d.start("gateway", "gateway")
        d.wait_http(f"http://127.0.0.1:{d.gateway_port}/healthz")
        d.run_day(on_tick=_watcher(d, on_view))
        log("the simulated day reached the present: releasing the tier…")
        d.finish()
    except KeyboardInterrupt:
        d.stop_all()
        raise
    except Exception as exc:
        d.stop_all()
        raise UsageError(f"demo failed: {exc} (logs in {d.dir})") from None
    d.stop_all()
    took = time.monotonic() - t0  # clock-ok
    return DemoResult(d.dir, d.config_path, took,
                      [(args, _run_plain(str(d.config_path), args, width)) for args in READ_BACK])


def _watcher(d, on_view: Callable[[DemoView], None] | None):
    """The run's tick: every ``REFRESH_S`` real seconds, the view read afresh and handed on."""
    import contextlib

    from spotctl.config import load_config

    cfg = load_config(d.config_path)
    view = DemoView()
    next_at = 0.0

    def tick(_demo) -> None:
        nonlocal next_at
        now = time.monotonic()  # clock-ok: display refresh cadence
        if on_view is None or now < next_at:
            return
        next_at = now + REFRESH_S
        view.sim_ms = to_ms(d.clock.now())
        view.codes = dict(d.stats.codes)
        with contextlib.suppress(Exception):  # the display only, never the demo
            view.spend_micros, view.spend_status = _spend_so_far(cfg, view.sim_ms)
        with contextlib.suppress(Exception):
            import httpx

            r = httpx.get(f"http://127.0.0.1:{d.gateway_port}/readyz", timeout=1).json()
            view.gate = r.get("gate", "?")
            view.tiers = ", ".join(f"{k}: {v}" for k, v in r.get("tiers", {}).items())
        on_view(view)

    return tick


def _spend_so_far(cfg, end_ms: int) -> tuple[int, str]:
    from spotctl.ledger.db import Ledger
    from spotctl.services.cost import spend_between

    with Ledger(cfg.ledger_path, readonly=True) as led:
        r = spend_between(led, end_ms - 86_400_000, end_ms, cfg)
    return r.micros, r.status


def _run_plain(cfg: str, args: list[str], width: int) -> str:
    """What ``spotctl --config cfg args`` prints, in a fresh process on the real clock."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("SPOTCTL_CLOCK",)}
    env["COLUMNS"] = str(width)  # the tables fit the console they are printed into
    out = subprocess.run([sys.executable, "-m", "spotctl", "--config", cfg, *args],  # noqa: S603
                         capture_output=True, text=True, env=env, check=False, timeout=120)
    return out.stdout + out.stderr
