"""Usage rows leave the event loop through a queue; a writer thread with its own ledger
connection writes them in batches (durable within ``FLUSH_S`` of the response ending) and
flushes everything on shutdown."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from spotctl.ledger.db import Ledger
from spotctl.ledger.records import UsageRecord
from spotctl.ledger.writes import record_usage, touch_tiers

FLUSH_S = 0.25


class UsageRecorder:
    def __init__(self, ledger_path: Path, log=None) -> None:
        self.ledger_path = ledger_path
        self._q: queue.Queue[UsageRecord | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
        self._log = log or (lambda msg: None)
        self.written = 0

    def start(self) -> None:
        self._thread.start()

    def record(self, row: UsageRecord) -> None:
        self._q.put_nowait(row)

    def close(self, timeout: float = 30.0) -> None:
        """Flush every queued row, then stop."""
        self._q.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        ledger = Ledger(self.ledger_path)
        try:
            stopping = False
            while not stopping:
                batch: list[UsageRecord] = []
                try:
                    item = self._q.get(timeout=FLUSH_S)
                except queue.Empty:
                    continue
                if item is None:
                    stopping = True
                else:
                    batch.append(item)
                while True:  # drain what is already queued
                    try:
                        item = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                    else:
                        batch.append(item)
                if batch:
                    self._write(ledger, batch)
        finally:
            ledger.close()

    def _write(self, ledger: Ledger, batch: list[UsageRecord]) -> None:
        for attempt in range(5):
            try:
                self.written += record_usage(ledger, batch)
                last: dict[str, int] = {}
                for r in batch:
                    if r.tier:
                        last[r.tier] = max(last.get(r.tier, 0), r.completed_ms)
                touch_tiers(ledger, last)
                return
            except Exception as exc:
                self._log(f"usage write failed ({type(exc).__name__}); retrying")
                threading.Event().wait(0.2 * (attempt + 1))
        self._log(f"usage write failed 5 times; {len(batch)} rows kept in memory only")
