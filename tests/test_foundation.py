"""The base parts: clock, money, configuration, ledger file and schema."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from spotctl.clock import FileClock, ManualClock, Timeline, clock_from_spec, from_ms, iso, to_ms
from spotctl.config import parse_config
from spotctl.errors import ConfigError
from spotctl.ledger.db import Ledger
from spotctl.ledger.records import BillingSample, CumulativeKind, PollRecord, UsageRecord
from spotctl.ledger.schema import SCHEMA_VERSION
from spotctl.ledger.writes import record_poll, record_usage
from spotctl.money import MoneyError, fmt_usd, to_micros, usd_str

ROOT = Path(__file__).resolve().parents[1]


def test_no_module_reads_the_wall_clock_outside_clock_py():
    offenders = []
    pattern = re.compile(r"\b(time\.time|time\.monotonic|datetime\.now|datetime\.utcnow|"
                         r"date\.today|time\.sleep)\s*\(")
    for path in (ROOT / "spotctl").rglob("*.py"):
        if path.name == "clock.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and "clock-ok" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_ms_round_trip_and_iso():
    t = datetime(2026, 11, 22, 10, 0, 0, 123000, tzinfo=UTC)
    assert from_ms(to_ms(t)) == t
    assert iso(t) == "2026-11-22T10:00:00.123Z"
    assert iso(t.replace(microsecond=0)) == "2026-11-22T10:00:00Z"


def test_manual_clock_never_goes_back():
    c = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    c.sleep(90)
    assert c.now() == datetime(2026, 1, 1, 0, 1, 30, tzinfo=UTC)
    with pytest.raises(ValueError):
        c.set(datetime(2025, 1, 1, tzinfo=UTC))


def test_file_clock_is_shared_and_monotonic(tmp_path):
    path = tmp_path / "clock.json"
    anchor = datetime(2026, 1, 1, tzinfo=UTC)
    FileClock.write(path, Timeline(anchor, 1_000_000_000.0, 60.0))
    a = clock_from_spec(f"file:{path}")
    first = a.now()
    # jump the timeline back: readers must not see time decrease
    FileClock.write(path, Timeline(anchor - timedelta(days=1), 1_000_000_000.0, 60.0))
    assert a.now() >= first


def test_money_is_exact_integer_micros():
    assert to_micros(Decimal("0.1")) * 3 == to_micros("0.3")
    assert to_micros("12.3456785") == 12345678  # banker's rounding at the micro-dollar
    assert usd_str(1_500_000) == "1.500000"
    assert fmt_usd(-1_234_567_890) == "-$1,234.57"
    with pytest.raises(MoneyError):
        to_micros(0.1)  # type: ignore[arg-type]
    with pytest.raises(MoneyError):
        to_micros("NaN")


def test_config_error_is_one_line_naming_file_key_expected_found(tmp_path):
    text = '[[tiers]]\nname = "big"\nmodel = "m"\ncapacity = "spotty"\n'
    with pytest.raises(ConfigError) as info:
        parse_config(text, tmp_path / "spotctl.toml")
    msg = info.value.message
    assert "\n" not in msg
    assert "spotctl.toml" in msg and "tiers[0:big].capacity" in msg
    assert "'spotty'" in msg and "spot-first" in msg


def test_config_unknown_key_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match=r"billing\.poll_intervall_s: unknown key"):
        parse_config("[billing]\npoll_intervall_s = 5\n", "x.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("[billing\n", "x.toml")


def test_config_defaults_and_ledger_beside_file(tmp_path):
    cfg = parse_config("[budget]\ndaily_usd = 12.5\n", tmp_path / "spotctl.toml")
    assert cfg.billing.poll_interval_s == 60 and cfg.billing.stale_after_s == 180
    assert cfg.budget.daily_usd == Decimal("12.5")
    assert cfg.ledger_path == (tmp_path / "spotctl.db").resolve()
    assert cfg.gateway.listen == "127.0.0.1:8080"


def test_ledger_file_is_private_wal_and_versioned(tmp_path):
    path = tmp_path / "l.db"
    led = Ledger(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert led.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert led.schema_version() == SCHEMA_VERSION
    led.close()
    Ledger(path).close()  # reopening does not migrate again


def _sample(ms: int, cum: int) -> BillingSample:
    return BillingSample("hs", "acct", "vm:1", "vm", ms, cum, CumulativeKind.RESOURCE_TOTAL, "h")


def test_poll_and_samples_are_atomic_and_deduplicated(ledger):
    poll = PollRecord("hs", 0, 10, "ok", resources_seen=1)
    _, n1 = record_poll(ledger, poll, [_sample(60_000, 100)])
    _, n2 = record_poll(ledger, poll, [_sample(60_000, 100), _sample(120_000, 200)])
    assert (n1, n2) == (1, 1)
    assert ledger.conn.execute("SELECT count(*) FROM billing_samples").fetchone()[0] == 2
    bad = BillingSample("hs", "acct", "vm:1", "vm", 180_000, 1, CumulativeKind.RESOURCE_TOTAL,
                        None)  # type: ignore[arg-type]  # NOT NULL payload hash
    with pytest.raises(Exception):  # noqa: B017
        record_poll(ledger, poll, [_sample(240_000, 5), bad])
    # neither the poll nor the good sample of the failed transaction landed
    assert ledger.conn.execute("SELECT count(*) FROM billing_polls").fetchone()[0] == 2
    assert ledger.conn.execute("SELECT count(*) FROM billing_samples").fetchone()[0] == 2


def test_usage_rollup_counts_each_request_once(ledger):
    rows = [UsageRecord(f"r{i}", 0, 61_000 + i, "ok", tier="a", prompt_tokens=10,
                        completion_tokens=5) for i in range(3)]
    assert record_usage(ledger, rows) == 3
    assert record_usage(ledger, rows[:1]) == 0
    got = ledger.conn.execute(
        "SELECT minute_ms, requests, prompt_tokens, completion_tokens FROM usage_minutes"
    ).fetchall()
    assert got == [(60_000, 3, 30, 15)]


def test_help_starts_without_skypilot_or_vllm():
    code = ("import sys; from spotctl.cli import main; main.register_commands(); "
            "bad=[m for m in sys.modules if m.split('.')[0] in ('sky','vllm','torch')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_unread_localcloud_section_is_gone():
    # [localcloud] listen/engine were accepted and never read: `spotctl localcloud serve` takes
    # its own options. A key nothing reads is now what every other unknown key is: an error.
    with pytest.raises(ConfigError, match="localcloud: unknown key"):
        parse_config('[localcloud]\nlisten = "127.0.0.1:9"\n', "x.toml")
