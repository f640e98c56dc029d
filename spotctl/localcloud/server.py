"""The local cloud's HTTP server: Hyperstack's API shapes under ``/v1`` and a control API under
``/_control`` (clock, instances, top-ups, faults, invoice).

The real Hyperstack billing adapter and fleet backend run against it unchanged, with only the
base URL pointed here. Engines: a VM that becomes ACTIVE gets a real engine process (see
``engines.py``); its port is in the VM's extension field ``localcloud.engine_port`` and its host
in ``floating_ip`` (127.0.0.1).

Faults (control API ``POST /_control/faults``) apply to the billing endpoints ``/v1/billing/*``
for N simulated minutes: ``billing_dark`` (requests hang past any client timeout), ``http_500``,
``http_429``, ``malformed_json``, ``http_401``, ``cumulative_down`` (totals reported lower than
before), ``vanish`` (a resource missing from usage, live and deleted lists alike).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from spotctl.clock import from_ms
from spotctl.localcloud.model import DAY_MS, CloudError, LocalCloud, Resource

FAULT_KINDS = ("billing_dark", "http_500", "http_429", "malformed_json", "http_401",
               "cumulative_down", "vanish")
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

    def active_faults(self) -> dict[str, Fault]:
        now = self.cloud.now_ms()
        self.faults = [f for f in self.faults if f.until_ms > now]
        return {f.kind: f for f in self.faults}


def _vm_json(vm: Resource) -> dict:
    f = vm.flavor
    assert f is not None
    power = "RUNNING" if vm.state == "ACTIVE" else "SHUTDOWN"
    vm_state = {"ACTIVE": "active", "HIBERNATED": "shelved_offloaded"}.get(
        vm.state, vm.state.lower())
    return {
        "id": vm.id, "name": vm.name, "status": vm.state, "power_state": power,
        "vm_state": vm_state,
        "environment": {"id": 1, "name": vm.environment, "org_id": 7613, "region": "LOCAL-1"},
        "image": {"name": "Ubuntu Server 22.04 LTS R535 CUDA 12.2"},
        "flavor": {"id": 1, "name": f.name, "cpu": f.cpu, "ram": f.ram, "disk": f.disk,
                   "ephemeral": 0, "gpu": f.gpu or "", "gpu_count": f.gpu_count},
        "keypair": {"name": "localcloud"},
        "volume_attachments": [],
        "floating_ip": "127.0.0.1" if vm.state == "ACTIVE" else None,
        "floating_ip_status": "ATTACHED" if vm.state == "ACTIVE" else "DETACHED",
        "contract_id": None,
        "locked": False,
        "created_at": naive_iso(vm.created_ms),
        "labels": list(vm.labels),
        "localcloud": {"spot": vm.spot, "engine_port": vm.engine_port},
    }


def _volume_json(vol: Resource) -> dict:
    return {"id": vol.id, "name": vol.name, "size": vol.size_gb, "volume_type": "Cloud-SSD",
            "status": vol.state, "bootable": False, "attachments": [],
            "environment": {"name": "localcloud-1", "region": "LOCAL-1"},
            "created_at": naive_iso(vol.created_ms), "updated_at": naive_iso(vol.created_ms)}


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
                "total_bill": usd(total), "active": not deleted, "exclude_billing": False,
                "labels": list(r.labels),
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

    # -- core ---------------------------------------------------------------------------
    async def list_vms(request: Request) -> Response:
        vms = [_vm_json(vm) for vm in cloud.list_vms()]
        return render({"status": True, "message": "Getting instances successful",
                       "count": len(vms), "page": 1, "page_size": max(50, len(vms)),
                       "instances": vms})

    async def create_vm(request: Request) -> Response:
        body = await request.json()
        count = int(body.get("count", 1))
        labels = [str(x) for x in body.get("labels", [])]
        spot = bool(body.get("spot", False)) or "spot" in labels
        made = [cloud.create_vm(str(body["name"]) if count == 1 else f"{body['name']}-{i}",
                                str(body["flavor_name"]), spot=spot,
                                environment=str(body.get("environment_name", "localcloud-1")),
                                labels=labels) for i in range(count)]
        return render({"status": True, "message": "Creating instances",
                       "instances": [_vm_json(vm) for vm in made]}, 201)

    async def get_vm(request: Request) -> Response:
        vm = cloud.get_vm(int(request.path_params["vm_id"]))
        return render({"status": True, "message": "Getting instance successful",
                       "instance": _vm_json(vm)})

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

    async def list_volumes(request: Request) -> Response:
        vols = [_volume_json(v) for v in cloud.list_volumes()]
        return render({"status": True, "message": "Volumes", "count": len(vols), "page": 1,
                       "page_size": max(50, len(vols)), "volumes": vols})

    async def create_volume(request: Request) -> Response:
        body = await request.json()
        vol = cloud.create_volume(str(body["name"]), int(body["size"]))
        return render({"status": True, "message": "Volume created",
                       "volume": _volume_json(vol)}, 201)

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
        body = await request.json()
        vm = cloud.create_vm(str(body["name"]), str(body.get("flavor", "n3-H100x1")),
                             spot=bool(body.get("spot", False)),
                             labels=[str(x) for x in body.get("labels", [])])
        return JSONResponse(_vm_json(vm), 201)

    async def c_preempt(request: Request) -> Response:
        try:
            vm = cloud.preempt(int(request.path_params["vm_id"]))
        except CloudError as exc:
            return JSONResponse({"error": exc.message}, exc.status)
        return JSONResponse({"preempted": vm.id})

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

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    routes = [
        Route("/v1/billing/billing/usage", guard(usage, True)),
        Route("/v1/billing/user-credit/credit", guard(credit, True)),
        Route("/v1/billing/payment/payment-details", guard(payments, True)),
        Route("/v1/billing/billing/last-day-cost", guard(last_day_cost, True)),
        Route("/v1/billing/billing/history", guard(history, True)),
        Route("/v1/core/virtual-machines", guard(list_vms), methods=["GET"]),
        Route("/v1/core/virtual-machines", guard(create_vm), methods=["POST"]),
        Route("/v1/core/virtual-machines/{vm_id:int}", guard(get_vm), methods=["GET"]),
        Route("/v1/core/virtual-machines/{vm_id:int}", guard(delete_vm), methods=["DELETE"]),
        Route("/v1/core/virtual-machines/{vm_id:int}/hibernate", guard(hibernate)),
        Route("/v1/core/virtual-machines/{vm_id:int}/hibernate-restore", guard(restore)),
        Route("/v1/core/virtual-machines/{vm_id:int}/events", guard(vm_events)),
        Route("/v1/core/volumes", guard(list_volumes), methods=["GET"]),
        Route("/v1/core/volumes", guard(create_volume), methods=["POST"]),
        Route("/v1/core/volumes/{volume_id:int}", guard(delete_volume), methods=["DELETE"]),
        Route("/_control/clock", c_clock, methods=["GET", "POST"]),
        Route("/_control/vms", c_create, methods=["POST"]),
        Route("/_control/vms/{vm_id:int}/preempt", c_preempt, methods=["POST"]),
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
