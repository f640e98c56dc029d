"""Daily reconciliation: the ledger's spend for a day against the provider's own daily figure.

Hyperstack (and the local cloud) answer ``/billing/billing/history`` with per-day
``incurred_bill``; other providers have no daily endpoint here and are reported as such.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from spotctl.accounting.spend import spend_between
from spotctl.billing.base import BillingError, api_key_for
from spotctl.billing.http import ProviderHTTP, money, need
from spotctl.clock import get_clock, to_ms
from spotctl.config import Config
from spotctl.ledger.db import Ledger
from spotctl.money import usd_str


def provider_day_total(cfg: Config, name: str, day: date, end: date) -> int:
    from spotctl.billing.hyperstack import DEFAULT_BASE

    prov = cfg.provider(name)
    key = api_key_for(prov)
    http = ProviderHTTP(prov.base_url or DEFAULT_BASE, {"api_key": key}, get_clock(),
                        timeout_s=cfg.billing.timeout_s, secrets=(key,))
    try:
        got = http.read("GET", "/billing/billing/history", params={
            "start_date": f"{day.isoformat()}T00:00:00", "end_date": f"{end.isoformat()}T00:00:00"})
    finally:
        http.close()
    hist = need(need(got.data, "billing_history", dict, "history"), "billing_history", list,
                "history")
    total = 0
    for row in hist:
        metrics = need(row, "metrics", dict, "history row")
        total += money(metrics.get("incurred_bill"), "history.incurred_bill")
    return total


def reconcile_day(cfg: Config, ledger: Ledger, day: date, end: date) -> list[dict]:
    start_ms = to_ms(datetime(day.year, day.month, day.day, tzinfo=UTC))
    end_ms = to_ms(datetime(end.year, end.month, end.day, tzinfo=UTC))
    rows = []
    for prov in cfg.providers:
        spend = spend_between(ledger, start_ms, end_ms, cfg, providers={prov.name})
        row = {"provider": prov.name, "ledger_usd": usd_str(spend.micros),
               "ledger_complete": spend.complete, "provider_usd": None, "drift_usd": None,
               "drift_pct": None, "note": None, "status": "ok"}
        if prov.kind not in ("hyperstack", "localcloud"):
            row.update(status="unsupported", note="no daily cost endpoint for this provider")
        else:
            try:
                theirs = provider_day_total(cfg, prov.name, day, end)
            except BillingError as exc:
                row.update(status="unavailable", note=f"{exc.kind}: {exc.message}")
            else:
                drift = spend.micros - theirs
                row.update(provider_usd=usd_str(theirs), drift_usd=usd_str(drift),
                           drift_pct=None if theirs == 0 else str(
                               (Decimal(drift) * 100 / Decimal(theirs)).quantize(
                                   Decimal("0.01"))))
        rows.append(row)
    return rows
