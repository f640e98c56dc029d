"""RunPod: account-level running total from GraphQL ``myself``, through the RunPod client.

Only fields RunPod's own SDK/CLI query are required (``clientBalance``, ``currentSpendPerHr``;
pods' ``costPerHr``, ``podType``, ``desiredStatus``). The unverified ``clientLifetimeSpend``
(the account's running total, seen only in third-party clients) and ``adjustedCostPerHr`` are in
a separate query: if RunPod does not define them, that query alone is rejected and the total is
derived from ``clientBalance`` deltas (``balance.py``; RunPod has no credit feed, so a rise is an
unconfirmed credit). Pods give current rates for attribution and display only.
"""

from __future__ import annotations

from spotctl.billing.balance import advance
from spotctl.billing.base import ClientAdapter, PollResult, PriorState, tier_for_resource
from spotctl.billing.parse import money, need
from spotctl.clients.bearer import (
    RUNPOD_ACCOUNT,
    RUNPOD_PODS,
    RUNPOD_UNVERIFIED,
    RunPodClient,
)
from spotctl.clock import to_ms
from spotctl.errors import GraphQLRejected, ProviderUnavailable
from spotctl.ledger.records import BillingSample, CumulativeKind

DEFAULT_BASE = "https://api.runpod.io"


class RunPodAdapter(ClientAdapter):
    client_class = RunPodClient
    client: RunPodClient

    def poll(self, now_ms: int, prior: PriorState) -> PollResult:
        me, got = self.client.query(RUNPOD_ACCOUNT)
        pods_me, pods_got = self.client.query(RUNPOD_PODS)
        try:
            extra, _ = self.client.query(RUNPOD_UNVERIFIED)
        except (GraphQLRejected, ProviderUnavailable):
            extra = {}  # the unverified fields are optional: their absence never fails a poll
        account = self.provider.account or str(me.get("id") or "default")
        observed = to_ms(self.clock.now())
        balance = money(need(me, "clientBalance", object, "myself"), "myself.clientBalance")
        rate = me.get("currentSpendPerHr")
        result = PollResult()
        if extra.get("clientLifetimeSpend") is not None:
            cum = money(extra["clientLifetimeSpend"], "myself.clientLifetimeSpend")
            kind = CumulativeKind.ACCOUNT_TOTAL
        else:
            cum, credits = advance(prior.account, balance, 0, self.provider.name, account,
                                   observed)
            result.credits.extend(credits)
            kind = CumulativeKind.BALANCE_DERIVED
        result.samples.append(BillingSample(
            self.provider.name, account, "account", "account", observed, cum, kind, got.sha256,
            rate_micros_per_h=None if rate is None else money(rate, "currentSpendPerHr"),
            balance_micros=balance))
        adjusted = {p.get("id"): p.get("adjustedCostPerHr") for p in extra.get("pods") or []
                    if isinstance(p, dict)}
        pods = pods_me.get("pods") or []
        for pod in pods if isinstance(pods, list) else []:
            if not isinstance(pod, dict) or "id" not in pod:
                continue
            rate = adjusted.get(pod["id"])
            if rate is None:
                rate = pod.get("costPerHr")
            result.samples.append(BillingSample(
                self.provider.name, account, f"pod:{pod['id']}", "vm", observed, None,
                CumulativeKind.RESOURCE_TOTAL, pods_got.sha256,
                rate_micros_per_h=None if rate is None else money(rate, "pod.costPerHr"),
                tier=tier_for_resource(pod.get("name"), [], self.cfg),
                state=str(pod.get("desiredStatus") or ""),
                # INTERRUPTABLE = spot: the value is unverified (official code reads podType
                # but never lists its values)
                spot=pod.get("podType") == "INTERRUPTABLE"))
        result.resources_seen = len(result.samples) - 1
        return result
