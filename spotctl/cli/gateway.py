"""``spotctl gateway``, ``spotctl keys ...`` and ``spotctl budget status``."""

from __future__ import annotations

import typer

from spotctl.cli.common import console, emit_json, err_console, get_config, json_option, open_ledger_for
from spotctl.errors import ExitCode, UsageError


def build_gateway(cfg, clock, log=None):
    """The gateway app with the right runtime: fixed engines, and the fleet's for the rest."""
    from spotctl.gateway.app import Gateway
    from spotctl.gateway.upstreams import RoutingRuntime

    fleet = None
    if any(t.fleet_managed for t in cfg.tiers):
        from spotctl.fleet.runtime import FleetRuntime

        fleet = FleetRuntime(cfg, clock)
    return Gateway(cfg, clock, RoutingRuntime(fleet), log=log)


def register(app: typer.Typer) -> None:
    @app.command()
    def gateway(
        ctx: typer.Context,
        listen: str = typer.Option(None, help="host:port (default [gateway] listen, "
                                              "127.0.0.1:8080)."),
    ) -> None:
        """Serve the OpenAI-compatible gateway until SIGTERM (pending usage rows are flushed)."""
        import uvicorn

        from spotctl.clock import get_clock

        cfg = get_config(ctx)
        where = listen or cfg.gateway.listen
        host, _, port = where.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"bad listen address {where!r}: expected host:port")

        def log(msg: str) -> None:
            err_console().print(f"gateway: {msg}")

        app_ = build_gateway(cfg, get_clock(), log)
        err_console().print(f"gateway on http://{host}:{port}/v1 "
                            f"({len(cfg.tiers)} tier(s), models: {', '.join(app_.models)})")
        uvicorn.run(app_, host=host.strip("[]"), port=int(port), log_level="warning",
                    access_log=False, lifespan="on", ws="none", timeout_graceful_shutdown=20)

    keys = typer.Typer(help="Gateway API keys (only their SHA-256 is stored).",
                       no_args_is_help=True)
    app.add_typer(keys, name="keys")

    @keys.command("create")
    @json_option
    def keys_create(
        ctx: typer.Context, name: str,
        daily_usd: str = typer.Option(None, "--daily-usd", help="This key's daily budget."),
        json_out: bool = False,
    ) -> None:
        """Create a key and print it once."""
        from decimal import Decimal, InvalidOperation

        from spotctl.clock import get_clock, to_ms
        from spotctl.gateway.keys import create_key
        from spotctl.money import to_micros

        budget = None
        if daily_usd is not None:
            try:
                budget = to_micros(Decimal(daily_usd))
            except (InvalidOperation, ValueError):
                raise UsageError(f"bad --daily-usd {daily_usd!r}: expected a number") from None
            if budget < 0:
                raise UsageError("--daily-usd must not be negative")
        with open_ledger_for(ctx) as ledger:
            key = create_key(ledger, name, to_ms(get_clock().now()), budget)
        if json_out:
            emit_json({"name": name, "key": key})
        else:
            console().print(f"key {name!r} created. It is shown only this once:\n{key}")

    @keys.command("list")
    @json_option
    def keys_list(ctx: typer.Context, json_out: bool = False) -> None:
        """List keys (names, budgets, state: never the keys themselves)."""
        from spotctl.clock import from_ms, iso
        from spotctl.gateway.keys import list_keys
        from spotctl.money import usd_str

        with open_ledger_for(ctx, readonly=True) as ledger:
            rows = list_keys(ledger)
        data = [{"name": k.name, "created": iso(from_ms(k.created_ms)),
                 "revoked": iso(from_ms(k.revoked_ms)) if k.revoked_ms else None,
                 "daily_usd": usd_str(k.daily_budget_micros)
                 if k.daily_budget_micros is not None else None} for k in rows]
        if json_out:
            emit_json({"keys": data})
            return
        from rich.table import Table

        table = Table(title="Gateway keys", title_justify="left")
        for col in ("name", "created", "revoked", "daily budget"):
            table.add_column(col)
        for d in data:
            table.add_row(d["name"], d["created"], d["revoked"] or "",
                          f"${d['daily_usd']}" if d["daily_usd"] else "")
        console().print(table)

    @keys.command("revoke")
    def keys_revoke(ctx: typer.Context, name: str) -> None:
        """Revoke a key (takes effect in the gateway within seconds)."""
        from spotctl.clock import get_clock, to_ms
        from spotctl.gateway.keys import revoke_key

        with open_ledger_for(ctx) as ledger:
            revoke_key(ledger, name, to_ms(get_clock().now()))
        console().print(f"key {name!r} revoked")

    budget = typer.Typer(help="The daily budget gate.", no_args_is_help=True)
    app.add_typer(budget, name="budget")

    @budget.command("status")
    @json_option
    def budget_status(ctx: typer.Context, json_out: bool = False) -> None:
        """Spend today, budget, gate state and reason. Exit 3 closed by budget, 4 by billing."""
        from spotctl.clock import get_clock
        from spotctl.gateway.gate import BILLING_STALE, BUDGET_EXHAUSTED, evaluate_gate
        from spotctl.money import fmt_usd

        cfg = get_config(ctx)
        with open_ledger_for(ctx, readonly=True) as ledger:
            state = evaluate_gate(ledger, cfg, get_clock())
        if json_out:
            emit_json(state.to_json())
        else:
            colour = "green" if state.open else "red"
            console().print(f"gate: [{colour}]{state.status}[/{colour}] — {state.reason}")
            console().print(f"spend today: {fmt_usd(state.spend_micros)}"
                            f"{' (unknown)' if state.spend_micros is None else ''}; budget: "
                            f"{fmt_usd(state.budget_micros) if state.budget_micros else 'none'}")
        if state.status == BUDGET_EXHAUSTED:
            raise typer.Exit(int(ExitCode.THRESHOLD))
        if state.status == BILLING_STALE:
            raise typer.Exit(int(ExitCode.OBSERVABILITY))
