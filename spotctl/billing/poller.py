"""Polling every configured provider into the ledger: one-shot (cron) and daemon.

For each provider: read its :class:`PriorState` from the ledger, let the adapter translate one
poll of the provider, write the result. Each provider's poll is written in one transaction with
its poll record: all of it or nothing, never partial, never duplicated (samples are unique per
provider, account, resource and time). Every poll catches its own errors: a provider error is a
failed poll of its kind (timeout, http_5xx, auth, ...), a ledger error ("database is locked") is
a failed poll of kind ``ledger`` when it can still be recorded; the daemon logs it, backs off,
and goes on: it never exits on a poll's error. Two one-shot runs at the same time are safe: an
advisory lock beside the ledger makes the second wait (up to ``LOCK_WAIT_S``) and then poll, or
give up cleanly.
"""

from __future__ import annotations

import contextlib
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from spotctl.clock import Clock, to_ms
from spotctl.config import Config, ProviderConfig
from spotctl.errors import (
    ConfigError,
    ExitCode,
    LedgerError,
    ProviderError,
    SpotctlError,
)
from spotctl.ledger.billing_reads import prior_state, record_poll_mapped
from spotctl.ledger.coordination import LOCK_WAIT_S, file_lock, poll_lock_path
from spotctl.ledger.db import Ledger
from spotctl.ledger.records import PollRecord


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
    """An advisory lock so that overlapping cron runs take turns instead of racing (the same
    lock file :func:`spotctl.ledger.coordination.poll_slot` takes per provider on SQLite)."""
    with file_lock(poll_lock_path(ledger_path), wait_s) as got:
        if not got:
            raise SpotctlError("another poll-billing run holds the lock; skipped this run",
                               ExitCode.OK)
        yield


def classify(exc: SpotctlError) -> str:
    """A failed poll's outcome class (``billing_polls.outcome``). A provider error names its
    own in ``kind`` (see :mod:`spotctl.errors`); a ``BillingError`` carries the adapter's."""
    if isinstance(exc, LedgerError):
        return "ledger"
    if isinstance(exc, ConfigError):
        return "config"
    if isinstance(exc, ProviderError):
        return exc.kind
    return "error"


def poll_provider(prov: ProviderConfig, cfg: Config, ledger: Ledger, clock: Clock,
                  transport=None) -> PollOutcome:
    from spotctl.billing.registry import adapter_for

    started = to_ms(clock.now())
    adapter = None
    try:
        prior = prior_state(ledger, prov.name, rate_tolerance_pct=cfg.billing.rate_tolerance_pct)
        adapter = adapter_for(prov, cfg, clock, transport)
        result = adapter.poll(started, prior)
        finished = max([started, to_ms(clock.now()), *(s.observed_ms for s in result.samples)])
        _, inserted = record_poll_mapped(
            ledger, PollRecord(prov.name, started, finished, "ok",
                               resources_seen=result.resources_seen),
            result.samples, result.credits, result.anomalies)
        return PollOutcome(prov.name, True, "ok", None, inserted, result.resources_seen)
    except SpotctlError as exc:
        kind = classify(exc)
        finished = max(started, to_ms(clock.now()))
        # when the ledger itself is what fails, the caller logs the outcome
        with contextlib.suppress(LedgerError):
            record_poll_mapped(ledger, PollRecord(prov.name, started, finished, kind,
                                                  exc.message))
        return PollOutcome(prov.name, False, kind, exc.message, 0, 0)
    finally:
        if adapter is not None:
            adapter.close()


def poll_once(cfg: Config, ledger: Ledger, clock: Clock, transports: dict | None = None
              ) -> list[PollOutcome]:
    """Poll every configured provider once; each provider's result is its own transaction.
    ``transports``: provider name → httpx transport (tests replay fixtures through it)."""
    return [poll_provider(p, cfg, ledger, clock, (transports or {}).get(p.name))
            for p in cfg.providers]


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
    """Poll every ``poll_interval_s`` aligned to the interval on the clock, until ``stop``.

    Never exits on a poll's error: a failed cycle that could not reach the ledger is retried
    after a backoff (5 s, doubling, at most the interval) instead of at the next tick."""
    interval_ms = cfg.billing.poll_interval_s * 1000
    failures = 0
    while not stop.is_set():
        if failures:
            wait_s = min(interval_ms / 1000, 5.0 * 2 ** (failures - 1))
        else:
            now = to_ms(clock.now())
            wait_s = (interval_ms - now % interval_ms) / 1000
        if _wait(clock, stop, wait_s):
            break
        try:
            if ledger.backend == "postgresql":  # daemons on several hosts: one poll/interval
                outcomes, skipped = poll_shared(cfg, ledger, clock)
                for reason in skipped:
                    log(reason)
            else:
                outcomes = poll_once(cfg, ledger, clock)
        except Exception as exc:  # the daemon outlives any one poll's failure
            failures += 1
            log(f"poll failed ({type(exc).__name__}: {str(exc)[:200]}); retrying in a moment")
            continue
        for o in outcomes:
            log(f"{o.provider}: " + (f"ok, {o.resources_seen} resources, {o.samples} samples"
                                     if o.ok else f"FAILED {o.kind}: {o.message}"))
        failures = failures + 1 if any(o.kind == "ledger" for o in outcomes) else 0


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
