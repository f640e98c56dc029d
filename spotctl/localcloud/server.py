"""The local cloud's HTTP server: Hyperstack's API shapes under ``/v1`` and a control API under
``/_control`` (clock, instances, top-ups, faults, invoice).

The real Hyperstack billing adapter and fleet backend run against it unchanged, with only the
base URL pointed here. Engines: a VM that becomes ACTIVE gets a real engine process (see
``engines.py``); its port is in the VM's extension field ``localcloud.engine_port`` and its host
in ``floating_ip`` (127.0.0.1).

Faults (control API ``POST /_control/faults``) apply to the billing endpoints ``/v1/billing/*``
for N simulated minutes: ``billing_dark`` (requests hang past any client timeout), ``http_500``,
``http_429``, ``malformed_json``, ``http_401``, ``cumulative_down`` (totals reported lower than
before), ``vanish`` (a resource missing from usage, live and deleted lists alike); and
``pricing_500``: the pricebook and its calculate route answer 500 (a launch gets no quote).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import threading
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from spotctl.clock import from_ms
from spotctl.localcloud.model import (
    DAY_MS,
    ENVIRONMENTS,
    FLAVORS,
    IMAGES,
    KEYPAIRS,
    REGION,
    VOLUME_PER_GB_MIN,
    CloudError,
    LocalCloud,
    Resource,
)

DEFAULT_PAGE_SIZE = 10  # Hyperstack's default is unverified: a small one makes clients page
MAX_PAGE_SIZE = 100

FAULT_KINDS = ("billing_dark", "http_500", "http_429", "malformed_json", "http_401",
               "cumulative_down", "vanish", "pricing_500")
_NUM = re.compile(r'"__num__(-?[0-9.]+)__"')


def usd(micros: int) -> str:
    """A placeholder that renders as a JSON number with exactly 6 decimals (never via float)."""
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    return f"__num__{sign}{micros // 1_000_000}.{micros % 1_000_000:06d}__"


def render(payload: Any, status: int = 200) -> Response:
    body = _NUM.sub(r"\1", json.dumps(payload))
    return Response(body, status_code=status, media_type="application/json")


def error(status: int, message: str, reason: str) -> Response:
    return render({"status": False, "message": message, "error_reason": reason}, status)


def naive_iso(ms: int | None) -> str | None:
    """Hyperstack sends naive ISO timestamps (UTC)."""
    return None if ms is None else from_ms(ms).replace(tzinfo=None).isoformat(timespec="seconds")


@dataclass
class Fault:
    kind: str
    until_ms: int
    resource: str | None = None  # "vm:101" for vanish / cumulative_down; None = all/newest


@dataclass
class ServerState:
    cloud: LocalCloud
    api_key: str
    dark_hang_s: float = 30.0
    faults: list[Fault] = field(default_factory=list)
    control: Any = None  # a ClockControl, when the clock can be steered
    journal: list[dict] | None = None  # every API exchange, when recording (contract test)

    def active_faults(self) -> dict[str, Fault]:
        now = self.cloud.now_ms()
        self.faults = [f for f in self.faults if f.until_ms > now]
        return {f.kind: f for f in self.faults}


def _vm_json(cloud: LocalCloud, vm: Resource) -> dict:
    """One VM as ``InstanceFields`` (instance_fields.py) describes it; nothing else."""
    f = vm.flavor
    assert f is not None
    public = vm.floating_ip and vm.state not in ("CREATING", "BUILD")
    atts = []
    for n, vol_id in enumerate(vm.volume_ids):
        vol = cloud.volume(vol_id)
        if vol is None:
            continue
        atts.append({"id": vol.id * 1000 + vm.id % 1000, "device": f"/dev/vd{chr(98 + n)}",
                     "status": "ATTACHED", "protected": False,
                     "created_at": naive_iso(vol.created_ms),
                     "volume": {"id": vol.id, "name": vol.name, "size": vol.size_gb,
                                "volume_type": "Cloud-SSD", "bootable": False,
                                "description": ""}})
    vm_state = {"ACTIVE": "active", "HIBERNATED": "shelved_offloaded", "SHUTOFF": "stopped"}
    return {
        "id": vm.id,
        "name": vm.name,
        "status": vm.state,
        "vm_state": vm_state.get(vm.state, "building"),
        "power_state": "RUNNING" if vm.state == "ACTIVE" else "SHUTDOWN",
        "environment": {"id": ENVIRONMENTS.get(vm.environment, 0), "name": vm.environment,
                        "org_id": cloud.org_id, "region": REGION},
        "image": {"name": vm.image} if vm.image else {},
        "flavor": {"id": f.id, "name": f.name, "cpu": f.cpu, "ram": f.ram, "disk": f.disk,
                   "ephemeral": f.ephemeral, "gpu": f.gpu or "", "gpu_count": f.gpu_count,
                   "labels": [], "features": {}},
        "keypair": {"name": vm.keypair},
        "volume_attachments": atts,
        "fixed_ip": vm.ip,
        "floating_ip": vm.ip if public else None,
        "floating_ip_status": "ATTACHED" if public else "DETACHED",
        "contract_id": None,
        "locked": False,
        "os": "ubuntu",
        "port_randomization": False,
        "requires_public_ip": bool(vm.floating_ip),
        "security_rules": [],
        "created_at": naive_iso(vm.created_ms),
        "labels": list(vm.labels),
    }


def _volume_json(vol: Resource) -> dict:
    """One volume as ``VolumesFields`` / ``VolumeFields`` describe it."""
    atts = [] if vol.attached_to is None else [
        {"id": vol.id * 1000 + vol.attached_to % 1000, "instance_id": vol.attached_to,
         "status": "ATTACHED", "device": "/dev/vdb", "protected": False}]
    return {"id": vol.id, "name": vol.name, "size": vol.size_gb, "volume_type": "Cloud-SSD",
            "status": vol.state, "bootable": False, "description": "", "attachments": atts,
            "environment": {"name": vol.environment, "region": REGION},
            "created_at": naive_iso(vol.created_ms), "updated_at": naive_iso(vol.created_ms)}


# -- request bodies, checked as strictly as the SDK's payload models -------------------------
_STR, _INT, _BOOL = (str,), (int,), (bool,)
PAYLOADS: dict[str, dict[str, tuple[tuple[type, ...], bool, int | None]]] = {
    # field: (types, required, max string length); mirrors the SDK's payload models
    "CreateInstancesPayload": {
        "assign_floating_ip": (_BOOL, False, None), "callback_url": (_STR, False, 250),
        "count": (_INT, True, None), "create_bootable_volume": (_BOOL, False, None),
        "enable_port_randomization": (_BOOL, False, None),
        "enhanced_monitoring_enabled": (_BOOL, False, None),
        "environment_name": (_STR, True, None), "flavor": ((dict,), False, None),
        "flavor_name": (_STR, True, None), "image_name": (_STR, False, None),
        "key_name": (_STR, True, None), "labels": ((list,), False, None),
        "name": (_STR, True, 50), "profile": ((dict,), False, None),
        "security_rules": ((list,), False, None), "user_data": (_STR, False, None),
        "volume_name": (_STR, False, None)},
    "CreateVolumePayload": {
        "callback_url": (_STR, False, 250), "description": (_STR, False, None),
        "environment_name": (_STR, True, None), "image_id": (_INT, False, None),
        "name": (_STR, True, 50), "size": (_INT, True, None), "volume_type": (_STR, True, None)},
    "AttachVolumesPayload": {"protected": (_BOOL, False, None),
                             "volume_ids": ((list,), False, None)},
    "DetachVolumesPayload": {"volume_ids": ((list,), False, None)},
}


def check_payload(model: str, body: Any) -> dict:
    """The body as the API accepts it, or a 400 naming the first problem. Unknown fields are
    rejected (the real API's answer to unknown fields is unverified: 400 is what the SDK
    declares for a bad request)."""
    spec = PAYLOADS[model]
    if not isinstance(body, dict):
        raise CloudError(400, "The request body must be a JSON object", "bad_request")
    unknown = sorted(set(body) - set(spec))
    if unknown:
        raise CloudError(400, f"Unknown field(s): {', '.join(unknown)}", "bad_request")
    for name, (types, required, max_len) in spec.items():
        if name not in body or body[name] is None:
            if required:
                raise CloudError(400, f"Field {name!r} is required", "bad_request")
            continue
        value = body[name]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise CloudError(400, f"Field {name!r} has the wrong type", "bad_request")
        if max_len is not None and len(value) > max_len:
            raise CloudError(400, f"Field {name!r} is longer than {max_len}", "bad_request")
    for name in ("labels",):
        if not all(isinstance(x, str) for x in body.get(name) or []):
            raise CloudError(400, f"Field {name!r} must be a list of strings", "bad_request")
    for name in ("volume_ids",):
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in body.get(name) or []):
            raise CloudError(400, f"Field {name!r} must be a list of integers", "bad_request")
    return body


def page_of(request: Request, items: list, *, size_param: str = "pageSize") -> tuple[list, dict]:
    """One page of ``items`` (oldest first) by ``page`` / ``pageSize``; the envelope fields."""
    q = request.query_params
    try:
        page = int(q.get("page", "1"))
        size = int(q.get(size_param, str(DEFAULT_PAGE_SIZE)))
    except ValueError:
        raise CloudError(400, "page and page size must be integers", "bad_request") from None
    if page < 1 or size < 1:
        raise CloudError(400, "page and page size must be positive", "bad_request")
    size = min(size, MAX_PAGE_SIZE)
    return items[(page - 1) * size: page * size], {"count": len(items), "page": page,
                                                     "page_size": size}


def _search(request: Request, items: list[Resource]) -> list[Resource]:
    term = request.query_params.get("search")
    return [r for r in items if term.lower() in r.name.lower()] if term else items


def build_app(state: ServerState) -> Starlette:
    cloud = state.cloud

    def authed(request: Request) -> bool:
        given = request.headers.get("api_key", "")
        return hmac.compare_digest(given.encode(), state.api_key.encode())

    async def billing_faults(request: Request) -> Response | None:
        faults = state.active_faults()
        if "billing_dark" in faults:
            await asyncio.sleep(state.dark_hang_s)  # clock-ok: real hang, past client timeouts
            return error(504, "Gateway Timeout", "timeout")
        if "http_401" in faults:
            return error(401, "Invalid API key", "unauthorized")
        if "http_429" in faults:
            return Response("Too Many Requests", status_code=429)
        if "http_500" in faults:
            return error(500, "Internal Server Error", "internal_error")
        if "malformed_json" in faults:
            return Response('{"status": true, "message": "Successful", "data": [{"resource_',
                            status_code=200, media_type="application/json")
        return None

    def guard(handler, billing: bool = False):
        async def wrapped(request: Request) -> Response:
            response = await answer(request)
            if state.journal is not None:
                body = await request.body()
                try:
                    sent = json.loads(body) if body else None
                except ValueError:
                    sent = body.decode(errors="replace")
                state.journal.append({
                    "method": request.method, "path": request.url.path.removeprefix("/v1"),
                    "query": dict(request.query_params), "body": sent,
                    "status": response.status_code,
                    "response": bytes(response.body).decode(errors="replace")})
            return response

        async def answer(request: Request) -> Response:
            if not authed(request):
                return error(401, "Unauthorized: a valid api_key header is required",
                             "unauthorized")
            if billing:
                faulted = await billing_faults(request)
                if faulted is not None:
                    return faulted
            try:
                return await handler(request)
            except CloudError as exc:
                return error(exc.status, exc.message, exc.reason)
            except (ValueError, KeyError, TypeError) as exc:
                return error(400, f"Bad request: {exc}", "bad_request")
        return wrapped

    async def body_of(request: Request, model: str) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise CloudError(400, "The request body is not valid JSON", "bad_request") from None
        return check_payload(model, body)

    # -- billing ------------------------------------------------------------------------
    async def usage(request: Request) -> Response:
        deleted = request.query_params.get("deleted", "false").lower() == "true"
        faults = state.active_faults()
        resources = cloud.usage(deleted)
        vanish = faults.get("vanish")
        if vanish is not None:
            target = vanish.resource or _newest_vm(cloud)
            resources = [r for r in resources if f"{r.kind}:{r.id}" != target]
        down = faults.get("cumulative_down")
        now = cloud.now_ms()
        data = []
        for r in resources:
            total = r.total_micros
            if down is not None and (down.resource is None or down.resource == f"{r.kind}:{r.id}"):
                total = total * 9 // 10
            data.append({
                "resource_id": r.id, "resource_type": r.kind, "name": r.name,
                "organization_id": cloud.org_id,
                "bill_per_minute": None if deleted else usd(r.rate_per_min()),
                "create_time": naive_iso(r.created_ms),
                "terminate_time": naive_iso(r.deleted_ms),
                "total_up_time": float(((r.deleted_ms or now) - r.created_ms) // 60_000),
                "total_bill": usd(total), "active": not deleted,
                "exclude_billing": r.exclude_billing,
            })
        return render({"message": "Successful", "status": True, "data": data})

    async def credit(request: Request) -> Response:
        c = cloud.credit_micros()
        return render({"status": True, "message": "Getting credit successful",
                       "data": {"credit": usd(c), "threshold": usd(0),
                                "can_create_instance": c > 0}})

    async def payments(request: Request) -> Response:
        rows = [{"amount": usd(m), "tax_amount": usd(0), "currency": "usd", "paid_from": "card",
                 "status": "success", "payment_type": "manual", "transaction_id": pid,
                 "payment_id": pid, "description": "Credit top-up",
                 "created_at": naive_iso(ms), "updated_at": naive_iso(ms)}
                for ms, m, pid in cloud.topups]
        return render({"status": True, "message": "Payment details", "data": rows})

    async def last_day_cost(request: Request) -> Response:
        now = cloud.now_ms()
        day = now - now % DAY_MS - DAY_MS
        book = cloud.billed_on_day(day)
        return render({"status": True, "message": "Last day cost", "data": {
            "instances_cost": usd(book.get("vm", 0)), "volumes_cost": usd(book.get("volume", 0)),
            "clusters_cost": usd(0), "total_cost": usd(sum(book.values()))}})

    async def history(request: Request) -> Response:
        from spotctl.clock import parse_iso, to_ms

        start = to_ms(parse_iso(request.query_params["start_date"]))
        end = to_ms(parse_iso(request.query_params["end_date"]))
        cloud.billed_micros()  # bring books up to date
        days = [d for d in sorted(cloud.daily) if start <= d < end]
        rows = [{"attributes": {"id": naive_iso(d)[:10]},
                 "metrics": {"incurred_bill": usd(sum(cloud.daily[d].values())),
                             "non_discounted_bill": usd(sum(cloud.daily[d].values())),
                             "vm_cost": usd(cloud.daily[d].get("vm", 0)),
                             "volume_cost": usd(cloud.daily[d].get("volume", 0)),
                             "snapshot_cost": usd(0), "contract_cost": usd(0)}} for d in days]
        return render({"status": True, "message": "Billing history", "billing_history": {
            "org_id": cloud.org_id, "total_count": len(rows), "billing_history": rows}})

    async def pricebook(request: Request) -> Response:
        """List prices per hour: per GPU of each model, on demand and spot (the local cloud's
        naming for spot entries, ``<gpu>-spot``, is its own: Hyperstack's is unverified)."""
        if "pricing_500" in state.active_faults():
            return error(500, "Internal Server Error", "internal_error")
        rows, seen = [], set()
        for f in FLAVORS.values():
            if not f.gpu_count:
                continue
            name = f.gpu + ("-spot" if f.spot else "")
            if name in seen:
                continue
            seen.add(name)
            rows.append({"id": len(rows) + 1, "name": name,
                         "value": usd(f.active_per_min * 60 // f.gpu_count),
                         "original_value": usd(f.active_per_min * 60 // f.gpu_count),
                         "discount_applied": False, "start_time": None, "end_time": None})
        rows.append({"id": len(rows) + 1, "name": "Cloud-SSD", "value": usd(VOLUME_PER_GB_MIN * 60),
                     "original_value": usd(VOLUME_PER_GB_MIN * 60), "discount_applied": False,
                     "start_time": None, "end_time": None})
        return render(rows)

    async def calculate(request: Request) -> Response:
        if "pricing_500" in state.active_faults():
            return error(500, "Internal Server Error", "internal_error")
        rtype = request.path_params["resource_type"]
        rid = int(request.path_params["id"])
        if rtype == "virtual_machine":
            res = cloud.get_vm(rid)
            assert res.flavor is not None
            per_min = res.flavor.active_per_min
            parts = [{"type": "GPU", "name": res.flavor.gpu or res.flavor.name,
                      "amount": max(1, res.flavor.gpu_count),
                      "rate": usd(per_min * 60 // max(1, res.flavor.gpu_count)),
                      "discounted_rate": usd(per_min * 60 // max(1, res.flavor.gpu_count)),
                      "price": usd(per_min * 60), "actual_price": usd(per_min * 60)}]
        elif rtype == "volume":
            res = cloud.get_volume(rid)
            per_min = res.size_gb * VOLUME_PER_GB_MIN
            parts = [{"type": "Disk", "name": "Cloud-SSD", "amount": res.size_gb,
                      "rate": usd(VOLUME_PER_GB_MIN * 60), "discounted_rate":
                      usd(VOLUME_PER_GB_MIN * 60), "price": usd(per_min * 60),
                      "actual_price": usd(per_min * 60)}]
        else:
            raise CloudError(400, f"Unknown resource type {rtype}", "bad_request")
        return render({"status": True, "message": "Success", "calculated_resource_bills": {
            "org_id": cloud.org_id, "resource": {
                "type": rtype, "name": res.name, "infrahub_id": res.id, "status": res.state,
                "host": "localcloud", "price": usd(per_min * 60),
                "actual_price": usd(per_min * 60), "resources": parts}}})

    # -- core: account resources --------------------------------------------------------
    async def flavors(request: Request) -> Response:
        groups: dict[str, list] = {}
        for f in FLAVORS.values():
            groups.setdefault(f.gpu or "", []).append({
                "id": f.id, "name": f.name, "display_name": f.name, "region_name": REGION,
                "cpu": f.cpu, "ram": f.ram, "disk": f.disk, "ephemeral": f.ephemeral,
                "gpu": f.gpu or "", "gpu_count": f.gpu_count,
                "stock_available": cloud.in_stock(f), "labels": [], "features": {},
                "created_at": "2026-01-01T00:00:00"})
        region = request.query_params.get("region")
        data = [] if region not in (None, REGION) else [
            {"gpu": gpu, "region_name": REGION, "flavors": fl} for gpu, fl in groups.items()]
        return render({"status": True, "message": "Getting flavors successful", "data": data})

    async def environments(request: Request) -> Response:
        envs = [{"id": i, "name": n, "region": REGION, "created_at": "2026-01-01T00:00:00",
                 "features": {"network_optimised": False, "green_status": "NOT_GREEN"}}
                for n, i in ENVIRONMENTS.items()]
        items, env = page_of(request, envs)
        return render({"status": True, "message": "Getting environments successful", **env,
                       "environments": items})

    async def keypairs(request: Request) -> Response:
        pairs = [{"id": i, "name": n, "fingerprint": "SHA256:localcloud", "public_key":
                  "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIlocalcloud spotctl",
                  "created_at": "2026-01-01T00:00:00",
                  "environment": {"id": 1, "name": "default", "region": REGION,
                                  "created_at": "2026-01-01T00:00:00"}}
                 for n, i in KEYPAIRS.items()]
        items, env = page_of(request, pairs)
        return render({"status": True, "message": "Getting keypairs successful", **env,
                       "keypairs": items})

    async def images(request: Request) -> Response:
        imgs = [{"id": i, "name": n, "region_name": REGION, "type": "Ubuntu",
                 "version": "22.04", "size": 10, "display_size": "10 GB", "description": n,
                 "is_public": True, "labels": []} for n, i in IMAGES.items()]
        region = request.query_params.get("region")
        if region not in (None, REGION):
            imgs = []
        items, _ = page_of(request, imgs, size_param="per_page")
        return render({"status": True, "message": "Getting images successful", "images": [
            {"region_name": REGION, "type": "Ubuntu", "logo": "", "images": items}]})

    # -- core: virtual machines --------------------------------------------------------
    async def list_vms(request: Request) -> Response:
        vms = _search(request, cloud.list_vms())
        env_name = request.query_params.get("environment")
        if env_name:
            vms = [v for v in vms if v.environment == env_name]
        items, env = page_of(request, vms)
        return render({"status": True, "message": "Getting instances successful", **env,
                       "instances": [_vm_json(cloud, vm) for vm in items]})

    async def create_vm(request: Request) -> Response:
        body = await body_of(request, "CreateInstancesPayload")
        count = body["count"]
        if not 1 <= count <= 20:
            raise CloudError(400, "count must be between 1 and 20", "bad_request")
        if body.get("volume_name") and count != 1:
            raise CloudError(400, "volume_name needs count = 1", "bad_request")
        vol = None
        if body.get("volume_name"):
            named = [v for v in cloud.list_volumes() if v.name == body["volume_name"]]
            if not named:
                raise CloudError(404, f"Volume {body['volume_name']} not found", "not_found")
            vol = named[0]
            if vol.attached_to is not None:
                raise CloudError(400, f"Volume {vol.name} is already attached to virtual machine "
                                      f"{vol.attached_to}", "volume_in_use")
        made = [cloud.create_vm(body["name"] if count == 1 else f"{body['name']}-{i + 1}",
                                body["flavor_name"], environment=body["environment_name"],
                                key_name=body["key_name"], image_name=body.get("image_name"),
                                labels=body.get("labels"), user_data=body.get("user_data"),
                                assign_floating_ip=bool(body.get("assign_floating_ip")))
                for i in range(count)]
        if vol is not None:
            cloud.attach_at_create(made[0].id, vol.id)
        return render({"status": True, "message": "Creating instances",
                       "instances": [_vm_json(cloud, vm) for vm in made]})

    async def get_vm(request: Request) -> Response:
        vm = cloud.get_vm(int(request.path_params["vm_id"]))
        return render({"status": True, "message": "Getting instance successful",
                       "instance": _vm_json(cloud, vm)})

    async def delete_vm(request: Request) -> Response:
        cloud.delete_vm(int(request.path_params["vm_id"]))
        return render({"status": True, "message": "Deleting instance"})

    async def hibernate(request: Request) -> Response:
        cloud.hibernate(int(request.path_params["vm_id"]))
        return render({"status": True, "message": "Hibernating instance"})

    async def restore(request: Request) -> Response:
        cloud.restore(int(request.path_params["vm_id"]))
        return render({"status": True, "message": "Restoring instance from hibernation"})

    async def vm_events(request: Request) -> Response:
        key = f"vm:{int(request.path_params['vm_id'])}"
        rows = [{"instance_id": int(key[3:]), "org_id": cloud.org_id, "user_id": 1,
                 "type": "state", "object": "instance", "reason": e.kind, "message": e.detail,
                 "time": naive_iso(e.ms)} for e in cloud.events if e.resource == key]
        return render({"status": True, "message": "Events", "instance_events": rows})

    def _attachments(vm_id: int, vols: list[Resource]) -> list[dict]:
        return [{"id": v.id * 1000 + vm_id % 1000, "instance_id": vm_id, "volume_id": v.id,
                 "device": "/dev/vdb", "status": "ATTACHED" if v.attached_to == vm_id
                 else "DETACHED", "protected": False, "created_at": naive_iso(v.created_ms)}
                for v in vols]

    async def attach(request: Request) -> Response:
        vm_id = int(request.path_params["vm_id"])
        body = await body_of(request, "AttachVolumesPayload")
        vols = cloud.attach(vm_id, list(body.get("volume_ids") or []))
        return render({"status": True, "message": "Volumes attached",
                       "volume_attachments": _attachments(vm_id, vols)})

    async def detach(request: Request) -> Response:
        vm_id = int(request.path_params["vm_id"])
        body = await body_of(request, "DetachVolumesPayload")
        vols = cloud.detach(vm_id, list(body.get("volume_ids") or []))
        return render({"status": True, "message": "Volumes detached",
                       "volume_attachments": _attachments(vm_id, vols)})

    # -- core: volumes ---------------------------------------------------------------------
    async def list_volumes(request: Request) -> Response:
        vols = _search(request, cloud.list_volumes())
        items, env = page_of(request, vols)
        return render({"status": True, "message": "Getting volumes successful", **env,
                       "volumes": [_volume_json(v) for v in items]})

    async def create_volume(request: Request) -> Response:
        body = await body_of(request, "CreateVolumePayload")
        vol = cloud.create_volume(body["name"], body["size"], volume_type=body["volume_type"],
                                  environment=body["environment_name"])
        return render({"status": True, "message": "Volume created",
                       "volume": _volume_json(vol)})

    async def get_volume(request: Request) -> Response:
        vol = cloud.get_volume(int(request.path_params["volume_id"]))
        return render({"status": True, "message": "Getting volume successful",
                       "volume": _volume_json(vol)})

    async def delete_volume(request: Request) -> Response:
        cloud.delete_volume(int(request.path_params["volume_id"]))
        return render({"status": True, "message": "Volume deleted"})

    # -- control --------------------------------------------------------------------------
    async def c_clock(request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            ctl = state.control
            if ctl is None:
                return JSONResponse({"error": "this clock cannot be steered"}, 409)
            if "advance_minutes" in body:
                ctl.advance(float(body["advance_minutes"]) * 60)
            if "speed" in body:
                ctl.set_speed(float(body["speed"]))
            if body.get("real"):
                ctl.set_real()
        now = cloud.now_ms()
        return JSONResponse({"now_ms": now, "now": naive_iso(now) + "Z",
                             "speed": getattr(state.control, "speed", lambda: 1.0)()})

    async def c_create(request: Request) -> Response:
        """Create a VM without the API's checks on references (tests of billing only)."""
        body = await request.json()
        flavor = str(body.get("flavor", "n3-H100x1"))
        if body.get("spot") and not flavor.endswith("-spot"):
            flavor += "-spot"
        try:
            vm = cloud.create_vm(str(body["name"]), flavor,
                                 labels=[str(x) for x in body.get("labels", [])])
        except CloudError as exc:
            return JSONResponse({"error": exc.message}, exc.status)
        return JSONResponse(_vm_json(cloud, vm), 201)

    async def c_preempt(request: Request) -> Response:
        """``{"mode": "abrupt"}`` (the default: gone at once) or ``"graceful"`` (the VM's
        engine gets SIGTERM and drains, then the VM goes; answered at once, the drain runs in
        the background). Provider notice is unverified for Hyperstack: see LocalCloud.preempt."""
        vm_id = int(request.path_params["vm_id"])
        raw = await request.body()
        try:
            mode = (json.loads(raw) if raw.strip() else {}).get("mode", "abrupt")
        except (ValueError, AttributeError):
            return JSONResponse({"error": "body: expected a JSON object"}, 400)
        if mode not in ("abrupt", "graceful"):
            return JSONResponse({"error": "mode: expected abrupt or graceful"}, 400)
        try:
            if mode == "abrupt":
                vm = cloud.preempt(vm_id)
                return JSONResponse({"preempted": vm.id, "mode": mode})
            vm = cloud.get_vm(vm_id)
            if not vm.spot:
                raise CloudError(400, "Only spot VMs can be preempted", "not_spot")
        except CloudError as exc:
            return JSONResponse({"error": exc.message}, exc.status)

        def graceful() -> None:
            with contextlib.suppress(CloudError):  # deleted meanwhile: nothing left to reclaim
                cloud.preempt(vm_id, graceful=True)

        threading.Thread(target=graceful, daemon=True, name=f"preempt-vm-{vm_id}").start()
        return JSONResponse({"preempting": vm_id, "mode": mode}, 202)

    async def c_rate(request: Request) -> Response:
        body = await request.json()
        try:
            res = cloud.set_rate_factor(str(body["resource"]), int(body["percent"]))
        except CloudError as exc:
            return JSONResponse({"error": exc.message}, exc.status)
        return JSONResponse({"resource": f"{res.kind}:{res.id}",
                             "percent": res.rate_factor_pct})

    async def c_exclude(request: Request) -> Response:
        body = await request.json()
        try:
            res = cloud.exclude_billing(str(body["resource"]))
        except CloudError as exc:
            return JSONResponse({"error": exc.message}, exc.status)
        return JSONResponse({"resource": f"{res.kind}:{res.id}", "exclude_billing": True})

    async def c_topup(request: Request) -> Response:
        from spotctl.money import to_micros

        body = await request.json()
        pid = cloud.topup(to_micros(Decimal(str(body["usd"]))))
        return JSONResponse({"payment_id": pid})

    async def c_faults(request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            kind = str(body.get("kind"))
            if kind not in FAULT_KINDS:
                return JSONResponse({"error": f"unknown fault {kind!r}",
                                     "kinds": list(FAULT_KINDS)}, 400)
            until = cloud.now_ms() + int(float(body.get("minutes", 5)) * 60_000)
            state.faults.append(Fault(kind, until, body.get("resource")))
        elif request.method == "DELETE":
            state.faults.clear()
        return JSONResponse({"active": [{"kind": f.kind, "until_ms": f.until_ms,
                                         "resource": f.resource} for f in
                                        state.active_faults().values()]})

    async def c_spot(request: Request) -> Response:
        body = await request.json()
        cloud.spot_available = bool(body.get("available", True))
        return JSONResponse({"spot_available": cloud.spot_available})

    async def c_invoice(request: Request) -> Response:
        return JSONResponse(cloud.invoice())

    async def c_events(request: Request) -> Response:
        return JSONResponse([{"ms": e.ms, "resource": e.resource, "kind": e.kind,
                              "detail": e.detail} for e in cloud.events])

    async def c_vms(request: Request) -> Response:
        """What the operator of the local cloud sees: every VM with its boot state."""
        return JSONResponse([{"id": vm.id, "name": vm.name, "status": vm.state,
                              "spot": vm.spot, "ip": vm.ip, "volumes": list(vm.volume_ids),
                              "booted": vm.booted} for vm in cloud.list_vms()])

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    vm = "/v1/core/virtual-machines/{vm_id:int}"
    routes = [
        Route("/v1/billing/billing/usage", guard(usage, True)),
        Route("/v1/billing/user-credit/credit", guard(credit, True)),
        Route("/v1/billing/payment/payment-details", guard(payments, True)),
        Route("/v1/billing/billing/last-day-cost", guard(last_day_cost, True)),
        Route("/v1/billing/billing/history", guard(history, True)),
        Route("/v1/pricebook", guard(pricebook), methods=["GET"]),
        Route("/v1/pricebook/calculate/resource/{resource_type}/{id:int}", guard(calculate),
              methods=["GET"]),
        Route("/v1/core/flavors", guard(flavors), methods=["GET"]),
        Route("/v1/core/environments", guard(environments), methods=["GET"]),
        Route("/v1/core/keypairs", guard(keypairs), methods=["GET"]),
        Route("/v1/core/images", guard(images), methods=["GET"]),
        Route("/v1/core/virtual-machines", guard(list_vms), methods=["GET"]),
        Route("/v1/core/virtual-machines", guard(create_vm), methods=["POST"]),
        Route(vm, guard(get_vm), methods=["GET"]),
        Route(vm, guard(delete_vm), methods=["DELETE"]),
        Route(vm + "/hibernate", guard(hibernate), methods=["GET"]),
        Route(vm + "/hibernate-restore", guard(restore), methods=["GET"]),
        Route(vm + "/events", guard(vm_events), methods=["GET"]),
        Route(vm + "/attach-volumes", guard(attach), methods=["POST"]),
        Route(vm + "/detach-volumes", guard(detach), methods=["POST"]),
        Route("/v1/core/volumes", guard(list_volumes), methods=["GET"]),
        Route("/v1/core/volumes", guard(create_volume), methods=["POST"]),
        Route("/v1/core/volumes/{volume_id:int}", guard(get_volume), methods=["GET"]),
        Route("/v1/core/volumes/{volume_id:int}", guard(delete_volume), methods=["DELETE"]),
        Route("/_control/clock", c_clock, methods=["GET", "POST"]),
        Route("/_control/vms", c_create, methods=["POST"]),
        Route("/_control/vms", c_vms, methods=["GET"]),
        Route("/_control/vms/{vm_id:int}/preempt", c_preempt, methods=["POST"]),
        Route("/_control/rate", c_rate, methods=["POST"]),
        Route("/_control/exclude", c_exclude, methods=["POST"]),
        Route("/_control/topup", c_topup, methods=["POST"]),
        Route("/_control/faults", c_faults, methods=["GET", "POST", "DELETE"]),
        Route("/_control/spot", c_spot, methods=["POST"]),
        Route("/_control/invoice", c_invoice),
        Route("/_control/events", c_events),
        Route("/_control/health", health),
    ]
    return Starlette(routes=routes)


def _newest_vm(cloud: LocalCloud) -> str | None:
    vms = cloud.list_vms()
    return f"vm:{max(vm.id for vm in vms)}" if vms else None
