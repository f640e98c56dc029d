"""What spot really saves, what a wake costs: pure functions over one window's snapshot.

Invoice truth: every ``*_spend`` below is a growth of the providers' running totals (the
snapshot keeps a sample boundary at every fleet event, so spend between two events is exact at
sample times). Anything else (a counterfactual on-demand price) is an *estimate*, labelled so
in the JSON, and never added to spend.

* Interruption tax: for each ``preempted`` journal event, the time until the tier serves again
  (the next ``ready``, ``woke`` or ``returned_to_spot``), the tier's spend in that time and the
  requests refused or failed meanwhile.
* Net spot savings (estimate): the tier's spot machine time in a running state priced at the
  provider's on-demand rate for the same flavor, minus everything billed as spot, minus the
  interruption tax. Negative: spot lost money in this window. The on-demand rate is one rate
  for the whole window (the newest one billed for an on-demand VM of the tier, else a fixed
  price list), not the rate in force at each spot sample, which no provider reports for a
  machine not running: the JSON's ``on_demand_rate_source`` says which.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

from spotctl.accounting.capacity import SPOT
from spotctl.accounting.series import series_spend
from spotctl.accounting.spend import SpendResult
from spotctl.clock import from_ms, iso
from spotctl.money import usd_str

SERVING_EVENTS = frozenset({"ready", "woke", "returned_to_spot"})


def tier_spend(spend: SpendResult, tier: str, lo_ms: int, hi_ms: int, *,
               vms_only: bool = False) -> int:
    """The tier's invoice-true spend in (lo, hi] (exact at sample times)."""
    if hi_ms <= lo_ms:
        return 0
    total = 0
    for r in spend.series:
        if r.data.tier != tier or (vms_only and r.data.resource_kind != "vm"):
            continue
        total += series_spend(r.data.points, lo_ms, hi_ms, created_ms=r.data.created_ms,
                              counts_from_creation=r.data.resource_kind != "account").micros
    return total


@dataclass
class Interruption:
    tier: str
    preempted_ms: int
    serving_again_ms: int | None  # None: not serving again by the window's end
    until_ms: int  # serving again, or the window's end
    spend_micros: int
    requests_refused: int

    @property
    def minutes(self) -> Decimal:
        return (Decimal(self.until_ms - self.preempted_ms) / 60_000).quantize(Decimal("0.1"))

    def to_json(self) -> dict:
        return {"tier": self.tier, "preempted": iso(from_ms(self.preempted_ms)),
                "serving_again": (iso(from_ms(self.serving_again_ms))
                                  if self.serving_again_ms is not None else None),
                "minutes": str(self.minutes), "spend_usd": usd_str(self.spend_micros),
                "requests_refused": self.requests_refused}


def interruptions(data, spend: SpendResult, tiers: set[str] | None = None) -> list[Interruption]:
    from spotctl.ledger.queries import preemption_intervals

    out = []
    for tier, lo, until in preemption_intervals(data.events, data.end_ms):
        if tiers is not None and tier not in tiers:
            continue
        back = until if any(e.ts_ms == until and e.tier == tier and e.event in SERVING_EVENTS
                            for e in data.events) else None
        refused = sum(1 for ms, t, _status in data.refusals
                      if lo <= ms <= until and t in (tier, ""))
        out.append(Interruption(tier, lo, back, until, tier_spend(spend, tier, lo, until),
                                refused))
    return out


def interruption_tax_json(items: Sequence[Interruption]) -> dict:
    return {
        "preemptions": len(items),
        "minutes": str(sum((i.minutes for i in items), Decimal(0))),
        "spend_usd": usd_str(sum(i.spend_micros for i in items)),
        "requests_refused": sum(i.requests_refused for i in items),
        "events": [i.to_json() for i in items],
    }


@dataclass(frozen=True)
class OnDemandRate:
    micros_per_h: int | None
    source: str  # where the rate comes from, or why it is unknown


@dataclass
class SpotSavings:
    """An estimate: never part of spend."""

    tier: str
    spot_ms: int = 0
    spot_micros: int = 0  # invoice-true spend billed as spot
    rate: OnDemandRate = field(default_factory=lambda: OnDemandRate(None, "unknown"))
    tax_micros: int = 0

    @property
    def on_demand_equivalent_micros(self) -> int | None:
        if self.rate.micros_per_h is None:
            return None
        value = Decimal(self.rate.micros_per_h) * self.spot_ms / 3_600_000
        return int(value.quantize(Decimal(1), ROUND_HALF_EVEN))

    @property
    def gross_micros(self) -> int | None:
        eq = self.on_demand_equivalent_micros
        return None if eq is None else eq - self.spot_micros

    @property
    def net_micros(self) -> int | None:
        gross = self.gross_micros
        return None if gross is None else gross - self.tax_micros

    def to_json(self) -> dict:
        def money(v: int | None) -> str | None:
            return None if v is None else usd_str(v)

        return {
            "estimate": True,
            "tier": self.tier,
            "spot_hours": str((Decimal(self.spot_ms) / 3_600_000).quantize(Decimal("0.0001"))),
            "spot_spend_usd": usd_str(self.spot_micros),
            "on_demand_usd_per_h": money(self.rate.micros_per_h),
            "on_demand_rate_source": self.rate.source,
            "on_demand_equivalent_usd": money(self.on_demand_equivalent_micros),
            "interruption_tax_usd": usd_str(self.tax_micros),
            "gross_savings_usd": money(self.gross_micros),
            "net_savings_usd": money(self.net_micros),
        }


