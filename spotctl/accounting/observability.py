"""How much of a window the providers' billing actually covered. Pure functions.

Coverage comes from successful polls: between two successful polls of a provider more than
``gap_after`` apart, spend was not observed minute by minute (a *gap*; the cumulative totals
still make the window's spend exact once billing is back). When the newest successful poll is
older than ``stale_after`` at the window's end, the tail is *dark*: spend after it is unknown,
so the window's spend is only a lower bound, "known up to T".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

OK, DEGRADED, LOST = "ok", "degraded", "lost"
_RANK = {OK: 0, DEGRADED: 1, LOST: 2}


@dataclass
class DarkInterval:
    start_ms: int
    end_ms: int
    provider: str
    kind: str  # gap | dark_tail | never_polled
    reason: str = ""


@dataclass
class Coverage:
    status: str = OK
    known_until_ms: int | None = None  # spend is known up to here (None: nothing known)
    last_sample_ms: int | None = None
    intervals: list[DarkInterval] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def dark_seconds(self) -> int:
        return union_ms([(i.start_ms, i.end_ms) for i in self.intervals]) // 1000


def worse(a: str, b: str) -> str:
    return a if _RANK[a] >= _RANK[b] else b


def union_ms(spans: Sequence[tuple[int, int]]) -> int:
    total, cur_s, cur_e = 0, None, None
    for s, e in sorted(spans):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def provider_coverage(
    provider: str,
    ok_times: Sequence[int],
    start_ms: int,
    end_ms: int,
    *,
    gap_after_ms: int,
    stale_after_ms: int,
    failures: Sequence[tuple[int, str, str | None]] = (),
) -> Coverage:
    """Coverage of one provider over (start, end] from its successful poll times (sorted; may
    begin with the last one at or before ``start``)."""
    cov = Coverage()

    def reason(a: int, b: int) -> str:
        kinds = sorted({f[1] for f in failures if a < f[0] <= b})
        return ", ".join(kinds) if kinds else "no poll"

    if not ok_times:
        cov.status = LOST
        cov.intervals.append(DarkInterval(start_ms, end_ms, provider, "never_polled",
                                          reason(start_ms, end_ms)))
        cov.reasons.append(f"{provider}: no successful billing poll")
        return cov
    prev = ok_times[0]
    if prev > start_ms and prev - start_ms > gap_after_ms:
        cov.status = DEGRADED
        cov.intervals.append(DarkInterval(start_ms, prev, provider, "gap", "before first poll"))
    for t in ok_times[1:]:
        if t - prev > gap_after_ms:
            a, b = max(prev, start_ms), min(t, end_ms)
            if b > a:
                cov.status = worse(cov.status, DEGRADED)
                cov.intervals.append(DarkInterval(a, b, provider, "gap", reason(prev, t)))
        prev = t
    last = ok_times[-1]
    cov.last_sample_ms = last
    if end_ms - last > stale_after_ms:
        cov.status = LOST
        cov.known_until_ms = last
        cov.intervals.append(DarkInterval(max(last, start_ms), end_ms, provider, "dark_tail",
                                          reason(last, end_ms)))
        from spotctl.clock import from_ms, iso

        cov.reasons.append(f"{provider}: billing unknown since {iso(from_ms(last))} (the last "
                           "successful poll)")
    else:
        cov.known_until_ms = end_ms
    if cov.status == DEGRADED:
        cov.reasons.append(f"{provider}: gaps in billing samples")
    return cov


def combine(coverages: Sequence[Coverage], start_ms: int, end_ms: int) -> Coverage:
    """The window's coverage over several providers: the worst status, the earliest known-until,
    the union of dark time. No provider at all means nothing is known (lost)."""
    if not coverages:
        return Coverage(status=LOST, known_until_ms=None, intervals=[
            DarkInterval(start_ms, end_ms, "", "never_polled", "no billing provider")],
            reasons=["no billing provider configured or polled"])
    out = Coverage()
    known: list[int | None] = []
    for cov in coverages:
        out.status = worse(out.status, cov.status)
        out.intervals.extend(cov.intervals)
        out.reasons.extend(cov.reasons)
        known.append(cov.known_until_ms)
        if cov.last_sample_ms is not None:
            out.last_sample_ms = max(out.last_sample_ms or 0, cov.last_sample_ms)
    out.known_until_ms = None if any(k is None for k in known) else min(known)  # type: ignore[type-var]
    return out
