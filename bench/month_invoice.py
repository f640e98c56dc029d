"""Thirty simulated days on the local cloud, polled every simulated minute by the real poller
and the real Hyperstack adapter over loopback HTTP, with spot preemptions, hibernations,
deletions, top-ups and every fault kind. Checks that the ledger's spend for the month equals the
local cloud's invoice exactly, that every fault window shows as degraded or lost (never $0),
and that a falling cumulative is recorded, not refunded. (The same scenario over two days runs
in `make test`: tests/test_localcloud_billing.py.)

    .venv/bin/python bench/month_invoice.py [--days 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from spotctl.billing.poller import poll_once
from spotctl.clock import ManualClock, set_clock, to_ms
from spotctl.config import parse_config
from spotctl.ledger.db import Ledger
from spotctl.localcloud.runner import serve_in_thread
from spotctl.localcloud.simclock import ManualControl
from spotctl.services.cost import spend_between

FAULTS = ("http_500", "http_429", "malformed_json", "http_401", "cumulative_down", "vanish",
          "billing_dark")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=30)
    args = ap.parse_args(argv)
    clock = ManualClock(datetime(2026, 10, 1, tzinfo=UTC))
    set_clock(clock)
    os.environ["LC_KEY"] = "month-key"
    lc = serve_in_thread(clock, "month-key", control=ManualControl(clock), dark_hang_s=1.5)
    cloud = lc.cloud
    work = Path(tempfile.mkdtemp())
    cfg = parse_config(f'[billing]\ntimeout_s = 1\n[[providers]]\nname = "lc"\nkind = '
                       f'"localcloud"\napi_key_env = "LC_KEY"\nbase_url = "{lc.base_url}"\n'
                       '[[tiers]]\nname = "big"\nmodel = "m"\n', work / "spotctl.toml")
    led = Ledger(cfg.ledger_path)
    start = to_ms(clock.now())
    t0 = time.perf_counter()
    vol = cloud.create_volume("spotctl-big-weights", 500)
    vm = cloud.create_vm("spotctl-big", "n3-H100x1-spot")
    polls = 0
    fault_windows = []
    for day in range(args.days):
        for minute in range(1440):
            hour = minute // 60
            if minute == 2 * 60:  # quiet hours: hibernate
                cloud.hibernate(vm.id)
            if minute == 7 * 60:
                cloud.restore(vm.id)
            if minute == 11 * 60 and day % 3 == 0:  # spot preemption, relaunch
                httpx.post(f"{lc.control_url}/vms/{vm.id}/preempt", timeout=10)
                vm = cloud.create_vm("spotctl-big", "n3-H100x1-spot" if day % 2 == 0
                                     else "n3-H100x1")
            if minute == 13 * 60 and day % 5 == 1:  # keep the prepaid account above zero
                httpx.post(f"{lc.control_url}/topup", json={"usd": "600"}, timeout=10)
            if minute == 15 * 60:
                kind = FAULTS[day % len(FAULTS)]
                body = {"kind": kind, "minutes": 20}
                if kind in ("vanish", "cumulative_down"):
                    body["resource"] = f"vm:{vm.id}"
                httpx.post(f"{lc.control_url}/faults", json=body, timeout=10)
                fault_windows.append((kind, to_ms(clock.now()), to_ms(clock.now()) + 20 * 60_000))
            clock.advance(60)
            poll_once(cfg, led, clock)
            polls += 1
            del hour
        print(f"day {day + 1}: {polls} polls, {time.perf_counter() - t0:.0f} s", flush=True)
    cloud.delete_vm(vm.id)
    cloud.delete_volume(vol.id)
    for _ in range(12):
        clock.advance(60)
        poll_once(cfg, led, clock)
    end = to_ms(clock.now())
    total = spend_between(led, start, end, cfg)
    invoice = httpx.get(f"{lc.control_url}/invoice", timeout=10).json()["total_micros"]
    window_status = {}
    for kind, a, b in fault_windows:
        r = spend_between(led, a, b + 5 * 60_000, cfg)
        window_status.setdefault(kind, set()).add(r.status)
    anomalies = led.conn.execute("SELECT kind, count(*) FROM billing_anomalies GROUP BY kind"
                                 ).fetchall()
    print(f"\n{args.days} days, {polls} polls in {time.perf_counter() - t0:.0f} s")
    print(f"ledger spend  {total.micros} micro-USD (complete: {total.complete}, "
          f"status {total.status})")
    print(f"local invoice {invoice} micro-USD -> {'EQUAL' if total.micros == invoice else 'DIFF'}")
    print(f"fault windows: { {k: sorted(v) for k, v in window_status.items()} }")
    print(f"anomalies: {anomalies}")
    lc.stop()
    ok = total.micros == invoice and all("ok" not in v for k, v in window_status.items()
                                          if k not in ("cumulative_down", "vanish"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
