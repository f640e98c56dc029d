"""``spotctl ledger check``, ``spotctl ledger migrate``."""

from __future__ import annotations

import typer

from spotctl.cli.common import console, emit_json, err_console, get_config, json_option, open_ledger_for


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Inspect the ledger.", no_args_is_help=True)
    app.add_typer(group, name="ledger")

    @group.command("check")
    @json_option
    def check(ctx: typer.Context, json_out: bool = False) -> None:
        """SQLite's integrity check and the ledger's invariants. Exit 0 when all hold, else 1."""
        from spotctl.errors import ExitCode, LedgerError
        from spotctl.ledger.check import check_ledger, unreadable

        try:
            with open_ledger_for(ctx, readonly=True) as ledger:
                results = check_ledger(ledger)
                path = ledger.where
        except LedgerError as exc:  # not a database, a damaged header: the check fails
            cfg = get_config(ctx)
            # a missing file is exit 2; PostgreSQL that cannot be reached is an error
            if cfg.ledger.url or exc.exit_code != ExitCode.ERROR:
                raise
            path = str(cfg.ledger_path)
            results = unreadable(exc.message)
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

    @group.command("migrate")
    def migrate(
        ctx: typer.Context,
        to: str = typer.Option(..., "--to", metavar="URL",
                               help="postgresql://user@host:port/db (the password comes from "
                                    "PGPASSWORD or ~/.pgpass)"),
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Copy this SQLite ledger into PostgreSQL exactly: all or nothing, idempotent when re-run
        (only rows not yet there are copied); then `ledger check` on both. Exit 0, else 1."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from spotctl.services.ledger import migrate as run

        tasks: dict[str, object] = {}
        bar = Progress(TextColumn("{task.description:>18}"), BarColumn(), MofNCompleteColumn(),
                       console=err_console(), transient=True, disable=json_out)

        def progress(table: str, done: int, total: int) -> None:
            if not tasks:  # shown once rows move: a usage error stays one line
                bar.start()
            if table not in tasks:
                tasks[table] = bar.add_task(table, total=total or 1)
            bar.update(tasks[table], completed=done if total else 1)

        try:
            outcome = run(get_config(ctx), to, progress)
        finally:
            if tasks:
                bar.stop()
        result, checks, ok = outcome.result, outcome.checks, outcome.ok
        if json_out:
            emit_json({"source": result.source, "destination": result.dest, "ok": ok,
                       "copied_rows": result.copied_rows,
                       "tables": [{"name": t.name, "rows": t.dest_rows, "copied": t.copied_rows,
                                   "sums": t.sums} for t in result.tables],
                       "checks": {k: [{"name": r.name, "ok": r.ok, "detail": r.detail}
                                      for r in v] for k, v in checks.items()}})
        else:
            from rich.table import Table

            table = Table("table", "rows", "copied now", "rows equal", title=(
                f"{result.source} → {result.dest}"))
            for t in result.tables:
                table.add_row(t.name, f"{t.dest_rows:,}", f"{t.copied_rows:,}",
                              "yes" if t.exact else "NO")
            c = console()
            c.print(table)
            c.print("every integer column's sum (money, time, tokens) is equal on both")
            for where, rs in checks.items():
                bad = [r for r in rs if not r.ok]
                c.print(f"ledger check ({where}): " + ("ok" if not bad else "[red]FAIL[/red] " +
                        "; ".join(f"{r.name}: {r.detail}" for r in bad)))
        if not ok:
            raise typer.Exit(1)
