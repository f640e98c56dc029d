"""Cron pollers on several hosts sharing one PostgreSQL ledger (issue 14 §4): HOSTS hosts (one
config file each, as separate machines have) start `spotctl poll-billing` every minute for
MINUTES minutes, each with its own start jitter, against the local cloud with two providers.
Expected: MINUTES polls recorded per provider, 0 duplicate samples, every run exit 0 (the others
say they skipped), `ledger check` clean.

Time is simulated at SPEED x (the local cloud and every poller share one scaled clock), so 10
minutes take 10 * 60 / SPEED real seconds; each run is still a whole process.

    .venv/bin/python bench/pg_pollers.py [--hosts 3] [--minutes 10] [--speed 6]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pg_common import running_postgres
from spotctl.clock import ScaledClock, Timeline, iso
from spotctl.ledger.db import Ledger
from spotctl.localcloud.runner import serve_in_thread

KEY = "lc-bench-key"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--speed", type=float, default=6.0)
    ap.add_argument("--jitter-s", type=float, default=3.0, help="simulated start jitter")
    args = ap.parse_args(argv)
    out = Path(__file__).resolve().parent / "out" / "pg-pollers"
    out.mkdir(parents=True, exist_ok=True)
    # simulated time starts 5 s before a minute boundary
    sim0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC).timestamp() - 5
    real0 = time.time()
    timeline = Timeline(datetime.fromtimestamp(sim0, UTC), real0, args.speed)
    clock = ScaledClock(timeline)
    spec = f"scaled:{iso(timeline.sim_anchor)}@{real0}x{args.speed}"
    lc = serve_in_thread(clock, KEY, dark_hang_s=5)
    lc.cloud.create_vm("spotctl-x", "n3-H100x1")
    rng = random.Random(7)
    with running_postgres() as pg:
        url = pg.url(pg.create_database())
        Ledger(url).close()
        cfgs = []
        for h in range(args.hosts):
            cfg = out / f"host-{h}.toml"
            cfg.write_text(
                f'[ledger]\nurl = "{url}"\n[billing]\ntimeout_s = 5\n'
                + "".join(f'[[providers]]\nname = "{n}"\nkind = "localcloud"\napi_key_env = '
                          f'"LC_KEY"\nbase_url = "{lc.base_url}"\naccount = "{n}"\n'
                          for n in ("lc-a", "lc-b")))
            cfgs.append(cfg)
        env = {**os.environ, "LC_KEY": KEY, "SPOTCTL_CLOCK": spec}
        runs: list[dict] = []
        lock = threading.Lock()

        def cron(cfg: Path) -> None:
            for minute in range(1, args.minutes + 1):
                at = sim0 + 5 + (minute - 1) * 60 + rng.uniform(0, args.jitter_s)
                while (delay := (at - clock.now().timestamp()) / args.speed) > 0:
                    time.sleep(min(delay, 0.5))
                t0 = time.perf_counter()
                p = subprocess.run([sys.executable, "-m", "spotctl", "--config", str(cfg),
                                    "poll-billing", "--json"], capture_output=True, text=True,
                                   env=env, timeout=120)
                rec = {"host": cfg.stem, "minute": minute, "rc": p.returncode,
                       "s": time.perf_counter() - t0, "stderr": p.stderr.strip()[-300:]}
                try:
                    js = json.loads(p.stdout)
                    rec["polled"] = [o["provider"] for o in js["providers"]]
                    rec["skipped"] = js.get("skipped", [])
                except ValueError:
                    rec["polled"], rec["skipped"] = [], []
                with lock:
                    runs.append(rec)

        threads = [threading.Thread(target=cron, args=(c,)) for c in cfgs]
        t_start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t_start
        with Ledger(url) as led:
            polls = dict(led.conn.execute(
                "SELECT provider, count(*) FROM billing_polls GROUP BY provider").fetchall())
            ok_polls = dict(led.conn.execute(
                "SELECT provider, count(*) FROM billing_polls WHERE outcome = 'ok' "
                "GROUP BY provider").fetchall())
            dupes = led.conn.execute(
                "SELECT count(*) FROM (SELECT provider, account, resource_id, observed_ms "
                "FROM billing_samples GROUP BY 1, 2, 3, 4 HAVING count(*) > 1) d").fetchone()[0]
            samples = led.conn.execute("SELECT count(*) FROM billing_samples").fetchone()[0]
        check = subprocess.run([sys.executable, "-m", "spotctl", "--config", str(cfgs[0]),
                                "ledger", "check", "--json"], capture_output=True, text=True,
                               env=env)
    lc.stop()
    bad = [r for r in runs if r["rc"] != 0]
    per_minute = {}
    for r in runs:
        for prov in r["polled"]:
            per_minute.setdefault((r["minute"], prov), []).append(r["host"])
    print(f"{args.hosts} hosts x {args.minutes} minutes at {args.speed:g}x "
          f"({wall:.0f} s real): {len(runs)} runs, {len(bad)} non-zero exits")
    print(f"polls recorded per provider: {polls} (ok: {ok_polls}); samples {samples}; "
          f"duplicate samples: {dupes}")
    print(f"runs that polled a provider: {sum(1 for r in runs if r['polled'])}; "
          f"provider-skips: {sum(len(r['skipped']) for r in runs)}")
    doubles = {k: v for k, v in per_minute.items() if len(v) > 1}
    print(f"minutes where a provider was polled twice: {len(doubles)}")
    print(f"ledger check: exit {check.returncode}, ok={json.loads(check.stdout)['ok']}")
    print(f"median run {sorted(r['s'] for r in runs)[len(runs) // 2]:.2f} s")
    for r in bad[:3]:
        print("FAILED RUN", r)


if __name__ == "__main__":
    main()
