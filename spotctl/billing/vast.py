"""Vast.ai: account-level running total from ``credit`` deltas plus the invoices feed.

``/api/v0/users/current`` gives the prepaid ``credit``; ``/api/v1/invoices/`` (every page, as
the vastai SDK pages it) lists credits added (``type == "credit"``; the sign convention,
negative = credit, is read with ``abs``). Instances (``/api/v1/instances/``, paged: the v0 list
is deprecated) give current rates (``dph_total``) for display and attribution only.

An account that is not credit-only (``billing_creditonly: false``: a card-billed or postpaid
account) may pay without ``credit`` moving: its spend cannot be derived, so the poll fails with
kind ``unsupported`` and its spend reads "unknown since T", never $0 (semantics of the flag
unverified: see docs/providers.md).
"""

from __future__ import annotations

from spotctl.billing.balance import advance
from spotctl.billing.base import (
    BillingError,
    ClientAdapter,
    PollResult,
    PriorState,
    tier_for_resource,
)
from spotctl.billing.parse import money, need
from spotctl.clients.bearer import VastClient
from spotctl.clock import to_ms
from spotctl.ledger.records import BillingSample, CreditEvent, CumulativeKind

DEFAULT_BASE = "https://console.vast.ai"


class VastAdapter(ClientAdapter):
    client_class = VastClient
    client: VastClient

    def poll(self, now_ms: int, prior: PriorState) -> PollResult:
        user = self.client.user()
        if isinstance(user.data, dict) and user.data.get("billing_creditonly") is False:
            raise BillingError("unsupported", f"{self.provider.name}: this Vast account is not "
                               "credit-only (billing_creditonly=false): its spend does not move "
                               "`credit` and cannot be derived; spend is unknown, not $0")
        instances, inst_hashes = self.client.instances()
        prev = prior.account
        since = (prev.observed_ms // 1000) if prev else 0
        invoices, _ = self.client.invoices(since)
        observed = to_ms(self.clock.now())
        account = self.provider.account or str(need(user.data, "id", (int, str), "user"))
        balance = money(need(user.data, "credit", object, "user"), "user.credit")
        result = PollResult()
        confirmed = 0
        for row in invoices:
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
        result.samples.append(BillingSample(
            self.provider.name, account, "account", "account", observed, cum,
            CumulativeKind.BALANCE_DERIVED, user.sha256, balance_micros=balance))
        sha = inst_hashes[0] if inst_hashes else user.sha256
        for i in instances:
            if not isinstance(i, dict) or "id" not in i:
                continue
            rate = i.get("dph_total")
            result.samples.append(BillingSample(
                self.provider.name, account, f"instance:{i['id']}", "vm", observed, None,
                CumulativeKind.RESOURCE_TOTAL, sha,
                rate_micros_per_h=None if rate is None else money(rate, "instance.dph_total"),
                tier=tier_for_resource(i.get("label"), [], self.cfg),
                state=str(i.get("actual_status") or ""),
                # is_bid (interruptible) is in the SDK's Offer model, not Instance: unverified
                spot=bool(i.get("is_bid")) if "is_bid" in i else None))
        result.resources_seen = len(result.samples) - 1
        return result
