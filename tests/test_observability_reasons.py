"""Lost observability reads "unknown since T" with T a time people can read, never a number."""

from __future__ import annotations

from spotctl.accounting.observability import LOST, provider_coverage
from spotctl.clock import parse_iso, to_ms


def test_a_dark_tail_says_unknown_since_an_iso_time():
    last = to_ms(parse_iso("2026-11-25T02:01:02Z"))
    cov = provider_coverage("hs", [last], last - 3_600_000, last + 3_600_000,
                            gap_after_ms=150_000, stale_after_ms=180_000, failures=[])
    assert cov.status == LOST and cov.known_until_ms == last
    assert any("hs: billing unknown since 2026-11-25T02:01:02" in r for r in cov.reasons), \
        cov.reasons
    assert not any(str(last) in r for r in cov.reasons)  # not the epoch milliseconds
