"""Every command in process through Typer's CliRunner: exit codes, --json, help, tables.

The README's promise: 0 ok, 1 unexpected, 2 bad usage/input/configuration (one line on stderr,
never a traceback), 3 a threshold crossed, 4 observability not ok; a stable ``--json`` on every
command that reports something.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from spotctl.cli.common import JSON_HELP
from spotctl.cli.main import GLOBAL_VALUE_OPTIONS, app, hoist_global_options
from spotctl.clock import to_ms
from spotctl.example_scenario import build_example
from spotctl.ledger.db import Ledger
from spotctl.ledger.journal import FleetEntry, append_fleet_event
from spotctl.testing import free_port, installed_clock, write_config

END = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
KEY_ENV = "SPOTCTL_TEST_CLI_KEY"
runner = CliRunner()


def config_data(ledger: Path, base_url: str, **budget) -> dict:
    return {
        "ledger": {"path": ledger},
        "providers": [{"name": "example-cloud", "kind": "hyperstack", "api_key_env": KEY_ENV,
                       "base_url": base_url}],
        "tiers": [{"name": "llama-70b", "model": "llama-70b", "backend": "localcloud",
                   "provider": "example-cloud", "flavor": "n3-H100x1"}],
        "budget": budget or None,
    }


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """An example ledger (a day ending at END, 25 dark minutes) and its config; the provider's
    API is a loopback port nothing listens on."""
    d = tmp_path_factory.mktemp("cli")
    with Ledger(d / "spotctl.db") as ledger:
        build_example(ledger, END)
    return write_config(d, config_data(d / "spotctl.db", f"http://127.0.0.1:{free_port()}/v1",
                                       daily_usd=1000))


@pytest.fixture(autouse=True)
def at_end():
    with installed_clock(END) as clock:
        yield clock


def cli(*args: object, env: dict | None = None, input: str | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env, input=input)


def one_line_error(result) -> str:
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("spotctl: error: ")
    return result.stderr


def leaf_commands() -> list[tuple[str, ...]]:
    """Every runnable command path, walked from the app itself (a new command is covered)."""
    root = typer.main.get_command(app)
    out: list[tuple[str, ...]] = []

    def walk(cmd, path: tuple[str, ...]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, (*path, name))
        else:
            out.append(path)

    walk(root, ())
    return out


COMMANDS = leaf_commands()


def test_the_walk_sees_every_documented_command():
    names = {" ".join(p) for p in COMMANDS}
    assert {"cost", "price", "report", "poll-billing", "billing status", "reconcile", "gateway",
            "keys create", "keys list", "keys revoke", "budget status", "up", "hibernate",
            "wake", "down", "status", "events", "daemon", "localcloud serve", "ledger check",
            "demo", "example", "init", "config show", "doctor", "bench", "compare", "advise",
            "ledger migrate"} <= names


# -- usage errors: exit 2, one line ------------------------------------------------------------
@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_is_exit_0_plain_and_every_json_flag_has_its_help_line(path):
    result = cli(*path, "--help")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.startswith(f"Usage: spotctl {' '.join(path)}")
    assert "<bool>" not in text and "╭" not in text  # no type tag on flags, no rich panels
    assert " / --no-" not in text, "a flag is one --name, not a --name / --no-name pair"
    assert "\\[" not in text, "a markup escape shows through in plain help"
    if "--json" in text:
        line = next(ln for ln in text.splitlines() if ln.strip().startswith("--json"))
        assert JSON_HELP.split()[0] in line, line


def test_help_text_keeps_square_brackets():
    # rich markup used to eat "[billing]" out of this help line
    assert "every [billing] poll_interval_s" in cli("poll-billing", "--help").stdout


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_unknown_option_is_exit_2_on_one_line(path):
    # before: exit 1 "internal error: NoSuchOption" (Typer's vendored click was not caught)
    result = cli(*path, "--bogus")
    assert result.exit_code == 2
    assert "No such option: --bogus" in one_line_error(result)


@pytest.mark.parametrize("args", [("up",), ("keys", "create"), ("hibernate",), ("down",)])
def test_missing_argument_is_exit_2(args):
    result = cli(*args)
    assert result.exit_code == 2 and "Missing argument" in one_line_error(result)


@pytest.mark.parametrize("args", [(), ("billing",), ("keys",), ("ledger",)])
def test_a_group_without_its_command_prints_its_help_exit_2(args):
    result = cli(*args)
    assert result.exit_code == 2
    assert "Usage: spotctl" in result.stderr and "Traceback" not in result.stderr


def test_unknown_command_is_exit_2():
    result = cli("costs")
    assert result.exit_code == 2 and "No such command 'costs'" in one_line_error(result)


def test_bad_option_value_is_exit_2():
    result = cli("cost", "--min-tokens", "many")
    assert result.exit_code == 2 and "--min-tokens" in one_line_error(result)


@pytest.mark.parametrize("form", ["--config {}", "-c {}", "--config={}"])
def test_config_is_accepted_after_the_command(ws, form):
    # before: `cost --config X` was exit 1 "internal error: NoSuchOption"
    result = cli("cost", "--json", *form.format(ws).split(" "))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tiers"][0]["name"] == "llama-70b"


def test_hoisting_stops_at_double_dash_and_no_command_declares_a_global_option():
    assert hoist_global_options(["cost", "-c", "a", "--", "-c", "b"]) == [
        "-c", "a", "cost", "--", "-c", "b"]
    root = typer.main.get_command(app)
    for path in COMMANDS:
        cmd = root
        for name in path:
            cmd = cmd.commands[name]
        opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        assert not opts & set(GLOBAL_VALUE_OPTIONS), path


def test_missing_config_file_is_exit_2(tmp_path):
    result = cli("--config", tmp_path / "nope.toml", "cost")
    assert result.exit_code == 2 and "configuration file not found" in one_line_error(result)


# -- no silent wrong answers -------------------------------------------------------------------
@pytest.mark.parametrize("flag,name,known", [("--tier", "llama-7b", "llama-70b"),
                                             ("--provider", "hyperstack", "example-cloud")])
def test_unknown_tier_or_provider_filter_is_exit_2_naming_the_known_ones(ws, flag, name, known):
    # before: exit 0 with a $0.00 table
    result = cli("-c", ws, "cost", flag, name)
    assert result.exit_code == 2
    err = one_line_error(result)
    assert repr(name) in err and known in err


def test_a_tier_known_only_from_the_ledger_is_a_valid_filter(ws, tmp_path):
    data = config_data(ws.parent / "spotctl.db", "http://127.0.0.1:9/v1")
    data["tiers"] = []  # the tier left the config; its history stays in the ledger
    cfg = write_config(tmp_path, data)
    result = cli("-c", cfg, "cost", "--tier", "llama-70b", "--json")
    assert result.exit_code == 0, result.output
    assert float(json.loads(result.stdout)["spend_usd"]) > 0


@pytest.mark.parametrize("verb", ["up", "hibernate", "wake", "down"])
def test_fleet_verbs_on_an_unknown_tier_are_exit_2(ws, verb):
    result = cli("-c", ws, verb, "llama-7b")
    assert result.exit_code == 2 and "known: llama-70b" in one_line_error(result)


def test_reconcile_with_an_unreachable_provider_says_so_exit_4(ws):
    # before: "provider $None → drift $None (None%)" and exit 0
    result = cli("-c", ws, "reconcile", "--day", "2026-11-22", env={KEY_ENV: "k"})
    assert result.exit_code == 4, result.output
    assert "None" not in result.stdout
    assert "provider figure unavailable: unreachable" in result.stdout
    js = cli("-c", ws, "reconcile", "--day", "2026-11-22", "--json", env={KEY_ENV: "k"})
    assert js.exit_code == 4
    row = json.loads(js.stdout)["providers"][0]
    assert row["status"] == "unavailable" and row["provider_usd"] is None


def test_reconcile_bad_day_is_exit_2(ws):
    result = cli("-c", ws, "reconcile", "--day", "22/11/2026")
    assert result.exit_code == 2 and "YYYY-MM-DD" in one_line_error(result)


# -- --json and the documented codes 3 and 4 ---------------------------------------------------
@pytest.mark.parametrize("args,code,key", [
    (("cost", "--window", "24h"), 0, "spend_usd"),
    (("price", "--margin", "0.3"), 0, "tiers"),
    (("billing", "status"), 0, "providers"),
    (("budget", "status"), 0, "state"),
    (("status",), 0, "tiers"),
    (("events",), 0, "events"),
    (("ledger", "check"), 0, "checks"),
    (("keys", "list"), 0, "keys"),
])
def test_json_is_one_document_on_stdout(ws, args, code, key):
    result = cli("-c", ws, *args, "--json")
    assert result.exit_code == code, result.output
    assert key in json.loads(result.stdout)


def test_cost_thresholds_exit_3_and_4(ws):
    assert cli("-c", ws, "cost", "--fail-over", "0.01", "--json").exit_code == 3
    assert cli("-c", ws, "cost", "--fail-over", "100000", "--json").exit_code == 0
    assert cli("-c", ws, "cost", "--fail-stale", "--json").exit_code == 4  # 25 dark minutes
    result = cli("-c", ws, "cost", "--fail-over", "cheap")
    assert result.exit_code == 2 and "--fail-over" in one_line_error(result)


def test_billing_status_goes_4_when_billing_went_dark(ws, at_end):
    at_end.set(END + timedelta(hours=1))
    result = cli("-c", ws, "billing", "status", "--json")
    assert result.exit_code == 4
    assert json.loads(result.stdout)["providers"][0]["status"] != "fresh"
    assert cli("-c", ws, "budget", "status").exit_code == 4  # the gate fails closed


def test_budget_status_closed_by_budget_is_exit_3(ws, tmp_path):
    cfg = write_config(tmp_path, config_data(ws.parent / "spotctl.db", "http://127.0.0.1:9/v1",
                                             daily_usd=1))
    result = cli("-c", cfg, "budget", "status", "--json")
    assert result.exit_code == 3
    assert json.loads(result.stdout)["state"] == "budget_exhausted"


def test_poll_billing_exit_4_when_a_provider_fails_and_2_without_providers(tmp_path):
    cfg = write_config(tmp_path, config_data(tmp_path / "l.db",
                                             f"http://127.0.0.1:{free_port()}/v1"))
    result = cli("-c", cfg, "poll-billing", "--json", env={KEY_ENV: "k"})
    assert result.exit_code == 4
    assert json.loads(result.stdout)["providers"][0]["ok"] is False
    status = cli("-c", cfg, "billing", "status", "--json")
    assert status.exit_code == 4
    assert json.loads(status.stdout)["providers"][0]["last_error"]
    empty = write_config(tmp_path / "e", {"ledger": {"path": "l.db"}})
    assert cli("-c", empty, "poll-billing").exit_code == 2


def test_keys_create_list_revoke(tmp_path):
    cfg = write_config(tmp_path, {"ledger": {"path": "l.db"}})
    made = cli("-c", cfg, "keys", "create", "app-1", "--daily-usd", "5", "--json")
    assert made.exit_code == 0, made.output
    key = json.loads(made.stdout)["key"]
    listed = cli("-c", cfg, "keys", "list", "--json")
    assert json.loads(listed.stdout)["keys"][0]["daily_usd"] == "5.000000"
    assert key not in listed.stdout  # shown once, never again
    assert cli("-c", cfg, "keys", "create", "app-1").exit_code == 2  # exists
    assert cli("-c", cfg, "keys", "create", "app-2", "--daily-usd", "lots").exit_code == 2
    assert cli("-c", cfg, "keys", "revoke", "app-1").exit_code == 0
    assert cli("-c", cfg, "keys", "revoke", "app-1").exit_code == 2  # no active key


def test_ledger_check_is_0_on_a_good_ledger(ws):
    result = cli("-c", ws, "ledger", "check")
    assert result.exit_code == 0 and "ledger ok" in result.stdout


def test_example_builds_its_workspace_and_shows_cost_and_price(tmp_path):
    result = cli("example", "--dir", tmp_path / "ex")
    assert result.exit_code == 0, result.output
    assert "EXAMPLE DATA" in result.stdout and "billing samples" in result.stdout
    assert "spotctl --config" in result.stdout and "$/Mtok" in result.stdout
    assert (tmp_path / "ex" / "spotctl.db").is_file()
    assert (tmp_path / "ex" / "spotctl.toml").stat().st_mode & 0o777 == 0o600
    again = cli("example", "--dir", tmp_path / "ex")  # its own workspace is replaced
    assert again.exit_code == 0, again.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    refused = cli("example", "--dir", tmp_path / "other")
    assert refused.exit_code == 2 and "is not an example workspace" in one_line_error(refused)
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("to, needle", [
    ("mysql://h/db", "expected a postgresql:// URL"),
    ("postgresql://u:s3cret@127.0.0.1:1/db", "PGPASSWORD"),
])
def test_ledger_migrate_refuses_a_bad_destination_exit_2(ws, to, needle):
    result = cli("-c", ws, "ledger", "migrate", "--to", to)
    assert result.exit_code == 2 and needle in one_line_error(result)
    assert "s3cret" not in result.output


def test_ledger_migrate_from_a_postgresql_config_is_exit_2(tmp_path):
    cfg = write_config(tmp_path, {"ledger": {"url": "postgresql://spotctl@127.0.0.1:1/db"}})
    result = cli("-c", cfg, "ledger", "migrate", "--to", "postgresql://u@127.0.0.1:1/db")
    assert result.exit_code == 2 and "already names a PostgreSQL url" in one_line_error(result)


def test_report_writes_a_file(ws, tmp_path):
    out = tmp_path / "r.html"
    result = cli("-c", ws, "report", "--window", "24h", "--out", out)
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("<!")


def test_up_dry_run_launches_nothing(ws):
    # a Hyperstack dry run discovers on the account for real (issue 10; the requests it prints
    # are tested in test_hyperstack_backend.py): without the provider's key it stops, exit 2
    result = cli("-c", ws, "up", "llama-70b", "--dry-run")
    assert result.exit_code == 2 and "SPOTCTL_TEST_CLI_KEY" in one_line_error(result)


@pytest.mark.parametrize("args,needle", [
    (("gateway", "--listen", "localhost"), "host:port"),
    (("localcloud", "serve"), "SPOTCTL_LOCALCLOUD_KEY"),
    (("demo", "--seconds", "5"), "--seconds"),
    (("demo", "--engine", "vllm"), "--engine vllm"),
])
def test_bad_input_to_long_running_commands_is_exit_2(ws, args, needle):
    result = cli("-c", ws, *args, env={"SPOTCTL_LOCALCLOUD_KEY": None})
    assert result.exit_code == 2 and needle in one_line_error(result)


# -- read commands never create a ledger -------------------------------------------------------
@pytest.mark.parametrize("args", [
    ("cost",), ("price",), ("report", "--out", "r.html"), ("events",), ("status",),
    ("billing", "status"), ("budget", "status"), ("reconcile", "--day", "2026-11-22"),
    ("keys", "list"), ("ledger", "check"),
])
def test_read_commands_never_create_a_ledger(tmp_path, args):
    cfg = write_config(tmp_path, config_data(tmp_path / "spotctl.db", "http://127.0.0.1:9/v1"))
    result = cli("-c", cfg, *args)
    assert result.exit_code == 2, result.output
    assert "no ledger" in one_line_error(result)
    assert not (tmp_path / "spotctl.db").exists()


# -- output for people piped to another program ------------------------------------------------
def test_piped_tables_are_not_cut_and_events_grep(ws, tmp_path):
    led = tmp_path / "spotctl.db"
    long_detail = "spot capacity returned in eu-north-1 after 37 minutes on on-demand " * 3
    with Ledger(led) as ledger:
        for i, event in enumerate(["launching", "ready", "preempted", "fell_back"]):
            append_fleet_event(ledger, FleetEntry(
                ts_ms=to_ms(END) - 60_000 * (4 - i), tier="llama-70b-instruct-awq-long-name",
                event=event, operation_id="op1", capacity="spot", cloud="aws",
                region="eu-north-1", resource_id="vm:318442", endpoint=None, phases={},
                detail=long_detail.strip() if event == "preempted" else None))
    cfg = write_config(tmp_path, {"ledger": {"path": led}})
    out = cli("-c", cfg, "events", env={"COLUMNS": None}).stdout  # stdout is not a terminal
    assert "…" not in out
    lines = [ln for ln in out.splitlines() if "preempted" in ln]
    assert len(lines) == 1  # one row per line: `spotctl events | grep preempted` finds it whole
    assert "llama-70b-instruct-awq-long-name" in lines[0] and long_detail.strip() in lines[0]


def test_a_ledger_from_an_older_spotctl_is_read_after_the_upgrade(tmp_path):
    # before: every read command failed "ledger needs a migration; run a writing command"
    import sqlite3

    from spotctl.ledger.check import stored_schema_version
    from spotctl.ledger.db import _statements
    from spotctl.ledger.schema import MIGRATIONS, SCHEMA_VERSION

    old = tmp_path / "spotctl.db"
    conn = sqlite3.connect(old)  # the first released schema, as spotctl 0.1 left it
    for statement in _statements(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
    conn.commit()
    conn.close()
    cfg = write_config(tmp_path, config_data(old, "http://127.0.0.1:9/v1"))
    result = cli("-c", cfg, "cost", "--json")
    assert result.exit_code == 0, result.output
    assert stored_schema_version(old) == SCHEMA_VERSION > 1


def test_the_command_table_maps_each_word_to_the_module_that_registers_it():
    import importlib

    from spotctl.cli.main import COMMAND_MODULES, COMMANDS

    for module in COMMAND_MODULES:
        probe = typer.Typer()
        importlib.import_module(module).register(probe)
        group = typer.main.get_command(probe)
        names = set(group.commands) if hasattr(group, "commands") else {group.name}
        assert names == {w for w, m in COMMANDS.items() if m == module}, module


def test_running_one_command_imports_only_its_module():
    import subprocess
    import sys

    code = ("import sys; sys.argv = ['spotctl', 'ledger', '--help']\n"
            "from spotctl.cli import main\n"
            "try:\n    main.run()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('spotctl.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip().splitlines()[-1] == str(
        ["spotctl.cli.common", "spotctl.cli.ledger_cmd", "spotctl.cli.main"])


def test_every_cli_module_with_commands_is_in_the_table():
    import importlib
    import pkgutil

    import spotctl.cli
    from spotctl.cli.main import COMMAND_MODULES

    with_register = {f"spotctl.cli.{m.name}" for m in pkgutil.iter_modules(spotctl.cli.__path__)
                     if hasattr(importlib.import_module(f"spotctl.cli.{m.name}"), "register")}
    assert with_register == set(COMMAND_MODULES)  # add the module's words to main.COMMANDS
