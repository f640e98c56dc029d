"""The gateway's ledger functions: usage rows and rollups, keys, open requests per tier."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotctl.errors import UsageError
from spotctl.ledger.check import check_ledger
from spotctl.ledger.db import Ledger, _statements
from spotctl.ledger.keys import create_key, hash_key, list_keys, revoke_key
from spotctl.ledger.records import UsageRecord
from spotctl.ledger.schema import MIGRATIONS
from spotctl.ledger.usage import (
    last_request_ms,
    open_requests,
    output_tokens_since,
    publish_tiers,
    record_usage,
    touch_tiers,
)


def _row(i: int, key: str = "a", tier: str = "t", completed: int = 60_000, out: int = 5,
         est: bool = False) -> UsageRecord:
    return UsageRecord(id=f"r{i}", started_ms=completed - 10, completed_ms=completed,
                       status="ok", key_id=key, tier=tier, model="m", prompt_tokens=3,
                       completion_tokens=out, tokens_estimated=est)


def test_replaying_rows_adds_them_once_and_rollups_agree(ledger):
    rows = [_row(i, key="a" if i % 2 else "b", completed=60_000 * (1 + i % 3), out=i)
            for i in range(50)]
    assert record_usage(ledger, rows[:30]) == 30
    assert record_usage(ledger, rows) == 20  # a replayed spool overlapping what is written
    assert record_usage(ledger, rows) == 0
    assert record_usage(ledger, [rows[0], rows[0]]) == 0
    assert all(r.ok for r in check_ledger(ledger)), [r for r in check_ledger(ledger) if not r.ok]
    total, per_key = output_tokens_since(ledger, 0)
    assert total == sum(range(50))
    assert per_key == {"a": sum(i for i in range(50) if i % 2),
                       "b": sum(i for i in range(50) if not i % 2)}
    (n,) = ledger.conn.execute("SELECT sum(requests) FROM usage_key_minutes").fetchone()
    assert n == 50


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.sampled_from("xyz"), st.integers(0, 5),
                          st.integers(0, 100)), max_size=60),
       st.integers(0, 6))
def test_per_key_rollup_equals_the_rows_for_any_day_start(tmp_path_factory, spec, since_min):
    with Ledger(tmp_path_factory.mktemp("k") / "l.db") as led:
        rows = [_row(i, key=k, completed=m * 60_000 + j, out=o)
                for i, (j, k, m, o) in enumerate(spec)]
        for i in range(0, len(rows), 7):  # several batches
            record_usage(led, rows[i:i + 7])
        since = since_min * 60_000
        total, per_key = output_tokens_since(led, since)
        want: dict[str, int] = {}
        for r in rows:
            if r.completed_ms >= since:
                want[r.key_id] = want.get(r.key_id, 0) + r.completion_tokens
        assert total == sum(want.values())
        assert {k: v for k, v in per_key.items() if v} == {k: v for k, v in want.items() if v}


def test_migration_backfills_the_key_rollup_from_existing_rows(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for stmt in _statements(MIGRATIONS[0]):
        conn.execute(stmt)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.executemany("INSERT INTO usage (id, started_ms, completed_ms, key_id, status, "
                     "completion_tokens) VALUES (?, 0, ?, ?, 'ok', ?)",
                     [("a", 61_000, "k1", 4), ("b", 62_000, "k1", 6), ("c", 200_000, None, 1)])
    conn.close()
    with Ledger(path) as led:
        rows = led.conn.execute("SELECT minute_ms, key_id, requests, completion_tokens FROM "
                                "usage_key_minutes ORDER BY minute_ms").fetchall()
    assert rows == [(60_000, "k1", 2, 10), (180_000, "", 1, 1)]


def test_open_requests_counts_fresh_and_recently_stale_gateways(ledger):
    publish_tiers(ledger, "gw-a", 100_000, {"big": (3, 99_000), "small": (0, 50_000)})
    publish_tiers(ledger, "gw-b", 100_000, {"big": (2, 98_000)})
    assert open_requests(ledger, "big", 101_000, 10_000) == 5
    assert open_requests(ledger, "small", 101_000, 10_000) == 0
    # gw-b stops heart-beating with 2 in flight; gw-a reports every second and drains
    publish_tiers(ledger, "gw-a", 130_000, {"big": (0, 129_000)})
    assert open_requests(ledger, "big", 130_000, 10_000) == 2  # unknown is not zero
    assert open_requests(ledger, "big", 100_000 + 120_001, 10_000) == 0  # past the drain cap
    assert open_requests(ledger, "big", 100_000 + 30_001, 10_000, drain_cap_ms=30_000) == 0
    # last_request_ms only moves forward, and a NULL does not erase it
    publish_tiers(ledger, "gw-a", 131_000, {"big": (1, None)})
    assert last_request_ms(ledger, "big") == 129_000
    touch_tiers(ledger, {"big": 140_000})
    touch_tiers(ledger, {"big": 10})
    assert last_request_ms(ledger, "big") == 140_000
    assert last_request_ms(ledger, "nope") is None


def test_keys_are_stored_as_hashes_and_revoked_once(ledger):
    key = create_key(ledger, "team-1", 5, 2_000_000)
    [info] = list_keys(ledger)
    assert info.key_sha256 == hash_key(key) and key not in str(info)
    with pytest.raises(UsageError):
        create_key(ledger, "team-1", 6, None)
    with pytest.raises(UsageError):
        create_key(ledger, "bad name!", 6, None)
    revoke_key(ledger, "team-1", 7)
    with pytest.raises(UsageError):
        revoke_key(ledger, "team-1", 8)
    assert list_keys(ledger)[0].revoked_ms == 7
