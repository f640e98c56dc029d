"""The Hyperstack fleet backend (SkyPilot does not support Hyperstack), also used for the local
cloud, which speaks Hyperstack's API.

A tier is one VM named ``spotctl-<tier>`` (label ``spotctl-tier=<tier>``) and a weights volume
``spotctl-<tier>-weights`` that outlives it. Hibernate and restore are Hyperstack's native calls;
they are state-changing GETs, so they are never retried blindly: after an ambiguous failure the
VM's state is read back instead. Hyperstack has no spot market: on real Hyperstack a spot
request is refused with a clear error; the local cloud adds one (label ``spot``).
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from spotctl.billing.base import TIER_LABEL_PREFIX, resource_name_for
from spotctl.clock import Clock
from spotctl.config import Config, TierConfig
from spotctl.engine.readiness import NotReady, wait_ready
from spotctl.errors import ExitCode, NoSpotCapacity, SpotctlError
from spotctl.fleet.base import (
    CapacityKind,
    Machine,
    PhaseTimings,
    Progress,
    TierState,
    TierStatus,
    no_progress,
)

DEFAULT_FLAVOR = "n3-H100x1"
STATES = {"CREATING": TierState.PROVISIONING, "BUILD": TierState.PROVISIONING,
          "ACTIVE": TierState.READY, "HIBERNATING": TierState.HIBERNATING,
          "HIBERNATED": TierState.HIBERNATED, "RESTORING": TierState.WAKING,
          "SHUTOFF": TierState.FAILED, "ERROR": TierState.FAILED}


class HyperstackBackend:
    name = "hyperstack"

    def __init__(self, cfg: Config, clock: Clock, *, local: bool = False,
                 wait_timeout_s: float = 1800.0) -> None:
        self.cfg = cfg
        self.clock = clock
        self.local = local
        self.wait_timeout_s = wait_timeout_s

    # -- plumbing ---------------------------------------------------------------------------
    def _provider(self, tier: TierConfig):
        if tier.provider:
            return self.cfg.provider(tier.provider)
        kinds = ("localcloud",) if self.local else ("hyperstack",)
        for p in self.cfg.providers:
            if p.kind in kinds:
                return p
        raise SpotctlError(f"tier {tier.name!r}: no {kinds[0]} provider configured",
                           ExitCode.USAGE)

    def _client(self, tier: TierConfig) -> httpx.Client:
        from spotctl.billing.http import ssl_context
        from spotctl.billing.hyperstack import DEFAULT_BASE

        prov = self._provider(tier)
        key = os.environ.get(prov.api_key_env or "", "")
        if not key:
            raise SpotctlError(f"${prov.api_key_env} is not set (the {prov.name} API key)",
                               ExitCode.USAGE)
        return httpx.Client(base_url=(prov.base_url or DEFAULT_BASE).rstrip("/"),
                            headers={"api_key": key}, timeout=30.0, verify=ssl_context())

    def _call(self, client: httpx.Client, method: str, path: str, **kw: Any) -> dict:
        try:
            r = client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise SpotctlError(f"{method} {path}: provider unreachable ({type(exc).__name__})"
                               ) from None
        try:
            body = r.json()
        except ValueError:
            body = {}
        if r.status_code >= 400:
            reason = body.get("error_reason") if isinstance(body, dict) else None
            if reason == "no_spot_capacity":
                raise NoSpotCapacity(str(body.get("message")))
            raise SpotctlError(f"{method} {path}: HTTP {r.status_code}: "
                               f"{(body or {}).get('message', r.text[:200])}")
        return body

    def _find_vm(self, client: httpx.Client, tier: TierConfig) -> dict | None:
        name = resource_name_for(tier.name)
        vms = self._call(client, "GET", "/core/virtual-machines").get("instances", [])
        mine = [vm for vm in vms if vm.get("name") == name and vm.get("status") != "DELETED"]
        # while a spot VM replaces an on-demand one, the serving (ACTIVE) VM is the tier's
        return max(mine, key=lambda vm: (vm.get("status") == "ACTIVE", vm["id"])) if mine \
            else None

    def _status_of(self, tier: TierConfig, vm: dict | None) -> TierStatus:
        if vm is None:
            return TierStatus(tier.name, TierState.ABSENT)
        state = STATES.get(str(vm.get("status")), TierState.FAILED)
        ext = vm.get("localcloud") or {}
        spot = bool(ext.get("spot")) or "spot" in (vm.get("labels") or [])
        endpoint = None
        if state == TierState.READY:
            port = ext.get("engine_port") if self.local else tier.engine_port
            host = vm.get("floating_ip")
            if port and host:
                endpoint = f"http://{host}:{port}"
        return TierStatus(tier.name, state, "spot" if spot else "on-demand",
                          "localcloud" if self.local else "hyperstack",
                          (vm.get("environment") or {}).get("region"), endpoint,
                          f"vm:{vm['id']}")

    def _wait_state(self, client: httpx.Client, tier: TierConfig, vm_id: int, target: str,
                    progress: Progress, phase: str) -> dict:
        start = self.clock.monotonic()
        while True:
            vm = self._call(client, "GET", f"/core/virtual-machines/{vm_id}")["instance"]
            if vm["status"] == target:
                return vm
            if vm["status"] in ("ERROR", "DELETED"):
                raise SpotctlError(f"tier {tier.name!r}: VM {vm_id} went {vm['status']}")
            if self.clock.monotonic() - start > self.wait_timeout_s:
                raise SpotctlError(f"tier {tier.name!r}: VM {vm_id} not {target} after "
                                   f"{self.wait_timeout_s:g} s", ExitCode.ERROR)
            progress(phase, None, f"VM {vm_id} is {vm['status']}")
            self.clock.sleep(5)

    def _ready(self, tier: TierConfig, status: TierStatus, timings: PhaseTimings,
               progress: Progress) -> TierStatus:
        if status.endpoint is None:
            # the engine's port may appear a moment after ACTIVE
            for _ in range(50):
                with self._client(tier) as client:
                    status = self._status_of(tier, self._find_vm(client, tier))
                if status.endpoint:
                    break
                self.clock.sleep(1)
        if status.endpoint is None:
            raise SpotctlError(f"tier {tier.name!r}: no engine endpoint on the VM")
        progress("engine_loading", None, f"waiting for the engine at {status.endpoint}")
        key = os.environ.get(tier.api_key_env) if tier.api_key_env else None
        try:
            report = wait_ready(status.endpoint, key, tier.public_model, 900, self.clock)
        except NotReady as exc:
            raise SpotctlError(f"tier {tier.name!r}: {exc}") from None
        timings.phases.update(report.phases)
        return status

    # -- FleetBackend -------------------------------------------------------------------------
    def up(self, tier: TierConfig, capacity: CapacityKind, progress: Progress = no_progress
           ) -> tuple[TierStatus, PhaseTimings]:
        timings = PhaseTimings()
        if capacity == "spot" and not self.local:
            raise NoSpotCapacity("Hyperstack has no spot market: use capacity = \"on-demand\"")
        t0 = self.clock.monotonic()
        progress("provisioning", None, f"creating {resource_name_for(tier.name)} ({capacity})")
        with self._client(tier) as client:
            vols = self._call(client, "GET", "/core/volumes").get("volumes", [])
            vol_name = tier.weights_volume or f"{resource_name_for(tier.name)}-weights"
            if not any(v.get("name") == vol_name for v in vols):
                self._call(client, "POST", "/core/volumes", json={
                    "name": vol_name, "size": 200, "volume_type": "Cloud-SSD",
                    "environment_name": "default"})
            labels = [f"{TIER_LABEL_PREFIX}{tier.name}"] + (["spot"] if capacity == "spot"
                                                             else [])
            made = self._call(client, "POST", "/core/virtual-machines", json={
                "name": resource_name_for(tier.name), "flavor_name": tier.flavor or
                DEFAULT_FLAVOR, "environment_name": "default", "image_name":
                "Ubuntu Server 22.04 LTS R535 CUDA 12.2", "key_name": "spotctl", "count": 1,
                "labels": labels, "spot": capacity == "spot",
                "assign_floating_ip": tier.exposure == "public"})
            vm_id = made["instances"][0]["id"]
            vm = self._wait_state(client, tier, vm_id, "ACTIVE", progress, "provisioning")
        timings.phases["provisioning"] = self.clock.monotonic() - t0
        status = self._ready(tier, self._status_of(tier, vm), timings, progress)
        return status, timings

    def hibernate(self, tier: TierConfig) -> tuple[TierStatus, PhaseTimings]:
        timings = PhaseTimings()
        t0 = self.clock.monotonic()
        with self._client(tier) as client:
            vm = self._find_vm(client, tier)
            if vm is None:
                raise SpotctlError(f"tier {tier.name!r} is not up", ExitCode.USAGE)
            if vm["status"] != "HIBERNATED":
                try:
                    self._call(client, "GET", f"/core/virtual-machines/{vm['id']}/hibernate",
                               params={"retain_ip": "true"})
                except SpotctlError:
                    vm = self._find_vm(client, tier)  # re-read, never retry blindly
                    if vm is None or vm["status"] not in ("HIBERNATING", "HIBERNATED"):
                        raise
                vm = self._wait_state(client, tier, vm["id"], "HIBERNATED", no_progress,
                                      "hibernating")
        timings.phases["hibernating"] = self.clock.monotonic() - t0
        return self._status_of(tier, vm), timings

    def wake(self, tier: TierConfig, progress: Progress = no_progress
             ) -> tuple[TierStatus, PhaseTimings]:
        timings = PhaseTimings()
        t0 = self.clock.monotonic()
        with self._client(tier) as client:
            vm = self._find_vm(client, tier)
            if vm is None:
                raise SpotctlError(f"tier {tier.name!r} has no VM to wake", ExitCode.USAGE)
            if vm["status"] == "HIBERNATED":
                progress("restoring", None, f"restoring VM {vm['id']}")
                try:
                    self._call(client, "GET",
                               f"/core/virtual-machines/{vm['id']}/hibernate-restore")
                except SpotctlError:
                    vm = self._find_vm(client, tier)
                    if vm is None or vm["status"] not in ("RESTORING", "ACTIVE"):
                        raise
            if vm["status"] != "ACTIVE":
                vm = self._wait_state(client, tier, vm["id"], "ACTIVE", progress, "restoring")
        timings.phases["restoring"] = self.clock.monotonic() - t0
        status = self._ready(tier, self._status_of(tier, vm), timings, progress)
        return status, timings

    def down(self, tier: TierConfig, *, delete_storage: bool = False) -> TierStatus:
        with self._client(tier) as client:
            vm = self._find_vm(client, tier)
            if vm is not None:
                self._call(client, "DELETE", f"/core/virtual-machines/{vm['id']}")
            if delete_storage:
                vol_name = tier.weights_volume or f"{resource_name_for(tier.name)}-weights"
                for v in self._call(client, "GET", "/core/volumes").get("volumes", []):
                    if v.get("name") == vol_name:
                        self._call(client, "DELETE", f"/core/volumes/{v['id']}")
        return TierStatus(tier.name, TierState.ABSENT)

    def machines(self, tier: TierConfig) -> list[Machine]:
        """Every VM of the tier (by name or label), whatever its state."""
        with self._client(tier) as client:
            vms = self._call(client, "GET", "/core/virtual-machines").get("instances", [])
        out = []
        for vm in vms:
            labels = vm.get("labels") or []
            if vm.get("name") != resource_name_for(tier.name) and \
                    f"{TIER_LABEL_PREFIX}{tier.name}" not in labels:
                continue
            st = self._status_of(tier, vm)
            out.append(Machine(f"vm:{vm['id']}", str(vm.get("name")), st.state, st.capacity,
                               None, st.endpoint))
        return out

    def delete_machine(self, tier: TierConfig, resource_id: str) -> None:
        """Delete one specific VM of the tier (the on-demand one after returning to spot)."""
        with self._client(tier) as client:
            self._call(client, "DELETE", f"/core/virtual-machines/{resource_id.split(':')[1]}")

    def status(self, tier: TierConfig) -> TierStatus:
        with self._client(tier) as client:
            return self._status_of(tier, self._find_vm(client, tier))
