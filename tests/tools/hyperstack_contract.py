"""Run inside .venv-contract (the official `hyperstack` SDK, pinned): the contract between
spotctl, the local cloud and Hyperstack's own SDK.

stdin: {"journal": [{method, path, query, body, status, response}...], "base_url", "api_key",
        "uses": ["list_vms", ...]}  (the journal: every API exchange the local cloud saw while
        spotctl ran: up, hibernate, wake, down, polls, reconcile, the dry run...)

Checks, each failure one line in "errors":
1. every exchange maps to an SDK endpoint (method + path template, from the SDK's own
   `_*_serialize` code), with only query parameters that endpoint defines;
2. every request body validates against the endpoint's payload model (`from_dict`), with no
   field the model does not define (recursively);
3. every response status is one the SDK declares for that endpoint, and every response body
   deserializes into the declared model with no field the model does not define (recursively);
4. every endpoint in "uses" was exercised;
5. the SDK itself, pointed at the local cloud, calls each of those endpoints and gets its typed
   model back (no exception, no `None`).
stdout: {"errors": [...], "endpoints": {op: count}, "sdk_calls": [...]}
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
import sys
import typing

import hyperstack
import pydantic
from hyperstack import api as api_pkg
from hyperstack.api_client import ApiClient
from hyperstack.configuration import Configuration


def endpoint_table() -> list[dict]:
    """Every SDK operation: op, method, path regex, query names, payload model, responses."""
    table = []
    for mod_info in pkgutil.iter_modules(api_pkg.__path__):
        mod = importlib.import_module(f"hyperstack.api.{mod_info.name}")
        src = inspect.getsource(mod)
        classes = [c for _, c in inspect.getmembers(mod, inspect.isclass)
                   if c.__module__ == mod.__name__]
        for cls in classes:
            for m in re.finditer(r"def _(\w+)_serialize\(.*?\n(.*?)(?=\n    def |\Z)", src, re.S):
                op, body = m.group(1), m.group(2)
                method = re.search(r"method='(\w+)'", body).group(1)
                path = re.search(r"resource_path='([^']+)'", body).group(1)
                query = re.findall(r"_query_params.append\(\('(\w+)'", body)
                head = r"    def " + op + r"\(.*?_response_types_map: Dict\[str, Optional\[str\]\] = "
                rm = re.search(head + r"\{(.*?)\}", src, re.S)
                responses = dict(re.findall(r"'(\d+)': \"?([\w\[\]]+)\"?", rm.group(1))) if rm else {}
                fn = getattr(cls, op, None)
                payload = None
                if fn is not None:
                    params = inspect.signature(fn).parameters
                    for pname in ("payload", "body"):
                        if pname in params:
                            payload = params[pname].annotation
                            if isinstance(payload, str):
                                payload = getattr(hyperstack.models, payload, None) or \
                                    getattr(hyperstack, payload, None)
                regex = "^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path)) + "$"
                literal = len([s for s in path.split("/") if s and not s.startswith("{")])
                table.append({"op": op, "cls": cls, "method": method, "path": path,
                              "regex": re.compile(regex), "literal": literal, "query": query,
                              "payload": payload, "responses": responses})
    return table


def match(table: list[dict], method: str, path: str) -> dict | None:
    fits = [e for e in table if e["method"] == method and e["regex"].match(path)]
    return max(fits, key=lambda e: e["literal"]) if fits else None


def _model_of(annotation):
    """The pydantic model inside Optional[...] / List[...], and whether it is a list."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return _model_of(inner[0]) if len(inner) == 1 else (None, False)
    if origin in (list, typing.List):  # noqa: UP006
        model, _ = _model_of(args[0]) if args else (None, False)
        return model, True
    if inspect.isclass(annotation) and issubclass(annotation, pydantic.BaseModel):
        return annotation, False
    return None, False


