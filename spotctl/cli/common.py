"""What every command shares: the loaded config, the ledger, shared options, JSON and tables."""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from spotctl.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from spotctl.config import Config
    from spotctl.ledger.db import Ledger

F = TypeVar("F", bound=Callable[..., Any])

JSON_HELP = "Print stable JSON for scripts (sorted keys) instead of tables."


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
    """The configured ledger. ``readonly=True`` for every command that only reads: it never
    creates a ledger file (a missing one is exit 2 naming the path). A ledger written by an
    older spotctl is migrated forward first, when this user may write it, so that reading
    keeps working after an upgrade."""
    from spotctl.ledger.db import Ledger

    cfg = get_config(ctx)
    if readonly and not cfg.ledger.url:  # SQLite: migrate an older file forward first
        from spotctl.ledger.check import stored_schema_version
        from spotctl.ledger.schema import SCHEMA_VERSION

        path = cfg.ledger_path
        version = stored_schema_version(path)
        if version is not None and version < SCHEMA_VERSION and os.access(path, os.W_OK):
            Ledger(cfg.ledger_target).close()  # the file exists: this migrates, it never creates
    return Ledger(cfg.ledger_target, readonly=readonly)


def require_ledger(ctx: typer.Context) -> None:
    """Exit 2 when the configured ledger does not exist (for read commands that open it
    through another module)."""
    path = get_config(ctx).ledger_path
    if not path.exists():
        raise UsageError(f"{path}: no ledger here yet (run spotctl poll-billing)")


# -- shared options ----------------------------------------------------------------------------
# A shared option is declared once here (names, help); a command names the parameter with its
# plain default and a decorator below turns it into the option (the sqlite-utils way).
_SHARED: dict[str, tuple[tuple[str, ...], str]] = {
    "json_out": (("--json",), JSON_HELP),
    "window": (("--window", "-w"), "Window ending now (or at --until): 90m, 24h, 7d, 30d."),
    "since": (("--since",), "Window start, ISO 8601 (instead of --window)."),
    "until": (("--until",), "Window end, ISO 8601 (default: now)."),
}


def _shared_options(fn: F, names: tuple[str, ...], *, required: tuple[str, ...] = ()) -> F:
    """Turn ``fn``'s parameters among ``names`` into their shared options, keeping each
    parameter's default; a parameter in ``required`` must be declared."""
    sig = inspect.signature(fn)
    missing = [n for n in required if n not in sig.parameters]
    if missing:
        raise TypeError(f"{fn.__name__}: needs the parameter(s) {', '.join(missing)}")
    params = [p.replace(default=typer.Option(p.default, *_SHARED[p.name][0],
                                             help=_SHARED[p.name][1]))
              if p.name in names else p for p in sig.parameters.values()]
    fn.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return fn


def json_option(fn: F) -> F:
    """Give a command the shared ``--json`` flag (one name, one help line everywhere).

    The command declares ``json_out: bool = False``; this decorator turns that parameter into
    the ``--json`` option. Put it below ``@app.command()``::

        @app.command()
        @json_option
        def status(ctx: typer.Context, json_out: bool = False) -> None: ...
    """
    return _shared_options(fn, ("json_out",), required=("json_out",))


def window_options(fn: F) -> F:
    """Give a command the shared window options ``--window/-w``, ``--since`` and ``--until``
    (whichever of the parameters ``window``, ``since``, ``until`` it declares, with its own
    default), to be read with :func:`window_bounds`::

        @app.command()
        @window_options
        def advise(ctx: typer.Context, window: str = "7d", until: str = None) -> None: ...
    """
    return _shared_options(fn, ("window", "since", "until"), required=("window",))


def window_bounds(window: str | None, since: str | None, until: str | None) -> tuple[int, int]:
    """The window the shared options give, as (start, end) in ms: ``--since``/``--until``, or
    ``--window`` ending at ``--until`` (default now); bad input is a usage error (exit 2)."""
    from spotctl.accounting.window import parse_window
    from spotctl.clock import get_clock, parse_iso, to_ms

    try:
        end = parse_iso(until) if until else get_clock().now()
        start_dt = parse_iso(since) if since else None
    except ValueError:
        raise UsageError(
            f"bad time {until if until and not since else since!r}: expected ISO 8601 such as "
            "2026-11-21T00:00:00Z") from None
    if start_dt is None:
        start_dt = end - parse_window(window or "24h")
    elif window:
        raise UsageError("give either --window or --since, not both")
    if start_dt >= end:
        raise UsageError("the window must start before it ends")
    return to_ms(start_dt), to_ms(end)


def check_names(what: str, given: Iterable[str] | None, known: Iterable[str]) -> set[str] | None:
    """``given`` as a set, or ``None`` when nothing was given. A name that is not ``known`` is
    a usage error (exit 2) naming the known ones: a filter that matches nothing is not $0."""
    if not given:
        return None
    wanted = set(given)
    known_set = set(known)
    unknown = sorted(wanted - known_set)
    if unknown:
        names = ", ".join(sorted(known_set)) or "none"
        raise UsageError(f"unknown {what} {', '.join(map(repr, unknown))} (known: {names})")
    return wanted


def name_filters(cfg: Config, ledger: Ledger, tiers: Iterable[str] | None,
                 providers: Iterable[str] | None) -> tuple[set[str] | None, set[str] | None]:
    """``--tier``/``--provider`` filters checked against the configured names and the names
    the ledger has seen (a tier removed from the config keeps its history)."""
    if not tiers and not providers:
        return None, None
    from spotctl.ledger.check import ledger_names

    seen = ledger_names(ledger)
    return (check_names("tier", tiers, seen.tiers | {t.name for t in cfg.tiers}),
            check_names("provider", providers, seen.providers | {p.name for p in cfg.providers}))


# -- output ------------------------------------------------------------------------------------
def emit_json(payload: Any) -> None:
    """Write stable JSON for scripts to stdout (sorted keys, one document, newline)."""
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


# Wide enough that rich never truncates a cell with "…" when the output is not a terminal.
PIPE_WIDTH = 1_000


def _make_console(stream: Any, *, stderr: bool) -> Console:
    """A console for people. Honours NO_COLOR (and rich's own FORCE_COLOR/TERM checks).

    In a terminal, tables fit its width. Piped to another program (grep, less, a file), a table
    keeps its natural width, one row per line, so nothing is cut with "…"; ``COLUMNS`` sets an
    explicit width either way.
    """
    from rich.console import Console

    cols = os.environ.get("COLUMNS", "")
    width: int | None = int(cols) if cols.isdigit() else None
    if width is None and not (hasattr(stream, "isatty") and stream.isatty()):
        width = PIPE_WIDTH
    return Console(stderr=stderr, no_color="NO_COLOR" in os.environ or None, highlight=False,
                   width=width)


_out: tuple[Any, Console] | None = None
_err: tuple[Any, Console] | None = None


def console() -> Console:
    """The console for stdout (remade when sys.stdout changes, as under CliRunner)."""
    global _out
    if _out is None or _out[0] is not sys.stdout:
        _out = (sys.stdout, _make_console(sys.stdout, stderr=False))
    return _out[1]


def err_console() -> Console:
    """The console for stderr: progress and log lines."""
    global _err
    if _err is None or _err[0] is not sys.stderr:
        _err = (sys.stderr, _make_console(sys.stderr, stderr=True))
    return _err[1]
