"""Hyperstack (the reference provider): per-resource running totals, once a minute.

A pure translator over :class:`~spotctl.clients.hyperstack.HyperstackClient`:
``GET /billing/billing/usage`` gives, per resource, ``bill_per_minute`` (USD/min: × 60 is the
hourly rate, for display and price truth only) and the lifetime ``total_bill`` (the cumulative).
``?deleted=true`` lists terminated resources with their final totals; it is read at least every
``[billing] deleted_poll_every_s`` and whenever a live resource disappears, so the last minutes
of a deleted VM are not lost. VM states come from ``/core/virtual-machines`` (every page); the
balance from ``/billing/user-credit/credit``. VM and volume ids are separate sequences that can
collide, so samples are keyed ``vm:<id>`` / ``volume:<id>``.

Rows flagged ``exclude_billing: true`` (billing_metrices_fields.py:33) are not spend: they are
left out entirely (what Hyperstack means by the flag is unverified; not counting is the reading
that never overstates spend... and never double counts a resource Hyperstack itself does not
bill).

Price truth: for every ACTIVE VM with a launch quote (``prior.quotes``), the billed rate is
compared with it; a difference over ``[billing] rate_tolerance_pct`` is a ``rate_mismatch``
anomaly.

Unverified against a live account (see docs/providers.md): how often ``total_bill`` moves,
and whether hibernated VMs stay in the live list. Parsing is tolerant: unknown fields are
ignored; a missing or ill-typed required field is a ``malformed`` poll, never a crash.
"""

from __future__ import annotations

import hashlib

from spotctl.billing.base import (
    BillingError,
    ClientAdapter,
    PollResult,
    PriorState,
    rate_check,
    tier_for_resource,
)
from spotctl.billing.parse import money, need
from spotctl.clients.hyperstack import DEFAULT_BASE, HyperstackClient
from spotctl.clock import Clock, parse_iso, to_ms
from spotctl.config import Config, ProviderConfig
from spotctl.ledger.records import Anomaly, BillingSample, CumulativeKind

__all__ = ["DEFAULT_BASE", "HyperstackAdapter"]


class HyperstackAdapter(ClientAdapter):
    client_class = HyperstackClient
    client: HyperstackClient

    def __init__(self, provider: ProviderConfig, cfg: Config, clock: Clock, *,
                 transport=None) -> None:
        super().__init__(provider, cfg, clock, transport=transport)
        self.account = provider.account or "default"

    def poll(self, now_ms: int, prior: PriorState) -> PollResult:
        usage = self.client.usage()
        vm_hashes: list[str] = []
        vms = self.client.list_vms(hashes=vm_hashes)
        credit = self.client.credit()
        observed = to_ms(self.clock.now())
        states = {f"vm:{vm.id}": (vm.status, vm.flavor.endswith("-spot") if vm.flavor else None,
                                  list(vm.labels)) for vm in vms}
        live = [(rid, row) for rid, row in (self._row(r, "usage") for r in
                                            need(usage.data, "data", list, "usage"))
                if row.get("exclude_billing") is not True]
        live_ids = {rid for rid, _ in live}
        gone = set(prior.live_before) - live_ids
        due = (prior.last_deleted_poll_ms is None or
               now_ms - prior.last_deleted_poll_ms >= self.cfg.billing.deleted_poll_every_s * 1000)
        deleted: list[tuple[str, dict]] = []
        hashes = [usage.sha256, *vm_hashes, credit.sha256]
        deleted_polled = False
        if gone or due:
            fetched = self.client.usage(deleted=True)
            hashes.append(fetched.sha256)
            deleted = [(rid, row) for rid, row in (
                self._row(r, "usage?deleted=true")
                for r in need(fetched.data, "data", list, "usage?deleted=true"))
                if row.get("exclude_billing") is not True]
            deleted_polled = True
        payload = hashlib.sha256("".join(hashes).encode()).hexdigest()
        result = PollResult()
        for rid, row in live:
            sample = self._sample(rid, row, observed, payload, states, ended=False)
            result.samples.append(sample)
            if sample.state == "ACTIVE":
                found = rate_check(self.provider.name, self.account, rid, observed,
                                   sample.rate_micros_per_h, prior)
                if found is not None:
                    result.anomalies.append(found)
        deleted_ids = {rid for rid, _ in deleted}
        for rid, row in deleted:
            if rid in prior.finalized or rid in live_ids:
                continue
            result.samples.append(self._sample(rid, row, observed, payload, states, ended=True))
        if deleted_polled:
            for rid in sorted(gone - deleted_ids):
                result.anomalies.append(Anomaly(
                    self.provider.name, self.account, rid, observed, "vanished",
                    detail="gone from live usage and absent from deleted=true"))
        data = need(credit.data, "data", dict, "credit")
        balance = money(need(data, "credit", object, "credit"), "credit.credit")
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
        """VM states from a raw ``Instances`` payload (kept for tolerant-parsing tests)."""
        out: dict[str, tuple[str, bool | None, list[str]]] = {}
        for inst in need(data, "instances", list, "virtual-machines"):
            if not isinstance(inst, dict) or "id" not in inst:
                continue
            labels = [x for x in inst.get("labels") or [] if isinstance(x, str)]
            flavor = inst.get("flavor") if isinstance(inst.get("flavor"), dict) else {}
            name = flavor.get("name")
            out[f"vm:{inst['id']}"] = (str(inst.get("status", "")),
                                       name.endswith("-spot") if isinstance(name, str) else None,
                                       labels)
        return out

    def _sample(self, rid: str, row: dict, observed: int, payload: str,
                states: dict, *, ended: bool) -> BillingSample:
        where = f"usage[{rid}]"
        total = money(need(row, "total_bill", object, where), f"{where}.total_bill")
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
        name = row.get("name") if isinstance(row.get("name"), str) else None
        return BillingSample(
            self.provider.name, self.account, rid, rid.split(":", 1)[0], observed, total,
            CumulativeKind.RESOURCE_TOTAL, payload, rate_micros_per_h=rate,
            tier=tier_for_resource(name, labels, self.cfg), provider_ts=None,
            created_ms=created, state="deleted" if ended else (state or "active"),
            spot=spot)
