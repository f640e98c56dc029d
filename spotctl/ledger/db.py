"""Opening the ledger: one SQLite file, WAL, a busy timeout, mode 0600, forward migrations."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spotctl.errors import ExitCode, LedgerError
from spotctl.ledger.schema import MIGRATIONS, SCHEMA_VERSION

BUSY_TIMEOUT_MS = 15_000


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist (no window where it is wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class Ledger:
    """A connection to the ledger. Not shared between threads; open one per thread/process.

    Writes go through :meth:`transaction` (``BEGIN IMMEDIATE``), so concurrent writers queue on
    SQLite's lock for up to the busy timeout instead of failing with "database is locked".
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
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
        self.conn = conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if not readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise LedgerError(f"{self.path}: not a usable spotctl ledger: {exc}") from None

    # -- schema ---------------------------------------------------------------------------
    def schema_version(self) -> int:
        row = self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if row is None:
            return 0
        value = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(value[0]) if value else 0

    def _migrate(self) -> None:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path}: ledger schema v{version} is newer than this spotctl "
                f"(v{SCHEMA_VERSION}); upgrade spotctl"
            )
        if version == SCHEMA_VERSION:
            return
        if self.readonly:
            raise LedgerError(f"{self.path}: ledger needs a migration; run a writing command")
        with self.transaction():
            version = self.schema_version()  # another process may have migrated meanwhile
            for step in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[step]):
                    self.conn.execute(statement)
                self.conn.execute(
                    "INSERT INTO meta(key, value) VALUES('schema_version', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (str(step + 1),),
                )

    # -- transactions ---------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locking) transaction: all or nothing."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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

