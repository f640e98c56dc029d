"""Vast.ai: account-level running total from ``credit`` deltas plus the invoices feed.

``/api/v0/users/current`` gives the prepaid ``credit``; ``/api/v1/invoices/`` lists credits added
(``type == "credit"``; the sign convention, negative = credit, is unverified: the absolute value
is used). Instances give current rates (``dph_total``) for display and attribution only.
"""

from __future__ import annotations

import json

from spotctl.billing.balance import advance, previous_account
from spotctl.billing.base import Capability, PollResult, tier_for_resource
from spotctl.billing.http import BearerAdapter, money, need
from spotctl.clock import to_ms
from spotctl.ledger.db import Ledger
from spotctl.ledger.records import BillingSample, CreditEvent, CumulativeKind

DEFAULT_BASE = "https://console.vast.ai"


class VastAdapter(BearerAdapter):
    capability = Capability.BALANCE_ONLY
    default_base = DEFAULT_BASE

    def poll(self, now_ms: int, ledger: Ledger | None = None) -> PollResult:
        user = self.http.read("GET", "/api/v0/users/current")
        inst = self.http.read("GET", "/api/v0/instances/", params={"owner": "me"})
        prev = previous_account(ledger, self.provider.name)
        since = (prev.observed_ms // 1000) if prev else 0
        inv = self.http.read("GET", "/api/v1/invoices/", params={
            "select_filters": json.dumps({"when": {"gte": since}})})
        observed = to_ms(self.clock.now())
        account = self.provider.account or str(need(user.data, "id", (int, str), "user"))
        balance = money(need(user.data, "credit", object, "user"), "user.credit")
        result = PollResult()
        confirmed = 0
        for row in need(inv.data, "results", list, "invoices"):
            if not isinstance(row, dict) or row.get("type") != "credit":
                continue
            start_s = row.get("start")
            if not isinstance(start_s, int | float) or start_s * 1000 <= (prev.observed_ms if
                                                                           prev else 0):
                continue
            amount = abs(money(row.get("amount"), "invoice.amount"))
            confirmed += amount
            inv_id = str((row.get("metadata") or {}).get("invoice_id") or start_s)
            result.credits.append(CreditEvent(self.provider.name, account, inv_id,
                                              int(start_s * 1000), amount, "payment", True))
        cum, inferred = advance(prev, balance, confirmed, self.provider.name, account, observed)
        result.credits.extend(inferred)
        sha = user.sha256
        result.samples.append(BillingSample(
            self.provider.name, account, "account", "account", observed, cum,
            CumulativeKind.BALANCE_DERIVED, sha, balance_micros=balance))
        for i in need(inst.data, "instances", list, "instances"):
            if not isinstance(i, dict) or "id" not in i:
                continue
            rate = i.get("dph_total")
            result.samples.append(BillingSample(
                self.provider.name, account, f"instance:{i['id']}", "vm", observed, None,
                CumulativeKind.RESOURCE_TOTAL, inst.sha256,
                rate_micros_per_h=None if rate is None else money(rate, "instance.dph_total"),
                tier=tier_for_resource(i.get("label"), [], self.cfg),
                state=str(i.get("actual_status") or ""), spot=bool(i.get("is_bid"))))
        result.resources_seen = len(result.samples) - 1
        return result
