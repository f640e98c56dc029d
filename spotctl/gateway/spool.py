"""The usage spool: where usage rows go when the ledger cannot take them, until it can.

One append-only file per gateway process in ``[gateway] spool_dir`` (0700; files 0600), one
JSON array per row, each batch appended and fsync'ed before the rows count as durable. The
owning process holds an exclusive ``flock`` on its file while it runs, so a file nobody holds
belongs to a process that ended: any gateway process adopts and replays it. Replaying is
idempotent (rows carry their request id; the ledger skips ids it has), so a replay cut by a
crash is simply replayed again: each row lands in the ledger exactly once.

The spool is bounded (``spool_max_bytes`` over the whole directory); a batch that would pass
the bound is refused like a full disk, and the gateway closes its gate (``usage_unrecordable``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

import orjson

from spotctl.ledger.records import UsageRecord

_FIELDS = UsageRecord._fields


class SpoolFull(OSError):
    """The spool's size bound would be passed."""


def encode(rows: list[UsageRecord]) -> bytes:
    return b"".join(orjson.dumps([getattr(r, f) for f in _FIELDS]) + b"\n" for r in rows)


def decode(data: bytes) -> list[UsageRecord]:
    """Rows from spool bytes; a torn last line (a crash mid-append, never acknowledged as
    durable) is ignored."""
    rows = []
    for line in data.splitlines():
        try:
            values = orjson.loads(line)
            rows.append(UsageRecord(**dict(zip(_FIELDS, values, strict=True))))
        except (orjson.JSONDecodeError, TypeError, ValueError):
            continue
    return rows


class Spool:
    def __init__(self, directory: Path, owner: str, max_bytes: int) -> None:
        self.dir = Path(directory)
        self.path = self.dir / f"usage-{owner}.jsonl"
        self.max_bytes = max_bytes
        self._fd: int | None = None
        self.rows = 0  # rows in this process's file, not yet replayed

    def _open(self) -> int:
        if self._fd is None:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise
            self._fd = fd
        return self._fd

    def size(self) -> int:
        try:
            return sum(p.stat().st_size for p in self.dir.glob("usage-*.jsonl"))
        except OSError:
            return 0

    def append(self, rows: list[UsageRecord]) -> None:
        """Make ``rows`` durable in the spool (written and fsync'ed), or raise OSError."""
        data = encode(rows)
        if self.size() + len(data) > self.max_bytes:
            raise SpoolFull(f"the usage spool would exceed {self.max_bytes} bytes")
        fd = self._open()
        before = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, before)  # leave no partial batch behind
            raise
        self.rows += len(rows)

    def read_own(self) -> list[UsageRecord]:
        return decode(self.path.read_bytes()) if self.path.exists() else []

    def clear_own(self) -> None:
        """Everything in this process's file is in the ledger: empty it."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
        self.rows = 0

    def orphans(self) -> list[Path]:
        """Spool files of processes that ended (nobody holds their lock)."""
        if not self.dir.is_dir():
            return []
        return [p for p in sorted(self.dir.glob("usage-*.jsonl")) if p != self.path]

    @staticmethod
    def adopt(path: Path, replay) -> int:
        """Replay an orphan file with ``replay(rows)`` under its lock, then delete it. Returns
        the rows replayed (0 when another process holds the file)."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return 0
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return 0  # alive, or being adopted by another process
            if not path.exists():
                return 0
            rows = decode(path.read_bytes())
            if rows:
                replay(rows)
            path.unlink()
            return len(rows)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._fd is not None:
            empty = os.fstat(self._fd).st_size == 0
            os.close(self._fd)
            self._fd = None
            if empty:
                with contextlib.suppress(OSError):
                    self.path.unlink()
