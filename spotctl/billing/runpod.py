"""RunPod: account-level running total from GraphQL ``myself``.

``clientLifetimeSpend`` (undocumented, seen in many third-party clients: verify live) is the
account's running total; when absent, the total is derived from ``clientBalance`` deltas (see
``balance.py``; RunPod has no credit feed here, so a rise is an unconfirmed credit). Pods give
current rates (``adjustedCostPerHr``) for attribution and display only. Bearer auth and an
explicit User-Agent (Cloudflare refuses Python's default).
"""

from __future__ import annotations

from spotctl.billing.balance import advance, previous_account
from spotctl.billing.base import Capability, PollResult, tier_for_resource
from spotctl.billing.http import BearerAdapter, money, need
from spotctl.clock import to_ms
from spotctl.ledger.db import Ledger
from spotctl.ledger.records import BillingSample, CumulativeKind

DEFAULT_BASE = "https://api.runpod.io"
QUERY = ("query { myself { id clientBalance currentSpendPerHr spendLimit clientLifetimeSpend "
         "pods { id name desiredStatus podType costPerHr adjustedCostPerHr } } }")


class RunPodAdapter(BearerAdapter):
    capability = Capability.ACCOUNT_CUMULATIVE
    default_base = DEFAULT_BASE

    def poll(self, now_ms: int, ledger: Ledger | None = None) -> PollResult:
        got = self.http.read("POST", "/graphql", json_body={"query": QUERY})
        if isinstance(got.data, dict) and got.data.get("errors"):
            from spotctl.billing.base import BillingError

            raise BillingError("auth" if "auth" in str(got.data["errors"]).lower() else
                               "malformed", "GraphQL error from RunPod")
        me = need(need(got.data, "data", dict, "graphql"), "myself", dict, "graphql.data")
        account = self.provider.account or str(me.get("id") or "default")
        observed = to_ms(self.clock.now())
        balance = money(need(me, "clientBalance", object, "myself"), "myself.clientBalance")
        rate = me.get("currentSpendPerHr")
        result = PollResult()
        if me.get("clientLifetimeSpend") is not None:
            cum = money(me["clientLifetimeSpend"], "myself.clientLifetimeSpend")
            kind = CumulativeKind.ACCOUNT_TOTAL
        else:
            cum, credits = advance(previous_account(ledger, self.provider.name), balance, 0,
                                   self.provider.name, account, observed)
            result.credits.extend(credits)
            kind = CumulativeKind.BALANCE_DERIVED
        result.samples.append(BillingSample(
            self.provider.name, account, "account", "account", observed, cum, kind, got.sha256,
            rate_micros_per_h=None if rate is None else money(rate, "currentSpendPerHr"),
            balance_micros=balance))
        pods = me.get("pods") or []
        for pod in pods if isinstance(pods, list) else []:
            if not isinstance(pod, dict) or "id" not in pod:
                continue
            rate = pod.get("adjustedCostPerHr", pod.get("costPerHr"))
            result.samples.append(BillingSample(
                self.provider.name, account, f"pod:{pod['id']}", "vm", observed, None,
                CumulativeKind.RESOURCE_TOTAL, got.sha256,
                rate_micros_per_h=None if rate is None else money(rate, "pod.costPerHr"),
                tier=tier_for_resource(pod.get("name"), [], self.cfg),
                state=str(pod.get("desiredStatus") or ""),
                spot=pod.get("podType") == "INTERRUPTABLE"))
        result.resources_seen = len(result.samples) - 1
        return result
