"""Lambda has no billing API: an estimate-only adapter.

Lambda bills an instance in 1-minute increments from launch (once its health checks pass) until
it is terminated (docs.lambda.ai public-cloud/billing): so every status of a launched,
not-yet-terminated instance accrues (active, unhealthy, terminating; and preempted until it is
gone, conservatively), booting does not, and when an instance disappears from ``/instances``
(terminated between two polls) the last interval up to this poll is accrued and the series
closed. Each running total is an *estimate* (listed price × minutes, never invoice-true);
``cost`` shows it apart. This is the only place spotctl multiplies a rate by time, and it says so.
"""

from __future__ import annotations

from spotctl.billing.base import ClientAdapter, PollResult, PriorState, tier_for_resource
from spotctl.billing.parse import need
from spotctl.clients.bearer import LambdaClient
from spotctl.clock import to_ms
from spotctl.ledger.records import BillingSample, CumulativeKind

DEFAULT_BASE = "https://cloud.lambda.ai/api/v1"
# which statuses bill is unverified beyond the docs' "from launch until terminate"
BILLED = frozenset({"active", "unhealthy", "terminating", "preempted"})
MINUTE_MS = 60_000


def accrue(prev_cum: int, rate: int | None, from_ms: int, to_ms_: int) -> int:
    """Add whole billed minutes (1-minute increments, rounded up) at ``rate`` micro-$/h."""
    if not rate or to_ms_ <= from_ms:
        return prev_cum
    minutes = -(-(to_ms_ - from_ms) // MINUTE_MS)
    return prev_cum + rate * minutes // 60


class LambdaAdapter(ClientAdapter):
    client_class = LambdaClient
    client: LambdaClient

    def poll(self, now_ms: int, prior: PriorState) -> PollResult:
        got = self.client.instances()
        observed = to_ms(self.clock.now())
        account = self.provider.account or "default"
        result = PollResult()
        seen: set[str] = set()
        for inst in need(got.data, "data", list, "instances"):
            if not isinstance(inst, dict) or "id" not in inst:
                continue
            cents = (inst.get("instance_type") or {}).get("price_cents_per_hour")
            rate = int(cents) * 10_000 if isinstance(cents, int) else None  # micro-USD / h
            rid = f"instance:{inst['id']}"
            seen.add(rid)
            status = str(inst.get("status") or "")
            prev = prior.last_samples.get(rid)
            est = 0
            if prev is not None:
                est = prev.cumulative_micros or 0
                if (prev.state or "") in BILLED:  # billed over the interval since that sample
                    est = accrue(est, rate, prev.observed_ms, observed)
            result.samples.append(BillingSample(
                self.provider.name, account, rid, "vm", observed, est, CumulativeKind.ESTIMATE,
                got.sha256, rate_micros_per_h=rate,
                tier=tier_for_resource(inst.get("name"), [], self.cfg),
                state="deleted" if status == "terminated" else status))
        for rid, prev in sorted(prior.last_samples.items()):
            if rid in seen or not rid.startswith("instance:"):
                continue
            # terminated since the last poll: it billed until then (at most this interval)
            est = prev.cumulative_micros or 0
            if (prev.state or "") in BILLED:
                est = accrue(est, prev.rate_micros_per_h, prev.observed_ms, observed)
            result.samples.append(BillingSample(
                self.provider.name, account, rid, "vm", observed, est, CumulativeKind.ESTIMATE,
                got.sha256, state="deleted"))
        result.resources_seen = len(seen)
        return result
