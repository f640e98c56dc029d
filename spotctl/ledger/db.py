"""Opening the ledger: SQLite (one file, WAL, a busy timeout, mode 0600: the embedded default) or
PostgreSQL (``[ledger] url``: shared by several hosts, a connection pool). One schema and one set
of forward migrations for both (``schema.py``); ledger functions run the same SQL text on both
(``backend.py`` translates it for PostgreSQL).

``Ledger(target)`` takes a path (SQLite), a ``postgresql://`` URL, or ``Config.ledger_target``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spotctl.errors import ExitCode, LedgerError
from spotctl.ledger.schema import MIGRATIONS, SCHEMA_VERSION

if TYPE_CHECKING:
    from spotctl.config import LedgerConfig

BUSY_TIMEOUT_MS = 15_000

SQLITE, POSTGRESQL = "sqlite", "postgresql"


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist (no window where it is wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class Ledger:
    """A connection to the ledger. Not shared between threads; open one per thread/process
    (on PostgreSQL that borrows a connection from the process's pool until :meth:`close`).

    ``conn`` runs SQL with ``?`` placeholders on both backends (on SQLite it is the
    ``sqlite3.Connection`` itself). Writes go through :meth:`transaction`: on SQLite
    ``BEGIN IMMEDIATE``, so concurrent writers queue on SQLite's lock for up to the busy timeout;
    on PostgreSQL the same one-writer-at-a-time semantics through a transaction-scoped advisory
    lock, across every host sharing the database. Consistent multi-query reads go through
    :meth:`snapshot`.
    """

    def __init__(self, target: str | os.PathLike[str] | LedgerConfig, *,
                 readonly: bool = False) -> None:
        from spotctl.ledger.backend import is_postgres_url

        self.readonly = readonly
        self.url: str | None = None
        self.path: Path | None = None
        url, path, settings = _resolve(target)
        if url is not None and is_postgres_url(url):
            self.backend = POSTGRESQL
            self.url = url
            self._open_postgres(settings)
        else:
            self.backend = SQLITE
            self.path = Path(path)
            self._open_sqlite()

    @property
    def where(self) -> str:
        """The ledger's location for messages (a PostgreSQL URL never holds a password)."""
        if self.url is not None:
            from spotctl.ledger.backend import redact_url

            return redact_url(self.url)
        return str(self.path)

    # -- opening --------------------------------------------------------------------------
    def _open_sqlite(self) -> None:
        assert self.path is not None
        if self.readonly:
            if not self.path.exists():
                raise LedgerError(f"{self.path}: no ledger here yet (run spotctl poll-billing)",
                                  ExitCode.USAGE)
            uri = f"file:{self.path}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None,
                                   timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        else:
            _create_private(self.path)
            conn = sqlite3.connect(self.path, isolation_level=None,
                                   timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        self.conn: Any = conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if not self.readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except LedgerError:
            conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise LedgerError(f"{self.path}: not a usable spotctl ledger: {exc}") from None

    def _open_postgres(self, settings: dict[str, Any]) -> None:
        from spotctl.ledger import backend

        self.settings = backend.PgSettings(self.url, **settings)
        self.conn = backend.connect(self.settings, readonly=self.readonly)
        try:
            self._migrate()
        except BaseException:
            self.conn.close()
            raise

    # -- schema ---------------------------------------------------------------------------
    def _table_exists(self, name: str) -> bool:
        if self.backend == POSTGRESQL:
            from spotctl.ledger.backend import table_exists

            return table_exists(self.conn, name)
        return self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)
        ).fetchone() is not None

    def schema_version(self) -> int:
        if not self._table_exists("meta"):
            return 0
        value = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(value[0]) if value else 0

    def _migrate(self) -> None:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"{self.where}: ledger schema v{version} is newer than this spotctl "
                f"(v{SCHEMA_VERSION}); upgrade spotctl"
            )
        if version == SCHEMA_VERSION:
            return
        if self.readonly:
            raise LedgerError(f"{self.where}: ledger needs a migration; run a writing command")
        with self.transaction():
            if self.backend == POSTGRESQL:
                from spotctl.ledger.backend import MIGRATE_LOCK

                self.conn.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATE_LOCK,))
            version = self.schema_version()  # another process may have migrated meanwhile
            for step in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[step]):
                    self.conn.execute(statement)
                self.conn.execute(
                    "INSERT INTO meta(key, value) VALUES('schema_version', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (str(step + 1),),
                )

    def set_busy_timeout(self, ms: int) -> None:
        """How long a write waits for the write lock before failing (SQLite's busy timeout;
        on PostgreSQL the lock timeout of this connection until it goes back to the pool)."""
        if self.backend == POSTGRESQL:
            self.conn.set_session(f"SET lock_timeout = {int(ms)}")
        else:
            self.conn.execute(f"PRAGMA busy_timeout = {int(ms)}")

    # -- transactions ---------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A write transaction, one writer at a time across every process: all or nothing.

        SQLite's operational errors in it ("database is locked" past the busy timeout, a full
        disk, a read-only file) leave as :class:`LedgerError` (PostgreSQL's are mapped by the
        backend's connection), so callers above the ledger handle one type; before, a lease
        taken while the ledger was locked raised ``sqlite3.OperationalError`` through the
        daemon (a traceback and exit 1, found by ``bench/chaos.py``'s ledger-lock window)."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise _mapped(exc) from exc
        try:
            yield self.conn
        except BaseException as exc:
            if self.conn.in_transaction:
                with suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise _mapped(exc) from exc
            raise
        else:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if self.conn.in_transaction:
                    with suppress(sqlite3.Error):
                        self.conn.execute("ROLLBACK")
                raise _mapped(exc) from exc

    @contextmanager
    def snapshot(self) -> Iterator[Any]:
        """A read-only view of one instant: every query inside sees the same committed state
        (SQLite: a deferred transaction; PostgreSQL: REPEATABLE READ)."""
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        finally:
            if self.conn.in_transaction:
                self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _mapped(exc: sqlite3.OperationalError) -> LedgerError:
    """An SQLite error that ended a write transaction, as the tree's :class:`LedgerError`."""
    return LedgerError(f"ledger: {type(exc).__name__}: {exc}")


def _resolve(target: Any) -> tuple[str | None, str | os.PathLike[str] | None, dict[str, Any]]:
    """(url, path, pool settings) of whatever ``Ledger()`` was given."""
    from spotctl.config import LedgerConfig

    if isinstance(target, LedgerConfig):
        settings = {"pool_size": target.pool_size, "pool_timeout_s": target.pool_timeout_s,
                    "query_timeout_s": target.query_timeout_s}
        if target.url:
            return target.url, None, settings
        if target.path is None:
            raise LedgerError("no ledger configured ([ledger] path or url)", ExitCode.USAGE)
        return None, target.path, settings
    if isinstance(target, str) and target.startswith(("postgresql://", "postgres://")):
        return target, None, {}
    return None, target, {}


def _statements(script: str) -> Iterator[str]:
    """Split a migration script into statements (executescript would COMMIT our transaction).

    Comments stay in the statements, so ``.schema`` shows the schema's documentation: SQLite
    keeps a CREATE statement's text, and ``complete_statement`` skips ``;`` in comments."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer.strip()
            buffer = ""
    if buffer.strip():
        yield buffer.strip()

