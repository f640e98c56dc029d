"""Pollers on several hosts sharing one PostgreSQL ledger: one poll per provider per interval, the
others exit 0 saying they skipped, no duplicate sample, no lock error (issue 14 §2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

from spotctl.clock import iso
from spotctl.config import parse_config
from spotctl.ledger.db import Ledger

PY = [sys.executable, "-m", "spotctl"]


def _dupes(led: Ledger) -> int:
    return led.conn.execute(
        "SELECT count(*) FROM (SELECT provider, account, resource_id, observed_ms, count(*) AS c "
        "FROM billing_samples GROUP BY provider, account, resource_id, observed_ms "
        "HAVING count(*) > 1) d").fetchone()[0]


def test_cron_pollers_on_two_hosts_record_one_poll_per_interval(localcloud, pg_url, tmp_path):
    """Three minutes; each minute six `poll-billing` processes start at once, three per host
    (two config files, as two machines have): one poll per minute is recorded."""
    localcloud.handle.cloud.create_vm("spotctl-x", "n3-H100x1")
    hosts = []
    for name in ("host-a", "host-b"):
        d = tmp_path / name
        d.mkdir()
        (d / "spotctl.toml").write_text(
            localcloud.config_toml().replace('[ledger]\npath = "spotctl.db"',
                                             f'[ledger]\nurl = "{pg_url}"'))
        hosts.append(d / "spotctl.toml")
    runs = []
    for _ in range(3):
        localcloud.clock.advance(60)
        now = iso(localcloud.clock.now())  # the subprocesses' clock: this minute, fixed
        procs = [subprocess.Popen([*PY, "--config", str(cfg), "poll-billing", "--json"],
                                  env={**os.environ, "LC_KEY": localcloud.api_key,
                                       "SPOTCTL_CLOCK": f"fixed:{now}"},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for cfg in hosts * 3]
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        runs += [json.loads(out) for out, _ in outs]
        assert not any("locked" in o + e or "Traceback" in e for o, e in outs)
    polled = [r for r in runs if r["providers"]]
    skipped = [r for r in runs if r["skipped"]]
    assert len(polled) == 3 and len(skipped) == 15  # one per minute, five skipped each minute
    assert all("lc: " in r["skipped"][0] and "skipped" in r["skipped"][0] for r in skipped)
    with Ledger(pg_url) as led:
        assert led.conn.execute("SELECT count(*) FROM billing_polls").fetchone() == (3,)
        assert _dupes(led) == 0
    check = subprocess.run([*PY, "--config", str(hosts[1]), "ledger", "check"],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr


def test_pollers_in_threads_race_for_the_same_interval(localcloud, pg_url, tmp_path):
    """Eight pollers released at the same instant against one PostgreSQL ledger."""
    from spotctl.billing.poller import poll_shared

    localcloud.handle.cloud.create_vm("spotctl-x", "n3-H100x1")
    cfg = parse_config(localcloud.config_toml().replace(
        '[ledger]\npath = "spotctl.db"', f'[ledger]\nurl = "{pg_url}"'), tmp_path / "s.toml")
    with Ledger(cfg.ledger_target):
        pass
    localcloud.clock.advance(60)
    start = threading.Barrier(8)
    results: list[tuple[int, int]] = []

    def poller() -> None:
        with Ledger(cfg.ledger_target) as led:
            start.wait()
            outcomes, skipped = poll_shared(cfg, led, localcloud.clock)
            results.append((len(outcomes), len(skipped)))

    threads = [threading.Thread(target=poller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [(0, 1)] * 7 + [(1, 0)]
    with Ledger(cfg.ledger_target) as led:
        assert led.conn.execute("SELECT count(*), min(outcome) FROM billing_polls"
                                ).fetchone() == (1, "ok")
        assert _dupes(led) == 0
