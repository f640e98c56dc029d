"""The one Hyperstack (NexGen Cloud "Infrahub") API client. The billing adapter, the fleet
backend, reconcile and the dry run all use it; nothing else speaks Hyperstack's HTTP.

Every endpoint, parameter and field here is checked against the official SDK, ``hyperstack``
1.56.1a0 on PyPI (generated from NexGen Cloud's OpenAPI spec; paths relative to its
site-packages), and exercised against the local cloud by the contract test
(``tests/test_contract_hyperstack.py``, official SDK in its own venv):

- base ``https://infrahub-api.nexgencloud.com/v1`` (configuration.py:209), header
  ``api_key: <key>`` (configuration.py:507-515);
- lists page with ``page`` and ``pageSize`` (virtual_machine_api.py:4462-4466,
  volume_api.py:1690-1694, environment_api.py, keypair_api.py); images page with ``page`` and
  ``per_page`` (image_api.py:887-888). Lists are oldest first (virtual_machine_api.py:4187), so
  every list is read to its last page: spotctl's VMs are the newest;
- create calls answer **200** (virtual_machine_api.py:1615 ``create_vms``, volume_api.py:103
  ``create_volume``): the SDK maps only 200;
- errors are ``ErrorResponseModel{status, message, error_reason}`` (error_response_model.py:29-31).
  The ``error_reason`` values are not enumerated anywhere (unverified): they are logged, never
  matched, except through HTTP status codes.

Unverified (no live account): the default and maximum page size (spotctl asks for
``PAGE_SIZE``), what ``count`` in a list means (total or this page: paging stops on a short
page, so either works), the rate limit's Retry-After (the docs say none is sent: the client's
jittered backoff covers it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx

from spotctl.clients.http import Fetched, HttpClient, Sent
from spotctl.clock import Clock
from spotctl.errors import ProviderError, ProviderMalformed, ProviderQuotaError

DEFAULT_BASE = "https://infrahub-api.nexgencloud.com/v1"
PAGE_SIZE = 100
MAX_PAGES = 1000  # a safety stop: 100 000 objects


def _refine(status: int, body: Any, msg: str) -> ProviderError | None:
    """Hyperstack-specific meaning of an error answer. Only the HTTP status is trusted; the
    free-text ``error_reason`` is part of the message, never matched."""
    if status == 402:
        return ProviderQuotaError(msg, provider="hyperstack", status=status)
    return None


# -- typed views of the objects spotctl uses (the raw dict is kept for anything else) ---------
@dataclass(frozen=True)
class Vm:
    id: int
    name: str
    status: str  # CREATING, BUILD, ACTIVE, SHUTOFF, HIBERNATING, HIBERNATED, RESTORING, ERROR...
    flavor: str | None
    gpu: str | None
    gpu_count: int
    environment: str | None
    region: str | None
    floating_ip: str | None
    labels: tuple[str, ...]
    volume_ids: tuple[int, ...]  # attached volumes
    created_at: str | None
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def parse(cls, d: Any) -> Vm:
        d = _with_id(d, "a virtual machine")
        flavor, env = _obj(d, "flavor"), _obj(d, "environment")
        vols: list[int] = []
        for att in d.get("volume_attachments") or []:
            vol = att.get("volume") if isinstance(att, dict) else None
            if isinstance(vol, dict) and isinstance(vol.get("id"), int):
                vols.append(vol["id"])
        return cls(d["id"], str(d.get("name") or ""), str(d.get("status") or ""),
                   _str(flavor.get("name")), _str(flavor.get("gpu")), _int(flavor.get("gpu_count")),
                   _str(env.get("name")), _str(env.get("region")), _str(d.get("floating_ip")),
                   tuple(x for x in d.get("labels") or [] if isinstance(x, str)), tuple(vols),
                   _str(d.get("created_at")), d)


@dataclass(frozen=True)
class Volume:
    id: int
    name: str
    size_gb: int
    status: str
    volume_type: str | None
    environment: str | None
    attached_to: tuple[int, ...]  # VM ids
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def parse(cls, d: Any) -> Volume:
        d = _with_id(d, "a volume")
        env = _obj(d, "environment")
        att = tuple(a["instance_id"] for a in d.get("attachments") or []
                    if isinstance(a, dict) and isinstance(a.get("instance_id"), int))
        return cls(d["id"], str(d.get("name") or ""), _int(d.get("size")),
                   str(d.get("status") or ""), _str(d.get("volume_type")), _str(env.get("name")),
                   att, d)


@dataclass(frozen=True)
class Flavor:
    name: str
    gpu: str | None
    gpu_count: int
    region: str | None
    stock_available: bool | None
    raw: dict = field(repr=False, compare=False, default_factory=dict)


@dataclass(frozen=True)
class Named:
    """An environment, key pair or image: what discovery needs of it."""

    id: int | None
    name: str
    region: str | None = None
    environment: str | None = None


@dataclass(frozen=True)
class PriceItem:
    name: str
    usd_per_hour: Decimal


# -- tolerant reads of an answer: a wrong type reads as absent, never a crash ------------------
def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _field(data: Any, key: str) -> Any:
    """``data[key]`` when ``data`` is an object, else None."""
    return data.get(key) if isinstance(data, dict) else None


def _obj(data: dict, key: str) -> dict:
    """The sub-object ``data[key]``, or ``{}`` when it is absent or not an object."""
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _region(item: dict, group: Any) -> str | None:
    """An item's ``region_name``, else that of the region group it is listed under."""
    return _str(item.get("region_name")) or _str(_field(group, "region_name"))


