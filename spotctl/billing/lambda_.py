"""Lambda has no billing API: an estimate-only adapter.

Each instance's listed price × the time since the previous sample gives an *estimate* of its
running total. Samples are marked ``estimate`` and never enter invoice-true totals; ``cost``
shows them apart. (This is the only place spotctl multiplies a rate by time, and it says so.)
"""

from __future__ import annotations

from spotctl.billing.base import Capability, PollResult, tier_for_resource
from spotctl.billing.http import BearerAdapter, need
from spotctl.clock import to_ms
from spotctl.ledger.db import Ledger
from spotctl.ledger.records import BillingSample, CumulativeKind

DEFAULT_BASE = "https://cloud.lambda.ai/api/v1"


class LambdaAdapter(BearerAdapter):
    capability = Capability.ESTIMATE_ONLY
    default_base = DEFAULT_BASE

    def poll(self, now_ms: int, ledger: Ledger | None = None) -> PollResult:
        got = self.http.read("GET", "/instances")
        observed = to_ms(self.clock.now())
        account = self.provider.account or "default"
        result = PollResult()
        for inst in need(got.data, "data", list, "instances"):
            if not isinstance(inst, dict) or "id" not in inst:
                continue
            cents = (inst.get("instance_type") or {}).get("price_cents_per_hour")
            rate = int(cents) * 10_000 if isinstance(cents, int) else None  # micro-USD / h
            rid = f"instance:{inst['id']}"
            prev = None
            if ledger is not None:
                prev = ledger.conn.execute(
                    "SELECT observed_ms, cumulative_micros FROM billing_samples WHERE "
                    "provider=? AND resource_id=? ORDER BY observed_ms DESC LIMIT 1",
                    (self.provider.name, rid)).fetchone()
            est = 0
            if prev and rate and str(inst.get("status")) == "active":
                est = prev[1] + rate * (observed - prev[0]) // 3_600_000
            elif prev:
                est = prev[1]
            result.samples.append(BillingSample(
                self.provider.name, account, rid, "vm", observed, est, CumulativeKind.ESTIMATE,
                got.sha256, rate_micros_per_h=rate,
                tier=tier_for_resource(inst.get("name"), [], self.cfg),
                state=str(inst.get("status") or "")))
        result.resources_seen = len(result.samples)
        return result
