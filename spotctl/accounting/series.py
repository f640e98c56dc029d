"""Invoice-true spend of one cumulative series. Pure functions, no I/O.

A series is a provider's running total for one resource (or the account), sampled over time.
Spend over a window is the growth of that total between the last sample at or before the
window's start and the last sample at or before its end. Never rate × time, never interpolation.

A decrease (a provider correction, a transient under-report or a counter reset) is an anomaly:
it is never a refund. The series is held at its high-water mark: spend resumes only once the
provider's total exceeds its previous high, so a total that dips and recovers is neither
refunded nor counted twice. (A genuine counter reset therefore pauses spend until the total
passes the old high: the report flags the anomaly, and the figure is a lower bound.)

Labels: each sample may carry a label (for example the capacity the resource billed as: spot,
on-demand, hibernated). The growth between two samples is the provider's meter running in the
state that held *from the earlier sample on*, so it is booked under the earlier sample's label
(the first growth of a resource created inside the window, from zero, under its first sample's).
The time between two samples is booked the same way. Labels only split the exact total: the
parts always sum to it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

Point = tuple[int, int]  # (observed_ms, cumulative_micros)


@dataclass
class SeriesSpend:
    micros: int = 0
    by_bucket: dict[int, int] = field(default_factory=dict)  # bucket start ms -> micros
    decreases: list[tuple[int, int, int]] = field(default_factory=list)  # (ms, before, after)
    # with labels: micros and elapsed ms per (bucket start, label)
    by_bucket_label: dict[tuple[int, Hashable], int] = field(default_factory=dict)
    ms_by_bucket_label: dict[tuple[int, Hashable], int] = field(default_factory=dict)
    # with labels: the (lo, hi, label) intervals between samples, clipped to the window
    spans: list[tuple[int, int, Hashable]] = field(default_factory=list)
    # the first sample, when the series started from it (no anchor, not counted from zero)
    first_ms: int | None = None

    def by_label(self) -> dict[Hashable, int]:
        out: dict[Hashable, int] = {}
        for (_b, label), v in self.by_bucket_label.items():
            out[label] = out.get(label, 0) + v
        return out

    def ms_by_label(self) -> dict[Hashable, int]:
        out: dict[Hashable, int] = {}
        for (_b, label), v in self.ms_by_bucket_label.items():
            out[label] = out.get(label, 0) + v
        return out


def split_by_bucket(lo: int, hi: int, bucket_ms: int) -> list[tuple[int, int]]:
    """The interval (lo, hi] cut at aligned bucket boundaries: [(bucket start, ms), ...]."""
    out = []
    t = lo
    while t < hi:
        b = t - t % bucket_ms
        nxt = min(hi, b + bucket_ms)
        out.append((b, nxt - t))
        t = nxt
    return out


def series_spend(
    points: Sequence[Point],
    start_ms: int,
    end_ms: int,
    *,
    created_ms: int | None = None,
    counts_from_creation: bool = True,
    from_zero: bool | None = None,
    bucket_ms: int | None = None,
    labels: Sequence[Hashable] | None = None,
) -> SeriesSpend:
    """Spend of one series over (start_ms, end_ms].

    ``points`` are sorted by time and may include samples outside the window (only the last one
    at or before ``start_ms`` matters there). When no sample precedes the window, the series
    starts from zero if ``from_zero`` says so, or (when ``from_zero`` is None) if its cumulative
    counts from the resource's creation and the resource was created inside the window;
    otherwise it starts from its first sample in the window. ``points`` may be a compressed
    series (see ``ledger.queries``) as long as it keeps both sides of every decrease (and of
    every label change): the result is the same as for the full series.

    Buckets are aligned to multiples of ``bucket_ms`` (one bucket, keyed ``start_ms``, when
    None). ``labels`` (parallel to ``points``) split the spend and the elapsed time.
    """
    out = SeriesSpend()
    # The loop below runs once per point (a month of hourly buckets: ~750 per series), so it
    # is written for speed: locals, no helper calls on the common path.
    by_bucket = out.by_bucket
    by_bucket_label = out.by_bucket_label
    ms_by_bucket_label = out.ms_by_bucket_label
    spans_append = out.spans.append
    decreases_append = out.decreases.append
    width = bucket_ms

    prev: int | None = None  # the previous sample's value
    prev_ms: int | None = None
    prev_label: Hashable = None
    high: int | None = None  # the high-water mark
    for i, (ms, cum) in enumerate(points):
        label = labels[i] if labels is not None else None
        if ms <= start_ms:
            prev, prev_ms, prev_label = cum, ms, label
            high = cum if high is None else max(high, cum)
            continue
        if ms > end_ms:
            break
        if prev is None or high is None:
            zero = from_zero
            if zero is None:
                zero = (counts_from_creation and created_ms is not None
                        and start_ms <= created_ms <= end_ms)
            if zero:
                prev = high = 0
                prev_ms = created_ms if created_ms is not None and created_ms < ms else start_ms
                prev_label = label
            else:
                out.first_ms = ms
                prev, prev_ms, prev_label, high = cum, ms, label, cum
                continue
        if labels is not None and prev_ms is not None:
            # the time from the previous sample to this one, under the previous label,
            # clipped to the window and cut at bucket boundaries
            lo = prev_ms if prev_ms > start_ms else start_ms
            if ms > lo:  # ms <= end_ms here
                spans_append((lo, ms, prev_label))
                if width is None:
                    key = (start_ms, prev_label)
                    ms_by_bucket_label[key] = ms_by_bucket_label.get(key, 0) + ms - lo
                elif ms - (lo - lo % width) <= width:  # one bucket
                    key = (lo - lo % width, prev_label)
                    ms_by_bucket_label[key] = ms_by_bucket_label.get(key, 0) + ms - lo
                else:
                    for b, part in split_by_bucket(lo, ms, width):
                        key = (b, prev_label)
                        ms_by_bucket_label[key] = ms_by_bucket_label.get(key, 0) + part
        if cum < prev:
            decreases_append((ms, prev, cum))
        if cum > high:
            delta = cum - high
            out.micros += delta
            k = start_ms if width is None else (ms - 1) // width * width
            by_bucket[k] = by_bucket.get(k, 0) + delta
            if labels is not None:
                key = (k, prev_label)
                by_bucket_label[key] = by_bucket_label.get(key, 0) + delta
            high = cum
        prev, prev_ms, prev_label = cum, ms, label
    return out
