"""Invoice-true spend of one cumulative series. Pure functions, no I/O.

A series is a provider's running total for one resource (or the account), sampled over time.
Spend over a window is the growth of that total between the last sample at or before the
window's start and the last sample at or before its end. Never rate × time, never interpolation.

A decrease (a provider correction, a transient under-report or a counter reset) is an anomaly:
it is never a refund. The series is held at its high-water mark: spend resumes only once the
provider's total exceeds its previous high, so a total that dips and recovers is neither
refunded nor counted twice. (A genuine counter reset therefore pauses spend until the total
passes the old high: the report flags the anomaly, and the figure is a lower bound.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

Point = tuple[int, int]  # (observed_ms, cumulative_micros)


@dataclass
class SeriesSpend:
    micros: int = 0
    by_bucket: dict[int, int] = field(default_factory=dict)  # bucket index -> micros
    decreases: list[tuple[int, int, int]] = field(default_factory=list)  # (ms, before, after)


def bucket_of(ms: int, start_ms: int, bucket_ms: int) -> int:
    """Bucket index of a sample: bucket k holds samples in (start + k·w, start + (k+1)·w]."""
    return max(0, (ms - start_ms - 1) // bucket_ms)


def series_spend(
    points: Sequence[Point],
    start_ms: int,
    end_ms: int,
    *,
    created_ms: int | None = None,
    counts_from_creation: bool = True,
    bucket_ms: int | None = None,
) -> SeriesSpend:
    """Spend of one series over (start_ms, end_ms].

    ``points`` are sorted by time and may include samples outside the window (only the last one
    at or before ``start_ms`` matters there). When no sample precedes the window, the series
    starts from zero if its cumulative counts from the resource's creation and the resource was
    created inside the window; otherwise it starts from its first sample in the window.
    ``points`` may be a compressed series (see ``ledger.queries``) as long as it keeps both sides
    of every decrease: the result is the same as for the full series.
    """
    out = SeriesSpend()
    width = bucket_ms or max(1, end_ms - start_ms)
    prev: int | None = None  # the previous sample's value
    high: int | None = None  # the high-water mark
    for ms, cum in points:
        if ms <= start_ms:
            prev = cum
            high = cum if high is None else max(high, cum)
            continue
        if ms > end_ms:
            break
        if prev is None or high is None:
            created_inside = created_ms is not None and start_ms <= created_ms <= end_ms
            if counts_from_creation and created_inside:
                prev = high = 0
            else:
                prev = high = cum
                continue
        if cum < prev:
            out.decreases.append((ms, prev, cum))
        if cum > high:
            delta = cum - high
            out.micros += delta
            k = bucket_of(ms, start_ms, width)
            out.by_bucket[k] = out.by_bucket.get(k, 0) + delta
            high = cum
        prev = cum
    return out
