"""The ``spotctl`` Typer app.

Start-up must stay fast: command modules import only typer at module level and import their
heavy parts (httpx, uvicorn, sky, ...) inside the command body. Nothing here imports SkyPilot.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from spotctl import __version__
from spotctl.cli.common import State
from spotctl.errors import ExitCode, SpotctlError

# Each module exposes ``register(app: typer.Typer) -> None``. Add a line to add a command group.
COMMAND_MODULES = [
    "spotctl.cli.cost",
    "spotctl.cli.ledger_cmd",
    "spotctl.cli.example",
    "spotctl.cli.localcloud",
    "spotctl.cli.billing",
    "spotctl.cli.gateway",
    "spotctl.cli.fleet",
    "spotctl.cli.demo",
]

app = typer.Typer(
    name="spotctl",
    help="Run LLM inference on spot GPUs and know, to the cent, what it costs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spotctl {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    config: str | None = typer.Option(
        None, "--config", "-c", help="Path to spotctl.toml (else $SPOTCTL_CONFIG, ./spotctl.toml, "
        "the user config dir).", metavar="PATH"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    ctx.obj = State(config_path=config)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command group not built yet
                continue
            raise
        module.register(app)


_register_all()


def run() -> None:
    """Console-script entry point: user errors are one line and a documented exit code."""
    try:
        code = app(standalone_mode=False)
    except SpotctlError as exc:
        _print_error(exc.message)
        sys.exit(int(exc.exit_code))
    except SystemExit:
        raise
    except KeyboardInterrupt:
        _print_error("interrupted")
        sys.exit(130)
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.Abort):
            _print_error("aborted")
            sys.exit(int(ExitCode.ERROR))
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(int(ExitCode.USAGE) if isinstance(exc, click.UsageError) else exc.exit_code)
        if os.environ.get("SPOTCTL_DEBUG"):
            raise
        _print_error(f"internal error: {type(exc).__name__}: {exc} (set SPOTCTL_DEBUG=1 for details)")
        sys.exit(int(ExitCode.ERROR))
    sys.exit(code if isinstance(code, int) else 0)


def _print_error(message: str) -> None:
    sys.stderr.write(f"spotctl: error: {message}\n")
