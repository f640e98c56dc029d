"""Shared options are declared once (cli/common.py) and read the same in every command."""

from __future__ import annotations

import pytest
import typer
from typer.main import get_command

from spotctl.cli.common import JSON_HELP, json_option, window_options
from spotctl.cli.main import app


def _options(command: str) -> dict:
    # by param_type_name: the installed Typer may bundle its own click
    cmd = get_command(app).commands[command]  # type: ignore[attr-defined]
    return {p.name: p for p in cmd.params if p.param_type_name == "option"}


@pytest.mark.parametrize("command", ["advise", "compare"])
def test_window_options_have_one_name_and_help_everywhere(command):
    opts = _options(command)
    assert opts["window"].opts == ["--window", "-w"]
    assert opts["until"].help == "Window end, ISO 8601 (default: now)."
    assert opts["json_out"].opts == ["--json"] and opts["json_out"].help == JSON_HELP
    assert opts["window"].help == _options("compare")["window"].help


def test_each_command_keeps_its_own_defaults():
    assert _options("advise")["window"].default == "7d"
    assert "since" not in _options("advise")  # advise takes a window ending at --until only
    assert _options("compare")["window"].default is None  # 7d unless --since is given
    assert _options("compare")["since"].opts == ["--since"]


def test_a_command_without_the_parameter_is_refused_at_import():
    with pytest.raises(TypeError, match="json_out"):
        json_option(lambda ctx: None)
    with pytest.raises(TypeError, match="window"):
        window_options(lambda ctx, json_out=False: None)


def test_window_options_wrap_a_plain_function():
    @window_options
    def f(ctx: typer.Context, window: str = "24h", since: str | None = None) -> None: ...

    import inspect

    params = inspect.signature(f).parameters
    assert params["window"].default.default == "24h"
    assert params["since"].default.param_decls == ("--since",)
