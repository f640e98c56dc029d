"""``spotctl ledger check``."""

from __future__ import annotations

import typer

from spotctl.cli.common import console, emit_json, json_option, open_ledger_for


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Inspect the ledger.", no_args_is_help=True)
    app.add_typer(group, name="ledger")

    @group.command("check")
    @json_option
    def check(ctx: typer.Context, json_out: bool = False) -> None:
        """SQLite's integrity check and the ledger's invariants. Exit 0 when all hold, else 1."""
        from spotctl.ledger.check import check_ledger

        with open_ledger_for(ctx, readonly=True) as ledger:
            results = check_ledger(ledger)
            path = str(ledger.path)
        ok = all(r.ok for r in results)
        if json_out:
            emit_json({"ledger": path, "ok": ok,
                       "checks": [{"name": r.name, "ok": r.ok, "detail": r.detail}
                                  for r in results]})
        else:
            c = console()
            for r in results:
                mark = "[green]ok[/green]  " if r.ok else "[red]FAIL[/red]"
                c.print(f"{mark} {r.name}" + (f" — {r.detail}" if r.detail and not r.ok else ""))
            c.print("ledger ok" if ok else "[red]ledger check failed[/red]")
        if not ok:
            raise typer.Exit(1)
