"""``spotctl ledger migrate --to postgresql://...``: copy a SQLite ledger into PostgreSQL, exactly.

Every table is copied in one PostgreSQL transaction (all or nothing), through ``COPY`` into a
temporary table and an upsert from it, so a re-run after the SQLite ledger grew copies only what
changed, and a re-run with nothing new changes nothing. Two kinds of table:

- journals (a primary key ``id``: polls, samples, anomalies, usage, fleet events): rows are only
  added. A destination row whose ``id`` the source has with other values was written on
  PostgreSQL after an earlier copy: the copy refuses (nothing written) rather than overwrite it;
- state (every other table: the series catalogue, rollups, keys, tier activity): the destination
  is made equal to the source (rows updated, added, and removed when the source removed them).

Before the transaction commits, each table's row count and the sum of each of its integer
columns (every money and time column) are compared between the two; any difference rolls the
whole copy back (a destination holding journal rows the source does not, for example).
Generated ``id`` sequences are moved past the copied ids, so writers on PostgreSQL continue
after them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from spotctl.errors import ExitCode, LedgerError
from spotctl.ledger.db import POSTGRESQL, SQLITE, Ledger

CHUNK = 20_000


@dataclass
class TableCopy:
    name: str
    source_rows: int
    copied_rows: int  # rows this run added, changed or (state tables) removed
    dest_rows: int
    sums: dict[str, int] = field(default_factory=dict)  # integer column -> sum (equal on both)

    @property
    def exact(self) -> bool:
        return self.source_rows == self.dest_rows


@dataclass
class MigrateResult:
    source: str
    dest: str
    tables: list[TableCopy]

    @property
    def copied_rows(self) -> int:
        return sum(t.copied_rows for t in self.tables)


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _checked(name: str) -> str:
    """Table and column names are spliced into SQL (they come from the ledger's own catalogue):
    only plain identifiers pass."""
    if not _NAME.match(name):
        raise LedgerError(f"migrate: unexpected name in the ledger's schema: {name!r}")
    return name


def _tables(src: Ledger) -> list[tuple[str, list[tuple[str, str]]]]:
    """The source's tables in creation order (referenced tables first), with (column, type)."""
    names = [_checked(r[0]) for r in src.conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite%' "
        "AND name != 'meta' ORDER BY rowid")]
    return [(n, [(_checked(c[1]), (c[2] or "").upper()) for c in
                 src.conn.execute(f'PRAGMA table_info("{n}")')]) for n in names]


def _digest(conn, table: str, int_cols: list[str]) -> tuple[int, dict[str, int]]:
    """Row count and the sum of each integer column (sqlite3 or psycopg connection)."""
    sums = ", ".join(f'coalesce(sum("{c}"), 0)' for c in int_cols)
    query = f'SELECT count(*){", " + sums if sums else ""} FROM "{table}"'  # noqa: S608
    row = conn.execute(query).fetchone()
    return int(row[0]), {c: int(v) for c, v in zip(int_cols, row[1:], strict=True)}


def migrate_sqlite_to_postgres(
    source: str | Path, dest_url: str,
    progress: Callable[[str, int, int], None] | None = None,
) -> MigrateResult:
    """Copy the SQLite ledger at ``source`` into the PostgreSQL ledger at ``dest_url``.

    ``progress(table, rows_done, rows_total)`` is called as rows are copied.
    """
    src_path = Path(source)
    if not src_path.exists():
        raise LedgerError(f"{src_path}: no SQLite ledger here", ExitCode.USAGE)
    import psycopg

    from spotctl.ledger.backend import map_error

    try:
        return _migrate(src_path, dest_url, progress)
    except psycopg.Error as exc:
        raise map_error(exc, "migrate") from None


