"""Cost for a window: one snapshot read from the ledger, then the pure accounting.

``cost``, ``price``, ``report``, ``compare`` and ``advise`` call these; each reads the ledger
exactly once (:func:`spotctl.ledger.queries.read_configured_window`, one transaction), so spend, tokens
and the fleet journal always describe the same moment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spotctl.accounting.compare import FixedCost, fully_loaded
from spotctl.accounting.economics import (
    OnDemandRate,
    combine_savings,
    interruption_tax_json,
    interruptions,
    observed_on_demand_rate_at,
    spot_savings,
    wakes,
)
from spotctl.accounting.report import CostReport, build_report
from spotctl.accounting.spend import SpendResult, spend_of
from spotctl.config import HyperstackTier
from spotctl.ledger import queries
from spotctl.money import usd_str

if TYPE_CHECKING:
    from spotctl.config import Config
    from spotctl.ledger.db import Ledger


# One snapshot of a window (the watched providers from the config), and the spend in it.
read_window = queries.read_configured_window


def spend_between(
    ledger: Ledger, start_ms: int, end_ms: int, cfg: Config, *,
    providers: set[str] | None = None, tiers: set[str] | None = None,
    bucket_ms: int | None = None,
) -> SpendResult:
    """Invoice-true spend in (start_ms, end_ms], with its observability: one snapshot read
    (spend only), then the pure :func:`spotctl.accounting.spend.spend_of`."""
    data = read_window(ledger, cfg, start_ms, end_ms, bucket_ms, providers=providers,
                       tokens=False, fleet=False)
    return spend_of(data, cfg, providers=providers, tiers=tiers)


def cost_report(
    ledger: Ledger, cfg: Config, start_ms: int, end_ms: int, *,
    bucket_s: int = 3600, min_tokens: int = 1000,
    tiers: set[str] | None = None, providers: set[str] | None = None, closures: bool = False,
    arrivals: bool = False,
) -> CostReport:
    """The cost report for (start, end]: buckets aligned to multiples of ``bucket_s``.
    ``closures``: also count the gate's refusals by reason (a scan of the window's requests);
    ``arrivals``: also read every request's arrival, so that ``advise_report`` can replay the
    same snapshot (the HTML report)."""
    if end_ms <= start_ms:
        raise ValueError("the window ends before it starts")
    data = read_window(ledger, cfg, start_ms, end_ms, bucket_s * 1000, providers=providers,
                       closures=closures, arrivals=arrivals)
    spend = spend_of(data, cfg, providers=providers, tiers=tiers)
    report = build_report(data, spend, cfg, min_tokens=min_tokens, tiers=tiers)
    add_spot_economics(report, cfg)
    report.extras["fully_loaded"] = fully_loaded(
        report.total.spend_micros, fixed_costs(cfg), end_ms - start_ms)
    return report


def fixed_costs(cfg: Config) -> list[FixedCost]:
    return [FixedCost(f.name, f.usd_per_month) for f in cfg.fixed_costs]


def local_flavor(cfg: Config, tier: str):
    """The on-demand flavor of a local cloud tier's price list (a tier configured with the
    ``-spot`` flavor gets its base), or None for any other tier."""
    tier_cfg = next((t for t in cfg.tiers if t.name == tier), None)
    prov = next((p for p in cfg.providers if tier_cfg and p.name == tier_cfg.provider), None)
    if not isinstance(tier_cfg, HyperstackTier) or prov is None or prov.kind != "localcloud" \
            or not tier_cfg.flavor:
        return None
    from spotctl.localcloud.model import FLAVORS, SPOT_SUFFIX

    return FLAVORS.get(tier_cfg.flavor.removesuffix(SPOT_SUFFIX))


def on_demand_rate(cfg: Config, data: queries.WindowData, tier: str) -> OnDemandRate:
    """The on-demand rate for the tier's flavor: the provider's own billed rate for an
    on-demand VM of the tier in the window (the newest, applied to the whole window: an
    approximation, said in the source), else the provider's price list where spotctl has
    one (the local cloud's flavors carry both rates, fixed), else unknown (said so)."""
    observed = observed_on_demand_rate_at(data, tier)
    if observed:
        from spotctl.clock import from_ms, iso

        return OnDemandRate(observed[1], "billed: the newest rate the provider billed an "
                                         f"on-demand VM of this tier in the window (at "
                                         f"{iso(from_ms(observed[0]))}), applied to every spot "
                                         "hour of the window: an approximation, the on-demand "
                                         "rate in force at each spot sample is not recorded")
    flavor = local_flavor(cfg, tier)
    if flavor is not None:
        return OnDemandRate(flavor.active_per_min * 60,
                            f"price list: local cloud flavor {flavor.name} on demand (a "
                            "fixed list: the rate in force at every spot sample)")
    tier_cfg = next((t for t in cfg.tiers if t.name == tier), None)
    prov = next((p for p in cfg.providers if tier_cfg and p.name == tier_cfg.provider), None)
    kind = prov.kind if prov is not None else "no provider"
    return OnDemandRate(None, f"unknown: no on-demand VM of tier {tier} billed in the window, "
                              f"and spotctl has no on-demand price list for {kind}")


def add_spot_economics(report: CostReport, cfg: Config) -> None:
    """Interruption tax and net spot savings (an estimate), per tier and in total."""
    data = report.data
    items = interruptions(data, report.spend, {t.name for t in report.tiers})
    savings = []
    for row in report.tiers:
        mine = [i for i in items if i.tier == row.name]
        row.extra["interruption_tax"] = interruption_tax_json(mine)
        sv = spot_savings(report.spend, row.name, on_demand_rate(cfg, data, row.name), mine)
        savings.append(sv)
        row.extra["spot_savings_estimate"] = sv.to_json()
    woken = wakes(data, report.spend, {t.name for t in report.tiers})
    for row in report.tiers:
        row.extra["wakes"] = [w.to_json() for w in woken if w.tier == row.name]
    report.extras["wakes"] = {"count": len(woken),
                              "spend_usd": usd_str(sum(w.spend_micros for w in woken)),
                              "requests_held": sum(len(w.held_waits_ms) for w in woken)}
    report.extras["interruption_tax"] = interruption_tax_json(items)
    report.extras["spot_savings_estimate"] = combine_savings(savings)


def add_summary(report: CostReport, cfg: Config) -> dict | None:
    """The closing sentences (one per question) into ``report.extras['summary']``; returns the
    hosted-API comparison used for the last one (None when the prices file is unusable)."""
    from spotctl.accounting.sentences import summary
    from spotctl.errors import SpotctlError
    from spotctl.services.economics import hosted_compare

    try:
        compared = hosted_compare(report, cfg)
    except SpotctlError as exc:  # a broken prices file must not break `cost`
        compared = None
        report.extras["summary_note"] = f"no API comparison: {exc.message}"
    report.extras["summary"] = summary(report, compared)
    return compared
