"""``spotctl example``: build an example ledger and show ``cost`` and ``price`` on it."""

from __future__ import annotations

from pathlib import Path

import typer

EXAMPLE_TOML = """# Written by `spotctl example`: EXAMPLE DATA, not a bill.
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


def register(app: typer.Typer) -> None:
    @app.command()
    def example(
        directory: Path = typer.Option(Path("spotctl-example"), "--dir",
                                       help="Workspace to create (replaced if it exists)."),
    ) -> None:
        """Build an example ledger from the packaged example scenario, then run cost and price on it."""
        import os
        import shutil
        import subprocess
        import sys

        from spotctl.cli.common import console
        from spotctl.clock import get_clock
        from spotctl.example_scenario import build_example
        from spotctl.ledger.db import Ledger

        c = console()
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        cfg_path = directory / "spotctl.toml"
        fd = os.open(cfg_path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(EXAMPLE_TOML)
        now = get_clock().now()
        with Ledger(directory / "spotctl.db") as ledger:
            summary = build_example(ledger, now)
        c.print(f"[bold yellow]EXAMPLE DATA[/bold yellow]: {summary.samples:,} billing samples "
                f"and {summary.requests:,} requests written by the example scenario "
                f"(spotctl/data/scenario.toml) into {directory}/spotctl.db — not a real bill.\n")
        for args in (["cost", "--window", "24h"], ["price", "--margin", "0.3"]):
            cmd = [sys.executable, "-m", "spotctl", "--config", str(cfg_path), *args]
            c.print(f"$ spotctl --config {cfg_path} {' '.join(args)}", style="dim")
            subprocess.run(cmd, check=False)  # noqa: S603 - our own CLI
            c.print()
