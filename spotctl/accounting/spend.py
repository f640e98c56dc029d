"""Invoice-true spend over a window, from the ledger. The gateway's budget gate calls this."""

from __future__ import annotations

from dataclasses import dataclass, field

from spotctl.accounting.observability import Coverage, combine, provider_coverage
from spotctl.accounting.series import SeriesSpend, series_spend
from spotctl.config import Config
from spotctl.ledger import queries
from spotctl.ledger.db import Ledger
from spotctl.ledger.queries import INVOICE_TRUE, SeriesData


@dataclass
class SeriesResult:
    data: SeriesData
    spend: SeriesSpend


@dataclass
class SpendResult:
    micros: int  # invoice-true; a lower bound when not complete
    complete: bool
    known_until_ms: int | None
    status: str  # ok | degraded | lost
    dark_seconds: int
    estimate_micros: int = 0  # estimate-only providers (e.g. Lambda), never in ``micros``
    uncertain_micros: int = 0  # unconfirmed credits in balance-derived series: [micros-u, micros]
    coverage: Coverage = field(default_factory=Coverage)
    series: list[SeriesResult] = field(default_factory=list)
    anomalies: int = 0
    reasons: list[str] = field(default_factory=list)


def select_series(all_series: list[SeriesData]) -> tuple[list[SeriesData], list[SeriesData]]:
    """Split into (invoice-true series to count, estimate series).

    A provider that reports per-resource running totals also reports account-level figures
    (balance, lifetime spend): counting both would double count. So per provider: if it has any
    per-resource invoice-true series, only those count; otherwise its account-level series do.
    """
    per_resource = {s.provider for s in all_series
                    if s.cumulative_kind in INVOICE_TRUE and s.resource_kind != "account"}
    counted, estimates = [], []
    for s in all_series:
        if s.cumulative_kind not in INVOICE_TRUE:
            estimates.append(s)
        elif s.resource_kind == "account" and s.provider in per_resource:
            continue
        else:
            counted.append(s)
    return counted, estimates


def billing_providers(ledger: Ledger, cfg: Config) -> list[str]:
    """Providers whose coverage matters: the configured ones (or, with none configured, every
    provider the ledger has polled, so a ledger can be read without its config)."""
    names = [p.name for p in cfg.providers if p.kind != "lambda"]
    if cfg.providers:
        return names
    return queries.polled_providers(ledger.conn)


def spend_between(
    ledger: Ledger, start_ms: int, end_ms: int, cfg: Config, *,
    providers: set[str] | None = None, tiers: set[str] | None = None,
    bucket_ms: int | None = None,
) -> SpendResult:
    """Invoice-true spend in (start_ms, end_ms], with its observability."""
    conn = ledger.conn
    width = bucket_ms or max(1, end_ms - start_ms)
    watched = [p for p in billing_providers(ledger, cfg) if providers is None or p in providers]
    conn.execute("BEGIN")  # one consistent snapshot for every read below
    try:
        all_series = queries.load_series(conn, start_ms, end_ms, width, providers)
        coverages = [
            provider_coverage(
                p, queries.ok_poll_times(conn, p, start_ms, end_ms), start_ms, end_ms,
                gap_after_ms=cfg.billing.gap_after_s * 1000,
                stale_after_ms=cfg.billing.stale_after_s * 1000,
                failures=queries.failed_polls(conn, p, start_ms, end_ms))
            for p in watched
        ]
        vanished = queries.vanished(conn, start_ms, end_ms)
        unconfirmed = queries.unconfirmed_credits(conn, start_ms, end_ms)
    finally:
        conn.execute("COMMIT")
    counted, estimates = select_series(all_series)
    if tiers is not None:
        counted = [s for s in counted if s.tier in tiers]
        estimates = [s for s in estimates if s.tier in tiers]
    results = [
        SeriesResult(s, series_spend(
            s.points, start_ms, end_ms, created_ms=s.created_ms,
            counts_from_creation=s.resource_kind != "account", bucket_ms=width))
        for s in counted
    ]
    coverage = combine(coverages, start_ms, end_ms)
    reasons = list(coverage.reasons)
    complete = coverage.status != "lost"
    for provider, rid, ms in vanished:
        if providers is None or provider in providers:
            complete = False
            reasons.append(f"{provider}: {rid} vanished without a final total")
            if coverage.known_until_ms is None or ms < coverage.known_until_ms:
                coverage.known_until_ms = ms
    est = sum(series_spend(s.points, start_ms, end_ms, created_ms=s.created_ms,
                           bucket_ms=width).micros for s in estimates)
    return SpendResult(
        micros=sum(r.spend.micros for r in results),
        complete=complete,
        known_until_ms=coverage.known_until_ms,
        status=coverage.status,
        dark_seconds=coverage.dark_seconds,
        estimate_micros=est,
        uncertain_micros=sum(v for k, v in unconfirmed.items()
                             if providers is None or k in providers),
        coverage=coverage,
        series=results,
        anomalies=sum(len(r.spend.decreases) for r in results),
        reasons=reasons,
    )