def extra_fields(model, data, where: str) -> list[str]:
    """Fields in `data` that `model` does not define, recursively."""
    out = []
    if not isinstance(data, dict):
        return out
    fields = model.model_fields
    names = {f.alias or n for n, f in fields.items()}
    for key in sorted(set(data) - names):
        out.append(f"{where}.{key}")
    for name, field in fields.items():
        value = data.get(field.alias or name)
        sub, is_list = _model_of(field.annotation)
        if sub is None or value is None:
            continue
        for i, item in enumerate(value if is_list and isinstance(value, list) else [value]):
            out += extra_fields(sub, item, f"{where}.{name}" + (f"[{i}]" if is_list else ""))
    return out


def check_journal(table, journal, client) -> tuple[list[str], dict]:
    errors, seen = [], {}
    for ex in journal:
        where = f"{ex['method']} {ex['path']}"
        ep = match(table, ex["method"], ex["path"])
        if ep is None:
            errors.append(f"{where}: no such endpoint in the SDK")
            continue
        seen[ep["op"]] = seen.get(ep["op"], 0) + 1
        bad_q = sorted(set(ex["query"]) - set(ep["query"]))
        if bad_q:
            errors.append(f"{where}: query parameter(s) {bad_q} not defined (SDK: {ep['query']})")
        if ex["body"] is not None:
            model = ep["payload"]
            if model is None:
                errors.append(f"{where}: sends a body; the SDK endpoint takes none")
            else:
                errors += [f"{where}: request field {f} not in {model.__name__}"
                           for f in extra_fields(model, ex["body"], model.__name__)]
                try:
                    model.from_dict(ex["body"])
                except (pydantic.ValidationError, ValueError, TypeError) as exc:
                    errors.append(f"{where}: body rejected by {model.__name__}: "
                                  f"{str(exc).splitlines()[0]}")
        if ex.get("status") is None:  # a request recorded by the dry run: never sent
            continue
        status = str(ex["status"])
        rtype = ep["responses"].get(status)
        if status not in ep["responses"]:
            errors.append(f"{where}: status {status} not declared by the SDK "
                          f"({sorted(ep['responses'])})")
            continue
        if rtype in (None, "None") or not ex["response"]:
            continue
        try:
            obj = client.deserialize(ex["response"], rtype, "application/json")
        except Exception as exc:  # any failure to deserialize is the finding
            errors.append(f"{where}: {status} response does not deserialize into {rtype}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            continue
        if obj is None:
            errors.append(f"{where}: {status} response deserialized to None")
            continue
        data = json.loads(ex["response"])
        models = []
        m = re.fullmatch(r"List\[(\w+)\]", rtype)
        if m:
            model = getattr(hyperstack.models, m.group(1))
            models = [(model, item, f"{rtype}[{i}]") for i, item in enumerate(data)]
        else:
            models = [(getattr(hyperstack.models, rtype), data, rtype)]
        for model, item, name in models:
            errors += [f"{where}: response field {f} not in the SDK model"
                       for f in extra_fields(model, item, name)]
    return errors, seen


def advance(control_url: str, minutes: float) -> None:
    import urllib.request

    req = urllib.request.Request(f"{control_url}/clock", method="POST",
                                 data=json.dumps({"advance_minutes": minutes}).encode(),
                                 headers={"content-type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


def drive_sdk(base_url: str, key: str, control_url: str) -> tuple[list[str], list[str]]:
    """The SDK itself against the local cloud: each call returns its typed model."""
    from hyperstack import (
        AttachVolumesPayload,
        BillingApi,
        CalculateApi,
        CreateInstancesPayload,
        CreateVolumePayload,
        CreditApi,
        DetachVolumesPayload,
        EnvironmentApi,
        FlavorApi,
        ImageApi,
        KeypairApi,
        PricebookApi,
        VirtualMachineApi,
        VolumeApi,
        VolumeAttachmentApi,
    )

    client = ApiClient(Configuration(host=base_url, api_key={"apiKey": key}))
    errors, calls = [], []

    def call(name, fn, *args, **kw):
        calls.append(name)
        try:
            got = fn(*args, **kw)
        except Exception as exc:
            errors.append(f"SDK {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            return None
        if got is None:
            errors.append(f"SDK {name}: returned None (status not mapped by the SDK?)")
        return got

    vms, vols = VirtualMachineApi(client), VolumeApi(client)
    call("list_environments", EnvironmentApi(client).list_environments, page="1",
         page_size="5")
    call("list_key_pairs", KeypairApi(client).list_key_pairs, page="1", page_size="5")
    call("list_images", ImageApi(client).list_images, page=1, per_page=5)
    call("list_flavors", FlavorApi(client).list_flavors)
    call("get_pricebook", PricebookApi(client).get_pricebook)
    vol = call("create_volume", vols.create_volume, CreateVolumePayload(
        name="sdk-contract", size=10, volume_type="Cloud-SSD", environment_name="default"))
    made = call("create_vms", vms.create_vms, CreateInstancesPayload(
        name="sdk-contract", environment_name="default", flavor_name="n3-L40x1",
        key_name="spotctl", image_name="Ubuntu Server 22.04 LTS R535 CUDA 12.2", count=1,
        labels=["sdk"], assign_floating_ip=True, enable_port_randomization=False))
    call("list_vms", vms.list_vms, page=1, page_size=2)
    call("list_volumes", vols.list_volumes, page="1", page_size="2")
    if made is not None and made.instances and vol is not None and vol.volume:
        vm_id, vol_id = made.instances[0].id, vol.volume.id
        advance(control_url, 2)  # CREATING -> ACTIVE
        got = call("get_vm", vms.get_vm, vm_id)
        if got is not None and got.instance.status != "ACTIVE":
            errors.append(f"SDK get_vm: expected ACTIVE, got {got.instance.status}")
        call("get_volume", vols.get_volume, vol_id)
        call("calculate_resource_billing_rate",
             CalculateApi(client).calculate_resource_billing_rate, "virtual_machine", vm_id)
        call("attach_volumes_to_vm", VolumeAttachmentApi(client).attach_volumes_to_vm,
             vm_id, AttachVolumesPayload(volume_ids=[vol_id]))
        got = call("get_vm", vms.get_vm, vm_id)
        if got is not None and [a.volume.id for a in got.instance.volume_attachments or []
                                if a.volume] != [vol_id]:
            errors.append("SDK get_vm: the attached volume is not in volume_attachments")
        call("detach_volumes_from_vm", VolumeAttachmentApi(client).detach_volumes_from_vm,
             vm_id, DetachVolumesPayload(volume_ids=[vol_id]))
        call("hibernate_vm", vms.hibernate_vm, vm_id, retain_ip="true")
        advance(control_url, 1)
        call("restore_vm_from_hibernation", vms.restore_vm_from_hibernation, vm_id)
        advance(control_url, 2)
        call("delete_vm", vms.delete_vm, vm_id)
        call("delete_volume", vols.delete_volume, vol_id)
    call("get_usage", BillingApi(client).get_usage)
    call("get_usage(deleted)", BillingApi(client).get_usage, deleted="true")
    call("get_user_credit", CreditApi(client).get_user_credit)
    call("get_user_billing_history", BillingApi(client).get_user_billing_history,
         start_date="2026-11-01T00:00:00", end_date="2026-11-02T00:00:00")
    return errors, calls


def main() -> None:
    req = json.load(sys.stdin)
    table = endpoint_table()
    client = ApiClient(Configuration(host=req["base_url"], api_key={"apiKey": req["api_key"]}))
    errors, seen = check_journal(table, req["journal"], client)
    for op in req.get("uses", []):
        if op not in {e["op"] for e in table}:
            errors.append(f"{op}: not an SDK operation")
        elif op not in seen:
            errors.append(f"{op}: spotctl uses it but it was not exercised")
    sdk_calls: list[str] = []
    if req.get("drive"):
        more, sdk_calls = drive_sdk(req["base_url"], req["api_key"], req["control_url"])
        errors += more
    print(json.dumps({"errors": errors, "endpoints": seen, "sdk_calls": sdk_calls,
                      "sdk": hyperstack.__version__}))


if __name__ == "__main__":
    main()
