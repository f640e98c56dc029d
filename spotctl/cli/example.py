"""``spotctl example``: build an example ledger and show ``cost`` and ``price`` on it."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def example(
        directory: Path = typer.Option(Path("spotctl-example"), "--dir", metavar="DIR",
                                       help="Workspace to create (a previous example workspace "
                                            "there is replaced; anything else is refused)."),
    ) -> None:
        """Build an example ledger from the packaged example scenario, then run cost and price
        on it. EXAMPLE DATA, not a bill."""
        from spotctl.cli.common import console
        from spotctl.clock import get_clock
        from spotctl.services.example import build_workspace

        c = console()
        cfg_path, summary = build_workspace(directory, get_clock().now())
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