def _with_id(d: Any, what: str) -> dict:
    """``d`` when it is an object with an integer ``id``, else :class:`ProviderMalformed`."""
    if not isinstance(d, dict) or not isinstance(d.get("id"), int):
        raise ProviderMalformed(f"hyperstack: {what} without an integer id",
                                provider="hyperstack")
    return d


def _items(data: Any, key: str, where: str) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ProviderMalformed(f"hyperstack: {where}: no {key!r} list in the answer",
                                provider="hyperstack")
    return data[key]


class HyperstackClient:
    """Typed calls to Hyperstack. Reads retry (Retry-After, jitter); writes never do.

    ``record``: a list that, when given, receives every **write** instead of sending it (the
    dry run): writes then return ``None``. Reads are always sent (discovery is real).
    """

    provider = "hyperstack"

    def __init__(self, base_url: str | None, api_key: str, clock: Clock, *,
                 timeout_s: float = 10.0, transport: httpx.BaseTransport | None = None,
                 attempts: int = 3, backoff_s: float = 1.0,
                 record: list[Sent] | None = None) -> None:
        self.http = HttpClient(base_url or DEFAULT_BASE, {"api_key": api_key}, clock,
                               provider=self.provider, timeout_s=timeout_s, attempts=attempts,
                               backoff_s=backoff_s, transport=transport, secrets=(api_key,),
                               refine=_refine)
        self.record = record

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> HyperstackClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------
    def get(self, path: str, params: dict[str, Any] | None = None) -> Fetched:
        return self.http.read("GET", path, params=params)

    def _write(self, method: str, path: str, body: Any = None,
               params: dict[str, Any] | None = None) -> Fetched | None:
        if self.record is not None:
            self.record.append(Sent(method, path, params, body))
            return None
        return self.http.write(method, path, params=params, json_body=body)

    def pages(self, path: str, key: str, params: dict[str, Any] | None = None, *,
              hashes: list[str] | None = None) -> Iterator[dict]:
        """Every object of a paged list, page after page until the last (a short page).
        ``hashes`` receives the sha256 of each page's body (billing samples cite them)."""
        seen: set[Any] = set()
        for page in range(1, MAX_PAGES + 1):
            got = self.get(path, {**(params or {}), "page": page, "pageSize": PAGE_SIZE})
            if hashes is not None:
                hashes.append(got.sha256)
            items = _items(got.data, key, path)
            fresh = 0
            for item in items:
                ident = item.get("id") if isinstance(item, dict) else None
                if ident is not None and ident in seen:
                    continue  # a server that ignores `page` repeats page 1: stop below
                seen.add(ident)
                fresh += 1
                yield item
            served = got.data.get("page_size") if isinstance(got.data, dict) else None
            size = served if isinstance(served, int) and served > 0 else PAGE_SIZE
            if len(items) < min(size, PAGE_SIZE) or fresh == 0:
                return
        raise ProviderMalformed(f"hyperstack: {path}: more than {MAX_PAGES} pages",
                                provider=self.provider)

    # -- virtual machines -------------------------------------------------------------------
    def list_vms(self, search: str | None = None, *,
                 hashes: list[str] | None = None) -> list[Vm]:
        """GET /core/virtual-machines, every page (virtual_machine_api.py:4164 ``list_vms``)."""
        params = {"search": search} if search else None
        return [Vm.parse(d) for d in self.pages("/core/virtual-machines", "instances", params,
                                                 hashes=hashes)]

    def get_vm(self, vm_id: int) -> Vm:
        """GET /core/virtual-machines/{id} → ``Instance.instance`` (virtual_machine_api.py:2742)."""
        return Vm.parse(_field(self.get(f"/core/virtual-machines/{vm_id}").data, "instance"))

    def create_vm(self, payload: dict) -> Vm | None:
        """POST /core/virtual-machines with a ``CreateInstancesPayload`` (create_instances_
        payload.py:33-49) → ``CreateInstancesResponse.instances`` (virtual_machine_api.py:1562).
        ``None`` in record mode."""
        got = self._write("POST", "/core/virtual-machines", payload)
        if got is None:
            return None
        instances = _items(got.data, "instances", "create virtual machine")
        if len(instances) != 1:
            raise ProviderMalformed("hyperstack: create virtual machine: expected one instance",
                                    provider=self.provider)
        return Vm.parse(instances[0])

    def delete_vm(self, vm_id: int) -> None:
        self._write("DELETE", f"/core/virtual-machines/{vm_id}")

    def hibernate_vm(self, vm_id: int, retain_ip: bool = True) -> None:
        """A state-changing GET (virtual_machine_api.py:3874): never retried blindly."""
        self._write("GET", f"/core/virtual-machines/{vm_id}/hibernate",
                    params={"retain_ip": "true" if retain_ip else "false"})

    def restore_vm(self, vm_id: int) -> None:
        """A state-changing GET (virtual_machine_api.py:5130)."""
        self._write("GET", f"/core/virtual-machines/{vm_id}/hibernate-restore")

    # -- volumes and attachments --------------------------------------------------------------
    def list_volumes(self, search: str | None = None) -> list[Volume]:
        params = {"search": search} if search else None
        return [Volume.parse(d) for d in self.pages("/core/volumes", "volumes", params)]

    def get_volume(self, volume_id: int) -> Volume:
        return Volume.parse(_field(self.get(f"/core/volumes/{volume_id}").data, "volume"))

    def create_volume(self, payload: dict) -> Volume | None:
        """POST /core/volumes with a ``CreateVolumePayload`` → ``Volume.volume`` (volume_api.py)."""
        got = self._write("POST", "/core/volumes", payload)
        return None if got is None else Volume.parse(_field(got.data, "volume"))

    def delete_volume(self, volume_id: int) -> None:
        self._write("DELETE", f"/core/volumes/{volume_id}")

    def attach_volumes(self, vm_id: int, volume_ids: list[int]) -> None:
        """POST /core/virtual-machines/{id}/attach-volumes ``AttachVolumesPayload{volume_ids}``
        (volume_attachment_api.py:45, 332; attach_volumes_payload.py:29-30)."""
        self._write("POST", f"/core/virtual-machines/{vm_id}/attach-volumes",
                    {"volume_ids": list(volume_ids)})

    def detach_volumes(self, vm_id: int, volume_ids: list[int]) -> None:
        self._write("POST", f"/core/virtual-machines/{vm_id}/detach-volumes",
                    {"volume_ids": list(volume_ids)})

    # -- account resources (discovery) ---------------------------------------------------------
    def flavors(self, region: str | None = None) -> list[Flavor]:
        """GET /core/flavors → ``FlavorListResponse.data[].flavors[]`` (flavor_api.py)."""
        got = self.get("/core/flavors", {"region": region} if region else None)
        out = []
        for group in _items(got.data, "data", "flavors"):
            for f in (group.get("flavors") or []) if isinstance(group, dict) else []:
                if isinstance(f, dict) and isinstance(f.get("name"), str):
                    stock = f.get("stock_available")
                    out.append(Flavor(f["name"], _str(f.get("gpu")) or None,
                                      _int(f.get("gpu_count")), _region(f, group),
                                      stock if isinstance(stock, bool) else None, f))
        return out

    def environments(self) -> list[Named]:
        return [Named(d.get("id"), str(d.get("name")), _str(d.get("region")))
                for d in self.pages("/core/environments", "environments")
                if isinstance(d, dict) and isinstance(d.get("name"), str)]

    def keypairs(self) -> list[Named]:
        out = []
        for d in self.pages("/core/keypairs", "keypairs"):
            if isinstance(d, dict) and isinstance(d.get("name"), str):
                env = _obj(d, "environment")
                out.append(Named(d.get("id"), d["name"], _str(env.get("region")),
                                 _str(env.get("name"))))
        return out

    def images(self, region: str | None = None) -> list[Named]:
        """GET /core/images → ``Images.images[].images[]`` grouped by region; pages with
        ``page``/``per_page`` (image_api.py:887-888)."""
        out: list[Named] = []
        seen: set[Any] = set()
        for page in range(1, MAX_PAGES + 1):
            params: dict[str, Any] = {"page": page, "per_page": PAGE_SIZE}
            if region:
                params["region"] = region
            got = self.get("/core/images", params)
            groups = _items(got.data, "images", "images")
            n = 0
            for group in groups:
                for img in (group.get("images") or []) if isinstance(group, dict) else []:
                    if not isinstance(img, dict) or not isinstance(img.get("name"), str):
                        continue
                    n += 1
                    if img.get("id") in seen:
                        continue
                    seen.add(img.get("id"))
                    out.append(Named(img.get("id"), img["name"], _region(img, group)))
            if n < PAGE_SIZE:
                return out
        return out

    # -- billing ----------------------------------------------------------------------------
    def usage(self, *, deleted: bool = False) -> Fetched:
        """GET /billing/billing/usage (``deleted=true``: terminated resources) →
        ``BillingMetricesResponse`` (billing_api.py ``get_usage``). Not paged."""
        return self.get("/billing/billing/usage", {"deleted": "true"} if deleted else None)

    def credit(self) -> Fetched:
        """GET /billing/user-credit/credit → ``data.credit`` (credit_api.py:284)."""
        return self.get("/billing/user-credit/credit")

    def billing_history(self, start: str, end: str) -> Fetched:
        """GET /billing/billing/history?start_date&end_date (``YYYY-MM-DDTHH:MM:SS``)."""
        return self.get("/billing/billing/history", {"start_date": start, "end_date": end})

    def pricebook(self) -> list[PriceItem]:
        """GET /pricebook → a bare list of ``PricebookModel{name, value}`` (USD per hour).
        The SDK types ``value`` as a number; third-party code saw strings: both are read."""
        got = self.get("/pricebook")
        if not isinstance(got.data, list):
            raise ProviderMalformed("hyperstack: /pricebook is not a list", provider=self.provider)
        out = []
        for item in got.data:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                continue
            try:
                value = Decimal(str(item.get("value")))
            except (InvalidOperation, ValueError):
                continue
            if value.is_finite() and value >= 0:
                out.append(PriceItem(item["name"], value))
        return out

    def resource_rate(self, resource_type: str, resource_id: int) -> Decimal | None:
        """GET /pricebook/calculate/resource/{type}/{id} → the resource's hourly rate in USD
        (``calculated_resource_bills.resource.actual_price``; calculate_api.py). The value of
        ``resource_type`` for a VM is unverified ("virtual_machine" in the docs example)."""
        got = self.get(f"/pricebook/calculate/resource/{resource_type}/{resource_id}")
        res = _field(_field(got.data, "calculated_resource_bills"), "resource")
        if not isinstance(res, dict):
            return None
        for key in ("actual_price", "price"):
            value = res.get(key)
            if isinstance(value, int | Decimal) and not isinstance(value, bool):
                return Decimal(value)
        return None
