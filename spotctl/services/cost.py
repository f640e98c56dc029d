"""Cost for a window: one snapshot read from the ledger, then the pure accounting.

``cost``, ``price``, ``report``, ``compare`` and ``advise`` call these; each reads the ledger
exactly once (:func:`spotctl.ledger.queries.read_window`, one transaction), so spend, tokens
and the fleet journal always describe the same moment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spotctl.accounting.report import CostReport, build_report
from spotctl.accounting.spend import SpendResult, compute_spend, watched_providers
from spotctl.ledger import queries

if TYPE_CHECKING:
    from spotctl.config import Config
    from spotctl.ledger.db import Ledger


def read_window(ledger: Ledger, cfg: Config, start_ms: int, end_ms: int,
                bucket_ms: int | None, *, providers: set[str] | None = None,
                tokens: bool = True, fleet: bool = True) -> queries.WindowData:
    polled = [] if cfg.providers else queries.polled_providers(ledger.conn)
    watched = [p for p in watched_providers(cfg, polled) if providers is None or p in providers]
    return queries.read_window(ledger.conn, start_ms, end_ms, bucket_ms, providers=providers,
                               watched=watched, tokens=tokens, fleet=fleet)


def spend_of(data: queries.WindowData, cfg: Config, *, providers: set[str] | None = None,
             tiers: set[str] | None = None) -> SpendResult:
    return compute_spend(data, gap_after_ms=cfg.billing.gap_after_s * 1000,
                         stale_after_ms=cfg.billing.stale_after_s * 1000,
                         providers=providers, tiers=tiers)


def spend_between(
    ledger: Ledger, start_ms: int, end_ms: int, cfg: Config, *,
    providers: set[str] | None = None, tiers: set[str] | None = None,
    bucket_ms: int | None = None,
) -> SpendResult:
    """Invoice-true spend in (start_ms, end_ms], with its observability."""
    data = read_window(ledger, cfg, start_ms, end_ms, bucket_ms, providers=providers,
                       tokens=False, fleet=False)
    return spend_of(data, cfg, providers=providers, tiers=tiers)


def cost_report(
    ledger: Ledger, cfg: Config, start_ms: int, end_ms: int, *,
    bucket_s: int = 3600, min_tokens: int = 1000,
    tiers: set[str] | None = None, providers: set[str] | None = None,
) -> CostReport:
    """The cost report for (start, end]: buckets aligned to multiples of ``bucket_s``."""
    if end_ms <= start_ms:
        raise ValueError("the window ends before it starts")
    data = read_window(ledger, cfg, start_ms, end_ms, bucket_s * 1000, providers=providers)
    spend = spend_of(data, cfg, providers=providers, tiers=tiers)
    return build_report(data, spend, cfg, min_tokens=min_tokens, tiers=tiers)
