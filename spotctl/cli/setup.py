"""``spotctl init``, ``spotctl config show`` and ``spotctl doctor``: first contact."""

from __future__ import annotations

from pathlib import Path

import typer

from spotctl.cli.common import console, emit_json, get_config, json_option, state

PROVIDER_HELP = "hyperstack | runpod | vast | lambda | localcloud"


def register(app: typer.Typer) -> None:
    @app.command()
    def init(
        ctx: typer.Context,
        provider: str = typer.Option("hyperstack", "--provider", "-p", metavar="KIND",
                                     help=f"The GPU provider: {PROVIDER_HELP}."),
        path: Path = typer.Option(Path("spotctl.toml"), "--path", metavar="FILE",
                                  help="Where to write it."),
        force: bool = typer.Option(False, "--force", help="Replace an existing file."),
    ) -> None:
        """Write a commented starter spotctl.toml for one provider (never over an existing
        file without --force). Exit 2 when the file exists or the provider is unknown."""
        from spotctl.services.setup import STARTERS, write_starter

        written = write_starter(path, provider, force=force)
        key_env = STARTERS[provider].key_env
        c = console()
        c.print(f"wrote {written} (provider {provider}). Next:", markup=False)
        for line in (f"export {key_env}=...      # the key stays in the environment",
                     f"spotctl --config {written} doctor",
                     f"spotctl --config {written} poll-billing   # then from cron, or the daemon"):
            c.print(f"  {line}", markup=False)

    config = typer.Typer(help="The configuration spotctl uses.", no_args_is_help=True)
    app.add_typer(config, name="config")

    @config.command("show")
    @json_option
    def show(ctx: typer.Context, json_out: bool = False) -> None:
        """Print the effective configuration: the file's values with every default filled in.
        Keys appear only as the name of their environment variable."""
        from spotctl.services.setup import effective_config, effective_toml

        cfg = get_config(ctx)
        if json_out:
            emit_json(effective_config(cfg))
        else:
            console().print(effective_toml(cfg), markup=False, highlight=False, end="")

    @app.command()
    @json_option
    def doctor(ctx: typer.Context, json_out: bool = False) -> None:
        """Check the configuration, the providers' keys, the ledger, billing freshness and the
        gateway, one line each. Exit 0 when no check failed, else the code of the first failure
        (2 configuration or a missing key, 1 an unusable ledger, 4 billing not fresh or the
        gateway not ready)."""
        from spotctl.clock import get_clock
        from spotctl.services.doctor import exit_code, run_checks

        checks = run_checks(state(ctx).config_path, get_clock())
        code = exit_code(checks)
        if json_out:
            emit_json({"ok": code == 0, "checks": [c.to_json() for c in checks]})
        else:
            c = console()
            marks = {"ok": "[green]ok  [/green]", "warn": "[yellow]warn[/yellow]",
                     "fail": "[red]FAIL[/red]"}
            from rich.markup import escape

            for chk in checks:
                c.print(f"{marks[chk.status]} {chk.name}: {escape(chk.detail)}")
        if code:
            raise typer.Exit(code)
