"""What every command shares: the loaded config, the ledger, JSON and table output."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from spotctl.config import Config
    from spotctl.ledger.db import Ledger


@dataclass
class State:
    config_path: str | None = None
    _config: Config | None = field(default=None, repr=False)

    def config(self) -> Config:
        if self._config is None:
            from spotctl.config import load_config

            self._config = load_config(self.config_path)
        return self._config


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    if not isinstance(obj, State):
        obj = State()
        ctx.find_root().obj = obj
    return obj


def get_config(ctx: typer.Context) -> Config:
    return state(ctx).config()


def open_ledger_for(ctx: typer.Context, *, readonly: bool = False) -> Ledger:
    from spotctl.ledger.db import Ledger

    return Ledger(get_config(ctx).ledger_target, readonly=readonly)


def emit_json(payload: Any) -> None:
    """Write stable JSON for scripts to stdout (sorted keys, one document, newline)."""
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


_console: Console | None = None
_err_console: Console | None = None


def console() -> Console:
    """The console for people. Honours NO_COLOR (rich reads it) and non-terminals."""
    global _console
    if _console is None:
        from rich.console import Console

        cols = os.environ.get("COLUMNS", "")
        _console = Console(no_color="NO_COLOR" in os.environ or None, highlight=False,
                           width=int(cols) if cols.isdigit() else None)
    return _console


def err_console() -> Console:
    global _err_console
    if _err_console is None:
        from rich.console import Console

        _err_console = Console(stderr=True, no_color="NO_COLOR" in os.environ or None,
                               highlight=False)
    return _err_console
