"""The local cloud is no kinder than Hyperstack: status codes, paging, references that must
exist, unknown fields rejected, hibernated VMs bill only storage, volumes bill."""

from __future__ import annotations

import httpx

from spotctl.localcloud.model import FLAVORS

VM = {"name": "a", "environment_name": "default", "flavor_name": "n3-L40x1",
      "key_name": "spotctl", "count": 1}


def call(lc, method, path, **kw):
    return httpx.request(method, f"{lc.base_url}{path}", headers={"api_key": lc.api_key},
                         timeout=10, **kw)


def test_create_answers_200_and_unknown_or_missing_fields_are_400(localcloud):
    r = call(localcloud, "POST", "/core/virtual-machines", json={**VM, "spot": True})
    assert r.status_code == 400 and r.json()["status"] is False
    assert "spot" in r.json()["message"]
    r = call(localcloud, "POST", "/core/virtual-machines", json={k: v for k, v in VM.items()
                                                                 if k != "key_name"})
    assert r.status_code == 400 and "key_name" in r.json()["message"]
    r = call(localcloud, "POST", "/core/virtual-machines", json={**VM, "count": "1"})
    assert r.status_code == 400
    r = call(localcloud, "POST", "/core/virtual-machines", json={**VM, "key_name": "nope"})
    assert r.status_code == 404
    r = call(localcloud, "POST", "/core/virtual-machines", json=VM)
    assert r.status_code == 200 and r.json()["instances"][0]["name"] == "a"
    assert "localcloud" not in r.json()["instances"][0]
    r = call(localcloud, "POST", "/core/volumes", json={"name": "v", "size": 10,
                                                        "volume_type": "Cloud-SSD",
                                                        "environment_name": "default"})
    assert r.status_code == 200 and r.json()["volume"]["size"] == 10


def test_lists_page_oldest_first_with_page_and_pagesize(localcloud):
    cloud = localcloud.handle.cloud
    made = [cloud.create_volume(f"v{i}", 1).id for i in range(23)]
    got, page = [], 1
    while True:
        body = call(localcloud, "GET", "/core/volumes",
                    params={"page": page, "pageSize": 10}).json()
        assert body["count"] == 23 and body["page_size"] == 10
        got += [v["id"] for v in body["volumes"]]
        if len(body["volumes"]) < 10:
            break
        page += 1
    assert got == made and page == 3
    # with no paging parameters, a client gets only the first (small) page
    assert len(call(localcloud, "GET", "/core/volumes").json()["volumes"]) < 23


def test_attach_detach_get_volume_and_in_use_volumes_cannot_be_deleted(localcloud):
    cloud = localcloud.handle.cloud
    vm = cloud.create_vm("a", "n3-L40x1")
    vol = cloud.create_volume("w", 10)
    r = call(localcloud, "POST", f"/core/virtual-machines/{vm.id}/attach-volumes",
             json={"volume_ids": [vol.id]})
    assert r.status_code == 400  # CREATING: not yet
    localcloud.clock.advance(120)
    r = call(localcloud, "POST", f"/core/virtual-machines/{vm.id}/attach-volumes",
             json={"volume_ids": [vol.id]})
    assert r.status_code == 200 and r.json()["volume_attachments"][0]["volume_id"] == vol.id
    got = call(localcloud, "GET", f"/core/volumes/{vol.id}").json()["volume"]
    assert got["attachments"][0]["instance_id"] == vm.id
    assert call(localcloud, "DELETE", f"/core/volumes/{vol.id}").status_code == 400
    inst = call(localcloud, "GET", f"/core/virtual-machines/{vm.id}").json()["instance"]
    assert [a["volume"]["id"] for a in inst["volume_attachments"]] == [vol.id]
    r = call(localcloud, "POST", f"/core/virtual-machines/{vm.id}/detach-volumes",
             json={"volume_ids": [vol.id]})
    assert r.status_code == 200
    assert call(localcloud, "DELETE", f"/core/volumes/{vol.id}").status_code == 200
    assert call(localcloud, "GET", f"/core/volumes/{vol.id}").status_code == 404


def test_hibernated_vm_bills_only_storage_and_volumes_bill_attached_or_not(localcloud):
    cloud = localcloud.handle.cloud
    vm = cloud.create_vm("a", "n3-H100x1")
    vol = cloud.create_volume("w", 100)
    localcloud.clock.advance(90)
    cloud.attach(vm.id, [vol.id])
    cloud.hibernate(vm.id)
    localcloud.clock.advance(30 + 600)
    assert cloud.get_vm(vm.id).state == "HIBERNATED"
    before_vm, before_vol = vm.total_micros, vol.total_micros
    localcloud.clock.advance(3600)
    cloud.billed_micros()
    assert vm.total_micros - before_vm == 60 * FLAVORS["n3-H100x1"].hibernated_per_min
    assert vol.total_micros - before_vol == 60 * 100  # 100 GB, attached to a hibernated VM
    cloud.delete_vm(vm.id)
    before_vol = vol.total_micros
    localcloud.clock.advance(600)
    cloud.billed_micros()
    assert vol.total_micros - before_vol == 10 * 100  # detached: still billed


def test_spot_is_a_flavor_with_stock(localcloud):
    flavors = call(localcloud, "GET", "/core/flavors").json()["data"]
    names = {f["name"]: f["stock_available"] for g in flavors for f in g["flavors"]}
    assert names["n3-H100x1-spot"] is True and names["n3-H100x1"] is True
    localcloud.control("POST", "/spot", available=False)
    flavors = call(localcloud, "GET", "/core/flavors").json()["data"]
    names = {f["name"]: f["stock_available"] for g in flavors for f in g["flavors"]}
    assert names["n3-H100x1-spot"] is False and names["n3-H100x1"] is True
    r = call(localcloud, "POST", "/core/virtual-machines",
             json={**VM, "flavor_name": "n3-H100x1-spot"})
    assert r.status_code == 400
