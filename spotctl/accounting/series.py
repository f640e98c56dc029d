"""Invoice-true spend of one cumulative series. Pure functions, no I/O.

A series is a provider's running total for one resource (or the account), sampled over time.
Spend over a window is the sum of the series' increases between the last sample at or before
the window's start and the last sample at or before its end. A decrease (a provider correction
or a counter reset) is an anomaly: it contributes nothing (never a refund) and the series
re-bases from the new value. Never rate × time, never interpolation.
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
    prev: int | None = None
    for ms, cum in points:
        if ms <= start_ms:
            prev = cum
            continue
        if ms > end_ms:
            break
        if prev is None:
            created_inside = created_ms is not None and start_ms < created_ms <= end_ms
            if counts_from_creation and created_inside:
                prev = 0
            else:
                prev = cum
                continue
        delta = cum - prev
        if delta > 0:
            out.micros += delta
            k = bucket_of(ms, start_ms, width)
            out.by_bucket[k] = out.by_bucket.get(k, 0) + delta
        elif delta < 0:
            out.decreases.append((ms, prev, cum))
        prev = cum
    return out
