"""The usage writer writes a large batch in transactions of ``CHUNK`` rows (each holds the GIL
under a millisecond, instead of milliseconds for the whole batch: the event loop's latency
tail), and a failure part-way still ends with every row exactly once in the ledger."""

from __future__ import annotations

import pytest

from spotctl.gateway import recorder as recorder_mod
from spotctl.gateway.recorder import CHUNK, UsageRecorder
from spotctl.gateway.spool import Spool
from spotctl.ledger.db import Ledger
from spotctl.ledger.records import UsageRecord

N = 2 * CHUNK + 276


def _rows(n: int) -> list[UsageRecord]:
    t = 1_790_000_000_000
    return [UsageRecord(f"gw-test-{i:x}", t, t + 5, "ok", "k", "tier-a", "m", 9, 16, 200, 5, 5,
                     False, False) for i in range(n)]


def _recorder(tmp_path) -> UsageRecorder:
    Ledger(tmp_path / "l.db").close()
    return UsageRecorder(tmp_path / "l.db", Spool(tmp_path / "spool", "test-1", 1 << 24))


def _counts(tmp_path) -> tuple[int, int, int]:
    with Ledger(tmp_path / "l.db") as led:
        rows = led.conn.execute("SELECT count(*), count(DISTINCT id) FROM usage").fetchone()
        minutes = led.conn.execute("SELECT coalesce(sum(requests), 0) FROM usage_minutes"
                                   ).fetchone()[0]
    return rows[0], rows[1], minutes


def test_a_large_batch_is_written_in_chunks_once(tmp_path, monkeypatch):
    sizes = []
    real = recorder_mod.record_usage

    def spy(led, rows):
        sizes.append(len(rows))
        return real(led, rows)

    monkeypatch.setattr(recorder_mod, "record_usage", spy)
    rec = _recorder(tmp_path)
    rec._pending = _rows(N)
    rec._make_durable()
    assert sizes == [CHUNK, CHUNK, 276]
    assert rec.written == N and rec.durable and rec.spool.rows == 0
    assert _counts(tmp_path) == (N, N, N)


def test_a_failure_part_way_still_ends_with_every_row_once(tmp_path, monkeypatch):
    calls = []
    real = recorder_mod.record_usage

    def second_fails(led, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise OSError("disk I/O error")
        return real(led, rows)

    monkeypatch.setattr(recorder_mod, "record_usage", second_fails)
    rec = _recorder(tmp_path)
    rec._pending = _rows(N)
    rec._make_durable()
    assert rec.durable and rec.spool.rows == N  # the whole batch went to the spool
    assert _counts(tmp_path) == (CHUNK, CHUNK, CHUNK)  # the first chunk was committed
    rec._replay()
    assert rec.spool.rows == 0
    assert _counts(tmp_path) == (N, N, N)  # replayed: the committed ids were skipped
    assert rec.written == N
    rec.spool.close()


@pytest.mark.parametrize("n", [1, CHUNK])
def test_a_small_batch_is_one_transaction(tmp_path, monkeypatch, n):
    sizes = []
    real = recorder_mod.record_usage
    monkeypatch.setattr(recorder_mod, "record_usage",
                        lambda led, rows: sizes.append(len(rows)) or real(led, rows))
    rec = _recorder(tmp_path)
    rec._pending = _rows(n)
    rec._make_durable()
    assert sizes == [n] and _counts(tmp_path) == (n, n, n)


def test_a_slow_ledger_takes_the_rest_in_one_transaction(tmp_path, monkeypatch):
    """Past CHUNK_BUDGET_MS the remaining rows go in one transaction that waits for the lock
    only what is left of WRITE_BUSY_MS: a batch waits no longer than unchunked."""
    import time

    sizes = []
    real = recorder_mod.record_usage

    def slow(led, rows):
        sizes.append(len(rows))
        time.sleep(0.06)  # clock-ok: a slow ledger, in real time
        return real(led, rows)

    monkeypatch.setattr(recorder_mod, "record_usage", slow)
    rec = _recorder(tmp_path)
    n = 4 * CHUNK + 10
    rec._pending = _rows(n)
    rec._make_durable()
    assert sizes == [CHUNK, CHUNK, 2 * CHUNK + 10]
    assert _counts(tmp_path) == (n, n, n)
    # the writer's connection waits the full WRITE_BUSY_MS again for the next batch
    busy = rec._ledger.conn.execute("PRAGMA busy_timeout").fetchone()[0]
    assert busy == recorder_mod.WRITE_BUSY_MS
