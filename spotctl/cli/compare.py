"""``spotctl compare``: the window's tokens priced on hosted APIs, against its invoice-true spend."""

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
    def compare(
        ctx: typer.Context,
        window: str | None = None,  # 7d unless --since is given
        since: str | None = None,
        until: str | None = None,
        prices: str = typer.Option(None, help="Hosted prices TOML (default: hosted-prices.toml "
                                              "beside the config, else the shipped example)."),
        json_out: bool = False,
    ) -> None:
        """What this window's tokens would have cost on hosted APIs (list prices, an estimate),
        the savings of self-hosting, and the utilisation at which each offer breaks even."""
        from spotctl.services.economics import compare as run

        start_ms, end_ms = window_bounds(window or (None if since else "7d"), since, until)
        cfg = get_config(ctx)
        with open_ledger_for(ctx, readonly=True) as ledger:
            out = run(ledger, cfg, start_ms, end_ms, prices)
        if json_out:
            emit_json(out)
            return
        _print(out)


def _print(out: dict) -> None:
    from decimal import Decimal

    from rich import box
    from rich.table import Table

    from spotctl.accounting.compare import saved_text
    from spotctl.cli.cost import fmt_pct

    c = console()
    table = Table(title=f"Hosted APIs vs self-hosted, {out['window']['start']} → "
                        f"{out['window']['end']} (estimates at list prices)",
                  title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False,
                  caption="API $/Mtok: the offer's price per million output tokens for this "
                          "window's prompt/output mix; break-even: the utilisation at which "
                          "the fleet's $/Mtok equals the offer's", caption_justify="left")
    for col in ("offer", "API", "self-hosted", "saved", "API $/Mtok", "break-even"):
        table.add_column(col, justify="left" if col == "offer" else "right",
                         no_wrap=col != "offer", min_width=24 if col == "offer" else None)
    for o in out["offers"]:
        be = o["break_even_utilisation"]
        table.add_row(o["name"], f"${Decimal(o['usd']):,.2f}",
                      f"${Decimal(o['self_hosted_usd']):,.2f}", saved_text(o),
                      "—" if o["usd_per_mtok_output_equivalent"] is None else
                      f"${Decimal(o['usd_per_mtok_output_equivalent']):,.4f}",
                      "—" if be is None else (fmt_pct(Decimal(be)) if Decimal(be) <= 1 else
                                              "never (>100 %)"))
    c.print(table)
    from rich.markup import escape

    from spotctl.accounting.compare import fully_loaded_text

    loaded = fully_loaded_text(out["fully_loaded"], out["self_hosted_usd"],
                               out["spend_complete"])
    if loaded:
        c.print(escape(loaded))
    util = out["utilisation"]
    c.print(f"This window: {out['output_tokens']:,} output tokens, utilisation "
            f"{fmt_pct(None if util is None else Decimal(util))}. Prices from "
            f"{out['prices']['path']} ({out['prices']['origin']}). {out['note']}.")
    from spotctl.accounting.sentences import api_sentence

    sentence = api_sentence(out)
    if sentence:
        c.print(sentence)
