"""Polling every configured provider into the ledger: one-shot (cron) and daemon.

Each provider's poll is written in one transaction with its poll record: all of it or nothing,
never partial, never duplicated (samples are unique per provider, account, resource and time).
Two one-shot runs at the same time are safe: an advisory lock beside the ledger makes the second
wait (up to ``LOCK_WAIT_S``) and then poll, or give up cleanly.
"""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from spotctl.billing.base import BillingError
from spotctl.clock import Clock, to_ms
from spotctl.config import Config, ProviderConfig
from spotctl.errors import ExitCode, SpotctlError
from spotctl.ledger.db import Ledger
from spotctl.ledger.records import PollRecord
from spotctl.ledger.writes import record_poll

LOCK_WAIT_S = 30.0


@dataclass
class PollOutcome:
    provider: str
    ok: bool
    kind: str  # "ok" or the error class
    message: str | None
    samples: int
    resources_seen: int


@contextmanager
def poll_lock(ledger_path: Path, wait_s: float = LOCK_WAIT_S):
    """An advisory lock so that overlapping cron runs take turns instead of racing."""
    path = Path(f"{ledger_path}.poll.lock")
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        waited = 0.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if waited >= wait_s:
                    raise SpotctlError("another poll-billing run holds the lock; skipped this "
                                       "run", ExitCode.OK) from None
                threading.Event().wait(0.1)  # real time: the other process runs in real time
                waited += 0.1
        yield
    finally:
        os.close(fd)


def _context(ledger: Ledger, provider: str):
    from spotctl.billing.hyperstack import PollContext

    conn = ledger.conn
    last_ok = conn.execute(
        "SELECT MAX(observed_ms) FROM billing_samples WHERE provider=? AND resource_id='account'",
        (provider,)).fetchone()[0]
    live = {r[0] for r in conn.execute(
        "SELECT resource_id FROM billing_series WHERE provider=? AND resource_kind != 'account' "
        "AND coalesce(last_state, '') != 'deleted' AND last_ms = ?", (provider, last_ok))}
    finalized = {r[0] for r in conn.execute(
        "SELECT resource_id FROM billing_series WHERE provider=? AND last_state='deleted'",
        (provider,))}
    last_deleted = conn.execute(
        "SELECT MAX(observed_ms) FROM billing_samples WHERE provider=? AND "
        "resource_id='account' AND state='deleted_polled'", (provider,)).fetchone()[0]
    return PollContext(live, finalized, last_deleted)


def poll_provider(prov: ProviderConfig, cfg: Config, ledger: Ledger, clock: Clock
                  ) -> PollOutcome:
    from spotctl.billing.registry import adapter_for

    started = to_ms(clock.now())
    adapter = None
    try:
        adapter = adapter_for(prov, cfg, clock)
        if prov.kind in ("hyperstack", "localcloud"):
            result = adapter.poll(started, _context(ledger, prov.name))
        else:
            result = adapter.poll(started, ledger)
    except BillingError as exc:
        finished = max(started, to_ms(clock.now()))
        record_poll(ledger, PollRecord(prov.name, started, finished, exc.kind, exc.message))
        return PollOutcome(prov.name, False, exc.kind, exc.message, 0, 0)
    finally:
        if adapter is not None:
            adapter.close()
    finished = max([started, to_ms(clock.now()), *(s.observed_ms for s in result.samples)])
    _, inserted = record_poll(
        ledger, PollRecord(prov.name, started, finished, "ok",
                           resources_seen=result.resources_seen),
        result.samples, result.credits, result.anomalies)
    return PollOutcome(prov.name, True, "ok", None, inserted, result.resources_seen)


def poll_once(cfg: Config, ledger: Ledger, clock: Clock) -> list[PollOutcome]:
    """Poll every configured provider once; each provider's result is its own transaction."""
    return [poll_provider(p, cfg, ledger, clock) for p in cfg.providers]


def poll_shared(cfg: Config, ledger: Ledger, clock: Clock
                ) -> tuple[list[PollOutcome], list[str]]:
    """Poll every provider whose poll slot this run gets (a shared PostgreSQL ledger: one poll
    per provider per ``poll_interval_s`` across every host); returns the outcomes and, for the
    providers skipped, why (another run is polling it, or already did this interval)."""
    from spotctl.ledger.coordination import poll_slot

    outcomes: list[PollOutcome] = []
    skipped: list[str] = []
    interval_ms = cfg.billing.poll_interval_s * 1000
    for prov in cfg.providers:
        with poll_slot(ledger, prov.name, to_ms(clock.now()), interval_ms) as slot:
            if not slot.acquired:
                skipped.append(slot.reason or f"{prov.name}: skipped")
                continue
            outcomes.append(poll_provider(prov, cfg, ledger, clock))
    return outcomes, skipped


def run_daemon(cfg: Config, ledger: Ledger, clock: Clock, stop: threading.Event,
               log=print) -> None:
    """Poll every ``poll_interval_s`` aligned to the interval on the clock, until ``stop``."""
    interval_ms = cfg.billing.poll_interval_s * 1000
    while not stop.is_set():
        now = to_ms(clock.now())
        wait_ms = interval_ms - now % interval_ms
        if _wait(clock, stop, wait_ms / 1000):
            break
        if ledger.backend == "postgresql":  # daemons on several hosts: one poll per interval
            outcomes, skipped = poll_shared(cfg, ledger, clock)
            for reason in skipped:
                log(reason)
        else:
            outcomes = poll_once(cfg, ledger, clock)
        for o in outcomes:
            log(f"{o.provider}: " + (f"ok, {o.resources_seen} resources, {o.samples} samples"
                                     if o.ok else f"FAILED {o.kind}: {o.message}"))


def _wait(clock: Clock, stop: threading.Event, seconds: float) -> bool:
    """Sleep ``seconds`` of clock time in short slices; True when asked to stop."""
    remaining = seconds
    while remaining > 0:
        if stop.is_set():
            return True
        step = min(remaining, 0.5)
        clock.sleep(step)
        remaining -= step
    return stop.is_set()
