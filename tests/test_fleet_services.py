"""The fleet commands through the CLI in process (parse → one services call → render)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from spotctl.cli.main import app
from spotctl.errors import ExitCode
from tests.fleet_helpers import lc_config


def _cfg(lc, tmp_path):
    return lc_config(lc, tmp_path / "spotctl.toml", (
        '[[tiers]]\nname = "big"\nmodel = "tiny"\nbackend = "localcloud"\nprovider = "lc"\n'
        'capacity = "on-demand"\nidle_minutes = 0\nflavor = "n3-A100x1"\n'
        '[[tiers]]\nname = "fixed"\nmodel = "tiny"\nendpoint = "http://127.0.0.1:9"\n'))


def _cli(cfg, *args):
    return CliRunner().invoke(app, ["--config", str(cfg.source), *args])


def test_status_shows_the_time_since_the_last_wake(localcloud_engines, tmp_path):
    """`last wake` used to show how long the wake took; an operator wants how long ago."""
    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path)
    for cmd in ("up", "hibernate", "wake"):
        assert _cli(cfg, cmd, "big").exit_code == 0
    lc.clock.advance(600)
    result = _cli(cfg, "status", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["tier"]: r for r in json.loads(result.output)["tiers"]}
    big = rows["big"]
    assert big["state"] == "ready" and big["last_wake_ago_seconds"] == 600
    assert big["last_wake_duration_seconds"] >= 60  # RESTORE_S on the local cloud
    assert big["machines"] == 1 and big["orphans"] == []
    assert rows["fixed"]["state"] == "fixed"
    assert _cli(cfg, "status").exit_code == 0  # the table renders (its width is the CLI's)


def test_events_for_an_unknown_tier_is_a_usage_error(localcloud, tmp_path):
    cfg = _cfg(localcloud, tmp_path)
    result = _cli(cfg, "events", "--tier", "nope")
    assert result.exit_code == ExitCode.USAGE
    assert "known: big, fixed" in result.output


def test_fleet_commands_refuse_a_fixed_engine(localcloud, tmp_path):
    cfg = _cfg(localcloud, tmp_path)
    for cmd in (["up", "fixed"], ["down", "fixed"], ["down", "fixed", "--orphans"],
                ["hibernate", "fixed"]):
        result = _cli(cfg, *cmd)
        assert result.exit_code == ExitCode.USAGE, (cmd, result.output)
        assert "fixed engine" in result.output


def test_hibernating_a_tier_that_is_not_up(localcloud_engines, tmp_path):
    """Never launched: exit 2, nothing journaled. Gone from the provider (preempted): nothing
    bills, so the tier is journaled down (not relaunched by the daemon to be hibernated)."""
    from spotctl.fleet.manager import FleetManager
    from spotctl.ledger.db import Ledger
    from spotctl.services.daemon import FleetDaemon

    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path)
    result = _cli(cfg, "hibernate", "big")
    assert result.exit_code == ExitCode.USAGE and "not up" in result.output
    with Ledger(cfg.ledger_path) as led:
        assert led.conn.execute("SELECT count(*) FROM fleet_events").fetchone()[0] == 0
    manager = FleetManager(cfg, lc.clock)
    vm = manager.up(cfg.tiers[0])
    manager.backend(cfg.tiers[0]).delete_machine(cfg.tiers[0], vm.resource_id)  # it vanishes
    assert _cli(cfg, "hibernate", "big").exit_code == 0
    lc.clock.advance(60)
    assert FleetDaemon(cfg, lc.clock, lambda line: None).check_tier(cfg.tiers[0]) == \
        "not launched"
    with Ledger(cfg.ledger_path) as led:
        tail = [e for (e,) in led.conn.execute("SELECT event FROM fleet_events ORDER BY id")]
    assert tail[-2:] == ["preempted", "down"]


def test_down_delete_storage_asks_after_the_tier_is_known_and_a_no_does_nothing(localcloud,
                                                                               tmp_path):
    from spotctl.ledger.db import Ledger

    cfg = _cfg(localcloud, tmp_path)
    fixed = CliRunner().invoke(app, ["--config", str(cfg.source), "down", "fixed",
                                     "--delete-storage"], input="y\n")
    assert fixed.exit_code == ExitCode.USAGE and "Delete the weights" not in fixed.output
    no = CliRunner().invoke(app, ["--config", str(cfg.source), "down", "big",
                                  "--delete-storage"], input="n\n")
    assert no.exit_code == 1 and "Delete the weights storage of 'big' too?" in no.output
    with Ledger(cfg.ledger_path) as led:
        assert led.conn.execute("SELECT count(*) FROM fleet_events").fetchone()[0] == 0
