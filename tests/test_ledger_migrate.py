"""`spotctl ledger migrate --to postgresql://...`: an exact, idempotent, all-or-nothing copy, and
the same `cost` numbers from the SQLite ledger and its PostgreSQL copy."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from spotctl.errors import LedgerError
from spotctl.example_scenario import build_example
from spotctl.ledger.db import Ledger
from spotctl.ledger.migrate import migrate_sqlite_to_postgres
from spotctl.ledger.records import UsageRecord
from spotctl.ledger.writes import record_usage
from spotctl.services.example import EXAMPLE_TOML

END = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def spotctl(*args: str, cwd: Path | None = None):
    return subprocess.run([sys.executable, "-m", "spotctl", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=180)


@pytest.fixture
def example_dir(tmp_path) -> Path:
    d = tmp_path / "ws"
    d.mkdir()
    (d / "spotctl.toml").write_text(EXAMPLE_TOML)
    with Ledger(d / "spotctl.db") as led:
        build_example(led, END)
    return d


def _money_sums(target) -> dict[str, int]:
    with Ledger(target) as led:
        return {
            "samples": led.conn.execute("SELECT count(*) FROM billing_samples").fetchone()[0],
            "cumulative": led.conn.execute(
                "SELECT coalesce(sum(cumulative_micros), 0) FROM billing_samples").fetchone()[0],
            "balance": led.conn.execute(
                "SELECT coalesce(sum(balance_micros), 0) FROM billing_samples").fetchone()[0],
            "usage": led.conn.execute("SELECT count(*), sum(completion_tokens) FROM usage"
                                      ).fetchone()[1],
        }


def test_migrate_is_exact_and_idempotent(example_dir, pg_url):
    src = example_dir / "spotctl.db"
    first = migrate_sqlite_to_postgres(src, pg_url)
    assert first.copied_rows > 1000
    assert all(t.exact for t in first.tables)
    assert _money_sums(src) == _money_sums(pg_url)
    again = migrate_sqlite_to_postgres(src, pg_url)  # nothing new: nothing written
    assert again.copied_rows == 0 and all(t.exact for t in again.tables)
    # the SQLite ledger grows; a re-run copies only the new rows
    with Ledger(src) as led:
        record_usage(led, [UsageRecord("late-1", 1, 60_001, "ok", tier="llama-70b",
                                       completion_tokens=7)])
    third = migrate_sqlite_to_postgres(src, pg_url)
    copied = {t.name: t.copied_rows for t in third.tables if t.copied_rows}
    assert copied == {"usage": 1, "usage_minutes": 1, "usage_key_minutes": 1, "usage_hours": 1}
    # state tables follow the source: a series' catalogue row moves on, a deleted row goes
    with Ledger(src) as led:
        led.conn.execute("UPDATE billing_series SET last_state = 'DELETED'")
        led.conn.execute("DELETE FROM usage_key_minutes WHERE minute_ms = 60000")
    fourth = migrate_sqlite_to_postgres(src, pg_url)
    series = led_count = None
    with Ledger(pg_url) as led:
        series = led.conn.execute("SELECT DISTINCT last_state FROM billing_series").fetchall()
        led_count = led.conn.execute("SELECT count(*) FROM usage_key_minutes WHERE "
                                     "minute_ms = 60000").fetchone()
    assert series == [("DELETED",)] and led_count == (0,)
    assert all(t.exact for t in fourth.tables)
    # new writes on PostgreSQL continue after the copied ids
    from spotctl.ledger.journal import FleetEntry, append_fleet_event

    with Ledger(pg_url) as led:
        top = led.conn.execute("SELECT max(id) FROM fleet_events").fetchone()[0] or 0
        assert append_fleet_event(led, FleetEntry(1, "t", "down")) == top + 1


def test_migrate_refuses_to_overwrite_a_journal_row_written_on_postgres(example_dir, pg_url):
    src = example_dir / "spotctl.db"
    migrate_sqlite_to_postgres(src, pg_url)
    from spotctl.ledger.journal import FleetEntry, append_fleet_event

    with Ledger(pg_url) as led:  # PostgreSQL's next event...
        new_id = append_fleet_event(led, FleetEntry(5, "t", "written-on-pg"))
    with Ledger(src) as led:  # ...and the old SQLite ledger's next one share an id
        assert append_fleet_event(led, FleetEntry(6, "t", "written-on-sqlite")) == new_id
    with pytest.raises(LedgerError, match=f"fleet_events id {new_id}"):
        migrate_sqlite_to_postgres(src, pg_url)
    with Ledger(pg_url) as led:
        assert led.conn.execute("SELECT event FROM fleet_events WHERE id = ?", (new_id,)
                                ).fetchone() == ("written-on-pg",)


def test_migrate_refuses_a_destination_with_other_rows(example_dir, pg_url):
    with Ledger(pg_url) as led:
        record_usage(led, [UsageRecord("only-in-pg", 1, 2, "ok", completion_tokens=1)])
    with pytest.raises(LedgerError, match="differs after the copy"):
        migrate_sqlite_to_postgres(example_dir / "spotctl.db", pg_url)
    with Ledger(pg_url) as led:  # all or nothing: nothing from the source arrived
        assert led.conn.execute("SELECT count(*) FROM billing_samples").fetchone() == (0,)
        assert led.conn.execute("SELECT count(*) FROM usage").fetchone() == (1,)


def test_cli_migrate_then_cost_is_the_same_on_both(example_dir, pg_url):
    cfg = example_dir / "spotctl.toml"
    out = spotctl("--config", str(cfg), "ledger", "migrate", "--to", pg_url, "--json")
    assert out.returncode == 0, out.stderr
    js = json.loads(out.stdout)
    assert js["ok"] is True and js["copied_rows"] > 1000
    assert all(c["ok"] for side in js["checks"].values() for c in side)
    assert "password" not in out.stdout.lower()
    pg_cfg = example_dir / "pg.toml"
    pg_cfg.write_text(EXAMPLE_TOML.replace('path = "spotctl.db"', f'url = "{pg_url}"'))
    window = ["cost", "--since", "2026-11-19T12:00:00Z", "--until", "2026-11-20T12:00:00Z",
              "--json"]
    a = spotctl("--config", str(cfg), *window)
    b = spotctl("--config", str(pg_cfg), *window)
    assert a.returncode == b.returncode == 0, (a.stderr, b.stderr)
    sqlite_report, pg_report = json.loads(a.stdout), json.loads(b.stdout)
    assert float(sqlite_report["spend_usd"]) > 0 and sqlite_report["output_tokens"] > 0
    assert pg_report == sqlite_report  # every number, to the micro-dollar
    check = spotctl("--config", str(pg_cfg), "ledger", "check", "--json")
    assert check.returncode == 0 and json.loads(check.stdout)["ok"] is True
    rerun = spotctl("--config", str(cfg), "ledger", "migrate", "--to", pg_url, "--json")
    assert rerun.returncode == 0 and json.loads(rerun.stdout)["copied_rows"] == 0


def test_cli_migrate_refuses_a_password_in_the_url(example_dir):
    out = spotctl("--config", str(example_dir / "spotctl.toml"), "ledger", "migrate", "--to",
                  "postgresql://u:s3cret@127.0.0.1:1/db")
    assert out.returncode == 2
    assert "s3cret" not in out.stderr + out.stdout
    assert "PGPASSWORD" in out.stderr
