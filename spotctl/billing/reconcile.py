"""The provider's own figure for a day, for reconciliation against the ledger
(:func:`spotctl.services.billing.reconcile_day` compares them).

- Hyperstack (and the local cloud): ``/billing/billing/history`` per-day ``incurred_bill``.
- RunPod: REST ``/v1/billing/pods`` and ``/v1/billing/networkvolumes`` with ``bucketSize=day``
  (confirmed by RunPod's official CLI, runpodctl internal/api/billing.go); the buckets settle
  hours late (research notes), so a recent day may read low. Serverless endpoints' billing
  (``/v1/billing/endpoints``) is not included: spotctl runs no endpoints.
- Vast.ai and Lambda: no daily figure is used (Vast's ``/api/v0/charges/`` exists but is not
  wired here; Lambda has no billing API).
"""

from __future__ import annotations

from datetime import date

from spotctl.billing.base import BillingError, api_key_for
from spotctl.billing.parse import money, need
from spotctl.clock import get_clock
from spotctl.config import Config


def provider_day_total(cfg: Config, name: str, day: date, end: date) -> int:
    prov = cfg.provider(name)
    key = api_key_for(prov)
    if prov.kind == "runpod":
        from spotctl.clients.bearer import RunPodClient

        start_s, end_s = f"{day.isoformat()}T00:00:00Z", f"{end.isoformat()}T00:00:00Z"
        client = RunPodClient(prov.base_url, key, get_clock(), timeout_s=cfg.billing.timeout_s)
        try:
            rows = []
            for got in (client.billing_pods(start_s, end_s),
                        client.billing_network_volumes(start_s, end_s)):
                if not isinstance(got.data, list):
                    raise BillingError("malformed", "runpod billing: not a list")
                rows += got.data
        finally:
            client.close()
        return sum(money(need(r, "amount", object, "runpod billing"), "runpod billing.amount")
                   for r in rows)
    from spotctl.clients.hyperstack import HyperstackClient

    client = HyperstackClient(prov.base_url, key, get_clock(), timeout_s=cfg.billing.timeout_s)
    try:
        got = client.billing_history(f"{day.isoformat()}T00:00:00", f"{end.isoformat()}T00:00:00")
    finally:
        client.close()
    hist = need(need(got.data, "billing_history", dict, "history"), "billing_history", list,
                "history")
    total = 0
    for row in hist:
        metrics = need(row, "metrics", dict, "history row")
        total += money(metrics.get("incurred_bill"), "history.incurred_bill")
    return total
