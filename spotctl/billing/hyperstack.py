"""Hyperstack (the reference provider): per-resource running totals, once a minute.

``GET /billing/billing/usage`` gives, per resource, ``bill_per_minute`` (USD/min: rate × 60 is
the hourly rate, for display only) and the lifetime ``total_bill`` (the cumulative).
``?deleted=true`` lists terminated resources with their final totals; it is read at least every
``[billing] deleted_poll_every_s`` and whenever a live resource disappears, so the last minutes
of a deleted VM are not lost. VM states come from ``/core/virtual-machines``; the balance from
``/billing/user-credit/credit``. Header ``api_key``. VM and volume ids are separate sequences
that can collide, so samples are keyed ``vm:<id>`` / ``volume:<id>``.

Unverified against a live account (see the research notes): how often ``total_bill`` moves,
and whether hibernated VMs stay in the live list. Parsing is tolerant: unknown fields are
ignored; a missing or ill-typed required field is a ``malformed`` poll, never a crash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from spotctl.billing.base import (
    BillingError,
    Capability,
    PollResult,
    api_key_for,
    tier_for_resource,
)
from spotctl.billing.http import ProviderHTTP, money, need
from spotctl.clock import Clock, parse_iso, to_ms
from spotctl.config import Config, ProviderConfig
from spotctl.ledger.records import Anomaly, BillingSample, CumulativeKind

DEFAULT_BASE = "https://infrahub-api.nexgencloud.com/v1"


@dataclass
class PollContext:
    """What the ledger remembers between one-shot polls (nothing is kept only in memory)."""

    live_before: set[str] = field(default_factory=set)  # live resource ids at the last poll
    finalized: set[str] = field(default_factory=set)  # ids whose final total is recorded
    last_deleted_poll_ms: int | None = None


class HyperstackAdapter:
    capability = Capability.PER_RESOURCE_CUMULATIVE

    def __init__(self, provider: ProviderConfig, cfg: Config, clock: Clock) -> None:
        self.provider = provider
        self.cfg = cfg
        self.clock = clock
        key = api_key_for(provider)
        self.http = ProviderHTTP(provider.base_url or DEFAULT_BASE, {"api_key": key}, clock,
                                 timeout_s=cfg.billing.timeout_s, secrets=(key,))
        self.account = provider.account or "default"

    def close(self) -> None:
        self.http.close()

    def poll(self, now_ms: int, ctx: PollContext | None = None) -> PollResult:
        ctx = ctx or PollContext()
        usage = self.http.read("GET", "/billing/billing/usage")
        vms = self.http.read("GET", "/core/virtual-machines", params={"page_size": 500})
        credit = self.http.read("GET", "/billing/user-credit/credit")
        observed = to_ms(self.clock.now())
        states = self._vm_states(vms.data)
        rows = need(usage.data, "data", list, "usage")
        live = [self._row(r, "usage") for r in rows]
        live_ids = {rid for rid, _ in live}
        gone = ctx.live_before - live_ids
        due = (ctx.last_deleted_poll_ms is None or
               now_ms - ctx.last_deleted_poll_ms >= self.cfg.billing.deleted_poll_every_s * 1000)
        deleted: list[tuple[str, dict]] = []
        hashes = [usage.sha256, vms.sha256, credit.sha256]
        deleted_polled = False
        if gone or due:
            fetched = self.http.read("GET", "/billing/billing/usage", params={"deleted": "true"})
            hashes.append(fetched.sha256)
            deleted = [self._row(r, "usage?deleted=true")
                       for r in need(fetched.data, "data", list, "usage?deleted=true")]
            deleted_polled = True
        payload = hashlib.sha256("".join(hashes).encode()).hexdigest()
        result = PollResult()
        for rid, row in live:
            result.samples.append(self._sample(rid, row, observed, payload, states, ended=False))
        deleted_ids = {rid for rid, _ in deleted}
        for rid, row in deleted:
            if rid in ctx.finalized or rid in live_ids:
                continue
            result.samples.append(self._sample(rid, row, observed, payload, states, ended=True))
        if deleted_polled:
            for rid in sorted(gone - deleted_ids):
                result.anomalies.append(Anomaly(
                    self.provider.name, self.account, rid, observed, "vanished",
                    detail="gone from live usage and absent from deleted=true"))
        data = need(credit.data, "data", dict, "credit")
        balance = money(need(data, "credit", object, "credit"),
                        "credit.credit")
        result.samples.append(BillingSample(
            self.provider.name, self.account, "account", "account", observed, None,
            CumulativeKind.ACCOUNT_TOTAL, payload, balance_micros=balance,
            state="deleted_polled" if deleted_polled else None))
        result.resources_seen = len(live)
        return result

    # -- parsing ------------------------------------------------------------------------
    def _row(self, row: object, where: str) -> tuple[str, dict]:
        if not isinstance(row, dict):
            raise BillingError("malformed", f"{where}: a row is not an object")
        rid = need(row, "resource_id", (int, str), where)
        rtype = need(row, "resource_type", str, where)
        return f"{rtype}:{rid}", row

    @staticmethod
    def _vm_states(data: object) -> dict[str, tuple[str, bool | None, list[str]]]:
        out: dict[str, tuple[str, bool | None, list[str]]] = {}
        for inst in need(data, "instances", list, "virtual-machines"):
            if not isinstance(inst, dict) or "id" not in inst:
                continue
            labels = [x if isinstance(x, str) else str(x.get("label", ""))
                      for x in inst.get("labels") or [] if isinstance(x, str | dict)]
            ext = inst.get("localcloud") if isinstance(inst.get("localcloud"), dict) else {}
            spot = ext.get("spot") if isinstance(ext.get("spot"), bool) else (
                True if "spot" in labels else None)
            out[f"vm:{inst['id']}"] = (str(inst.get("status", "")), spot, labels)
        return out

    def _sample(self, rid: str, row: dict, observed: int, payload: str,
                states: dict, *, ended: bool) -> BillingSample:
        where = f"usage[{rid}]"
        total = money(need(row, "total_bill", object, where),
                      f"{where}.total_bill")
        if total < 0:
            raise BillingError("malformed", f"{where}: negative total_bill")
        per_min = row.get("bill_per_minute")
        rate = None if per_min is None or ended else money(per_min, f"{where}.bill_per_minute") * 60
        created = None
        if isinstance(row.get("create_time"), str):
            try:
                created = to_ms(parse_iso(row["create_time"]))
            except ValueError:
                created = None
        state, spot, labels = states.get(rid, (None, None, []))
        labels = labels or [x for x in row.get("labels") or [] if isinstance(x, str)]
        name = row.get("name") if isinstance(row.get("name"), str) else None
        return BillingSample(
            self.provider.name, self.account, rid, rid.split(":", 1)[0], observed, total,
            CumulativeKind.RESOURCE_TOTAL, payload, rate_micros_per_h=rate,
            tier=tier_for_resource(name, labels, self.cfg), provider_ts=None,
            created_ms=created, state="deleted" if ended else (state or "active"),
            spot=spot)
