"""Billing orchestration: polling every provider into the ledger (one-shot or daemon), billing
health, and reconciling the ledger against the provider's own daily figure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

from spotctl.billing.reconcile import provider_day_total
from spotctl.clock import Clock, to_ms
from spotctl.config import Config
from spotctl.errors import ProviderError
from spotctl.ledger.db import Ledger
from spotctl.money import usd_str
from spotctl.services.cost import spend_between


def reconcile_day(cfg: Config, ledger: Ledger, day: date, end: date) -> list[dict]:
    from spotctl.billing.poller import classify

    start_ms = to_ms(datetime(day.year, day.month, day.day, tzinfo=UTC))
    end_ms = to_ms(datetime(end.year, end.month, end.day, tzinfo=UTC))
    rows = []
    for prov in cfg.providers:
        spend = spend_between(ledger, start_ms, end_ms, cfg, providers={prov.name})
        row = {"provider": prov.name, "ledger_usd": usd_str(spend.micros),
               "ledger_complete": spend.complete, "provider_usd": None, "drift_usd": None,
               "drift_pct": None, "note": None, "status": "ok"}
        if prov.kind not in ("hyperstack", "localcloud", "runpod"):
            row.update(status="unsupported", note="no daily cost endpoint used for this provider")
        else:
            try:
                theirs = provider_day_total(cfg, prov.name, day, end)
            except ProviderError as exc:
                row.update(status="unavailable", note=f"{classify(exc)}: {exc.message}")
            else:
                drift = spend.micros - theirs
                row.update(provider_usd=usd_str(theirs), drift_usd=usd_str(drift),
                           drift_pct=None if theirs == 0 else str(
                               (Decimal(drift) * 100 / Decimal(theirs)).quantize(
                                   Decimal("0.01"))))
        rows.append(row)
    return rows


def poll_all(cfg: Config, ledger: Ledger, clock: Clock) -> tuple[list, list[str]]:
    """One poll of every provider: ``(outcomes, skipped)``. On a shared PostgreSQL ledger each
    provider is polled once per interval whichever host runs first (the others skip); on
    SQLite an advisory lock beside the file makes overlapping cron runs take turns."""
    from spotctl.billing.poller import poll_lock, poll_once, poll_shared

    if ledger.backend == "postgresql":
        return poll_shared(cfg, ledger, clock)
    with poll_lock(ledger.path):
        return poll_once(cfg, ledger, clock), []


def run_poll_daemon(cfg: Config, ledger: Ledger, clock: Clock, log) -> None:
    """Poll every ``[billing] poll_interval_s`` until SIGTERM/SIGINT (never exits on a failed
    poll: failures are recorded and retried with backoff)."""
    import signal
    import threading

    from spotctl.billing.poller import run_daemon

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log(f"polling {len(cfg.providers)} provider(s) every {cfg.billing.poll_interval_s}s")
    run_daemon(cfg, ledger, clock, stop, log=log)
    log("stopped")


@dataclass(frozen=True)
class BillingStatus:
    """``spotctl billing status``: each provider's health and its recorded orphan machines."""

    providers: list  # billing.health.ProviderHealth, one per provider
    orphans: dict[str, list[Orphan]]  # provider → its orphan machines, oldest first
    no_launch_quote: dict[str, list[str]]  # provider → live machines launched without a quote

    @property
    def unresolved(self) -> list[Orphan]:
        return [o for found in self.orphans.values() for o in found if not o.resolved]


def status(cfg: Config, ledger: Ledger, now_ms: int) -> BillingStatus:
    """Per provider: fresh / stale / failing / regressed / never, its orphan machines and the
    live machines launched without a quote, from the ledger alone."""
    from spotctl.billing.health import provider_health

    return BillingStatus(provider_health(ledger, cfg, now_ms), orphans(ledger),
                         no_launch_quote(cfg, ledger))


@dataclass(frozen=True)
class Orphan:
    """A machine that billed for a tier in no journal state, as the daemon recorded it.
    ``resolved``: deleted since (``down TIER --orphans``) or ended in the provider's billing."""

    provider: str
    resource_id: str
    observed_ms: int
    detail: str | None
    resolved: bool

    def to_json(self) -> dict:
        from spotctl.clock import from_ms, iso

        return {"resource_id": self.resource_id, "observed_at": iso(from_ms(self.observed_ms)),
                "detail": self.detail, "resolved": self.resolved}


def orphans(ledger: Ledger) -> dict[str, list[Orphan]]:
    """Recorded orphan machines per provider, oldest first (never counted in spend)."""
    from spotctl.ledger.journal import orphan_anomalies, resolved_orphans

    done = resolved_orphans(ledger)
    out: dict[str, list[Orphan]] = {}
    for provider, rid, observed, detail in orphan_anomalies(ledger):
        out.setdefault(provider, []).append(
            Orphan(provider, rid, observed, detail, (provider, rid) in done))
    return out


# providers whose billing adapter compares each poll's billed rate with the launch quote
QUOTE_COMPARED_KINDS = ("hyperstack", "localcloud")


def no_launch_quote(cfg: Config, ledger: Ledger) -> dict[str, list[str]]:
    """Price truth that cannot fire, made visible: per provider whose adapter compares billed
    rates with launch quotes, the machines spotctl launched (named in the fleet journal) that
    are live in the provider's newest successful poll and have no quote journaled, because
    the quote call failed or answered nothing at launch. Sorted resource ids."""
    from spotctl.ledger.billing_reads import prior_state, quoted_rates
    from spotctl.ledger.journal import fleet_events

    launched = {e.resource_id for e in fleet_events(ledger) if e.resource_id}
    quoted = quoted_rates(ledger)
    out: dict[str, list[str]] = {}
    for prov in cfg.providers:
        if prov.kind not in QUOTE_COMPARED_KINDS:
            continue
        live = prior_state(ledger, prov.name).live_before
        missing = sorted(r for r in live if r in launched and r not in quoted)
        if missing:
            out[prov.name] = missing
    return out
