"""``spotctl cost`` and ``spotctl price``: invoice-true cost for a window, and price bands on it."""

from __future__ import annotations

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation

import typer

from spotctl.cli.common import (
    console,
    emit_json,
    get_config,
    json_option,
    name_filters,
    open_ledger_for,
    window_bounds,
    window_options,
)
from spotctl.errors import ExitCode, UsageError


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a command reads and computes a window.

    The read creates one object per row (tens of thousands for a month) and the collector, set
    off by those allocations, walks every object the imports made too: 40-70 ms of a 30-day
    ``cost`` (measured with ``gc.callbacks``), for nothing, since these objects hold no cycles
    and the process ends after printing. Re-enabled on the way out, so an in-process caller
    (the tests' ``CliRunner``) keeps its collector."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


_EXIT_FREEZE: list[bool] = []


def freeze_at_exit() -> None:
    """At exit, move every live object to the collector's permanent generation (``gc.freeze``).

    The interpreter's last collections walk every object still alive, most of them the imports'
    (typer, pydantic, psycopg): 30-45 ms of each ``cost`` process on the bench machine, spent on
    memory the OS takes back anyway. Frozen objects are skipped; reference counting still frees
    what it frees, so files and sockets close as before. Registered once per process (``atexit``
    runs it after the command, before those collections); an in-process caller (the tests) is
    frozen only when it exits."""
    if not _EXIT_FREEZE:
        _EXIT_FREEZE.append(True)
        atexit.register(gc.freeze)


def _report(ctx: typer.Context, window, since, until, tier, provider, bucket, min_tokens,
            closures: bool = False, arrivals: bool = False):
    freeze_at_exit()
    with collector_paused():
        return _read_report(ctx, window, since, until, tier, provider, bucket, min_tokens,
                            closures, arrivals)


def _read_report(ctx: typer.Context, window, since, until, tier, provider, bucket, min_tokens,
                 closures: bool, arrivals: bool):
    from spotctl.accounting.window import parse_window
    from spotctl.services.cost import cost_report

    start_ms, end_ms = window_bounds(window, since, until)
    bucket_s = int(parse_window(bucket, what="bucket").total_seconds())
    if min_tokens < 0:
        raise UsageError("--min-tokens must be zero or more")
    cfg = get_config(ctx)
    with open_ledger_for(ctx, readonly=True) as ledger:
        tiers, providers = name_filters(cfg, ledger, tier, provider)
        report = cost_report(
            ledger, cfg, start_ms, end_ms, bucket_s=bucket_s, min_tokens=min_tokens,
            tiers=tiers, providers=providers, closures=closures, arrivals=arrivals)
    from spotctl.services.cost import add_summary

    report.compare = add_summary(report, cfg)
    return report


def _fmt_mtok(value: Decimal | None) -> str:
    return "—" if value is None else f"${value:,.2f}"


def _fmt_band(b: dict) -> str:
    if b.get("p10") is None:
        return "—"
    return f"${b['p10']:,.2f}–{b['p90']:,.2f}"


def _fmt_tokens(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def fmt_pct(value: Decimal | None) -> str:
    """A share for people: 5.7 %, 0.012 %, — when unknown."""
    if value is None:
        return "—"
    pct = value * 100
    if pct == 0:
        return "0 %"
    if pct < Decimal("0.1"):
        return f"{pct:.3f} %"
    if pct < 10:
        return f"{pct:.1f} %"
    return f"{pct:.0f} %"


def _per_hour(usd: str) -> str:
    value = Decimal(usd)
    return f"${value:,.2f}/h" if value == value.quantize(Decimal("0.01")) else f"${value:,.4f}/h"


def _rate_mismatch_line(report) -> str | None:
    """One line for people: how many samples billed a rate off the launch quote in the window
    (per tier), and the worst one. None when there were none."""
    from rich.markup import escape

    rm = report.total.extra.get("rate_mismatches") or {}
    if not rm.get("count"):
        return None
    w = rm["worst"]
    tiers = [f"{t.name} {t.extra['rate_mismatches']['count']}" for t in report.tiers
             if t.extra.get("rate_mismatches", {}).get("count")]
    off = "" if w["off_pct"] is None else f" ({Decimal(w['off_pct']):+.1f} %)"
    n = rm["count"]
    return escape(
        f"{n} billed rate{'' if n == 1 else 's'} off the launch quote"
        + (f" ({', '.join(tiers)})" if tiers else "")
        + f"; worst: {w['resource_id']} ({w['provider']}) billed "
        f"{_per_hour(w['billed_usd_per_hour'])} vs quoted {_per_hour(w['quoted_usd_per_hour'])}"
        f"{off} at {w['at']} (price, not spend: spend is the providers' running totals)")


def _print_cost(report, plot: bool) -> None:
    from rich.table import Table

    from spotctl.clock import from_ms, iso
    from spotctl.money import fmt_usd

    c = console()
    s = report.spend
    title = f"Cost {iso(from_ms(report.start_ms))} → {iso(from_ms(report.end_ms))}"
    from rich import box

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1),
                  pad_edge=False,
                  caption="busy = utilisation of the serving capacity; full load = $/Mtok if "
                          "the paid machines had been saturated; idle = serving time with no "
                          "request in flight", caption_justify="left")
    for col, just in [("tier", "left"), ("spend", "right"), ("out tok", "right"),
                      ("$/Mtok", "right"), ("P10–P90", "right"), ("busy", "right"),
                      ("full load", "right"), ("idle", "right")]:
        width = min(24, max([5, *(len(t.name) for t in report.tiers)])) if col == "tier" else None
        table.add_column(col, justify=just, no_wrap=True, min_width=width)

    def row(b, name: str, style: str | None = None) -> None:
        spend = fmt_usd(b.spend_micros)
        if name == "total" and not s.complete:
            spend = f"≥ {spend}"
        table.add_row(name, spend, _fmt_tokens(b.output_tokens),
                      _fmt_mtok(b.usd_per_mtok_output), _fmt_band(b.band),
                      fmt_pct(b.utilisation), _fmt_mtok(b.usd_per_mtok_at_full_load),
                      fmt_pct(b.idle_share), style=style)

    for t in report.tiers:
        row(t, t.name)
    if report.unattributed_micros:
        table.add_row("no tier", fmt_usd(report.unattributed_micros),
                      "", "", "", "", "", "")
    row(report.total, "total", style="bold")
    c.print(table)
    status = s.status
    colour = {"ok": "green", "degraded": "yellow", "lost": "red"}[status]
    obs = f"observability: [{colour}]{status}[/{colour}]"
    if s.dark_seconds:
        obs += f", {s.dark_seconds // 60} min without billing data"
    if s.coverage.last_sample_ms is not None:
        obs += f", last billing sample {iso(from_ms(s.coverage.last_sample_ms))}"
    c.print(obs)
    for reason in s.reasons[:5]:
        c.print(f"  · {reason}")
    if s.uncertain_micros:
        c.print(f"[yellow]uncertain[/yellow]: spend lies between "
                f"{fmt_usd(s.micros - s.uncertain_micros)} and {fmt_usd(s.micros)} "
                "(a balance rose without a recorded top-up)")
    if s.estimate_micros:
        c.print(f"estimates (not invoice-true, not in the total): {fmt_usd(s.estimate_micros)} "
                "from providers without a billing API")
    if s.anomalies:
        c.print(f"[yellow]{s.anomalies} billing anomal{'y' if s.anomalies == 1 else 'ies'}[/yellow]"
                ": a provider's running total went down; not counted as a refund")
    from spotctl.accounting.compare import fully_loaded_text
    from spotctl.money import usd_str

    loaded = fully_loaded_text(report.extras.get("fully_loaded") or {},
                               usd_str(report.total.spend_micros), s.complete)
    if loaded:
        from rich.markup import escape

        c.print(escape(loaded))
    mismatch = _rate_mismatch_line(report)
    if mismatch:
        c.print(mismatch)
    if report.estimated_requests:
        c.print(f"{report.estimated_requests} request(s) had token counts estimated, "
                "not reported by the engine")
    if plot:
        from spotctl.accounting.plot import plot_report

        plot_report(report)
    for sentence in report.extras.get("summary") or [report.sentence()]:
        c.print(sentence)


