"""Many writers on one ledger: poll slots (one poll per provider per interval) and leases with
fencing (one daemon per tier; kill the holder and another takes over within a lease period)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from spotctl.errors import LeaseLost
from spotctl.ledger.coordination import (
    acquire_lease,
    assert_lease,
    current_lease,
    fenced,
    poll_slot,
    release_lease,
    renew_lease,
)
from spotctl.ledger.db import Ledger
from spotctl.ledger.records import PollRecord
from spotctl.ledger.writes import record_poll

MIN = 60_000


def test_lease_one_holder_then_takeover_with_a_larger_token(ledger):
    a = acquire_lease(ledger, "fleet:t", "host-a", 1_000, 10_000)
    assert a is not None and a.token == 1
    assert acquire_lease(ledger, "fleet:t", "host-b", 5_000, 10_000) is None  # held
    a2 = renew_lease(ledger, a, 8_000, 10_000)
    assert a2 is not None and a2.expires_ms == 18_000 and a2.token == 1
    assert acquire_lease(ledger, "fleet:t", "host-b", 17_999, 10_000) is None
    b = acquire_lease(ledger, "fleet:t", "host-b", 18_000, 10_000)  # a stopped renewing
    assert b is not None and b.token == 2
    # the old holder is fenced: no renewal, no action, no journal write
    assert renew_lease(ledger, a2, 18_500, 10_000) is None
    with pytest.raises(LeaseLost, match="host-b"):
        assert_lease(ledger, a2, 18_500)
    with pytest.raises(LeaseLost), fenced(ledger, a2, 18_500) as conn:
        conn.execute("INSERT INTO tier_activity (tier, last_request_ms) VALUES ('x', 1)")
    assert ledger.conn.execute("SELECT count(*) FROM tier_activity").fetchone() == (0,)
    with fenced(ledger, b, 18_500) as conn:  # the holder writes
        conn.execute("INSERT INTO tier_activity (tier, last_request_ms) VALUES ('x', 1)")
    assert ledger.conn.execute("SELECT count(*) FROM tier_activity").fetchone() == (1,)
    # a lease about to lapse does not start an action that could outlive it
    with pytest.raises(LeaseLost, match="ms left"):
        assert_lease(ledger, b, 25_000, min_left_ms=5_000)
    assert release_lease(ledger, b, 20_000)
    assert current_lease(ledger, "fleet:t", 20_001) is None
    c = acquire_lease(ledger, "fleet:t", "host-a", 20_001, 10_000)
    assert c is not None and c.token == 3


_CONTENDER = textwrap.dedent("""
    import sys, time
    from spotctl.ledger.db import Ledger
    from spotctl.ledger.coordination import acquire_lease, renew_lease
    target, holder, ttl = sys.argv[1], sys.argv[2], int(sys.argv[3])
    now = lambda: int(time.time() * 1000)
    lease = None
    while True:
        with Ledger(target) as led:
            lease = (renew_lease(led, lease, now(), ttl) if lease else None) or \\
                acquire_lease(led, "fleet:t", holder, now(), ttl)
        if lease:
            print(f"HELD {lease.token} {now()}", flush=True)
        time.sleep(ttl / 4000)
""")


def _readline(proc: subprocess.Popen, timeout_s: float) -> list[str]:
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            pytest.fail(f"no line from the contender within {timeout_s} s")
    return proc.stdout.readline().split()


def test_kill_the_holder_and_another_takes_over_within_a_lease_period(ledger_target):
    ttl_ms = 2_000
    target = str(ledger_target)
    with Ledger(ledger_target):
        pass  # create and migrate before the contenders race

    def contender(name: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", _CONTENDER, target, name, str(ttl_ms)],
                                stdout=subprocess.PIPE, text=True, bufsize=1)

    procs = [contender("a")]
    try:
        assert _readline(procs[0], 60)[:2] == ["HELD", "1"]
        procs.append(contender("b"))
        time.sleep(2.5)  # b tries meanwhile (more than a lease period) and must not get it
        procs[0].kill()
        killed_ms = int(time.time() * 1000)
        line = _readline(procs[1], 30)
        assert line[0] == "HELD" and int(line[1]) == 2  # a new holding: the token moved on
        # not while a still held it, and within one lease period after (+ one retry step and
        # a noisy machine's slack)
        assert 0 <= int(line[2]) - killed_ms <= ttl_ms + 1_500
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


def test_poll_slot_one_poll_per_provider_per_interval(pg_url):
    t0 = 10 * MIN + 5_000
    with Ledger(pg_url) as a, Ledger(pg_url) as b:
        with poll_slot(a, "hs", t0, MIN) as slot_a:
            assert slot_a.acquired
            with poll_slot(b, "hs", t0 + 100, MIN) as slot_b:  # a is polling it now
                assert not slot_b.acquired and "polling it now" in slot_b.reason
            with poll_slot(b, "rp", t0 + 100, MIN) as other:  # another provider is free
                assert other.acquired
            record_poll(a, PollRecord("hs", t0, t0 + 300, "ok"))
        with poll_slot(b, "hs", t0 + 20_000, MIN) as slot_b:  # polled this interval already
            assert not slot_b.acquired and "already polled" in slot_b.reason
        with poll_slot(b, "hs", t0 + MIN, MIN) as slot_b:  # the next interval is b's
            assert slot_b.acquired


def test_poll_slot_a_failed_poll_does_not_take_the_interval(pg_url):
    t0 = 10 * MIN
    with Ledger(pg_url) as a, Ledger(pg_url) as b:
        with poll_slot(a, "hs", t0, MIN) as slot:
            assert slot.acquired
            record_poll(a, PollRecord("hs", t0, t0 + 300, "timeout", "timed out"))
        with poll_slot(b, "hs", t0 + 1_000, MIN) as slot:
            assert slot.acquired  # another host retries a provider the first could not reach


def test_poll_slot_is_released_when_the_holder_dies(pg_url):
    code = textwrap.dedent("""
        import sys, time
        from spotctl.ledger.db import Ledger
        from spotctl.ledger.coordination import poll_slot
        with Ledger(sys.argv[1]) as led, poll_slot(led, "hs", 0, 60000) as s:
            print("HELD" if s.acquired else "NO", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, pg_url], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "HELD"
        with Ledger(pg_url) as led:
            with poll_slot(led, "hs", 0, MIN) as s:
                assert not s.acquired
            proc.kill()
            proc.wait(10)
            deadline = time.monotonic() + 10
            while True:  # the server notices the dead session and frees its lock
                with poll_slot(led, "hs", 0, MIN) as s:
                    if s.acquired:
                        break
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait(10)


def test_sqlite_poll_slot_waits_for_the_other_run_then_polls(tmp_path):
    with Ledger(tmp_path / "l.db") as a, Ledger(tmp_path / "l.db") as b:
        with poll_slot(a, "hs", 0, MIN) as s:
            assert s.acquired
            with poll_slot(b, "hs", 0, MIN, wait_s=0.3) as s2:
                assert not s2.acquired and "held the lock" in s2.reason
        record_poll(a, PollRecord("hs", 0, 300, "ok"))
        with poll_slot(b, "hs", 1_000, MIN) as s3:  # no interval check on one host
            assert s3.acquired
