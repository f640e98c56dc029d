"""``spotctl poll-billing``, ``spotctl billing status`` and ``spotctl reconcile``."""

from __future__ import annotations

import typer

from spotctl.cli.common import console, emit_json, err_console, get_config, json_option, open_ledger_for
from spotctl.errors import ExitCode, UsageError


def register(app: typer.Typer) -> None:
    @app.command("poll-billing")
    @json_option
    def poll_billing(
        ctx: typer.Context,
        daemon: bool = typer.Option(False, "--daemon",
                                    help="Poll every [billing] poll_interval_s until SIGTERM."),
        json_out: bool = False,
    ) -> None:
        """Record every provider's billing in the ledger (one-shot for cron, or --daemon).

        Exit 0 when every provider answered, 4 when any failed (the failure is recorded).
        """
        from spotctl.clock import get_clock, iso
        from spotctl.services import billing as service

        cfg = get_config(ctx)
        if not cfg.providers:
            raise UsageError("no [[providers]] in the configuration: nothing to poll")
        clock = get_clock()
        with open_ledger_for(ctx) as ledger:
            if daemon:
                service.run_poll_daemon(cfg, ledger, clock, lambda line: print(
                    f"{iso(clock.now())} {line}", flush=True))
                return
            outcomes, skipped = service.poll_all(cfg, ledger, clock)
        if json_out:
            emit_json({"providers": [o.__dict__ for o in outcomes], "skipped": skipped})
        for reason in skipped:
            err_console().print(reason)
        for o in outcomes:
            if not o.ok:
                err_console().print(f"{o.provider}: {o.kind}: {o.message}")
            elif not json_out:
                console().print(f"{o.provider}: ok, {o.resources_seen} resources, "
                                f"{o.samples} samples")
        if any(not o.ok for o in outcomes):
            raise typer.Exit(int(ExitCode.OBSERVABILITY))

    billing = typer.Typer(help="Billing health.", no_args_is_help=True)
    app.add_typer(billing, name="billing")

    @billing.command("status")
    @json_option
    def status(ctx: typer.Context, json_out: bool = False) -> None:
        """Per provider: fresh / stale / failing / regressed / suspect (the newest poll is
        stamped in the future beyond [gateway] clock_skew_s), last good sample, last error, a
        billed rate off its launch quote (rate_mismatch), and orphan machines (billing for a
        tier in no journal state, recorded by the daemon; resolved once deleted or ended). Exit
        4 when any provider is not fresh or an orphan is unresolved. ``no_launch_quote``: live
        machines spotctl launched whose launch quote is missing (their rate is not checked)."""
        from spotctl.clock import from_ms, get_clock, iso, to_ms
        from spotctl.services import billing as service

        cfg = get_config(ctx)
        with open_ledger_for(ctx, readonly=True) as ledger:
            found = service.status(cfg, ledger, to_ms(get_clock().now()))
        rows, orphans, unresolved = found.providers, found.orphans, found.unresolved
        unquoted = found.no_launch_quote
        if json_out:
            emit_json({"providers": [{**r.to_json(), "orphans": [
                o.to_json() for o in orphans.get(r.provider, [])],
                "no_launch_quote": unquoted.get(r.provider, [])} for r in rows]})
        else:
            from rich.table import Table

            table = Table(title="Billing health", title_justify="left")
            for col in ("provider", "health", "last good sample", "last error", "price",
                        "orphans"):
                table.add_column(col)
            colours = {"fresh": "green", "regressed": "yellow"}
            for r in rows:
                c = colours.get(r.status, "red")
                mm = r.rate_mismatch
                price = "" if mm is None else (
                    f"[yellow]rate {mm.off_pct:+.1f}% vs quote[/yellow] ({mm.resource_id}: "
                    f"${mm.billed_micros_per_h / 1e6:.4f}/h billed, "
                    f"${mm.quoted_micros_per_h / 1e6:.4f}/h quoted)")
                if unquoted.get(r.provider):
                    price += (f"{'; ' if price else ''}[yellow]no launch quote[/yellow] for "
                              f"{', '.join(unquoted[r.provider])} (rate not checked)")
                open_ = [o.resource_id for o in orphans.get(r.provider, []) if not o.resolved]
                done = sum(o.resolved for o in orphans.get(r.provider, []))
                orphan_cell = (f"[red]{len(open_)} unresolved: {', '.join(open_)}[/red]"
                               if open_ else "") + (
                    f"{'; ' if open_ else ''}{done} resolved" if done else "")
                table.add_row(r.provider, f"[{c}]{r.status}[/{c}]",
                              iso(from_ms(r.last_good_ms)) if r.last_good_ms else "never",
                              r.last_error or "", price, orphan_cell)
            console().print(table)
            if unresolved:
                err_console().print("orphan machines bill for a tier in no journal state: "
                                    "`spotctl down TIER --orphans` deletes them")
        if unresolved or any(r.status != "fresh" for r in rows):
            raise typer.Exit(int(ExitCode.OBSERVABILITY))

    @app.command()
    @json_option
    def reconcile(
        ctx: typer.Context,
        day: str = typer.Option(..., help="The UTC day to check, YYYY-MM-DD."),
        max_drift_pct: float = typer.Option(1.0, help="Exit 3 above this drift."),
        json_out: bool = False,
    ) -> None:
        """Compare the ledger's spend for a day with the provider's own daily figure.

        Exit 3 when the drift is above --max-drift-pct, 4 when a provider could not be asked.
        """
        from datetime import date, timedelta

        from spotctl.services.billing import reconcile_day

        try:
            d = date.fromisoformat(day)
        except ValueError:
            raise UsageError(f"bad --day {day!r}: expected YYYY-MM-DD") from None
        cfg = get_config(ctx)
        with open_ledger_for(ctx, readonly=True) as ledger:
            rows = reconcile_day(cfg, ledger, d, d + timedelta(days=1))
        if json_out:
            emit_json({"day": day, "providers": rows})
        else:
            for r in rows:
                incomplete = "" if r["ledger_complete"] else " (ledger incomplete that day)"
                if r["provider_usd"] is None:  # no figure from the provider: say why
                    console().print(f"{r['provider']}: ledger ${r['ledger_usd']}{incomplete}; "
                                    f"provider figure {r['status']}: {r['note']}", markup=False)
                    continue
                console().print(
                    f"{r['provider']}: ledger ${r['ledger_usd']} vs provider "
                    f"${r['provider_usd']} → drift ${r['drift_usd']} ({r['drift_pct']}%)"
                    + incomplete, markup=False)
        if any(r["status"] == "unavailable" for r in rows):
            raise typer.Exit(int(ExitCode.OBSERVABILITY))
        if any(r["drift_pct"] is not None and abs(float(r["drift_pct"])) > max_drift_pct
               for r in rows):
            raise typer.Exit(int(ExitCode.THRESHOLD))