def register(app: typer.Typer) -> None:
    @app.command()
    @json_option
    @window_options
    def cost(
        ctx: typer.Context,
        window: str | None = None,
        since: str | None = None,
        until: str | None = None,
        tier: list[str] = typer.Option(None, "--tier", help="Only this tier (repeatable)."),
        provider: list[str] = typer.Option(None, "--provider", help="Only this provider."),
        bucket: str = typer.Option("1h", help="Bucket size for the band: 15m, 1h, 1d."),
        min_tokens: int = typer.Option(1000, help="Buckets with fewer output tokens are left "
                                                  "out of the band."),
        json_out: bool = False,
        plot: bool = typer.Option(False, "--plot", help="Charts in the terminal."),
        fail_over: str = typer.Option(None, help="Exit 3 when $/Mtok output exceeds this."),
        fail_stale: bool = typer.Option(False, "--fail-stale", help="Exit 4 when observability is not ok."),
    ) -> None:
        """Invoice-true spend, tokens and cost per million tokens for a window."""
        threshold = None
        if fail_over is not None:
            try:
                threshold = Decimal(fail_over)
            except InvalidOperation:
                raise UsageError(f"bad --fail-over {fail_over!r}: expected a number") from None
        with collector_paused():
            report = _report(ctx, window, since, until, tier, provider, bucket, min_tokens)
            if json_out:
                emit_json(report.to_json())
            else:
                _print_cost(report, plot)
        if fail_stale and report.spend.status != "ok":
            raise typer.Exit(int(ExitCode.OBSERVABILITY))
        per = report.total.usd_per_mtok_output
        if threshold is not None and per is not None and per > threshold:
            if not json_out:
                console().print(f"[red]over threshold[/red]: ${per}/Mtok > ${threshold}/Mtok")
            raise typer.Exit(int(ExitCode.THRESHOLD))

    @app.command()
    @json_option
    @window_options
    def price(
        ctx: typer.Context,
        margin: float = typer.Option(0.3, help="Gross margin on the price, 0 ≤ m < 1."),
        window: str | None = None,  # 24h unless --since is given
        since: str | None = None,
        until: str | None = None,
        bucket: str = typer.Option("1h"),
        min_tokens: int = typer.Option(1000),
        json_out: bool = False,
    ) -> None:
        """Illustrative price bands built on the cost band: cost of goods and the price on it."""
        if not 0 <= margin < 1:
            raise UsageError(f"bad --margin {margin}: expected 0 ≤ margin < 1")
        report = _report(ctx, window or (None if since else "24h"), since, until, None, None,
                         bucket, min_tokens)
        m = Decimal(str(margin))
        rows = []
        for b in [*report.tiers, report.total]:
            cogs = {k: v for k, v in b.band.items()}
            priced = {k: (None if v is None else (v / (1 - m)).quantize(Decimal("0.0001")))
                      for k, v in cogs.items()}
            rows.append({"name": b.name, "cost_band": {k: None if v is None else str(v)
                                                       for k, v in cogs.items()},
                         "price_band": {k: None if v is None else str(v)
                                        for k, v in priced.items()},
                         "output_tokens": b.output_tokens})
        if json_out:
            emit_json({"margin": str(m), "window": report.to_json()["window"],
                       "spend_complete": report.spend.complete, "tiers": rows,
                       "note": "illustrative: price = cost / (1 - margin), per million output "
                               "tokens"})
            return
        from rich.table import Table

        table = Table(title=f"Illustrative $/Mtok (output) at {margin:.0%} margin",
                      title_justify="left")
        for col in ("", "cost P10", "cost P50", "cost P90", "price P10", "price P50",
                    "price P90"):
            table.add_column(col, justify="right" if col else "left")
        for r in rows:
            cb, pb = r["cost_band"], r["price_band"]
            cells = [("—" if cb[k] is None else f"${Decimal(cb[k]):,.2f}") for k in
                     ("p10", "p50", "p90")]
            cells += [("—" if pb[k] is None else f"${Decimal(pb[k]):,.2f}") for k in
                      ("p10", "p50", "p90")]
            table.add_row(r["name"], *cells)
        console().print(table)
        if not report.spend.complete:
            console().print("[yellow]billing went dark in this window: the cost band is a "
                            "lower bound[/yellow]")
        console().print("Price = cost ÷ (1 − margin). Bands are token-weighted P10/P50/P90 across "
                        "hourly buckets; illustrative, not a quote.")

    @app.command()
    @window_options
    def report(
        ctx: typer.Context,
        window: str | None = None,  # 7d unless --since is given
        since: str | None = None,
        until: str | None = None,
        bucket: str = typer.Option("1h"),
        out: str = typer.Option("report.html", "--out", help="The HTML file to write."),
    ) -> None:
        """One self-contained HTML report (no network needed to view it)."""
        import os
        from pathlib import Path

        from spotctl.accounting.html_report import render_html
        from spotctl.services.economics import advise_report

        # one read: cost, compare and advise describe the same snapshot of the ledger
        rep = _report(ctx, window or (None if since else "7d"), since, until, None, None,
                      bucket, 1000, closures=True, arrivals=True)
        advised = advise_report(rep, get_config(ctx))
        page = render_html(rep, compare=rep.compare, advise=advised,
                           summary=rep.extras.get("summary"))
        path = Path(out)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
        console().print(f"wrote {path} ({len(page) // 1024} KiB)")
