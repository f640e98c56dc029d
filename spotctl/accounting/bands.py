"""Cost per million tokens as a band across buckets, not a point. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal

from spotctl.money import MICROS_PER_USD

_CENT_FRACTION = Decimal("0.0001")


def usd_per_mtok(spend_micros: int, tokens: int) -> Decimal | None:
    """USD per million tokens, exact to 1/100 of a cent; None (undefined) when no tokens."""
    if tokens <= 0:
        return None
    value = Decimal(spend_micros) / MICROS_PER_USD * Decimal(1_000_000) / Decimal(tokens)
    return value.quantize(_CENT_FRACTION, rounding=ROUND_HALF_EVEN)


def weighted_percentile(values: Sequence[tuple[Decimal, int]], q: float) -> Decimal | None:
    """Token-weighted percentile: the smallest value whose cumulative weight reaches q of total.

    ``values`` are (value, weight) pairs; weights are output tokens. None when empty.
    """
    items = sorted((v, w) for v, w in values if w > 0)
    if not items:
        return None
    total = sum(w for _, w in items)
    threshold = Decimal(str(q)) * total
    running = 0
    for value, weight in items:
        running += weight
        if running >= threshold:
            return value
    return items[-1][0]


def band(values: Sequence[tuple[Decimal, int]]) -> dict[str, Decimal | None]:
    return {f"p{int(q * 100)}": weighted_percentile(values, q) for q in (0.1, 0.5, 0.9)}
