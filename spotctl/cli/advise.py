"""``spotctl advise``: the idle timeout and capacity to run, from the window's real arrivals."""

from __future__ import annotations

import typer

from spotctl.cli.common import (
    console,
    emit_json,
    get_config,
    json_option,
    open_ledger_for,
    window_bounds,
    window_options,
)


def register(app: typer.Typer) -> None:
    @app.command()
    @json_option
    @window_options
    def advise(
        ctx: typer.Context,
        window: str = "7d",
        until: str | None = None,
        tier: str = typer.Option(None, "--tier", help="Only this tier."),
        json_out: bool = False,
    ) -> None:
        """Replay the window's request arrivals under idle timeouts {5, 10, 15, 30, 60 min,
        never} × {spot-first, on-demand} with the rates and wake time it measured; backtest the
        current policy against the actual spend; recommend one, naming its trade-off."""
        from spotctl.services.economics import advise as run

        start_ms, end_ms = window_bounds(window, None, until)
        cfg = get_config(ctx)
        with open_ledger_for(ctx, readonly=True) as ledger:
            out = run(ledger, cfg, start_ms, end_ms, tier)
        if json_out:
            emit_json(out)
            return
        _print(out)


def _print(out: dict) -> None:
    from decimal import Decimal

    from rich import box
    from rich.table import Table

    c = console()
    for t in out["tiers"]:
        table = Table(title=f"advise {t['tier']}: {out['window']['start']} → "
                            f"{out['window']['end']} (estimates)", title_justify="left",
                      box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
        for col in ("idle timeout", "capacity", "predicted", "$/Mtok", "wakes", "held >10 s"):
            table.add_column(col, justify="left" if col in ("idle timeout", "capacity")
                             else "right")
        for p in t["policies"]:
            spend = p["predicted_spend_usd"]
            per = p["usd_per_mtok_output"]
            name = "never" if p["idle_minutes"] is None else f"{p['idle_minutes']} min"
            table.add_row(name + (" (current)" if p["current"] else ""), p["capacity"],
                          "—" if spend is None else f"${Decimal(spend):,.2f}",
                          "—" if per is None else f"${Decimal(per):,.2f}", str(p["wakes"]),
                          str(p["requests_held_over_10s"]),
                          style="bold" if p["current"] else None)
        c.print(table)
        bt = t["backtest"]
        if bt["error"] is not None:
            c.print(f"backtest: the current policy ({bt['policy']}) predicts "
                    f"${Decimal(bt['predicted_spend_usd']):,.2f} against "
                    f"${Decimal(bt['actual_spend_usd']):,.2f} actually billed "
                    f"(error {Decimal(bt['error']) * 100:+.1f} %).")
        else:
            c.print("backtest: not possible in this window (no actual spend or no rate).")
        for note in (t["measured"] or {}).get("notes", []):
            c.print(f"  · {note}")
        c.print(t["sentence"])
