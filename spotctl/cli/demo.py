"""``spotctl demo``: the whole tool on the embedded local cloud, a simulated day in ~a minute."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        directory: Path = typer.Option(Path("spotctl-demo"), "--dir",
                                       help="Workspace to create (replaced if it exists)."),
        seconds: float = typer.Option(60.0, help="Real seconds for the simulated day."),
        engine: str = typer.Option("builtin", help="builtin (fast) or vllm (not yet in the "
                                                   "demo; see README)."),
    ) -> None:
        """Up a spot-first tier on the local cloud and drive a simulated day through it."""
        from rich.live import Live
        from rich.table import Table

        from spotctl.cli.common import console, err_console
        from spotctl.money import fmt_usd
        from spotctl.services.demo import run_demo

        c, e = console(), err_console()
        live: Live | None = None

        def view(v) -> Table:
            t = Table(title="simulated day", title_justify="left", show_header=False)
            codes = dict(v.codes)
            ok = codes.pop("ok", 0)
            t.add_row("simulated time", v.sim_time)
            t.add_row("requests", f"{ok} ok" + "".join(f", {n} {k}" for k, n in
                                                        sorted(codes.items())))
            t.add_row("spend (ledger)", f"{fmt_usd(v.spend_micros)} "
                                        f"(observability {v.spend_status})")
            t.add_row("gate", v.gate)
            t.add_row("tier", v.tiers)
            return t

        def on_view(v) -> None:
            nonlocal live
            if live is None:
                live = Live(view(v), console=e, refresh_per_second=4, transient=False)
                live.start()
            live.update(view(v))

        def log(line: str) -> None:
            nonlocal live
            if live is not None:  # the day's table stays above what follows
                live.stop()
                live = None
            e.print(line, markup=False, highlight=False)

        try:
            result = run_demo(directory, seconds=seconds, engine=engine, log=log,
                              on_view=on_view, width=c.width)
        finally:
            if live is not None:
                live.stop()
        e.print(f"done in {result.took_s:.0f} s. Everything below is read back from the "
                "ledger.\n")
        cfg = str(result.config_path)
        for args, text in result.read_back:
            c.print(f"$ spotctl --config {cfg} {' '.join(args)}", style="dim")
            c.print(text, end="", markup=False, highlight=False)
        c.print("\nExplore the workspace next:")
        for cmd in ("cost --window 6h", "cost --window 24h --plot", "events", "status",
                    "billing status", "report --window 24h --out report.html"):
            c.print(f"  spotctl --config {cfg} {cmd}")
        c.print("(The local cloud stopped with the demo: from 15 simulated minutes after its "
                "end, billing for this workspace reads 'unknown since' the end of the day, "
                "never $0.)")
