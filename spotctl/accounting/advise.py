"""``spotctl advise``: which idle timeout and capacity to run, by replaying real arrivals. Pure.

The replay takes one tier's window as it happened — its busy periods (the union of its
requests' [start, end]) and every request's arrival — and asks what each policy would have
billed, with the figures this window measured:

* idle timeouts {5, 10, 15, 30, 60 min, never} (plus the configured one) × capacity
  {spot-first, on-demand};
* a gap between busy periods longer than the timeout costs ``timeout`` minutes of serving, then
  hibernated time, then a wake (its measured duration, billed at the measured waking cost);
  requests arriving within a wake wait for it (those waiting over 10 s are counted);
* serving bills at the rate measured while serving (spend ÷ serving time, per capacity; the
  on-demand rate when no on-demand time was billed comes from the spot-savings estimate's
  source); hibernated time at the measured hibernated rate; storage as billed (no policy
  changes it); spot-first adds the interruption tax measured per spot-serving hour.

Every prediction is an *estimate*. The backtest compares the row matching the current
configuration with the window's actual spend; its error says how far to trust the others.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

from spotctl.accounting.bands import usd_per_mtok
from spotctl.money import fmt_usd, usd_str

TIMEOUTS_MIN: tuple[int | None, ...] = (5, 10, 15, 30, 60, None)
CAPACITIES = ("spot-first", "on-demand")
HELD_OVER_MS = 10_000


@dataclass(frozen=True)
class Rates:
    """Micro-dollars per hour (None: unknown), and the measured wake."""

    serving_spot: int | None
    serving_on_demand: int | None
    hibernated: int | None
    waking: int  # billed while waking, per hour (0 when the provider bills nothing then)
    wake_ms: int | None  # measured mean wake duration (None: no wake in the window)
    storage_micros: int  # the window's storage spend (the same under every policy)
    tax_per_spot_hour: int  # interruption tax per spot-serving hour (micros)
    notes: tuple[str, ...] = ()


@dataclass
class Replay:
    idle_minutes: int | None  # None: never hibernate
    capacity: str
    serving_ms: int = 0
    hibernated_ms: int = 0
    waking_ms: int = 0
    wakes: int = 0
    held_over_10s: int = 0
    spend_micros: int | None = None
    current: bool = False
    output_tokens: int = 0
    missing: str | None = None  # why the spend is unknown

    @property
    def usd_per_mtok(self) -> Decimal | None:
        if self.spend_micros is None:
            return None
        return usd_per_mtok(self.spend_micros, self.output_tokens)

    def label(self) -> str:
        t = "never" if self.idle_minutes is None else f"{self.idle_minutes} min"
        return f"{t}, {self.capacity}"

    def to_json(self) -> dict:
        per = self.usd_per_mtok
        return {
            "idle_minutes": self.idle_minutes, "capacity": self.capacity, "estimate": True,
            "current": self.current,
            "predicted_spend_usd": None if self.spend_micros is None else usd_str(
                self.spend_micros),
            "usd_per_mtok_output": None if per is None else str(per),
            "wakes": self.wakes, "requests_held_over_10s": self.held_over_10s,
            "serving_hours": str((Decimal(self.serving_ms) / 3_600_000).quantize(
                Decimal("0.01"))),
            "hibernated_hours": str((Decimal(self.hibernated_ms) / 3_600_000).quantize(
                Decimal("0.01"))),
            "unknown_because": self.missing,
        }


def _micros(rate_per_h: int, ms: int) -> Decimal:
    return Decimal(rate_per_h) * ms / 3_600_000


def replay(islands: Sequence[tuple[int, int]], arrivals: Sequence[int], start_ms: int,
           end_ms: int, idle_minutes: int | None, capacity: str, rates: Rates,
           output_tokens: int, *, serving_at_start: bool = True) -> Replay:
    """One policy over the window. ``islands``: sorted, disjoint busy periods; ``arrivals``:
    sorted request start times."""
    out = Replay(idle_minutes, capacity, output_tokens=output_tokens)
    timeout = None if idle_minutes is None else idle_minutes * 60_000
    wake = rates.wake_ms or 0
    serving = serving_at_start or timeout is None
    t = start_ms
    for lo, hi in islands:
        lo, hi = max(lo, start_ms), min(hi, end_ms)
        if hi <= lo:
            continue
        gap = lo - t
        if serving:
            if timeout is None or gap <= timeout:
                out.serving_ms += gap
            else:
                out.serving_ms += timeout
                out.hibernated_ms += gap - timeout
                serving = False
        else:
            out.hibernated_ms += gap
        if not serving:  # the first request of this busy period wakes the tier
            out.wakes += 1
            out.waking_ms += wake
            first = bisect.bisect_left(arrivals, lo)
            last = bisect.bisect_right(arrivals, lo + wake - HELD_OVER_MS)
            out.held_over_10s += max(0, last - first)
            serving = True
        out.serving_ms += hi - lo
        t = hi
    tail = end_ms - t
    if serving and (timeout is None or tail <= timeout):
        out.serving_ms += tail
    elif serving:
        out.serving_ms += timeout
        out.hibernated_ms += tail - timeout  # type: ignore[operator]
    else:
        out.hibernated_ms += tail
    # a wake replaces serving time in the busy period it opens (the machine is restoring)
    out.serving_ms = max(0, out.serving_ms - out.waking_ms)
    serving_rate = rates.serving_spot if capacity == "spot-first" else rates.serving_on_demand
    if serving_rate is None:
        out.missing = f"no {capacity} serving rate measured or known"
        return out
    hib_rate = rates.hibernated
    if hib_rate is None and out.hibernated_ms > 0:
        out.missing = "no hibernated rate measured or known"
        return out
    total = (_micros(serving_rate, out.serving_ms) + _micros(hib_rate or 0, out.hibernated_ms)
             + _micros(rates.waking, out.waking_ms) + rates.storage_micros)
    if capacity == "spot-first":
        total += Decimal(rates.tax_per_spot_hour) * out.serving_ms / 3_600_000
    out.spend_micros = int(total.quantize(Decimal(1), ROUND_HALF_EVEN))
    return out


@dataclass
class Advice:
    tier: str
    rows: list[Replay] = field(default_factory=list)
    actual_micros: int = 0
    current: Replay | None = None
    rates: Rates | None = None

    @property
    def backtest_error(self) -> Decimal | None:
        """(predicted − actual) ÷ actual for the current configuration's row."""
        cur = self.current
        if cur is None or cur.spend_micros is None or self.actual_micros <= 0:
            return None
        return (Decimal(cur.spend_micros - self.actual_micros) / self.actual_micros).quantize(
            Decimal("0.0001"), ROUND_HALF_EVEN)

    @property
    def best(self) -> Replay | None:
        known = [r for r in self.rows if r.spend_micros is not None]
        if not known:
            return None
        return min(known, key=lambda r: (r.spend_micros, r.held_over_10s, r.wakes))

    def sentence(self) -> str:
        best, cur = self.best, self.current
        if best is None:
            return (f"{self.tier}: no policy can be priced from this window (no serving rate "
                    "was measured).")
        if cur is None or cur.spend_micros is None:
            return (f"{self.tier}: the cheapest replayed policy is idle timeout {best.label()} "
                    f"at {fmt_usd(best.spend_micros)} (estimate).")
        if best is cur or best.spend_micros >= cur.spend_micros:
            return (f"{self.tier}: keep idle timeout {cur.label()}: no replayed policy bills "
                    f"less ({fmt_usd(cur.spend_micros)} predicted for this window).")
        saved = cur.spend_micros - best.spend_micros
        more_wakes = best.wakes - cur.wakes
        more_held = best.held_over_10s - cur.held_over_10s
        cost = []
        if more_wakes > 0:
            cost.append(f"{more_wakes} more wake{'s' if more_wakes != 1 else ''}")
        if more_held > 0:
            cost.append(f"{more_held} more request{'s' if more_held != 1 else ''} held over 10 s")
        trade = (" at the cost of " + " and ".join(cost)) if cost else " with no more waiting"
        return (f"{self.tier}: idle timeout {best.label()} would have billed {fmt_usd(saved)} "
                f"less than the current {cur.label()} in this window (estimate){trade}.")

    def to_json(self) -> dict:
        err = self.backtest_error
        best = self.best
        r = self.rates
        return {
            "tier": self.tier,
            "actual_spend_usd": usd_str(self.actual_micros),
            "backtest": {
                "policy": None if self.current is None else self.current.label(),
                "predicted_spend_usd": (None if self.current is None
                                        or self.current.spend_micros is None
                                        else usd_str(self.current.spend_micros)),
                "actual_spend_usd": usd_str(self.actual_micros),
                "error": None if err is None else str(err),
            },
            "measured": None if r is None else {
                "serving_spot_usd_per_h": None if r.serving_spot is None else usd_str(
                    r.serving_spot),
                "serving_on_demand_usd_per_h": None if r.serving_on_demand is None else usd_str(
                    r.serving_on_demand),
                "hibernated_usd_per_h": None if r.hibernated is None else usd_str(r.hibernated),
                "waking_usd_per_h": usd_str(r.waking),
                "wake_seconds": None if r.wake_ms is None else round(r.wake_ms / 1000, 1),
                "storage_usd": usd_str(r.storage_micros),
                "interruption_tax_usd_per_spot_hour": usd_str(r.tax_per_spot_hour),
                "notes": list(r.notes),
            },
            "recommendation": None if best is None else best.label(),
            "sentence": self.sentence(),
            "policies": [row.to_json() for row in self.rows],
        }


def advise_tier(tier: str, islands, arrivals, start_ms: int, end_ms: int, rates: Rates,
                output_tokens: int, actual_micros: int, current_idle: int | None,
                current_capacity: str, serving_at_start: bool = True) -> Advice:
    advice = Advice(tier, actual_micros=actual_micros, rates=rates)
    timeouts = list(TIMEOUTS_MIN)
    if current_idle not in timeouts:
        timeouts.insert(-1, current_idle)
        timeouts = [*sorted(t for t in timeouts if t is not None), None]
    cap_now = "on-demand" if current_capacity == "on-demand" else "spot-first"
    for cap in CAPACITIES:
        for t in timeouts:
            row = replay(islands, arrivals, start_ms, end_ms, t, cap, rates, output_tokens,
                         serving_at_start=serving_at_start)
            if t == current_idle and cap == cap_now:
                row.current = True
                advice.current = row
            advice.rows.append(row)
    return advice
