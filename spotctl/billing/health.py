"""Billing health per provider, derived only from the ledger (so every process agrees).

- ``fresh``: the last successful poll is recent and the last attempt did not fail for long;
- ``stale``: no successful poll for ``stale_after_s`` and no recorded failure (the poller stopped);
- ``failing``: polls are failing (the last attempt failed, and no success for ``gap_after_s``);
- ``regressed``: the newest poll reported a running total lower than before (an anomaly; spend
  is still known, the decrease is not counted);
- ``never``: the provider was never polled.

The gateway's gate calls this every couple of seconds: a few indexed lookups per provider.
"""

from __future__ import annotations

from dataclasses import dataclass

from spotctl.config import Config
from spotctl.ledger.db import Ledger

FRESH, STALE, FAILING, REGRESSED, NEVER = "fresh", "stale", "failing", "regressed", "never"
KNOWN_SPEND = {FRESH, REGRESSED}  # statuses under which spend is still known


@dataclass(frozen=True)
class ProviderHealth:
    provider: str
    status: str
    last_good_ms: int | None
    last_attempt_ms: int | None
    last_error: str | None

    def to_json(self) -> dict:
        from spotctl.clock import from_ms, iso

        def t(ms: int | None) -> str | None:
            return None if ms is None else iso(from_ms(ms))

        return {"provider": self.provider, "status": self.status,
                "last_good_sample_at": t(self.last_good_ms),
                "last_attempt_at": t(self.last_attempt_ms), "last_error": self.last_error}


def provider_health(ledger: Ledger, cfg: Config, now_ms: int) -> list[ProviderHealth]:
    out = []
    conn = ledger.conn
    for prov in cfg.providers:
        name = prov.name
        last = conn.execute(
            "SELECT finished_ms, outcome, error_message FROM billing_polls WHERE provider=? "
            "ORDER BY started_ms DESC LIMIT 1", (name,)).fetchone()
        if last is None:
            out.append(ProviderHealth(name, NEVER, None, None, None))
            continue
        good_row = conn.execute(
            "SELECT finished_ms, started_ms FROM billing_polls WHERE provider=? AND outcome='ok' "
            "ORDER BY finished_ms DESC LIMIT 1", (name,)).fetchone()
        good, good_started = good_row if good_row else (None, None)
        err = conn.execute(
            "SELECT outcome, error_message, finished_ms FROM billing_polls WHERE provider=? AND "
            "outcome != 'ok' ORDER BY started_ms DESC LIMIT 1", (name,)).fetchone()
        last_error = f"{err[0]}: {err[1]}" if err and (good is None or err[2] > good) else None
        age = None if good is None else now_ms - good
        failed_last = last[1] != "ok"
        if good is None or (failed_last and age > cfg.billing.gap_after_s * 1000):
            status = FAILING
        elif age > cfg.billing.stale_after_s * 1000:
            status = STALE
        else:
            regressed = conn.execute(
                "SELECT 1 FROM billing_anomalies WHERE provider=? AND kind='cumulative_decreased' "
                "AND observed_ms >= ? LIMIT 1", (name, good_started)).fetchone()
            status = REGRESSED if regressed else FRESH
        out.append(ProviderHealth(name, status, good, last[0], last_error))
    return out
