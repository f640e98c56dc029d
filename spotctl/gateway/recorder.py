"""The usage writer: rows leave the event loop through a queue and become durable within a
second, or the gate closes.

The request path only puts a row on a ``SimpleQueue`` (no lock, no I/O). A writer thread
collects rows for ``BATCH_S``, then writes the batch to the ledger in one transaction with a
short busy timeout. When the ledger cannot take it (read-only, disk full, a long write lock),
the batch goes to the spool (:mod:`spotctl.gateway.spool`: a local 0600 file, fsync'ed) and is
replayed into the ledger once it can take rows again. When neither can take the rows, they stay
in memory and :attr:`UsageRecorder.durable` turns False: the gateway closes its gate with
``usage_unrecordable`` (and fails ``/readyz``) until they are written. No row is ever dropped.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spotctl.gateway.errors import scrub
from spotctl.gateway.spool import Spool
from spotctl.ledger.records import UsageRecord
from spotctl.ledger.usage import open_writer, record_usage, touch_tiers

BATCH_S = 0.2  # rows wait at most this long before their write starts
WRITE_BUSY_MS = 500  # a ledger write waits this long for a lock, then the batch is spooled
REPLAY_EVERY_S = 1.0
CHUNK = 512  # rows per transaction: the GIL held under a millisecond at a time (_ledger_write)
CHUNK_BUDGET_MS = 100  # past this in one batch's write, its remaining rows go in one transaction
ADOPT_EVERY_S = 10.0


class UsageRecorder:
    def __init__(self, ledger_path: Path | Any, spool: Spool,
                 log: Callable[[str], None] | None = None) -> None:
        self.ledger_path = ledger_path  # a SQLite path or [ledger] (PostgreSQL)
        self.spool = spool
        self._q: queue.SimpleQueue[UsageRecord | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
        self._log = log or (lambda msg: None)
        self._ledger = None
        self._pending: list[UsageRecord] = []
        self.durable = True  # False while rows exist that neither the ledger nor spool took
        self.written = 0  # rows this process put in the ledger (replays included)
        self.spooled = 0  # rows this process put in the spool
        self.pending = 0  # rows held in memory, not yet durable
        self.last_error: str | None = None
        self._last_replay: float | None = None
        self._last_adopt: float | None = None

    # -- the request path ---------------------------------------------------------------------
    def record(self, row: UsageRecord) -> None:
        self._q.put(row)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._adopt_orphans()
        self._thread.start()

    def close(self, timeout: float = 30.0) -> bool:
        """Make every queued row durable, then stop. False when some could not be."""
        self._q.put(None)
        self._thread.join(timeout)
        with contextlib.suppress(Exception):
            self.spool.close()
        return not self._pending

    # -- the writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        try:
            while not stopping:
                try:
                    first = self._q.get(timeout=REPLAY_EVERY_S if not self._pending else 0.2)
                except queue.Empty:
                    first = False
                batch: list[UsageRecord] = []
                if first is None:
                    stopping = True
                elif first:
                    batch.append(first)
                    time.sleep(BATCH_S)  # clock-ok: let the batch fill (real time)
                while True:
                    try:
                        item = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                    else:
                        batch.append(item)
                self.write_batch(batch, final=stopping)
                self.housekeeping(stopping)
        finally:
            self.close_ledger()

    # -- one step of the writer (the thread above, or the writer process) ----------------------
    def write_batch(self, rows: list[UsageRecord], final: bool = False) -> None:
        """Make ``rows`` and any rows still held durable: the ledger, else the spool, else held
        in memory (``durable`` False)."""
        self._pending.extend(rows)
        if self._pending:
            self._make_durable(final=final)

    def housekeeping(self, stopping: bool = False) -> None:
        """Replay this process's spool (every ``REPLAY_EVERY_S``, and when stopping) and adopt
        the spools of processes that ended (every ``ADOPT_EVERY_S``)."""
        now = time.monotonic()  # clock-ok: real pacing of I/O retries
        if self._last_replay is None:
            self._last_replay = self._last_adopt = now
        if self.spool.rows and (stopping or now - self._last_replay >= REPLAY_EVERY_S):
            self._last_replay = now
            self._replay()
        if now - self._last_adopt >= ADOPT_EVERY_S:
            self._last_adopt = now
            self._adopt_orphans()

    def close_ledger(self) -> None:
        if self._ledger is not None:
            with contextlib.suppress(Exception):
                self._ledger.close()
            self._ledger = None

    @property
    def spool_rows(self) -> int:
        return self.spool.rows

    def _ledger_write(self, rows: list[UsageRecord]) -> int:
        """Write ``rows`` in transactions of at most ``CHUNK`` rows; returns the rows added.

        Building a transaction's rows and parameters holds the GIL (a batch of thousands of
        rows: milliseconds at a stretch), and the event loop waits for it up to the
        interpreter's switch interval (5 ms): the gateway's latency tail. A chunk holds it under
        a millisecond, and a zero-length sleep between chunks releases it. A failure
        part-way leaves the committed chunks in the ledger; the caller spools (or keeps) every
        row of the batch, and replays skip the ids already there (exactly once). A write past
        ``CHUNK_BUDGET_MS`` (a contended ledger) takes the rest in one transaction with what is
        left of the lock wait, so a batch is durable (or spooled) as soon as unchunked."""
        if self._ledger is None:
            self._ledger = open_writer(self.ledger_path, WRITE_BUSY_MS)
        led = self._ledger
        added = 0
        started = time.monotonic()  # clock-ok: real time spent waiting on the ledger
        shortened = False
        try:
            last: dict[str, int] = {}
            i = 0
            while i < len(rows):
                n = CHUNK
                if i:
                    spent_ms = (time.monotonic() - started) * 1000  # clock-ok
                    if spent_ms > CHUNK_BUDGET_MS:
                        # a slow or contended ledger: the rest in one transaction, waiting for
                        # the lock only what is left of WRITE_BUSY_MS, so that a batch waits
                        # no longer than unchunked (rows durable within a second)
                        led.set_busy_timeout(max(50, int(WRITE_BUSY_MS - spent_ms)))
                        shortened = True
                        n = len(rows) - i
                    else:
                        time.sleep(0)  # clock-ok: no wait; releases the GIL for the event loop
                part = rows[i:i + n]
                added += record_usage(led, part)
                for r in part:
                    if r.tier:
                        last[r.tier] = max(last.get(r.tier, 0), r.completed_ms)
                i += n
            if shortened:
                led.set_busy_timeout(WRITE_BUSY_MS)
            touch_tiers(led, last)
            return added
        except Exception:
            self.written += added  # the chunks committed before the failure
            # reopen next time: the file may have changed under us (permissions, a new inode)
            with contextlib.suppress(Exception):
                self._ledger.close()
            self._ledger = None
            raise

    def _make_durable(self, final: bool = False) -> None:
        rows = self._pending
        try:
            self.written += self._ledger_write(rows)
        except Exception as exc:
            err = f"ledger: {type(exc).__name__}: {scrub(str(exc))}"
            try:
                self.spool.append(rows)
            except Exception as exc2:
                self.last_error = f"{err}; spool: {type(exc2).__name__}: {scrub(str(exc2))}"
                if self.durable:
                    self._log(f"usage rows cannot be made durable ({self.last_error}); "
                              f"{len(rows)} row(s) held in memory; closing the gate")
                self.durable = False
                self.pending = len(rows)
                if final:
                    self._log(f"shutting down with {len(rows)} usage row(s) not durable")
                return
            self.spooled += len(rows)
            if self.last_error != err:
                self._log(f"usage rows spooled to {self.spool.path} ({err})")
            self.last_error = err
        self._pending = []
        self.pending = 0
        if not self.durable:
            self._log("usage rows are durable again; the gate may reopen")
        self.durable = True

    def _replay(self) -> None:
        try:
            rows = self.spool.read_own()
            if rows:
                self.written += self._ledger_write(rows)
            self.spool.clear_own()
            self._log(f"replayed {len(rows)} spooled usage row(s) into the ledger")
            self.last_error = None
        except Exception as exc:
            self.last_error = f"replay: {type(exc).__name__}: {scrub(str(exc))}"

    def _replay_rows(self, rows: list[UsageRecord]) -> None:
        self.written += self._ledger_write(rows)

    def _adopt_orphans(self) -> None:
        for path in self.spool.orphans():
            try:
                n = Spool.adopt(path, self._replay_rows)
                if n:
                    self._log(f"replayed {n} usage row(s) left in {path.name}")
            except Exception as exc:
                self._log(f"cannot replay {path.name} yet ({type(exc).__name__})")
