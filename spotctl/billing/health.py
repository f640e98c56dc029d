"""Billing health per provider, derived only from the ledger (so every process agrees).

- ``fresh``: the last successful poll is recent and the last attempt did not fail for long;
- ``stale``: no successful poll for ``stale_after_s`` and no recorded failure (the poller stopped);
- ``failing``: polls are failing (the last attempt failed, and no success for ``gap_after_s``);
- ``regressed``: the newest poll reported a running total lower than before (an anomaly; spend
  is still known, the decrease is not counted);
- ``suspect``: the newest successful poll (by insertion order) is stamped more than
  ``[gateway] clock_skew_s`` in the future: the clocks disagree (this host's clock stepped back,
  or the poller's host runs ahead), so its age cannot be known and spend read "as of now" would
  miss samples. The gate closes on the same condition; ``last_good_ahead_s`` says by how much;
- ``never``: the provider was never polled.

The gateway's gate calls this every couple of seconds: a few indexed lookups per provider.
"""

from __future__ import annotations

from dataclasses import dataclass

from spotctl.config import Config
from spotctl.ledger.billing_reads import RateMismatch, health_facts
from spotctl.ledger.db import Ledger
from spotctl.ledger.usage import newest_ok_polls

FRESH, STALE, FAILING, REGRESSED, NEVER = "fresh", "stale", "failing", "regressed", "never"
SUSPECT = "suspect"
KNOWN_SPEND = {FRESH, REGRESSED}  # statuses under which spend is still known


@dataclass(frozen=True)
class ProviderHealth:
    provider: str
    status: str
    last_good_ms: int | None
    last_attempt_ms: int | None
    last_error: str | None
    # price truth: the newest `rate_mismatch` since the last good poll (spend is still known)
    rate_mismatch: RateMismatch | None = None
    # ``suspect``: how far ahead of this host's clock the newest successful poll is stamped (ms)
    ahead_ms: int | None = None

    def to_json(self) -> dict:
        from spotctl.clock import from_ms, iso

        def t(ms: int | None) -> str | None:
            return None if ms is None else iso(from_ms(ms))

        mm = self.rate_mismatch
        return {"provider": self.provider, "status": self.status,
                "last_good_sample_at": t(self.last_good_ms),
                "last_attempt_at": t(self.last_attempt_ms), "last_error": self.last_error,
                "last_good_ahead_s": None if self.ahead_ms is None else self.ahead_ms // 1000,
                "rate_mismatch": None if mm is None else {
                    "resource_id": mm.resource_id, "at": t(mm.observed_ms),
                    "quoted_usd_per_hour": f"{mm.quoted_micros_per_h / 1e6:.6f}",
                    "billed_usd_per_hour": f"{mm.billed_micros_per_h / 1e6:.6f}",
                    "off_pct": round(mm.off_pct, 2)}}


def provider_health(ledger: Ledger, cfg: Config, now_ms: int) -> list[ProviderHealth]:
    out = []
    # each provider's newest successful poll by insertion order (as the gate's PollWatch sees
    # it): after a step back, a live poller's new polls count, not the old ones stamped "later"
    newest_stamps = {p: f for _, p, f in newest_ok_polls(ledger, 0)}
    for prov in cfg.providers:
        name = prov.name
        f = health_facts(ledger, name)
        if f.last_finished_ms is None:
            out.append(ProviderHealth(name, NEVER, None, None, None))
            continue
        good = f.good_finished_ms
        err = f.error
        last_error = f"{err[0]}: {err[1]}" if err and (good is None or err[2] > good) else None
        age = None if good is None else now_ms - good
        failed_last = f.last_outcome != "ok"
        if good is None or (failed_last and age is not None and
                            age > cfg.billing.gap_after_s * 1000):
            status = FAILING
        elif age is not None and age > cfg.billing.stale_after_s * 1000:
            status = STALE
        else:
            status = REGRESSED if f.regressed_since_good else FRESH
        newest = newest_stamps.get(name)
        if newest is not None and newest > now_ms + int(cfg.gateway.clock_skew_s * 1000):
            ahead = newest - now_ms
            out.append(ProviderHealth(
                name, SUSPECT, good, f.last_finished_ms,
                f"the newest successful poll is stamped {ahead // 1000} s in the future "
                "(clocks disagree); spend cannot be known", f.rate_mismatch_since_good, ahead))
            continue
        out.append(ProviderHealth(name, status, good, f.last_finished_ms, last_error,
                                  f.rate_mismatch_since_good))
    return out
