"""The Hyperstack fleet backend (SkyPilot does not support Hyperstack), also used for the local
cloud, which speaks Hyperstack's API. All HTTP goes through :mod:`spotctl.clients.hyperstack`.

A tier is one VM named ``spotctl-<tier>`` (label ``spotctl-tier=<tier>``) and one weights volume
``spotctl-<tier>-weights`` (or ``weights_volume``), created once and attached at every launch and
relaunch; it survives ``down`` unless ``--delete-storage``. The VM boots from cloud-init
``user_data`` (:mod:`spotctl.fleet.cloudinit`) that mounts the volume and runs vLLM under
systemd; the tier is READY only once a real completion succeeds on the engine.

Before anything is created, ``up`` (and ``up --dry-run``) checks that the tier's environment,
key pair, image and flavor exist on the account, and exits 2 naming what is missing.

**Spot on Hyperstack** is a flavor, not a field. The official SDK (``hyperstack`` 1.56.1a0) has no
spot, preemptible or interruptible anywhere (``grep -ri spot`` over the package finds nothing;
``CreateInstancesPayload.__properties``, create_instances_payload.py:50, has no such field), so a
``spot`` field in the create body would be one the API does not define. Hyperstack sells spot
VMs as separate flavors named ``<flavor>-spot`` (third-party evidence only: brevdev/cloud's
Hyperstack provider, ``isSpotFlavor`` = name ends in ``-spot``, and refuses a spot request whose
flavor is not one). So a spot launch asks ``GET /core/flavors`` for ``<flavor>-spot``: absent, or
``stock_available: false``, is :class:`NoSpotCapacity` (the fleet then retries or falls back);
present, the VM is created with that flavor and nothing else changes. Unverified against a live
account: the naming, and how a spot VM is reclaimed (the local cloud deletes it).

Hibernate and restore are Hyperstack's native calls; they are state-changing GETs, never retried
blindly: after an ambiguous failure the VM's state is read back instead. So is every other write.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from spotctl.clients.http import Sent
from spotctl.clients.hyperstack import Flavor, HyperstackClient, Vm, Volume
from spotctl.clock import Clock
from spotctl.config import Config, ProviderConfig, TierConfig
from spotctl.engine.readiness import NotReady, wait_ready
from spotctl.errors import (
    AmbiguousWrite,
    ConfigError,
    ExitCode,
    FleetError,
    NoSpotCapacity,
    ProviderError,
    SpotctlError,
)
from spotctl.fleet.base import (
    CapacityKind,
    Machine,
    PhaseTimings,
    Progress,
    TierState,
    TierStatus,
    no_progress,
)
from spotctl.fleet.cloudinit import render_user_data
from spotctl.naming import TIER_LABEL_PREFIX, resource_name_for

SPOT_SUFFIX = "-spot"
VOLUME_TYPE = "Cloud-SSD"
STATES = {"CREATING": TierState.PROVISIONING, "BUILD": TierState.PROVISIONING,
          "ACTIVE": TierState.READY, "HIBERNATING": TierState.HIBERNATING,
          "HIBERNATED": TierState.HIBERNATED, "RESTORING": TierState.WAKING,
          "SHUTOFF": TierState.FAILED, "ERROR": TierState.FAILED}
# SHUTOFF is FAILED (to be replaced), never "stopped and cheap": Hyperstack's docs say a SHUTOFF
# VM bills in full (docs/providers.md, "VM states and billing"; unverified on an account).
POLL_S = 5.0
ENGINE_READY_S = 1800.0  # first boot: format, install, download, load (a cold 70B is slow)


@dataclass(frozen=True)
class Launch:
    """What discovery found for one launch: every name checked against the account."""

    environment: str
    keypair: str
    image: str
    flavor: Flavor
    volume: Volume | None  # the tier's weights volume, if it exists already


def volume_name(tier: TierConfig) -> str:
    return tier.weights_volume or f"{resource_name_for(tier.name)}-weights"


def derive_flavor(tier: TierConfig, flavors: list[Flavor]) -> str:
    """The tier's flavor: ``flavor`` as configured, else the on-demand flavor whose GPU model and
    count match ``accelerators`` ("H100:1" → a flavor with gpu "H100-..." and gpu_count 1)."""
    if tier.flavor:
        return tier.flavor
    if not tier.accelerators:
        raise ConfigError(f"tier {tier.name!r}: set flavor (e.g. \"n3-H100x1\") or accelerators "
                          "(e.g. \"H100:1\") for a Hyperstack tier")
    model, _, count_text = tier.accelerators.partition(":")
    count = int(count_text) if count_text.isdigit() else 1
    want = re.sub(r"[^a-z0-9]", "", model.lower())
    fits = sorted({f.name for f in flavors if not f.name.endswith(SPOT_SUFFIX)
                   and f.gpu_count == count and f.gpu
                   and re.sub(r"[^a-z0-9]", "", f.gpu.lower()).startswith(want)})
    if not fits:
        raise ConfigError(f"tier {tier.name!r}: no flavor on the account has {count}× {model} "
                          "(see GET /core/flavors); set flavor explicitly")
    return fits[0]


def _change_state(client: HyperstackClient, vm: Vm, call: Callable[[int], object],
                  accepted: tuple[str, ...]) -> Vm:
    """Send a state change of ``vm`` once. When it fails or its outcome is unknown
    (:class:`AmbiguousWrite` is a :class:`ProviderError`), read the VM back, never retry
    blindly: a VM already in an ``accepted`` state is the change done, anything else re-raises.
    Returns the VM as last read."""
    try:
        call(vm.id)
    except ProviderError:
        vm = client.get_vm(vm.id)
        if vm.status not in accepted:
            raise
    return vm


class HyperstackBackend:
    name = "hyperstack"

    def __init__(self, cfg: Config, clock: Clock, *, local: bool = False,
                 wait_timeout_s: float = 1800.0, transport=None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.local = local
        self.wait_timeout_s = wait_timeout_s
        self.transport = transport  # an httpx transport (tests); None: the network

    # -- plumbing ---------------------------------------------------------------------------
    def _provider(self, tier: TierConfig) -> ProviderConfig:
        if tier.provider:
            return self.cfg.provider(tier.provider)
        kinds = ("localcloud",) if self.local else ("hyperstack",)
        for p in self.cfg.providers:
            if p.kind in kinds:
                return p
        raise ConfigError(f"tier {tier.name!r}: no {kinds[0]} provider configured")

    def client(self, tier: TierConfig, record: list[Sent] | None = None) -> HyperstackClient:
        prov = self._provider(tier)
        key = os.environ.get(prov.api_key_env or "", "")
        if not key:
            raise ConfigError(f"${prov.api_key_env} is not set (the {prov.name} API key)")
        return HyperstackClient(prov.base_url, key, self.clock, transport=self.transport,
                                timeout_s=self.cfg.billing.timeout_s * 3, record=record)

    def _mine(self, tier: TierConfig, vm: Vm) -> bool:
        return vm.name == resource_name_for(tier.name) or \
            f"{TIER_LABEL_PREFIX}{tier.name}" in vm.labels

    def _vms(self, client: HyperstackClient, tier: TierConfig) -> list[Vm]:
        return [vm for vm in client.list_vms() if self._mine(tier, vm)
                and vm.status != "DELETED"]

    def _find_vm(self, client: HyperstackClient, tier: TierConfig) -> Vm | None:
        mine = self._vms(client, tier)
        # while a spot VM replaces an on-demand one, the serving (ACTIVE) VM is the tier's
        return max(mine, key=lambda vm: (vm.status == "ACTIVE", vm.id)) if mine else None

    def _status_of(self, tier: TierConfig, vm: Vm | None, quoted: int | None = None
                   ) -> TierStatus:
        if vm is None:
            return TierStatus(tier.name, TierState.ABSENT)
        state = STATES.get(vm.status, TierState.FAILED)
        spot = bool(vm.flavor and vm.flavor.endswith(SPOT_SUFFIX))
        endpoint = None
        if state == TierState.READY and vm.floating_ip:
            endpoint = f"http://{vm.floating_ip}:{tier.engine_port}"
        return TierStatus(tier.name, state, "spot" if spot else "on-demand",
                          "localcloud" if self.local else "hyperstack", vm.region, endpoint,
                          f"vm:{vm.id}", quoted_rate_micros_per_h=quoted)

    def _wait_state(self, client: HyperstackClient, tier: TierConfig, vm_id: int, target: str,
                    progress: Progress, phase: str) -> Vm:
        start = self.clock.monotonic()
        while True:
            vm = client.get_vm(vm_id)
            if vm.status == target:
                return vm
            if vm.status in ("ERROR", "DELETED"):
                raise FleetError(f"tier {tier.name!r}: VM {vm_id} went {vm.status}")
            if self.clock.monotonic() - start > self.wait_timeout_s:
                raise FleetError(f"tier {tier.name!r}: VM {vm_id} not {target} after "
                                 f"{self.wait_timeout_s:g} s")
            progress(phase, None, f"VM {vm_id} is {vm.status}")
            self.clock.sleep(POLL_S)

    # -- discovery --------------------------------------------------------------------------
    def discover(self, client: HyperstackClient, tier: TierConfig,
                 capacity: CapacityKind) -> Launch:
        """Check every name the launch needs against the account (list calls); exit 2 with one
        line naming what is missing and how to create it. Spot: see the module doc."""
        envs = {e.name: e for e in client.environments()}
        if tier.environment not in envs:
            raise ConfigError(
                f"tier {tier.name!r}: environment {tier.environment!r} does not exist on the "
                f"account (have: {', '.join(sorted(envs)) or 'none'}); create it in the "
                "Hyperstack console or with POST /core/environments {name, region}, or set "
                "environment in the tier")
        region = envs[tier.environment].region
        keys = {k.name for k in client.keypairs()}
        if tier.keypair not in keys:
            raise ConfigError(
                f"tier {tier.name!r}: key pair {tier.keypair!r} does not exist (have: "
                f"{', '.join(sorted(keys)) or 'none'}); import one with POST /core/keypairs "
                f"{{name, environment_name, public_key}}, or set keypair in the tier")
        images = {i.name for i in client.images(region)}
        if tier.image not in images:
            raise ConfigError(
                f"tier {tier.name!r}: image {tier.image!r} is not available in region "
                f"{region} (see GET /core/images); set image in the tier")
        flavors = client.flavors(region)
        name = derive_flavor(tier, flavors)
        by_name = {f.name: f for f in flavors}
        if name not in by_name:
            raise ConfigError(f"tier {tier.name!r}: flavor {name!r} does not exist in region "
                              f"{region} (see GET /core/flavors); set flavor in the tier")
        flavor = by_name[name]
        if capacity == "spot" and not name.endswith(SPOT_SUFFIX):
            spot = by_name.get(name + SPOT_SUFFIX)
            if spot is None:
                raise NoSpotCapacity(f"Hyperstack sells no spot flavor {name}{SPOT_SUFFIX} in "
                                     f"region {region}", provider="hyperstack")
            flavor = spot
        if flavor.stock_available is False:
            if capacity == "spot":
                raise NoSpotCapacity(f"no stock of {flavor.name} in region {region}",
                                     provider="hyperstack")
            raise FleetError(f"tier {tier.name!r}: flavor {flavor.name} is out of stock in "
                             f"region {region}")
        wanted = volume_name(tier)
        vols = [v for v in client.list_volumes(search=wanted) if v.name == wanted]
        return Launch(tier.environment, tier.keypair, tier.image, flavor,
                      max(vols, key=lambda v: v.id) if vols else None)

    # -- the requests of a launch ---------------------------------------------------------------
    def volume_payload(self, tier: TierConfig, launch: Launch) -> dict:
        """``CreateVolumePayload`` (create_volume_payload.py:30-37)."""
        return {"name": volume_name(tier), "size": tier.volume_gb, "volume_type": VOLUME_TYPE,
                "environment_name": launch.environment,
                "description": f"spotctl: weights and caches of tier {tier.name}"}

    def vm_payload(self, tier: TierConfig, launch: Launch, engine_key: str | None) -> dict:
        """``CreateInstancesPayload`` (create_instances_payload.py:33-49): only fields it
        defines. A public floating IP (the gateway or its SSH tunnel reaches the VM through
        it), no port randomization (so the engine's port is the port), and a firewall rule for
        SSH (closed by default: docs FAQ) and, for ``exposure = "public"``, the engine port."""
        ports = [22] + ([tier.engine_port] if tier.exposure == "public" else [])
        rules = [{"direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
                  "remote_ip_prefix": "0.0.0.0/0", "port_range_min": p, "port_range_max": p}
                 for p in ports]
        # Unverified (docs/providers.md): whether VM names must be unique. Return to spot
        # creates the spot VM while the on-demand one, of the same name spotctl-<tier>, still
        # serves; the SDK has a name-availability check (check_vm_name_availability), so the
        # API may refuse the duplicate: the return to spot then fails and on-demand keeps
        # serving. The tier's VMs are also found by label, not by name alone (_mine).
        return {"name": resource_name_for(tier.name), "environment_name": launch.environment,
                "image_name": launch.image, "flavor_name": launch.flavor.name,
                "key_name": launch.keypair, "count": 1,
                "labels": [f"{TIER_LABEL_PREFIX}{tier.name}"],
                "assign_floating_ip": True, "enable_port_randomization": False,
                "security_rules": rules,
                # a size limit on user_data is unverified (see spotctl/fleet/cloudinit.py)
                "user_data": render_user_data(tier, volume_size_gb=tier.volume_gb,
                                              engine_key=engine_key)}

    def _engine_key(self, tier: TierConfig) -> str | None:
        if not tier.api_key_env:
            return None
        key = os.environ.get(tier.api_key_env)
        if not key:
            raise ConfigError(f"tier {tier.name!r}: ${tier.api_key_env} (the engine's API key) "
                              "is not set")
        return key

    def plan_up(self, tier: TierConfig, capacity: CapacityKind) -> dict:
        """``up --dry-run --json``: discovery for real, then the writes ``up`` would send, in
        order, recorded instead of sent. The engine key is shown as ``***``.

        Every body is literally what the SDK's payload model accepts (the contract test
        validates the printed bodies as they are). An id the provider has not assigned yet is
        an integer placeholder ``0`` in a body and ``{vm_id}`` in a path; the request then
        carries ``refs``, mapping each placeholder to what it stands for, e.g.
        ``{"{vm_id}": "id of the VM created by request 2", "volume_ids[0]": "id of the volume
        created by request 1"}`` (requests numbered from 1). When another VM holds the volume
        (a hibernated VM of the tier, or the on-demand VM spot replaces), its detach request
        comes before the attach, as in :meth:`_attach`."""
        sent: list[Sent] = []
        refs_of: list[dict[str, str]] = []
        new_vol: int | None = None
        with self.client(tier, record=sent) as client:
            launch = self.discover(client, tier, capacity)
            if launch.volume is None:
                client.create_volume(self.volume_payload(tier, launch))
                new_vol = len(sent)
                refs_of.append({})
            key = "***" if tier.api_key_env else None
            client.create_vm(self.vm_payload(tier, launch, key))
            vm_req = len(sent)
            refs_of.append({})
            vm_ref = {"{vm_id}": f"id of the VM created by request {vm_req}"}
            vol_id = launch.volume.id if launch.volume else 0
            for other in launch.volume.attached_to if launch.volume else ():
                client.detach_volumes(other, [vol_id])
                refs_of.append({})
            client.attach_volumes(0, [vol_id])
            refs_of.append({**vm_ref, **({"volume_ids[0]": f"id of the volume created by "
                                                             f"request {new_vol}"}
                                         if new_vol else {})})
        reqs = []
        for s, refs in zip(sent, refs_of, strict=True):
            path = s.path
            if "{vm_id}" in refs:
                path = path.replace("/virtual-machines/0/", "/virtual-machines/{vm_id}/")
            req = {"method": s.method, "path": path, "body": s.body}
            if refs:
                req["refs"] = refs
            reqs.append(req)
        return {"tier": tier.name, "backend": self.name, "capacity": capacity,
                "flavor": launch.flavor.name, "requests": reqs}

    # -- FleetBackend -------------------------------------------------------------------------
    def up(self, tier: TierConfig, capacity: CapacityKind, progress: Progress = no_progress
           ) -> tuple[TierStatus, PhaseTimings]:
        timings = PhaseTimings()
        t0 = self.clock.monotonic()
        engine_key = self._engine_key(tier)
        with self.client(tier) as client:
            launch = self.discover(client, tier, capacity)
            progress("provisioning", None,
                     f"creating {resource_name_for(tier.name)} ({launch.flavor.name})")
            volume = launch.volume or self._create_volume(client, tier, launch)
            vm = self._create_vm(client, tier, launch, engine_key, capacity)
            vm = self._wait_state(client, tier, vm.id, "ACTIVE", progress, "provisioning")
            timings.phases["provisioning"] = self.clock.monotonic() - t0
            t1 = self.clock.monotonic()
            self._attach(client, tier, vm, volume)
            timings.phases["attach_volume"] = self.clock.monotonic() - t1
            quoted = self._quote(client, vm)
            if quoted is None:  # visible: `billing status` lists it under no_launch_quote
                progress("provisioning", None, f"no launch quote for VM {vm.id}: its billed "
                         "rate cannot be checked against one")
        status = self._ready(tier, self._status_of(tier, vm, quoted), timings, progress)
        return status, timings

    def _create_volume(self, client: HyperstackClient, tier: TierConfig, launch: Launch
                       ) -> Volume:
        try:
            made = client.create_volume(self.volume_payload(tier, launch))
        except AmbiguousWrite:
            made = None
        if made is None:  # read back: did it happen?
            wanted = volume_name(tier)
            found = [v for v in client.list_volumes(search=wanted) if v.name == wanted]
            if not found:
                raise FleetError(f"tier {tier.name!r}: creating volume {wanted} failed "
                                 "(no answer, and it does not exist)")
            return max(found, key=lambda v: v.id)
        return made

    def _create_vm(self, client: HyperstackClient, tier: TierConfig, launch: Launch,
                   engine_key: str | None, capacity: CapacityKind) -> Vm:
        before = {vm.id for vm in self._vms(client, tier)}
        try:
            made = client.create_vm(self.vm_payload(tier, launch, engine_key))
        except AmbiguousWrite:
            made = None
        except ProviderError as exc:
            if capacity == "spot" and not isinstance(exc, NoSpotCapacity):
                # refused: if the spot flavor ran out meanwhile, it is a spot refusal (typed
                # from the flavor's stock, never from the error's text)
                stock = {f.name: f.stock_available for f in client.flavors()}
                if stock.get(launch.flavor.name) is False:
                    raise NoSpotCapacity(f"no stock of {launch.flavor.name}: {exc.message}",
                                         provider="hyperstack") from None
            raise
        if made is not None:
            return made
        new = [vm for vm in self._vms(client, tier) if vm.id not in before]
        if not new:
            raise FleetError(f"tier {tier.name!r}: creating the VM failed (no answer, and no new "
                             "VM exists); nothing was retried")
        return max(new, key=lambda vm: vm.id)

    def _attach(self, client: HyperstackClient, tier: TierConfig, vm: Vm, volume: Volume
                ) -> None:
        """Attach the weights volume to ``vm``, detaching it from any other VM first (a
        hibernated or failed VM of the tier, or the on-demand VM being replaced by spot: its
        engine keeps serving from GPU memory until it is released)."""
        current = client.get_volume(volume.id)
        if vm.id in current.attached_to:
            return
        for other in current.attached_to:
            with contextlib.suppress(AmbiguousWrite):
                client.detach_volumes(other, [volume.id])
            self._wait_detached(client, tier, volume.id, other)
        with contextlib.suppress(AmbiguousWrite):
            client.attach_volumes(vm.id, [volume.id])
        start = self.clock.monotonic()
        while vm.id not in client.get_volume(volume.id).attached_to:
            if self.clock.monotonic() - start > 300:
                raise FleetError(f"tier {tier.name!r}: volume {volume.id} not attached to VM "
                                 f"{vm.id}")
            self.clock.sleep(POLL_S)

    def _wait_detached(self, client: HyperstackClient, tier: TierConfig, vol_id: int,
                       vm_id: int) -> None:
        start = self.clock.monotonic()
        while vm_id in client.get_volume(vol_id).attached_to:
            if self.clock.monotonic() - start > 300:
                raise FleetError(f"tier {tier.name!r}: volume {vol_id} still attached to VM "
                                 f"{vm_id}")
            self.clock.sleep(POLL_S)

    def _quote(self, client: HyperstackClient, vm: Vm) -> int | None:
        """The rate Hyperstack quotes for this VM, micro-dollars per hour: the resource's own
        rate (pricebook calculate), else the pricebook's price of its GPU × count. An estimate of
        price, never spend; None when neither answers."""
        from spotctl.money import to_micros

        try:
            rate = client.resource_rate("virtual_machine", vm.id)
        except ProviderError:
            rate = None
        if rate is None and vm.gpu:
            try:
                book = {p.name: p.usd_per_hour for p in client.pricebook()}
            except ProviderError:
                book = {}
            spot = bool(vm.flavor and vm.flavor.endswith(SPOT_SUFFIX))
            name = vm.gpu + (SPOT_SUFFIX if spot else "")
            if name in book:
                rate = book[name] * max(1, vm.gpu_count)
        return None if rate is None else to_micros(Decimal(rate))

    def _ready(self, tier: TierConfig, status: TierStatus, timings: PhaseTimings,
               progress: Progress) -> TierStatus:
        if status.endpoint is None:
            raise FleetError(f"tier {tier.name!r}: the VM has no floating IP to reach")
        progress("engine_loading", None, f"waiting for the engine at {status.endpoint}")
        key = os.environ.get(tier.api_key_env) if tier.api_key_env else None
        try:
            report = wait_ready(status.endpoint, key, tier.public_model, ENGINE_READY_S,
                                self.clock)
        except NotReady as exc:
            raise FleetError(f"tier {tier.name!r}: {exc} (the VM's cloud-init log says why)"
                             ) from None
        timings.phases.update(report.phases)
        return status

    def hibernate(self, tier: TierConfig) -> tuple[TierStatus, PhaseTimings]:
        """Hibernate the tier's VM: it then bills only its storage and IP (Hyperstack's docs;
        the local cloud bills so). Unverified (docs/providers.md): whether a spot VM (a
        ``-spot`` flavor) can be hibernated at all (hibernation is per flavor: docs list a
        ``no-hibernation`` flavor label); a refusal is a ProviderError, the VM stays ACTIVE
        and keeps billing, and the caller sees the failure."""
        timings = PhaseTimings()
        t0 = self.clock.monotonic()
        with self.client(tier) as client:
            vm = self._find_vm(client, tier)
            if vm is None:
                raise SpotctlError(f"tier {tier.name!r} is not up", ExitCode.USAGE)
            if vm.status != "HIBERNATED":
                vm = _change_state(client, vm, lambda v: client.hibernate_vm(v, retain_ip=True),
                                   ("HIBERNATING", "HIBERNATED"))
                vm = self._wait_state(client, tier, vm.id, "HIBERNATED", no_progress,
                                      "hibernating")
        timings.phases["hibernating"] = self.clock.monotonic() - t0
        return self._status_of(tier, vm), timings

    def wake(self, tier: TierConfig, progress: Progress = no_progress
             ) -> tuple[TierStatus, PhaseTimings]:
        timings = PhaseTimings()
        t0 = self.clock.monotonic()
        with self.client(tier) as client:
            vm = self._find_vm(client, tier)
            if vm is None:
                raise SpotctlError(f"tier {tier.name!r} has no VM to wake", ExitCode.USAGE)
            if vm.status == "HIBERNATED":
                progress("restoring", None, f"restoring VM {vm.id}")
                vm = _change_state(client, vm, client.restore_vm, ("RESTORING", "ACTIVE"))
            if vm.status != "ACTIVE":
                vm = self._wait_state(client, tier, vm.id, "ACTIVE", progress, "restoring")
            timings.phases["restoring"] = self.clock.monotonic() - t0
            wanted = volume_name(tier)
            vols = [v for v in client.list_volumes(search=wanted) if v.name == wanted]
            # Hyperstack's docs say storage stays attached through hibernation (unverified on an
            # account, docs/providers.md); the local cloud keeps it. If it did not, re-attach.
            if vols and vm.id not in vols[-1].attached_to:
                self._attach(client, tier, vm, vols[-1])
        status = self._ready(tier, self._status_of(tier, vm), timings, progress)
        return status, timings

    def down(self, tier: TierConfig, *, delete_storage: bool = False) -> TierStatus:
        with self.client(tier) as client:
            for vm in self._vms(client, tier):
                self._delete_vm(client, vm.id)
            if delete_storage:
                wanted = volume_name(tier)
                for vol in [v for v in client.list_volumes(search=wanted) if v.name == wanted]:
                    start = self.clock.monotonic()
                    while client.get_volume(vol.id).attached_to:  # released by the deletes
                        if self.clock.monotonic() - start > 300:
                            raise FleetError(f"volume {vol.id} is still attached")
                        self.clock.sleep(POLL_S)
                    client.delete_volume(vol.id)
        return TierStatus(tier.name, TierState.ABSENT)

    def _delete_vm(self, client: HyperstackClient, vm_id: int) -> None:
        from spotctl.errors import ProviderNotFound

        try:
            client.delete_vm(vm_id)
        except ProviderNotFound:
            return  # already gone
        except AmbiguousWrite:
            try:
                client.get_vm(vm_id)
            except ProviderNotFound:
                return
            raise

    def machines(self, tier: TierConfig) -> list[Machine]:
        """Every VM of the tier (by name or label), every page, any state but deleted."""
        with self.client(tier) as client:
            vms = self._vms(client, tier)
        out = []
        for vm in vms:
            st = self._status_of(tier, vm)
            from spotctl.clock import parse_iso, to_ms

            try:
                created = to_ms(parse_iso(vm.created_at)) if vm.created_at else None
            except ValueError:
                created = None
            out.append(Machine(f"vm:{vm.id}", vm.name, st.state, st.capacity, created,
                               st.endpoint))
        return out

    def delete_machine(self, tier: TierConfig, resource_id: str) -> None:
        """Delete one specific VM of the tier (the on-demand one after returning to spot)."""
        kind, _, ident = resource_id.partition(":")
        if kind != "vm" or not ident.isdigit():
            raise SpotctlError(f"not a Hyperstack VM id: {resource_id!r}", ExitCode.USAGE)
        with self.client(tier) as client:
            self._delete_vm(client, int(ident))

    def status(self, tier: TierConfig) -> TierStatus:
        with self.client(tier) as client:
            return self._status_of(tier, self._find_vm(client, tier))
