"""`spotctl up` on Hyperstack's API (the local cloud, booting VMs from their user_data):
discovery, the dry run's exact requests, the weights volume's life, and no engine by magic."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from spotctl.config import parse_config
from spotctl.errors import NoSpotCapacity
from spotctl.fleet.base import TierState
from spotctl.fleet.cloudinit import render_user_data
from spotctl.fleet.localcloud import LocalCloudBackend

TIER = ('[[tiers]]\nname = "big"\nmodel = "org/tiny"\nserved_model_name = "tiny"\n'
        'backend = "localcloud"\nprovider = "lc"\naccelerators = "H100:1"\nvolume_gb = 20\n'
        'api_key_env = "ENGINE_KEY"\n')
ENGINE_KEY = "engine-key-0a7f3"


def _cfg(lc, tmp_path, extra: str = ""):
    return parse_config(lc.config_toml(extra=TIER + extra), tmp_path / "spotctl.toml")


def _backend(lc, tmp_path, monkeypatch):
    """The tier ``big`` (its engine key set) and its backend on the local cloud ``lc``."""
    monkeypatch.setenv("ENGINE_KEY", ENGINE_KEY)
    cfg = _cfg(lc, tmp_path)
    return cfg.tiers[0], LocalCloudBackend(cfg, lc.clock)


def _spotctl(cfg_path, *args, env=None):
    return subprocess.run([sys.executable, "-m", "spotctl", "--config", str(cfg_path), *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, check=False)


def test_dry_run_json_prints_the_exact_requests_in_order(localcloud, tmp_path):
    """D4: nothing hard-coded, no `spot` field: the flavor is derived from accelerators, spot is
    the `-spot` flavor, and the bodies carry user_data and the volume attach."""
    cfg_path = tmp_path / "spotctl.toml"
    cfg_path.write_text(localcloud.config_toml(extra=TIER))
    out = _spotctl(cfg_path, "up", "big", "--dry-run", "--json",
                   env={"LC_KEY": localcloud.api_key, "ENGINE_KEY": ENGINE_KEY})
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["tier"] == "big" and plan["backend"] == "localcloud"
    assert [(r["method"], r["path"]) for r in plan["requests"]] == [
        ("POST", "/core/volumes"), ("POST", "/core/virtual-machines"),
        ("POST", "/core/virtual-machines/{vm_id}/attach-volumes")]
    vol, vm, attach = (r["body"] for r in plan["requests"])
    assert vol == {"name": "spotctl-big-weights", "size": 20, "volume_type": "Cloud-SSD",
                   "environment_name": "default", "description": vol["description"]}
    assert vm["flavor_name"] == "n3-H100x1-spot" and "spot" not in vm
    assert vm["key_name"] == "spotctl" and vm["image_name"].startswith("Ubuntu")
    assert "HF_HOME" in vm["user_data"] and "--shutdown-timeout" in vm["user_data"]
    # literally valid for AttachVolumesPayload (integers), the placeholders named in refs
    assert attach == {"volume_ids": [0]}
    assert plan["requests"][2]["refs"] == {"{vm_id}": "id of the VM created by request 2",
                                           "volume_ids[0]": "id of the volume created by request 1"}
    assert all("refs" not in r for r in plan["requests"][:2])
    assert ENGINE_KEY not in out.stdout and localcloud.api_key not in out.stdout
    assert localcloud.handle.cloud.list_vms() == []  # nothing was created


@pytest.mark.parametrize("extra,named", [
    ('keypair = "laptop"\n', "key pair 'laptop'"),
    ('environment = "prod"\n', "environment 'prod'"),
    ('image = "Windows 11"\n', "image 'Windows 11'"),
    ('flavor = "n9-B300x1"\n', "flavor 'n9-B300x1'"),
])
def test_discovery_exits_2_naming_what_is_missing(localcloud, tmp_path, extra, named):
    cfg_path = tmp_path / "spotctl.toml"
    cfg_path.write_text(localcloud.config_toml(extra=TIER + extra))
    for args in (("up", "big", "--dry-run"), ("up", "big")):
        out = _spotctl(cfg_path, *args, env={"LC_KEY": localcloud.api_key,
                                             "ENGINE_KEY": ENGINE_KEY})
        assert out.returncode == 2, (args, out.stderr)
        err = out.stderr.strip()
        assert "\n" not in err and named in err and "Traceback" not in err
    assert localcloud.handle.cloud.list_vms() == [] == localcloud.handle.cloud.list_volumes()


def test_spot_refused_when_the_spot_flavor_is_out_of_stock(localcloud, tmp_path, monkeypatch):
    tier, backend = _backend(localcloud, tmp_path, monkeypatch)
    localcloud.control("POST", "/spot", available=False)
    with pytest.raises(NoSpotCapacity):
        backend.up(tier, "spot")
    assert localcloud.handle.cloud.list_vms() == []


def test_weights_volume_once_per_tier_kept_by_down_and_reused(localcloud_engines, tmp_path,
                                                              monkeypatch):
    """D2: the volume is attached (and holds the weights and caches), a relaunch reuses it with
    its content, `down` keeps it, `down --delete-storage` deletes it."""
    lc = localcloud_engines
    tier, backend = _backend(lc, tmp_path, monkeypatch)
    st, _ = backend.up(tier, "spot")
    assert st.state == TierState.READY and st.capacity == "spot"
    assert st.quoted_rate_micros_per_h == 1_440_000  # the spot flavor's quote, $1.44/h
    r = httpx.post(f"{st.endpoint}/v1/completions", json={"model": "tiny", "prompt": "x",
                                                           "max_tokens": 2},
                   headers={"Authorization": f"Bearer {ENGINE_KEY}"}, timeout=10)
    assert r.status_code == 200  # the key reached the engine through the EnvironmentFile
    cloud = lc.handle.cloud
    [vol] = cloud.list_volumes()
    vm_id = int(st.resource_id.split(":")[1])
    assert cloud.get_vm(vm_id).volume_ids == [vol.id] and vol.attached_to == vm_id
    data = lc.handle.launcher.volumes / str(vol.id) / "data"
    assert (data / "hf" / "hub" / "models--org--tiny").is_dir()  # weights land on the volume
    for sub in ("vllm-cache", "torch-compile"):
        assert (data / sub).is_dir()
    (data / "marker").write_text("from the first VM")
    backend.down(tier)
    assert [v.id for v in cloud.list_volumes()] == [vol.id]
    assert cloud.list_volumes()[0].attached_to is None
    st2, _ = backend.up(tier, "on-demand")
    assert st2.state == TierState.READY and st2.resource_id != st.resource_id
    assert [v.id for v in cloud.list_volumes()] == [vol.id]  # created once per tier
    assert (data / "marker").read_text() == "from the first VM"  # not formatted again
    backend.down(tier, delete_storage=True)
    assert cloud.list_volumes() == [] and cloud.list_vms() == []


def test_no_engine_by_magic(localcloud_engines, tmp_path):
    """A VM whose user_data does not start an engine never serves, however ACTIVE it is."""
    lc = localcloud_engines
    cloud = lc.handle.cloud
    vm = cloud.create_vm("spotctl-x", "n3-L40x1", user_data="#!/bin/bash\necho hello\n",
                         assign_floating_ip=True)
    lc.clock.advance(120)
    assert cloud.get_vm(vm.id).state == "ACTIVE"
    import time

    time.sleep(1.0)  # clock-ok: give a (wrongly) started engine time to listen
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{vm.ip}:8000/health", timeout=2)
    log = lc.handle.launcher.vm_dir(vm) / "cloud-init-output.log"
    for _ in range(50):
        if log.exists() and "exited with 0" in log.read_text():
            break
        time.sleep(0.1)  # clock-ok
    assert "hello" in log.read_text()


def test_the_vllm_shim_checks_arguments_with_vllms_option_list():
    from spotctl.localcloud.vmshim import check_vllm_args

    ok = check_vllm_args(["--model", "m", "--quantization", "awq", "--shutdown-timeout", "60",
                          "--enable-prefix-caching"])
    assert ok["--quantization"] == "awq" and ok["--enable-prefix-caching"] is True
    for bad in (["--model", "m", "--no-such-flag"], ["--model", "m", "--quantization", "zip"],
                ["--model"]):
        with pytest.raises(SystemExit):
            check_vllm_args(bad)


def test_user_data_has_no_secret_but_the_engine_key_in_a_root_only_file(tmp_path):
    cfg = parse_config(TIER.replace('provider = "lc"\n', ""), tmp_path / "x.toml")
    script = render_user_data(cfg.tiers[0], volume_size_gb=20, engine_key=ENGINE_KEY)
    assert script.startswith("#!/bin/bash")
    key_lines = [ln for ln in script.splitlines() if ENGINE_KEY in ln]
    assert len(key_lines) == 1 and "engine.env" in key_lines[0]
    assert "umask 077" in script and "EnvironmentFile=" in script
    assert "Restart=on-failure" in script and "RequiresMountsFor=" in script
    with pytest.raises(ValueError):
        render_user_data(cfg.tiers[0], volume_size_gb=20, engine_key="a\nb")


def test_an_ambiguous_create_is_read_back_never_retried(localcloud, tmp_path, monkeypatch):
    """A create whose answer is lost (the VM exists): the backend finds it by reading back, and
    never sends the create twice."""
    from spotctl.clients.http import HttpClient
    from spotctl.errors import ProviderTimeout

    tier, backend = _backend(localcloud, tmp_path, monkeypatch)
    real = HttpClient._once
    creates = []

    def lose_create_answer(self, method, path, params, body):
        got = real(self, method, path, params, body)
        if method == "POST" and path == "/core/virtual-machines":
            creates.append(body["name"])
            raise ProviderTimeout("lost", provider="hyperstack")  # it happened, unanswered
        return got

    monkeypatch.setattr(HttpClient, "_once", lose_create_answer)
    with backend.client(tier) as client:
        launch = backend.discover(client, tier, "on-demand")
        vm = backend._create_vm(client, tier, launch, None, "on-demand")
    assert creates == ["spotctl-big"]
    assert [v.id for v in localcloud.handle.cloud.list_vms()] == [vm.id]


def test_preemption_then_fallback_keeps_the_same_volume_through_hibernate_and_wake(
        localcloud_engines, tmp_path, monkeypatch):
    lc = localcloud_engines
    tier, backend = _backend(lc, tmp_path, monkeypatch)
    st, _ = backend.up(tier, "spot")
    cloud = lc.handle.cloud
    [vol] = cloud.list_volumes()
    data = lc.handle.launcher.volumes / str(vol.id) / "data"
    (data / "marker").write_text("spot VM")
    backend.hibernate(tier)
    backend.wake(tier)
    assert cloud.get_vm(int(st.resource_id.split(":")[1])).volume_ids == [vol.id]
    lc.control("POST", f"/vms/{st.resource_id.split(':')[1]}/preempt")
    lc.control("POST", "/spot", available=False)
    st2, _ = backend.up(tier, "on-demand")  # the fallback
    assert st2.state == TierState.READY and st2.capacity == "on-demand"
    assert [v.id for v in cloud.list_volumes()] == [vol.id]
    assert cloud.get_vm(int(st2.resource_id.split(":")[1])).volume_ids == [vol.id]
    assert (data / "marker").read_text() == "spot VM"


def test_a_failed_hibernate_or_restore_is_read_back_never_retried():
    from spotctl.clients.hyperstack import Vm
    from spotctl.errors import AmbiguousWrite, ProviderBadState
    from spotctl.fleet.hyperstack import _change_state

    class Client:  # only the read-back: the call under test is passed in
        def __init__(self, status):
            self.status, self.reads = status, 0

        def get_vm(self, vm_id):
            self.reads += 1
            return Vm.parse({"id": vm_id, "status": self.status})

    vm = Vm.parse({"id": 7, "status": "ACTIVE"})
    sent = []

    def fails(exc):
        def call(vm_id):
            sent.append(vm_id)
            raise exc
        return call

    # the outcome is unknown but the VM is hibernating: the change happened
    c = Client("HIBERNATING")
    got = _change_state(c, vm, fails(AmbiguousWrite("lost", provider="hyperstack")),
                        ("HIBERNATING", "HIBERNATED"))
    assert got.status == "HIBERNATING" and c.reads == 1 and sent == [7]
    # refused and the VM did not change: the provider's error stands, sent once
    c = Client("ACTIVE")
    with pytest.raises(ProviderBadState):
        _change_state(c, vm, fails(ProviderBadState("409", provider="hyperstack")),
                      ("HIBERNATING", "HIBERNATED"))
    assert sent == [7, 7] and c.reads == 1
    # it worked: no read back, the VM as it was
    c = Client("ACTIVE")
    assert _change_state(c, vm, sent.append, ("RESTORING", "ACTIVE")) is vm and c.reads == 0


def test_a_launch_without_a_quote_is_shown_by_billing_status(localcloud_engines, tmp_path,
                                                             monkeypatch):
    """Price truth (§5) that cannot fire is visible: the pricebook answered 500 at launch, so
    the VM has no launch quote; `billing status` names it under `no_launch_quote` (and in the
    table's price column) instead of a rate check that silently never runs."""
    from typer.testing import CliRunner

    from spotctl.billing.poller import poll_once
    from spotctl.cli.main import app
    from spotctl.fleet.manager import FleetManager
    from spotctl.ledger.db import Ledger

    lc = localcloud_engines
    monkeypatch.setenv("ENGINE_KEY", ENGINE_KEY)
    monkeypatch.setenv("LC_KEY", lc.api_key)
    cfg_path = tmp_path / "spotctl.toml"
    cfg_path.write_text(lc.config_toml(extra=TIER))
    cfg = parse_config(cfg_path.read_text(), cfg_path)
    lc.control("POST", "/faults", kind="pricing_500", minutes=30)
    notes: list[str] = []
    st = FleetManager(cfg, lc.clock).up(cfg.tiers[0], progress=lambda p, f, d: notes.append(d))
    assert st.state == TierState.READY and st.quoted_rate_micros_per_h is None
    assert any(n and "no launch quote" in n for n in notes)
    with Ledger(cfg.ledger_target) as led:
        lc.clock.advance(60)
        assert all(o.ok for o in poll_once(cfg, led, lc.clock))
    out = CliRunner().invoke(app, ["--config", str(cfg_path), "billing", "status", "--json"])
    assert out.exit_code == 0, out.output
    [row] = json.loads(out.output)["providers"]
    assert row["no_launch_quote"] == [st.resource_id] and row["rate_mismatch"] is None
    out = CliRunner().invoke(app, ["--config", str(cfg_path), "billing", "status"])
    assert "no launch quote" in out.output
