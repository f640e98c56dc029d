"""``spotctl up / down / hibernate / wake / status / events / daemon``."""

from __future__ import annotations

import typer

from spotctl.cli.common import (
    console,
    emit_json,
    err_console,
    get_config,
    json_option,
    open_ledger_for,
    require_ledger,
)
from spotctl.errors import SpotctlError, UsageError


def _progress():
    """A progress callback that prints each phase change to stderr (rich, honours NO_COLOR)."""
    last = {"phase": None}
    c = err_console()

    def report(phase: str, fraction: float | None, message: str) -> None:
        if phase != last["phase"]:
            c.print(f"[bold]{phase.replace('_', ' ')}[/bold]: {message}")
            last["phase"] = phase

    return report


def _manager(ctx: typer.Context):
    from spotctl.clock import get_clock
    from spotctl.fleet.manager import FleetManager

    return FleetManager(get_config(ctx), get_clock())


def _fleet_tier(ctx: typer.Context, name: str):
    tier = get_config(ctx).tier(name)
    if not tier.fleet_managed:
        raise UsageError(f"tier {name!r} is a fixed engine ({tier.endpoint}); spotctl does not "
                         "manage its machine")
    return tier


def _print_phases(status, verb: str) -> None:
    console().print(f"tier {status.tier}: {verb} — {status.state.value}"
                    + (f" on {status.capacity}" if status.capacity else "")
                    + (f", endpoint {status.endpoint}" if status.endpoint else ""))


