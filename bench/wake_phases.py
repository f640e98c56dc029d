"""Wake phases on the local cloud: a cold launch vs a relaunch that reuses the weights volume vs
a wake from hibernation, side by side, N rounds each; medians.

Everything is real except the provider's own transition times, which come from the local
cloud's model (create 90 s, restore 60 s of its clock, the same on every run): the VM really runs
its cloud-init user_data (volume found or formatted, caches, systemd unit), `vllm serve` really
starts (the built-in engine, via the local cloud's shim), and readiness is a real completion.
Wall-clock seconds are measured around each operation (API calls + boot + engine start +
first completion), and split per phase: ``wall_attach_s`` (attaching the weights volume,
detaching it first if needed, until the API shows it attached), ``wall_engine_s`` (from the VM
being ACTIVE and the volume attached to the first real completion: the rest of the boot script,
format or not, mount, the systemd unit, the engine's start and its first completion) and
``wall_api_s`` (the rest: discovery, creates, the state polls). The backend's own phases
(``provisioning``, ``restoring``, ``attach_volume``, ``engine_loading``, ``first_completion``)
are in the local cloud's seconds: its clock moves only through the provider's modelled
transitions, so the phases that are real work read 0 there.

    .venv/bin/python bench/wake_phases.py [--rounds 5] [--json]

What it cannot show: the time a GPU VM takes to download and load real weights, which the
volume is there to save (the built-in engine loads nothing); see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spotctl.clock import ManualClock, set_clock
from spotctl.config import parse_config
from spotctl.fleet.localcloud import LocalCloudBackend
from spotctl.localcloud.runner import serve_in_thread
from spotctl.localcloud.simclock import ManualControl
from spotctl.localcloud.vm import VmRunner

KEY = "bench-wake-key"


def timed(backend, methods: dict[str, str]) -> dict[str, float]:
    """Wrap ``backend``'s methods so the wall seconds spent in each add up under its name."""
    spent: dict[str, float] = {}
    for attr, name in methods.items():
        real = getattr(backend, attr)

        def wrapper(*a, _real=real, _name=name, **kw):
            t0 = time.perf_counter()
            try:
                return _real(*a, **kw)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - t0
        setattr(backend, attr, wrapper)
    return spent


def one_round(root: Path, n: int) -> dict:
    clock = ManualClock(datetime(2026, 11, 1, tzinfo=UTC))
    set_clock(clock)
    os.environ["BENCH_LC_KEY"] = KEY
    handle = serve_in_thread(clock, KEY, control=ManualControl(clock),
                             launcher=VmRunner(root / f"round-{n}"))
    try:
        cfg = parse_config(
            f'[[providers]]\nname = "lc"\nkind = "localcloud"\napi_key_env = "BENCH_LC_KEY"\n'
            f'base_url = "{handle.base_url}"\n[[tiers]]\nname = "bench"\nmodel = "org/tiny"\n'
            'served_model_name = "tiny"\nbackend = "localcloud"\nprovider = "lc"\n'
            'flavor = "n3-A100x1"\nvolume_gb = 50\n', root / "spotctl.toml")
        tier = cfg.tiers[0]
        backend = LocalCloudBackend(cfg, clock)
        spent = timed(backend, {"_attach": "wall_attach_s", "_ready": "wall_engine_s"})

        def measure(op) -> dict:
            spent.clear()
            t0 = time.perf_counter()
            _, timings = op()
            wall = time.perf_counter() - t0
            parts = {k: spent.get(k, 0.0) for k in ("wall_attach_s", "wall_engine_s")}
            return {"wall_s": wall, "wall_api_s": wall - sum(parts.values()), **parts,
                    **timings.phases}

        out = {}
        # no volume yet: created and formatted
        out["cold_launch"] = measure(lambda: backend.up(tier, "on-demand"))
        backend.down(tier)  # the volume stays
        # a new VM, the same volume
        out["relaunch_volume_reused"] = measure(lambda: backend.up(tier, "on-demand"))
        backend.hibernate(tier)
        out["wake_from_hibernation"] = measure(lambda: backend.wake(tier))
        backend.down(tier, delete_storage=True)
        return out
    finally:
        handle.stop()
        set_clock(None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="wake-phases-") as tmp:
        for n in range(args.rounds):
            runs.append(one_round(Path(tmp), n))
    result = {"rounds": args.rounds, "machine": f"{platform.machine()} "
              f"{os.cpu_count()} cpu, Python {platform.python_version()}", "median": {}}
    for scenario in runs[0]:
        keys = sorted({k for r in runs for k in r[scenario]})
        result["median"][scenario] = {k: round(statistics.median(
            r[scenario].get(k, 0.0) for r in runs), 3) for k in keys}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.rounds} rounds on {result['machine']} (medians)")
    for scenario, m in result["median"].items():
        sim = ", ".join(f"{k}={v:g}" for k, v in m.items() if not k.startswith("wall"))
        print(f"  {scenario:24s} wall {m['wall_s']:.2f} s (api {m['wall_api_s']:.2f}, attach "
              f"{m['wall_attach_s']:.2f}, engine {m['wall_engine_s']:.2f})   "
              f"local-cloud clock: {sim}")
    cold = result["median"]["cold_launch"]["wall_s"]
    for scenario in ("relaunch_volume_reused", "wake_from_hibernation"):
        print(f"  {scenario} / cold_launch = "
              f"{result['median'][scenario]['wall_s'] / cold:.2f}")


if __name__ == "__main__":
    main()
