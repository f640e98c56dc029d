"""First contact: ``init``, ``config show``, ``doctor``, and the ledger's views for hand queries."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spotctl.cli.main import app
from spotctl.config import parse_config
from spotctl.example_scenario import build_example
from spotctl.ledger.db import Ledger
from spotctl.services.setup import PROVIDER_KINDS, effective_toml, starter_config
from spotctl.testing import free_port, installed_clock, serve_asgi, write_config

END = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
runner = CliRunner()


def cli(*args: object, env: dict | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


@pytest.fixture(autouse=True)
def at_end():
    with installed_clock(END) as clock:
        yield clock


# -- init --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", PROVIDER_KINDS)
def test_init_writes_a_valid_commented_starter_for_every_provider(tmp_path, kind):
    path = tmp_path / "spotctl.toml"
    result = cli("init", "--provider", kind, "--path", path)
    assert result.exit_code == 0, result.output
    text = path.read_text()
    assert text == starter_config(kind)
    cfg = parse_config(text, path)
    assert [p.kind for p in cfg.providers] == [kind]
    assert cfg.tiers and all(t.provider == kind for t in cfg.tiers)
    assert sum(line.lstrip().startswith("#") for line in text.splitlines()) >= 8
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key_env = cfg.providers[0].api_key_env
    assert key_env and f"export {key_env}=" in result.stdout


def test_init_never_overwrites_without_force(tmp_path):
    path = tmp_path / "spotctl.toml"
    path.write_text("# mine\n")
    result = cli("init", "--path", path)
    assert result.exit_code == 2 and "--force" in result.stderr
    assert path.read_text() == "# mine\n"
    assert cli("init", "--path", path, "--provider", "vast", "--force").exit_code == 0
    assert 'kind = "vast"' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["spotctl.toml"]  # no temporary left


def test_init_unknown_provider_is_exit_2_naming_the_known_ones(tmp_path):
    result = cli("init", "--provider", "aws", "--path", tmp_path / "x.toml")
    assert result.exit_code == 2
    assert "hyperstack, runpod, vast, lambda, localcloud" in result.stderr
    assert not (tmp_path / "x.toml").exists()


# -- config show -------------------------------------------------------------------------------
def test_config_show_fills_defaults_and_names_keys_only_by_their_variable(tmp_path):
    path = tmp_path / "spotctl.toml"
    path.write_text(starter_config("hyperstack"))
    env = {"HYPERSTACK_API_KEY": "hs-secret-value-123"}
    js = cli("-c", path, "config", "show", "--json", env=env)
    assert js.exit_code == 0, js.output
    data = json.loads(js.stdout)
    assert data["source"] == str(path.resolve())
    assert data["ledger"]["path"] == str(tmp_path.resolve() / "spotctl.db")
    assert data["billing"]["gap_after_s"] == 150  # a default the file does not set
    assert data["providers"][0]["api_key_env"] == "HYPERSTACK_API_KEY"
    text = cli("-c", path, "config", "show", env=env).stdout
    for out in (js.stdout, text):
        assert "hs-secret-value-123" not in out
    assert not (tmp_path / "spotctl.db").exists()  # a read command creates no ledger


@pytest.mark.parametrize("kind", PROVIDER_KINDS)
def test_config_show_toml_reads_back_as_the_same_configuration(tmp_path, kind):
    path = tmp_path / "spotctl.toml"
    cfg = parse_config(starter_config(kind), path)
    again = parse_config(effective_toml(cfg), path)
    assert again.ledger_path == cfg.ledger_path  # shown resolved
    assert again.model_dump(exclude={"ledger"}) == cfg.model_dump(exclude={"ledger"})


def test_config_show_without_any_file_is_the_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPOTCTL_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    result = cli("config", "show")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("# effective configuration: no spotctl.toml found")


# -- doctor ------------------------------------------------------------------------------------
def workspace(tmp_path: Path, gateway_port: int, **provider) -> Path:
    with Ledger(tmp_path / "spotctl.db") as ledger:
        build_example(ledger, END)
    return write_config(tmp_path, {
        "ledger": {"path": "spotctl.db"},
        "providers": [{"name": "example-cloud", "kind": "hyperstack",
                       "api_key_env": "SPOTCTL_TEST_DOCTOR_KEY", **provider}],
        "gateway": {"listen": f"127.0.0.1:{gateway_port}"}})


def checks(result) -> dict[str, str]:
    return {c["name"]: c["status"] for c in json.loads(result.stdout)["checks"]}


def test_doctor_all_good_is_exit_0_one_line_per_check(tmp_path):
    cfg = workspace(tmp_path, free_port())
    result = cli("-c", cfg, "doctor", env={"SPOTCTL_TEST_DOCTOR_KEY": "k"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [ln.split(":")[0].split(None, 1)[1] for ln in lines] == [
        "config", "provider example-cloud", "ledger", "billing example-cloud", "gateway"]
    assert lines[-1].startswith("warn gateway")  # nothing listens: a warning, not a failure


def test_doctor_missing_key_is_exit_2(tmp_path):
    cfg = workspace(tmp_path, free_port())
    result = cli("-c", cfg, "doctor", "--json", env={"SPOTCTL_TEST_DOCTOR_KEY": None})
    assert result.exit_code == 2
    assert checks(result)["provider example-cloud"] == "fail"
    assert "$SPOTCTL_TEST_DOCTOR_KEY" in result.stdout


def test_doctor_stale_billing_is_exit_4(tmp_path, at_end):
    cfg = workspace(tmp_path, free_port())
    at_end.set(END + timedelta(hours=2))
    result = cli("-c", cfg, "doctor", "--json", env={"SPOTCTL_TEST_DOCTOR_KEY": "k"})
    assert result.exit_code == 4
    assert checks(result)["billing example-cloud"] == "fail"


def test_doctor_asks_the_gateway_whether_it_is_ready(tmp_path):
    answers = {"status": 503, "body": b'{"ready": false, "gate": "billing_stale"}'}

    async def gateway(scope, receive, send):
        await send({"type": "http.response.start", "status": answers["status"],
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answers["body"]})

    with serve_asgi(gateway) as served:
        cfg = workspace(tmp_path, served.port)
        env = {"SPOTCTL_TEST_DOCTOR_KEY": "k"}
        closed = cli("-c", cfg, "doctor", env=env)
        assert closed.exit_code == 4
        assert "FAIL gateway" in closed.stdout and "billing_stale" in closed.stdout
        answers.update(status=200, body=b'{"ready": true, "gate": "open"}')
        ready = cli("-c", cfg, "doctor", env=env)
        assert ready.exit_code == 0 and "ok   gateway" in ready.stdout


def test_doctor_bad_config_and_missing_ledger(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[billing]\npoll_interval_s = 'soon'\n")
    result = cli("-c", bad, "doctor")
    assert result.exit_code == 2 and "billing.poll_interval_s" in result.stdout
    cfg = write_config(tmp_path, {"ledger": {"path": "none.db"},
                                  "gateway": {"listen": f"127.0.0.1:{free_port()}"}})
    result = cli("-c", cfg, "doctor", "--json")
    assert result.exit_code == 0
    assert checks(result)["ledger"] == "warn"
    assert not (tmp_path / "none.db").exists()


# -- the ledger for hand queries ---------------------------------------------------------------
def test_views_add_up_to_the_running_totals_and_the_usage_rows(tmp_path):
    with Ledger(tmp_path / "l.db") as ledger:
        build_example(ledger, END)
        conn = ledger.conn
        final = dict(conn.execute("SELECT resource_id, max(cumulative_micros) FROM "
                                  "billing_samples GROUP BY resource_id"))
        hourly = dict(conn.execute("SELECT resource_id, sum(spend_micros) FROM "
                                   "spend_per_resource_hour GROUP BY resource_id"))
        daily = dict(conn.execute("SELECT resource_id, sum(spend_micros) FROM "
                                  "spend_per_resource_day GROUP BY resource_id"))
        assert hourly == daily == final  # the example's totals start at 0
        assert final["vm:101"] > 0
        hours = conn.execute("SELECT count(DISTINCT hour_ms) FROM spend_per_resource_hour "
                             "WHERE resource_id = 'vm:101'").fetchone()[0]
        assert hours == 25  # 24 hours, and the sample at the day's last instant
        per_key = conn.execute("SELECT sum(requests), sum(completion_tokens) FROM "
                               "usage_per_key_day").fetchone()
        assert per_key == conn.execute("SELECT count(*), sum(completion_tokens) FROM usage"
                                       ).fetchone()


def test_a_falling_total_is_held_at_its_high_water_mark_in_the_views(tmp_path):
    from spotctl.ledger.records import BillingSample, CumulativeKind, PollRecord
    from spotctl.ledger.writes import record_poll

    with Ledger(tmp_path / "l.db") as ledger:
        for minute, total in enumerate([0, 100, 300, 250, 400]):
            ms = minute * 60_000
            record_poll(ledger, PollRecord("hs", ms, ms + 1, "ok", resources_seen=1),
                        [BillingSample("hs", "a", "vm:1", "vm", ms, total,
                                       CumulativeKind.RESOURCE_TOTAL, "h")])
        spend = ledger.conn.execute("SELECT sum(spend_micros) FROM spend_per_resource_hour"
                                    ).fetchone()[0]
    assert spend == 400  # 100 + 200 + 0 (fell to 250) + 100 (from the high-water mark 300)


def test_the_schema_keeps_its_comments(tmp_path):
    with Ledger(tmp_path / "l.db") as ledger:
        sql = dict(ledger.conn.execute("SELECT name, sql FROM sqlite_master"))
    assert "-- the provider's running total" in sql["billing_samples"]
    assert "-- Spend per billing resource per UTC hour" in sql["spend_per_resource_hour"]