def observed_on_demand_rate_at(data, tier: str) -> tuple[int, int] | None:
    """(sample time, rate) of the newest on-demand rate the provider billed a running VM of
    this tier (its own figure, from the billing samples), if any in the window.

    An approximation, said wherever it is used: it prices every spot hour of the window, while
    "the on-demand rate for the same flavor at that time" is only known while an on-demand VM
    of the tier runs (usually not while the spot one does)."""
    best: tuple[int, int] | None = None
    for s in data.series:
        if s.tier != tier or s.resource_kind != "vm":
            continue
        for ms, (state, spot, rate) in s.meta.items():
            running = spot is False and rate and (state or "").lower() in ("active", "running")
            if running and (best is None or ms > best[0]):
                best = (ms, rate)
    return best


def spot_savings(spend: SpendResult, tier: str, rate: OnDemandRate,
                 tax: Sequence[Interruption]) -> SpotSavings:
    out = SpotSavings(tier, rate=rate)
    for r in spend.series:
        if r.data.tier != tier:
            continue
        # machine time billed as spot in a running state (booting or restoring may not bill)
        out.spot_ms += sum(ms for lab, ms in r.spend.ms_by_label().items()
                           if lab.category == SPOT and lab.serving)
        out.spot_micros += sum(m for lab, m in r.spend.by_label().items()
                               if lab.category == SPOT)
    out.tax_micros = sum(i.spend_micros for i in tax if i.tier == tier)
    return out


def combine_savings(items: Sequence[SpotSavings]) -> dict:
    """The window's total: unknown (null) as soon as one tier with spot time has no rate."""
    known = all(s.rate.micros_per_h is not None for s in items if s.spot_ms > 0)
    total_eq = sum(s.on_demand_equivalent_micros or 0 for s in items)
    spot = sum(s.spot_micros for s in items)
    tax = sum(s.tax_micros for s in items)
    spot_ms = sum(s.spot_ms for s in items)
    return {
        "estimate": True,
        "spot_hours": str((Decimal(spot_ms) / 3_600_000).quantize(Decimal("0.0001"))),
        "spot_spend_usd": usd_str(spot),
        "on_demand_equivalent_usd": usd_str(total_eq) if known else None,
        "interruption_tax_usd": usd_str(tax),
        "gross_savings_usd": usd_str(total_eq - spot) if known else None,
        "net_savings_usd": usd_str(total_eq - spot - tax) if known else None,
        "unknown_rates": [f"{s.tier}: {s.rate.source}" for s in items
                          if s.spot_ms > 0 and s.rate.micros_per_h is None],
    }


@dataclass
class Wake:
    """One wake of a tier: its phases, what was billed meanwhile, the requests it held."""

    tier: str
    waking_ms: int
    woke_ms: int | None  # None: not woken by the window's end (or it failed)
    until_ms: int
    phases: dict[str, float]
    spend_micros: int
    held_waits_ms: list[int]

    @property
    def seconds(self) -> float:
        return (self.until_ms - self.waking_ms) / 1000

    def to_json(self) -> dict:
        waits = self.held_waits_ms
        return {
            "tier": self.tier, "waking": iso(from_ms(self.waking_ms)),
            "woke": iso(from_ms(self.woke_ms)) if self.woke_ms is not None else None,
            "seconds": round(self.seconds, 1), "phases": self.phases,
            "spend_usd": usd_str(self.spend_micros), "requests_held": len(waits),
            "max_wait_s": round(max(waits) / 1000, 1) if waits else None,
            "mean_wait_s": round(sum(waits) / len(waits) / 1000, 1) if waits else None,
        }


def wakes(data, spend: SpendResult, tiers: set[str] | None = None) -> list[Wake]:
    from spotctl.ledger.queries import wake_intervals

    out = []
    woke_events = {(e.tier, e.ts_ms): e for e in data.events if e.event in ("woke", "ready")}
    for tier, lo, hi in wake_intervals(data.events, data.end_ms):
        if tiers is not None and tier not in tiers:
            continue
        ev = woke_events.get((tier, hi))
        held = data.held.get((tier, lo), [])
        out.append(Wake(tier, lo, hi if ev is not None else None, hi,
                        dict(ev.phases) if ev is not None else {},
                        tier_spend(spend, tier, lo, hi), [hi - t for t in held]))
    return out
