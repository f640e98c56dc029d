"""Issue 11, item 11: ``ledger check`` on a corrupt file fails the check (exit 1, its own
report), it never says "internal error".

Two kinds of damage: a file that is not a database at all, and a real ledger with many rows
whose first page is intact but whose middle pages were overwritten (SQLite opens it and reads the
schema, then a query hits a bad page: "database disk image is malformed").
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spotctl.cli.main import app
from spotctl.example_scenario import build_example
from spotctl.ledger.db import Ledger
from spotctl.testing import installed_clock, write_config

END = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
runner = CliRunner()


def cli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def at_end():
    with installed_clock(END) as clock:
        yield clock


@pytest.fixture(scope="module")
def good_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "spotctl.db"
    with Ledger(path) as ledger:
        build_example(ledger, END)  # ~1,400 polls and their samples: hundreds of pages
    return path


def workspace(tmp_path: Path, db_bytes: bytes) -> Path:
    (tmp_path / "spotctl.db").write_bytes(db_bytes)
    return write_config(tmp_path, {"ledger": {"path": "spotctl.db"}})


def assert_failed_check(cfg: Path) -> None:
    text = cli("-c", cfg, "ledger", "check")
    assert text.exit_code == 1, text.output
    assert "internal error" not in text.output and "Traceback" not in text.output
    assert "FAIL" in text.stdout and text.stdout.rstrip().endswith("ledger check failed")
    js = cli("-c", cfg, "ledger", "check", "--json")
    assert js.exit_code == 1, js.output
    assert "internal error" not in js.output
    doc = json.loads(js.stdout)
    assert doc["ok"] is False
    assert any(not c["ok"] for c in doc["checks"])


def test_a_file_that_is_not_a_database_fails_the_check(tmp_path):
    cfg = workspace(tmp_path, b"this is not a database\n" * 500)
    assert_failed_check(cfg)
    doc = json.loads(cli("-c", cfg, "ledger", "check", "--json").stdout)
    assert "not a database" in doc["checks"][0]["detail"]


def test_a_ledger_corrupted_after_its_first_page_fails_the_check(tmp_path, good_db):
    data = bytearray(good_db.read_bytes())
    assert len(data) > 1_000_000
    mid = len(data) // 2
    data[mid:mid + 8192] = b"\xff" * 8192  # two pages in the middle, the header untouched
    cfg = workspace(tmp_path, bytes(data))
    assert_failed_check(cfg)
    doc = json.loads(cli("-c", cfg, "ledger", "check", "--json").stdout)
    integrity = next(c for c in doc["checks"] if c["name"] == "sqlite integrity_check")
    assert integrity["ok"] is False and integrity["detail"]


def test_an_intact_copy_still_passes(tmp_path, good_db):
    shutil.copy(good_db, tmp_path / "spotctl.db")
    cfg = write_config(tmp_path, {"ledger": {"path": "spotctl.db"}})
    result = cli("-c", cfg, "ledger", "check")
    assert result.exit_code == 0, result.output