def register(app: typer.Typer) -> None:
    @app.command()
    @json_option
    def up(ctx: typer.Context, tier: str,
           dry_run: bool = typer.Option(False, "--dry-run",
                                        help="Print what would be launched (Hyperstack: the "
                                             "exact requests, after discovery; with --json as "
                                             "JSON); launch nothing."),
           json_out: bool = False) -> None:
        """Launch a tier (spot first, bounded on-demand fallback) and wait until it serves."""
        t = _fleet_tier(ctx, tier)
        if dry_run:
            from spotctl.fleet.dryrun import dry_run_json, render_dry_run

            if json_out:
                emit_json(dry_run_json(t, get_config(ctx)))
            else:
                console().print(render_dry_run(t, get_config(ctx)), markup=False,
                                highlight=False)
            return
        status = _manager(ctx).up(t, _progress())
        _print_phases(status, "up")

    @app.command()
    def hibernate(ctx: typer.Context, tier: str) -> None:
        """Stop paying for the GPU, keep the weights (native hibernate, stop, or down)."""
        _print_phases(_manager(ctx).hibernate(_fleet_tier(ctx, tier)), "hibernated")

    @app.command()
    def wake(ctx: typer.Context, tier: str) -> None:
        """Restore or relaunch a tier and wait until it serves."""
        _print_phases(_manager(ctx).wake(_fleet_tier(ctx, tier), _progress()), "awake")

    @app.command()
    def down(ctx: typer.Context, tier: str,
             delete_storage: bool = typer.Option(False, "--delete-storage",
                                                 help="Also delete the weights storage."),
             orphans: bool = typer.Option(False, "--orphans",
                                          help="Only delete the tier's machines that bill in no "
                                               "journal state (see `spotctl daemon`); the tier "
                                               "itself is left as it is."),
             yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask.")) -> None:
        """Tear a tier down: every machine of the tier is deleted. Its weights storage stays
        unless --delete-storage."""
        t = _fleet_tier(ctx, tier)
        if orphans:
            if delete_storage:
                raise UsageError("--orphans and --delete-storage do not go together")
            report = _manager(ctx).delete_orphans(t)
            if not report.settled:
                raise SpotctlError(f"tier {tier}: an operation is under way; its machines "
                                   "cannot be told from orphans yet (try again after it ends)")
            console().print(f"tier {tier}: " + (
                f"deleted {len(report.deleted)} orphan machine(s): {', '.join(report.deleted)}"
                if report.deleted else "no orphan machine"))
            return
        if delete_storage and not yes and not typer.confirm(
                f"Delete the weights storage of {tier!r} too? The next up re-downloads them."):
            raise typer.Exit(1)
        _manager(ctx).down(t, delete_storage)
        console().print(f"tier {tier}: down" + (" (storage deleted)" if delete_storage else
                                                " (weights storage kept)"))

    @app.command()
    @json_option
    def status(ctx: typer.Context, json_out: bool = False) -> None:
        """Per tier: state, capacity, cloud/region, endpoint, $/h, idle, last wake, billing age."""
        from spotctl.fleet.status import tier_rows

        cfg = get_config(ctx)
        require_ledger(ctx)  # a read command: never creates one
        rows = tier_rows(cfg)
        if json_out:
            emit_json({"tiers": rows})
            return
        from rich.table import Table

        table = Table(title="Fleet", title_justify="left")
        cols = ("tier", "state", "capacity", "where", "endpoint", "$/h", "idle", "last wake",
                "billing age", "machines")
        for col in cols:
            table.add_column(col)
        for r in rows:
            machines = "" if r["machines"] is None else str(r["machines"])
            if r["orphans"]:
                machines += f" ({len(r['orphans'])} orphan: {', '.join(r['orphans'])})"
            table.add_row(r["tier"], r["state"], r["capacity"] or "", r["where"] or "",
                          r["endpoint"] or "", r["usd_per_hour"] or "—",
                          _ago(r["idle_seconds"]),
                          _ago(r["last_wake_ago_seconds"]) + (" ago" if r[
                              "last_wake_ago_seconds"] is not None else ""),
                          _ago(r["billing_age_seconds"]), machines)
        console().print(table)
        if any(r["orphans"] for r in rows):
            err_console().print("orphan machines bill in no journal state: "
                                "`spotctl down TIER --orphans` deletes them")

    @app.command()
    @json_option
    def events(ctx: typer.Context,
               tier: str = typer.Option(None, "--tier"),
               since: str = typer.Option(None, help="ISO time or a window such as 24h."),
               json_out: bool = False) -> None:
        """The fleet journal: every launch, wake, hibernation, preemption and fallback."""
        from spotctl.accounting.window import parse_window
        from spotctl.clock import get_clock, parse_iso, to_ms

        since_ms = 0
        if since:
            try:
                since_ms = to_ms(parse_iso(since))
            except ValueError:
                since_ms = to_ms(get_clock().now() - parse_window(since, what="--since"))
        from spotctl.fleet.journal import read_events

        with open_ledger_for(ctx, readonly=True) as ledger:
            data = [e.to_json() for e in read_events(ledger, tier, since_ms)]
        if json_out:
            emit_json({"events": data})
            return
        from rich.table import Table

        table = Table(title="Fleet events", title_justify="left")
        for col in ("at", "tier", "event", "capacity", "resource", "phases (s)", "detail"):
            table.add_column(col)
        for d in data:
            phases = " ".join(f"{k.replace('first_completion', '1st').replace('engine_', '')}"
                              f"={v:.0f}" for k, v in d["phases"].items())
            table.add_row(d["at"][:16].replace("T", " "), d["tier"], d["event"],
                          d["capacity"] or "", d["resource_id"] or "", phases, d["detail"] or "")
        console().print(table)

    @app.command()
    def daemon(ctx: typer.Context,
               once: bool = typer.Option(False, help="One pass, then exit.")) -> None:
        """Every minute: poll billing, detect preemption, recover, hibernate idle tiers, report
        orphan machines. One daemon per ledger: a second one exits 2. Exits 1 if its billing
        thread dies (so that systemd restarts it). --once exits 1 when a fleet step failed, 4
        when a billing poll failed."""
        import signal
        import threading

        from spotctl.clock import get_clock, iso
        from spotctl.errors import ExitCode
        from spotctl.fleet.daemon import FleetDaemon, daemon_lock

        cfg = get_config(ctx)
        clock = get_clock()

        def log(line: str) -> None:
            print(f"{iso(clock.now())} {line}", flush=True)

        with daemon_lock(cfg.ledger_path):
            d = FleetDaemon(cfg, clock, log)
            if once:
                result = d.run_once()
                if result.fleet_errors:
                    raise typer.Exit(int(ExitCode.ERROR))
                if result.billing_errors:
                    raise typer.Exit(int(ExitCode.OBSERVABILITY))
                return
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *a: stop.set())
            signal.signal(signal.SIGINT, lambda *a: stop.set())
            log(f"daemon: {len(cfg.tiers)} tier(s), {len(cfg.providers)} provider(s)")
            d.run(stop)
            log("daemon: stopped")


def _ago(seconds: int | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
