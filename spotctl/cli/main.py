"""The ``spotctl`` Typer app and the one place where errors become exit codes.

Start-up must stay fast: command modules import only typer at module level and import their
heavy parts (httpx, uvicorn, sky, ...) inside the command body. Nothing here imports SkyPilot.

Exit codes (README "Exit codes"): every :class:`~spotctl.errors.SpotctlError` prints one line
and exits with its code; Typer's own usage errors (unknown option, missing argument, bad value)
exit 2 with one line; anything else exits 1 with one line (``SPOTCTL_DEBUG=1`` re-raises it).
The mapping lives in :meth:`SpotctlGroup.main`, so ``spotctl`` run from a shell and Typer's
``CliRunner`` in the tests take the same path.

Typer (since 0.26) vendors its own copy of Click: its errors are not the ``click`` package's.
Since 0.28 they derive from the public ``typer.TyperException`` (``exit_code``,
``format_message()``); that is the only Click-shaped thing this module catches.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from spotctl import __version__
from spotctl.cli.common import State
from spotctl.errors import ExitCode, SpotctlError

# The first word of each command -> the module that registers it (``register(app)``). Only the
# module of the command being run is imported and built; --help, completion and an unknown
# word register them all, in this order. Add a line per command (a test checks the table
# against what the modules register).
COMMANDS: dict[str, str] = {
    "init": "spotctl.cli.setup", "config": "spotctl.cli.setup", "doctor": "spotctl.cli.setup",
    "cost": "spotctl.cli.cost", "price": "spotctl.cli.cost", "report": "spotctl.cli.cost",
    "bench": "spotctl.cli.bench", "compare": "spotctl.cli.compare", "advise": "spotctl.cli.advise",
    "ledger": "spotctl.cli.ledger_cmd",
    "example": "spotctl.cli.example",
    "localcloud": "spotctl.cli.localcloud",
    "poll-billing": "spotctl.cli.billing", "billing": "spotctl.cli.billing",
    "reconcile": "spotctl.cli.billing",
    "gateway": "spotctl.cli.gateway", "keys": "spotctl.cli.gateway", "budget": "spotctl.cli.gateway",
    "up": "spotctl.cli.fleet", "hibernate": "spotctl.cli.fleet", "wake": "spotctl.cli.fleet",
    "down": "spotctl.cli.fleet", "status": "spotctl.cli.fleet", "events": "spotctl.cli.fleet",
    "daemon": "spotctl.cli.fleet",
    "demo": "spotctl.cli.demo",
}
COMMAND_MODULES = list(dict.fromkeys(COMMANDS.values()))
COMPLETE_VAR = "_SPOTCTL_COMPLETE"

# Options of the root command that are also accepted after the command (``spotctl cost
# --config x.toml``), like kubectl's persistent flags. A test asserts no command declares them.
GLOBAL_VALUE_OPTIONS = ("--config", "-c")


def hoist_global_options(args: Sequence[str]) -> list[str]:
    """Move ``--config PATH`` / ``-c PATH`` / ``--config=PATH`` found anywhere before ``--``
    to the front, where the root command parses them. The last one given wins."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg in GLOBAL_VALUE_OPTIONS and i + 1 < len(args):
            front += [arg, args[i + 1]]
            i += 2
            continue
        if arg.startswith("--config="):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


class SpotctlGroup(TyperGroup):
    """The root command: runs Typer in non-standalone mode and maps every error to an exit code."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        argv = hoist_global_options(sys.argv[1:] if args is None else list(args))
        code = _run(super().main, argv, prog_name or "spotctl", complete_var, extra)
        if standalone_mode:
            sys.exit(code)
        return code


def _run(main, argv: list[str], prog_name: str, complete_var: str | None,
         extra: dict[str, Any]) -> int:
    try:
        rv = main(args=argv, prog_name=prog_name, complete_var=complete_var,
                  standalone_mode=False, **extra)
    except SpotctlError as exc:
        _print_error(exc.message)
        return int(exc.exit_code)
    except typer.Abort:
        _print_error("aborted")
        return int(ExitCode.ERROR)
    except typer.TyperException as exc:  # Typer's (vendored Click's) usage and file errors
        return _typer_error(exc)
    except Exception as exc:
        if os.environ.get("SPOTCTL_DEBUG"):
            raise
        _print_error(f"internal error: {type(exc).__name__}: {exc} "
                     "(set SPOTCTL_DEBUG=1 for details)")
        return int(ExitCode.ERROR)
    # Typer returns the code of a typer.Exit in non-standalone mode, a command's value otherwise
    return rv if isinstance(rv, int) else 0


def _typer_error(exc: typer.TyperException) -> int:
    ctx = getattr(exc, "ctx", None)
    message = exc.format_message()
    if ctx is not None and message == ctx.get_help():
        # a group run without its command (no_args_is_help): the help is the answer
        sys.stderr.write(message + "\n")
        return int(ExitCode.USAGE)
    one_line = " ".join(message.split())
    if ctx is not None:
        one_line += f" (see '{ctx.command_path} --help')"
    _print_error(one_line)
    # UsageError and its subclasses carry exit_code 2; other Typer errors (a file that cannot
    # be opened) carry 1
    return int(ExitCode.USAGE) if exc.exit_code == ExitCode.USAGE else int(ExitCode.ERROR)


_app = typer.Typer(
    name="spotctl",
    cls=SpotctlGroup,
    help="Run LLM inference on spot GPUs and know, to the cent, what it costs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    # Plain Click help: no rich markup eating "[billing]" in help text, no "<bool>" after flags,
    # greppable, and --help does not import rich.
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spotctl {__version__}")
        raise typer.Exit(0)


@_app.callback()
def _root(
    ctx: typer.Context,
    config: str | None = typer.Option(
        None, "--config", "-c", help="Path to spotctl.toml (else $SPOTCTL_CONFIG, ./spotctl.toml, "
        "the user config dir). Accepted before or after the command.", metavar="PATH"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    ctx.obj = State(config_path=config)


_registered: list[str] = []


def command_word(argv: list[str]) -> str | None:
    """The command being run: the first word after the root options (``None`` for a root
    option such as --help or --version). ``argv`` has its global options hoisted."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in GLOBAL_VALUE_OPTIONS:
            i += 2
        elif arg.startswith("--config="):
            i += 1
        else:
            return None if arg.startswith("-") else arg
    return None


def register_commands(argv: list[str] | None = None) -> typer.Typer:
    """The app with the command groups ``argv`` needs registered (all when ``argv`` is None)."""
    word = command_word(argv) if argv is not None else None
    wanted = [COMMANDS[word]] if word in COMMANDS and COMPLETE_VAR not in os.environ else \
        COMMAND_MODULES
    for name in wanted:
        if name not in _registered:
            importlib.import_module(name).register(_app)
            _registered.append(name)
    return _app


def __getattr__(name: str) -> Any:
    """``from spotctl.cli.main import app``: the app with every command (tests, completion)."""
    if name == "app":
        return register_commands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def invoke(args: list[str]) -> int:
    """Run spotctl in this process with ``args``; return the exit code (``spotctl example``)."""
    argv = hoist_global_options(args)
    return register_commands(argv)(args=argv, standalone_mode=False)


def run() -> None:
    """Console-script entry point (``spotctl``) and ``python -m spotctl``."""
    argv = hoist_global_options(sys.argv[1:])
    register_commands(argv)(args=argv, prog_name="spotctl")


def _print_error(message: str) -> None:
    sys.stderr.write(f"spotctl: error: {message}\n")
