"""``spotctl up / down / hibernate / wake / status / events / daemon``."""

from __future__ import annotations

import typer

from spotctl.cli.common import (
    console,
    emit_json,
    err_console,
    get_config,
    json_option,
    require_ledger,
)
from spotctl.errors import UsageError


def _progress():
    """A progress callback that prints each phase change to stderr (rich, honours NO_COLOR)."""
    last = {"phase": None}
    c = err_console()

    def report(phase: str, fraction: float | None, message: str) -> None:
        if phase != last["phase"]:
            c.print(f"[bold]{phase.replace('_', ' ')}[/bold]: {message}")
            last["phase"] = phase

    return report


def _waiting(tier: str):
    """Told once when the tier's lease is held by another process: say whom we wait for."""
    def told(lease) -> None:
        from spotctl.clock import from_ms, iso

        err_console().print(f"tier {tier}: waiting for {lease.holder}, which is operating on "
                            f"it (its lease runs to {iso(from_ms(lease.expires_ms))} unless "
                            "renewed)", markup=False, highlight=False)

    return told


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
        from spotctl.services import fleet

        if dry_run:
            if json_out:
                emit_json(fleet.dry_run_json(get_config(ctx), tier))
            else:
                console().print(fleet.dry_run(get_config(ctx), tier), markup=False,
                                highlight=False)
            return
        _print_phases(fleet.up(get_config(ctx), tier, _progress(), _waiting(tier)), "up")

    @app.command()
    def hibernate(ctx: typer.Context, tier: str) -> None:
        """Stop paying for the GPU, keep the weights (native hibernate, stop, or down). Drains
        first: waits for the gateways' open requests, up to [fleet] drain_timeout_s."""
        from spotctl.services import fleet

        _print_phases(fleet.hibernate(get_config(ctx), tier, _waiting(tier)), "hibernated")

    @app.command()
    def wake(ctx: typer.Context, tier: str) -> None:
        """Restore or relaunch a tier and wait until it serves."""
        from spotctl.services import fleet

        _print_phases(fleet.wake(get_config(ctx), tier, _progress(), _waiting(tier)), "awake")

    @app.command()
    def down(ctx: typer.Context, tier: str,
             delete_storage: bool = typer.Option(False, "--delete-storage",
                                                 help="Also delete the weights storage."),
             orphans: bool = typer.Option(False, "--orphans",
                                          help="Only delete the tier's machines that bill in no "
                                               "journal state (see `spotctl daemon`); the tier "
                                               "itself is left as it is."),
             yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask.")) -> None:
        """Tear a tier down: every machine of the tier is deleted (after draining its open
        requests, up to [fleet] drain_timeout_s). Its weights storage stays unless
        --delete-storage."""
        from spotctl.services import fleet

        cfg = get_config(ctx)
        if orphans:
            if delete_storage:
                raise UsageError("--orphans and --delete-storage do not go together")
            report = fleet.delete_orphans(cfg, tier, _waiting(tier))
            console().print(f"tier {tier}: " + (
                f"deleted {len(report.deleted)} orphan machine(s): {', '.join(report.deleted)}"
                if report.deleted else "no orphan machine"))
            return
        if fleet.down(cfg, tier, delete_storage, _waiting(tier),
                      confirm=None if yes else typer.confirm) is None:
            raise typer.Exit(1)
        console().print(f"tier {tier}: down" + (" (storage deleted)" if delete_storage else
                                                " (weights storage kept)"))

    @app.command()
    @json_option
    def status(ctx: typer.Context, json_out: bool = False) -> None:
        """Per tier: state, capacity, cloud/region, endpoint, $/h (the provider's current rate),
        idle, time since the last wake, billing age, machines (orphans named)."""
        from spotctl.services import fleet

        require_ledger(ctx)  # a read command: never creates one
        rows = fleet.status_rows(get_config(ctx))
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
        """The fleet journal: every launch, wake, hibernation, drain, preemption, fallback,
        recovery and orphan deleted."""
        from spotctl.services import fleet

        data = [e.to_json() for e in fleet.events(get_config(ctx), tier, since)]
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
               once: bool = typer.Option(False, "--once", help="One pass, then exit.")) -> None:
        """Every minute: poll billing, detect preemption, recover, probe engines, hibernate
        idle tiers, report orphan machines. Several daemons may share a ledger (hosts): one acts
        on each tier at a time (a lease in the ledger), the others stand by and take over within
        [fleet] lease_ttl_s when it dies. Exits 1 if its billing thread dies (so that systemd
        restarts it). --once exits 1 when a fleet step failed, 4 when a billing poll failed."""
        import signal
        import threading

        from spotctl.clock import get_clock, iso
        from spotctl.services.daemon import run_daemon

        clock = get_clock()

        def log(line: str) -> None:
            print(f"{iso(clock.now())} {line}", flush=True)

        stop = threading.Event()
        if not once:
            signal.signal(signal.SIGTERM, lambda *a: stop.set())
            signal.signal(signal.SIGINT, lambda *a: stop.set())
        code = run_daemon(get_config(ctx), clock, log, once=once, stop=stop)
        if code:
            raise typer.Exit(code)


def _ago(seconds: int | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
