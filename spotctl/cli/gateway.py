"""``spotctl gateway``, ``spotctl keys ...`` and ``spotctl budget status``."""

from __future__ import annotations

import typer

from spotctl.cli.common import (
    console,
    emit_json,
    err_console,
    get_config,
    json_option,
    open_ledger_for,
)
from spotctl.errors import ExitCode


def register(app: typer.Typer) -> None:
    @app.command()
    def gateway(
        ctx: typer.Context,
        listen: str = typer.Option(None, help="host:port (default [gateway] listen, "
                                              "127.0.0.1:8080)."),
        workers: int = typer.Option(None, "--workers", min=0,
                                    help="Worker processes sharing the port (SO_REUSEPORT); "
                                         "0 = one per core (default [gateway] workers, 0)."),
    ) -> None:
        """Serve the OpenAI-compatible gateway until SIGTERM (pending usage rows are flushed)."""
        from spotctl.services import gateway as service

        cfg = get_config(ctx)
        n = service.resolve_workers(cfg, workers)

        def log(msg: str) -> None:
            err_console().print(f"gateway: {msg}", markup=False)

        models = sorted({t.public_model for t in cfg.tiers})
        host, port = service.parse_listen(listen or cfg.gateway.listen)
        err_console().print(f"gateway on http://{host}:{port}/v1 ({len(cfg.tiers)} tier(s), "
                            f"models: {', '.join(models) or 'none'}; {n} worker(s))",
                            markup=False)
        raise typer.Exit(service.serve_gateway(cfg, listen, n, log))

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
        from spotctl.services import gateway as service

        with open_ledger_for(ctx) as ledger:
            key = service.create(ledger, name, daily_usd)
        if json_out:
            emit_json({"name": name, "key": key})
        else:
            console().print(f"key {name!r} created. It is shown only this once:\n{key}",
                            markup=False)

    @keys.command("list")
    @json_option
    def keys_list(ctx: typer.Context, json_out: bool = False) -> None:
        """List keys (names, budgets, state: never the keys themselves)."""
        from spotctl.clock import from_ms, iso
        from spotctl.money import usd_str
        from spotctl.services import gateway as service

        with open_ledger_for(ctx, readonly=True) as ledger:  # a read: never creates one
            rows = service.keys(ledger)
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
        from spotctl.services import gateway as service

        with open_ledger_for(ctx) as ledger:
            service.revoke(ledger, name)
        console().print(f"key {name!r} revoked", markup=False)

    budget = typer.Typer(help="The daily budget gate.", no_args_is_help=True)
    app.add_typer(budget, name="budget")

    @budget.command("status")
    @json_option
    def budget_status(ctx: typer.Context, json_out: bool = False) -> None:
        """Spend today, budget, gate state and reason. Exit 3 closed by budget, 4 by billing."""
        from spotctl.money import fmt_usd
        from spotctl.services import gateway as service

        cfg = get_config(ctx)
        with open_ledger_for(ctx, readonly=True) as ledger:
            state = service.budget_status(ledger, cfg)
        if json_out:
            emit_json(state.to_json())
        else:
            colour = "green" if state.open else "red"
            console().print(f"gate: [{colour}]{state.status}[/{colour}] — {state.reason}")
            console().print(f"spend today: {fmt_usd(state.spend_micros)}"
                            f"{' (unknown)' if state.spend_micros is None else ''}; budget: "
                            f"{fmt_usd(state.budget_micros) if state.budget_micros else 'none'}")
        if state.status == "budget_exhausted":
            raise typer.Exit(int(ExitCode.THRESHOLD))
        if not state.open:
            raise typer.Exit(int(ExitCode.OBSERVABILITY))
