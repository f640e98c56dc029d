"""``spotctl example``: build an example ledger and show ``cost`` and ``price`` on it."""

from __future__ import annotations

from pathlib import Path

import typer

MARK = "# Written by `spotctl example`"
EXAMPLE_TOML = MARK + """: EXAMPLE DATA, not a bill.
[ledger]
path = "spotctl.db"

[[providers]]
name = "example-cloud"
kind = "hyperstack"
api_key_env = "EXAMPLE_CLOUD_API_KEY"

[[tiers]]
name = "llama-70b"
model = "llama-70b"
backend = "localcloud"
provider = "example-cloud"
"""


def _prepare(directory: Path) -> None:
    """An empty workspace. Only a previous example workspace is replaced, never anything else."""
    import shutil

    from spotctl.errors import UsageError

    if directory.exists():
        cfg = directory / "spotctl.toml"
        ours = cfg.is_file() and cfg.read_text(encoding="utf-8").startswith(MARK)
        if not ours and (not directory.is_dir() or any(directory.iterdir())):
            raise UsageError(f"{directory} exists and is not an example workspace; "
                             "give another --dir")
        shutil.rmtree(directory)
    directory.mkdir(parents=True)


def register(app: typer.Typer) -> None:
    @app.command()
    def example(
        directory: Path = typer.Option(Path("spotctl-example"), "--dir", metavar="DIR",
                                       help="Workspace to create (a previous example workspace "
                                            "there is replaced; anything else is refused)."),
    ) -> None:
        """Build an example ledger from the packaged example scenario, then run cost and price
        on it. EXAMPLE DATA, not a bill."""
        import os

        from spotctl.cli.common import console
        from spotctl.clock import get_clock
        from spotctl.example_scenario import build_example
        from spotctl.ledger.db import Ledger

        c = console()
        _prepare(directory)
        cfg_path = directory / "spotctl.toml"
        fd = os.open(cfg_path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(EXAMPLE_TOML)
        with Ledger(directory / "spotctl.db") as ledger:
            summary = build_example(ledger, get_clock().now())
        c.print(f"[bold yellow]EXAMPLE DATA[/bold yellow]: {summary.samples:,} billing samples "
                f"and {summary.requests:,} requests written by the example scenario "
                f"into {directory}/spotctl.db — not a real bill.\n")
        from spotctl.cli.main import invoke

        for args in (["cost", "--window", "24h"], ["price", "--margin", "0.3"]):
            c.print(f"$ spotctl --config {cfg_path} {' '.join(args)}", style="dim",
                    markup=False)
            code = invoke(["--config", str(cfg_path), *args])
            if code:
                raise typer.Exit(code)
            c.print()
