"""Shared fixtures. Tests use real SQLite files in tmp_path and real servers on loopback."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from spotctl.clock import ManualClock, set_clock
from spotctl.ledger.db import Ledger

FIXTURES = Path(__file__).parent / "fixtures"

pytest_plugins = ["tests.fixtures_localcloud", "tests.fixtures_engines", "tests.fixtures_vllm",
                  "tests.fixtures_sshd", "tests.fixtures_pg"]


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock installed as the process clock for the test's duration."""
    c = ManualClock(datetime(2026, 11, 1, tzinfo=UTC))
    set_clock(c)
    yield c
    set_clock(None)


@pytest.fixture
def ledger(ledger_target) -> Ledger:
    """A fresh ledger on each backend (SQLite file | PostgreSQL database: tests/fixtures_pg.py)."""
    led = Ledger(ledger_target)
    yield led
    led.close()
