"""The contract test: spotctl's Hyperstack calls and the local cloud's answers, checked by
NexGen Cloud's own SDK (`hyperstack`, pinned, in .venv-contract built by `make test`).

spotctl runs its real flows against the local cloud (dry run, up on spot, polls, hibernate,
wake, a relaunch on demand that moves the weights volume, down --delete-storage, reconcile)
while the local cloud journals every exchange; then, in the SDK's venv
(tests/tools/hyperstack_contract.py): every request maps to an SDK endpoint and validates
against its payload model with no undefined field, every response status is declared and every
body deserializes into the SDK's model with no undefined field, every endpoint spotctl uses was
exercised, and the SDK itself drives those endpoints against the local cloud.
"""

from __future__ import annotations

import json
import subprocess
from datetime import date
from pathlib import Path

import pytest

from spotctl.billing.poller import poll_once
from spotctl.billing.reconcile import provider_day_total
from spotctl.config import parse_config
from spotctl.fleet.base import TierState
from spotctl.fleet.localcloud import LocalCloudBackend
from spotctl.ledger.db import Ledger

ROOT = Path(__file__).resolve().parents[1]
SDK_PY = ROOT / ".venv-contract" / "bin" / "python"
USES = ["list_environments", "list_key_pairs", "list_images", "list_flavors", "list_vms",
        "get_vm", "create_vms", "delete_vm", "hibernate_vm", "restore_vm_from_hibernation",
        "list_volumes", "get_volume", "create_volume", "delete_volume", "attach_volumes_to_vm",
        "detach_volumes_from_vm", "get_usage", "get_user_credit", "get_user_billing_history",
        "calculate_resource_billing_rate", "get_pricebook"]


def require_sdk() -> Path:
    if not SDK_PY.exists() or not list((ROOT / ".venv-contract").glob(".contract-ready-*")):
        pytest.fail(".venv-contract is missing: run `make test` "
                    "(or tests/tools/build_contract_venv.sh)")
    return SDK_PY


def run_contract(lc, journal: list[dict], *, drive: bool) -> dict:
    out = subprocess.run(
        [str(require_sdk()), str(ROOT / "tests/tools/hyperstack_contract.py")],
        input=json.dumps({"journal": journal, "base_url": lc.base_url, "api_key": lc.api_key,
                          "control_url": lc.handle.control_url, "uses": USES if drive else [],
                          "drive": drive}),
        capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _as_journal(plan: dict) -> list[dict]:
    """The dry run's requests as journal entries, exactly as printed (never sent: no status);
    a ``{vm_id}`` path segment matches the SDK's own path template as it is."""
    return [{"method": r["method"], "path": r["path"], "query": {}, "body": r["body"],
             "status": None, "response": ""} for r in plan["requests"]]


def _volume_id(lc) -> int:
    [vol] = lc.handle.cloud.list_volumes()
    return vol.id


def test_every_call_and_answer_against_the_official_sdk(localcloud_engines, tmp_path):
    lc = localcloud_engines
    lc.handle.state.journal = []
    cfg = parse_config(lc.config_toml(extra=(
        '[[tiers]]\nname = "big"\nmodel = "tiny"\nbackend = "localcloud"\nprovider = "lc"\n'
        'accelerators = "A100:1"\nvolume_gb = 50\n')), tmp_path / "spotctl.toml")
    tier = cfg.tiers[0]
    backend = LocalCloudBackend(cfg, lc.clock)
    plan = backend.plan_up(tier, "spot")
    assert [r["path"] for r in plan["requests"]] == [
        "/core/volumes", "/core/virtual-machines", "/core/virtual-machines/{vm_id}/attach-volumes"]
    dry = _as_journal(plan)
    st, _ = backend.up(tier, "spot")
    assert st.state == TierState.READY and st.capacity == "spot"
    with Ledger(cfg.ledger_path) as led:
        for _ in range(2):
            lc.clock.advance(60)
            assert all(o.ok for o in poll_once(cfg, led, lc.clock))
        backend.hibernate(tier)
        # spot capacity is gone and the tier relaunches on demand: the weights volume moves
        # from the hibernated spot VM to the new one (detach, attach)
        lc.control("POST", "/spot", available=False)
        # the dry run of that relaunch: the hibernated VM holds the volume, so it is detached
        # from it before the attach (the bodies printed as they are, the ids real)
        vol_id = _volume_id(lc)
        plan2 = backend.plan_up(tier, "on-demand")
        held = f"/core/virtual-machines/{st.resource_id.split(':')[1]}/detach-volumes"
        assert [(r["path"], r["body"], r.get("refs")) for r in plan2["requests"][1:]] == [
            (held, {"volume_ids": [vol_id]}, None),
            ("/core/virtual-machines/{vm_id}/attach-volumes", {"volume_ids": [vol_id]},
             {"{vm_id}": "id of the VM created by request 1"})]
        dry += _as_journal(plan2)
        st2, _ = backend.up(tier, "on-demand")
        assert st2.capacity == "on-demand" and st2.resource_id != st.resource_id
        backend.delete_machine(tier, st.resource_id)
        backend.hibernate(tier)
        backend.wake(tier)
        assert len(backend.machines(tier)) == 1
        backend.down(tier, delete_storage=True)
        lc.clock.advance(11 * 60)
        assert all(o.ok for o in poll_once(cfg, led, lc.clock))
    provider_day_total(cfg, "lc", date(2026, 11, 1), date(2026, 11, 2))
    with backend.client(tier) as client:
        client.pricebook()
    journal = list(lc.handle.state.journal)
    lc.handle.state.journal = None
    result = run_contract(lc, dry + journal, drive=True)
    assert result["errors"] == [], "\n".join(result["errors"])
    assert set(USES) <= set(result["endpoints"])
    assert len(result["sdk_calls"]) >= 20


def test_the_contract_check_catches_what_the_old_emulator_and_client_did(localcloud):
    """The checker is not a rubber stamp: the defects of the old code are each reported."""
    journal = [
        {"method": "POST", "path": "/core/virtual-machines", "query": {}, "status": 201,
         "body": {"name": "x", "flavor_name": "n3-H100x1", "environment_name": "default",
                  "key_name": "spotctl", "count": 1, "spot": True},
         "response": json.dumps({"status": True, "instances": [{"id": 1, "localcloud": {}}]})},
        {"method": "GET", "path": "/core/virtual-machines", "query": {"page_size": "500"},
         "status": 200, "body": None, "response": json.dumps({"instances": []})},
        {"method": "GET", "path": "/billing/billing/usage", "query": {}, "status": 200,
         "body": None, "response": json.dumps({"data": [{"resource_id": "x"}]})},
        # the old dry run's attach body: a string placeholder where the SDK takes integers
        {"method": "POST", "path": "/core/virtual-machines/{vm_id}/attach-volumes", "query": {},
         "status": None, "body": {"volume_ids": ["{volume_id}"]}, "response": ""},
    ]
    errors = run_contract(localcloud, journal, drive=False)["errors"]
    text = "\n".join(errors)
    assert "request field CreateInstancesPayload.spot" in text
    assert "status 201 not declared" in text
    assert "query parameter(s) ['page_size']" in text
    assert "does not deserialize into BillingMetricesResponse" in text
    assert "attach-volumes: body rejected by AttachVolumesPayload" in text