def _migrate(src_path: Path, dest_url: str, progress) -> MigrateResult:
    with Ledger(src_path) as src, Ledger(dest_url) as dst:
        if src.backend != SQLITE or dst.backend != POSTGRESQL:
            raise LedgerError("migrate copies a SQLite ledger into a PostgreSQL one",
                              ExitCode.USAGE)
        if src.schema_version() != dst.schema_version():
            raise LedgerError(f"schema versions differ: {src.where} v{src.schema_version()}, "
                              f"{dst.where} v{dst.schema_version()}")
        tables = _tables(src)
        results: list[TableCopy] = []
        with src.snapshot(), dst.transaction():
            raw = dst.conn.raw
            raw.execute("SET LOCAL statement_timeout = 0")  # a big ledger takes minutes
            for name, cols in tables:
                results.append(_copy_table(src, raw, name, cols, progress))
            bad = [t for t in results if not t.exact]
            for t in results:
                int_cols = list(t.sums)
                d_rows, d_sums = _digest(raw, t.name, int_cols)
                if d_rows != t.source_rows or d_sums != t.sums:
                    bad.append(t)
            if bad:
                t = bad[0]
                raise LedgerError(
                    f"migrate: {t.name} differs after the copy (source {t.source_rows} rows, "
                    f"destination {t.dest_rows}); the destination holds rows the source does "
                    "not, or different ones: nothing was written")
            for name, cols in tables:
                if any(c == "id" and ty == "INTEGER" for c, ty in cols):
                    max_id = f'SELECT max(id) FROM "{name}"'  # noqa: S608 - checked names
                    top = raw.execute(max_id).fetchone()[0]
                    if top is not None:  # never moves a sequence backwards
                        raw.execute(
                            "SELECT setval(s, greatest(%s, coalesce(pg_sequence_last_value(s), "
                            "0))) FROM (SELECT pg_get_serial_sequence(%s, 'id')::regclass AS s) q",
                            (top, name))
        return MigrateResult(src.where, dst.where, results)


def _copy_table(src: Ledger, raw, name: str, cols: list[tuple[str, str]],
                progress) -> TableCopy:
    names = [c for c, _ in cols]
    int_cols = [c for c, ty in cols if "INT" in ty]
    total, sums = _digest(src.conn, name, int_cols)
    col_list = ", ".join(f'"{c}"' for c in names)
    tmp = f"_migrate_{name}"
    raw.execute(f'CREATE TEMP TABLE "{tmp}" (LIKE "{name}" INCLUDING DEFAULTS) ON COMMIT DROP')
    done = 0
    select = f'SELECT {col_list} FROM "{name}"'  # noqa: S608 - checked names
    cur = src.conn.execute(select if _without_rowid(src, name) else select + " ORDER BY rowid")
    with raw.cursor().copy(f'COPY "{tmp}" ({col_list}) FROM STDIN') as copy:
        while True:
            rows = cur.fetchmany(CHUNK)
            if not rows:
                break
            for row in rows:
                copy.write_row(row)
            done += len(rows)
            if progress:
                progress(name, done, total)
    pk = [r[0] for r in raw.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary "
        "ORDER BY array_position(i.indkey, a.attnum)", (name,))]
    journal = pk == ["id"]
    others = [c for c in names if c not in pk]
    row_t = "ROW(" + ", ".join(f't."{c}"' for c in others) + ")"
    row_x = "ROW(" + ", ".join(f'x."{c}"' for c in others) + ")"
    match = " AND ".join(f't."{c}" = x."{c}"' for c in pk)
    if journal and others:
        clash = raw.execute(
            f'SELECT t.id FROM "{name}" t JOIN "{tmp}" x ON {match} '  # noqa: S608 - checked
            f"WHERE {row_t} IS DISTINCT FROM {row_x} LIMIT 1").fetchone()
        if clash is not None:
            raise LedgerError(
                f"migrate: {name} id {clash[0]} in the destination differs from the source's (it "
                "was written on PostgreSQL after an earlier copy): nothing was written")
    if pk and others and not journal:
        sets = ", ".join(f'"{c}" = excluded."{c}"' for c in others)
        row_d = "ROW(" + ", ".join(f'"{name}"."{c}"' for c in others) + ")"
        row_e = "ROW(" + ", ".join(f'excluded."{c}"' for c in others) + ")"
        conflict = (f"ON CONFLICT ({', '.join(pk)}) DO UPDATE SET {sets} "
                    f"WHERE {row_d} IS DISTINCT FROM {row_e}")
    else:
        conflict = "ON CONFLICT DO NOTHING"
    insert = (f'INSERT INTO "{name}" ({col_list}) SELECT {col_list} '  # noqa: S608 - checked
              f'FROM "{tmp}" {conflict}')
    copied = raw.execute(insert).rowcount
    if pk and not journal:  # state the source no longer has
        copied += raw.execute(
            f'DELETE FROM "{name}" t WHERE NOT EXISTS (SELECT 1 FROM "{tmp}" x '  # noqa: S608
            f"WHERE {match})").rowcount
    raw.execute(f'DROP TABLE "{tmp}"')
    count = f'SELECT count(*) FROM "{name}"'  # noqa: S608 - checked names
    dest_rows = raw.execute(count).fetchone()[0]
    if progress and total == 0:
        progress(name, 0, 0)
    return TableCopy(name, total, max(copied, 0), int(dest_rows), sums)


def _without_rowid(src: Ledger, name: str) -> bool:
    sql = src.conn.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name=?",
                           (name,)).fetchone()[0] or ""
    return "WITHOUT ROWID" in sql.upper()
