"""Invoice-true spend over a window. Pure: it computes from a :class:`WindowData` snapshot.

Reading the snapshot is :func:`spotctl.ledger.queries.read_configured_window` (one
transaction); its callers (the commands through :mod:`spotctl.services.cost`, the gateway's
gate, reconcile, the demo) pass it to :func:`spend_of`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from spotctl.accounting.capacity import CATEGORIES, Label, classify
from spotctl.accounting.observability import Coverage, combine, provider_coverage
from spotctl.accounting.series import SeriesSpend, series_spend
from spotctl.clock import from_ms, iso
from spotctl.ledger.queries import INVOICE_TRUE, SeriesData, WindowData

if TYPE_CHECKING:
    from spotctl.config import Config


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

    def by_capacity(self, tiers: set[str] | None = None) -> dict[str, int]:
        """Spend split by the capacity each resource billed as; sums exactly to the spend of
        the same series (all of them, or those of ``tiers``)."""
        out = dict.fromkeys(CATEGORIES, 0)
        for r in self.series:
            if tiers is not None and r.data.tier not in tiers:
                continue
            for label, micros in r.spend.by_label().items():
                out[label.category] += micros
        return out


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


def start_rule(s: SeriesData, start_ms: int, end_ms: int) -> tuple[bool | None, str | None]:
    """How a series with no sample at or before the window start begins.

    Returns ``(from_zero, unknown_reason)``. A successful poll inside the window that did not
    list the resource proves it was created inside the window: count from zero, whatever the
    provider's clock says. Otherwise the provider's creation time decides, unless it is later
    than spotctl's own first sample of the resource: then the provider's clock is ahead of
    ours, nothing says whether the resource ran before the window's first sample, and the spend
    before that sample is unknown (reported, never silently left out).
    """
    if s.resource_kind == "account" or any(ms <= start_ms for ms, _ in s.points):
        return None, None
    inside = [(ms, cum) for ms, cum in s.points if start_ms < ms <= end_ms]
    if not inside:
        return None, None
    first_ms, first_cum = inside[0]
    if s.absent_at_ms is not None and (s.created_ms is None or s.created_ms >= start_ms
                                       or s.created_ms > first_ms):
        return True, None
    if s.created_ms is not None and s.created_ms > first_ms:
        if first_cum == 0:
            return False, None
        return False, (f"{s.provider}: {s.resource_id} was created at {iso(from_ms(s.created_ms))}"
                       f" by the provider's clock, after spotctl first saw it at "
                       f"{iso(from_ms(first_ms))}: the provider's clock is ahead, so its spend "
                       "before that sample is unknown")
    return None, None


def _labels(s: SeriesData, journal: dict[str, str]) -> list[Label]:
    cap = journal.get(s.resource_id)
    out = []
    for ms, _ in s.points:
        state, spot, _rate = s.meta.get(ms, (None, None, None))
        out.append(classify(s.resource_kind, state, spot, cap))
    return out


def compute_spend(
    data: WindowData, *, gap_after_ms: int, stale_after_ms: int,
    providers: Iterable[str] | None = None, tiers: set[str] | None = None,
) -> SpendResult:
    """Invoice-true spend in (start, end] of the snapshot, with its observability."""
    start_ms, end_ms = data.start_ms, data.end_ms
    prov = set(providers) if providers is not None else None
    coverages = [
        provider_coverage(p, polls.ok, start_ms, end_ms, gap_after_ms=gap_after_ms,
                          stale_after_ms=stale_after_ms, failures=polls.failed)
        for p, polls in data.polls.items() if prov is None or p in prov
    ]
    series = [s for s in data.series if prov is None or s.provider in prov]
    counted, estimates = select_series(series)
    if tiers is not None:
        counted = [s for s in counted if s.tier in tiers]
        estimates = [s for s in estimates if s.tier in tiers]
    coverage = combine(coverages, start_ms, end_ms)
    reasons = list(coverage.reasons)
    complete = coverage.status != "lost"
    results = []
    for s in counted:
        from_zero, unknown = start_rule(s, start_ms, end_ms)
        results.append(SeriesResult(s, series_spend(
            s.points, start_ms, end_ms, created_ms=s.created_ms,
            counts_from_creation=s.resource_kind != "account", from_zero=from_zero,
            bucket_ms=data.bucket_ms, labels=_labels(s, data.resource_capacity))))
        if unknown:
            complete = False
            reasons.append(unknown)
    for provider, rid, ms in data.vanished:
        if prov is None or provider in prov:
            complete = False
            reasons.append(f"{provider}: {rid} vanished without a final total")
            if coverage.known_until_ms is None or ms < coverage.known_until_ms:
                coverage.known_until_ms = ms
    est = sum(series_spend(s.points, start_ms, end_ms, created_ms=s.created_ms,
                           bucket_ms=data.bucket_ms).micros for s in estimates)
    return SpendResult(
        micros=sum(r.spend.micros for r in results),
        complete=complete,
        known_until_ms=coverage.known_until_ms,
        status=coverage.status,
        dark_seconds=coverage.dark_seconds,
        estimate_micros=est,
        uncertain_micros=sum(v for k, v in data.unconfirmed_credits.items()
                             if prov is None or k in prov),
        coverage=coverage,
        series=results,
        anomalies=sum(len(r.spend.decreases) for r in results),
        reasons=reasons,
    )


def spend_of(data: WindowData, cfg: Config, *, providers: set[str] | None = None,
             tiers: set[str] | None = None) -> SpendResult:
    """:func:`compute_spend` with the ``[billing]`` gap and staleness limits of ``cfg``."""
    return compute_spend(data, gap_after_ms=cfg.billing.gap_after_s * 1000,
                         stale_after_ms=cfg.billing.stale_after_s * 1000,
                         providers=providers, tiers=tiers)
