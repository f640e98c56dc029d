"""The local cloud's account model: VMs, volumes, states, per-minute billing and a balance.

Pure and deterministic: it reads the time only from the injected clock and never sleeps.
Billing works like a provider's meter: at every whole minute of a resource's life it is charged
the per-minute rate of the state it is in at that moment. Money is integer micro-dollars, so the
invoice (the sum of every resource's running total) is exact.

Spot is sold as Hyperstack sells it: as separate flavors whose names end in ``-spot`` (no field
of the create payload says "spot": the official SDK's ``CreateInstancesPayload`` has none). A VM
of a spot flavor bills at the spot rate and can be preempted; when the control API takes spot
capacity away, spot flavors report ``stock_available: false`` and creating one is refused.

The account starts as a new Hyperstack account would be set up for spotctl: one environment
``default``, one key pair ``spotctl``, the image ``Ubuntu Server 22.04 LTS R535 CUDA 12.2``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from spotctl.clock import Clock, to_ms

MINUTE_MS = 60_000
DAY_MS = 86_400_000

# Transitional durations, in seconds of the clock.
CREATE_S = 90
HIBERNATE_S = 30
RESTORE_S = 60


@dataclass(frozen=True)
class Flavor:
    name: str
    gpu: str | None
    gpu_count: int
    active_per_min: int  # micro-dollars per minute while ACTIVE/SHUTOFF
    hibernated_per_min: int  # disk + IP while hibernated
    cpu: int = 8
    ram: float = 32.0
    disk: int = 100
    ephemeral: int = 750
    id: int = 0

    @property
    def spot(self) -> bool:
        return self.name.endswith(SPOT_SUFFIX)


SPOT_SUFFIX = "-spot"
_BASE = (  # name, gpu, count, on-demand per min, spot per min, hibernated per min, cpu, ram
    ("n3-H100x1", "H100-80G-PCIe", 1, 40_000, 24_000, 2_000, 28, 180.0),  # $2.40/h, spot $1.44/h
    ("n3-A100x1", "A100-80G-PCIe", 1, 22_500, 13_500, 2_000, 28, 120.0),  # $1.35/h, spot $0.81/h
    ("n3-L40x1", "L40", 1, 16_500, 9_900, 1_500, 16, 64.0),  # $0.99/h, spot $0.594/h
)
FLAVORS: dict[str, Flavor] = {}
for _i, (_n, _g, _c, _od, _sp, _hib, _cpu, _ram) in enumerate(_BASE):
    FLAVORS[_n] = Flavor(_n, _g, _c, _od, _hib, _cpu, _ram, id=2 * _i + 1)
    FLAVORS[_n + SPOT_SUFFIX] = Flavor(_n + SPOT_SUFFIX, _g, _c, _sp, _hib, _cpu, _ram,
                                       id=2 * _i + 2)
FLAVORS["n1-cpu-small"] = Flavor("n1-cpu-small", None, 0, 1_000, 300, 4, 8.0, 50, 0, id=99)

REGION = "LOCAL-1"
ENVIRONMENTS = {"default": 1}  # name -> id
KEYPAIRS = {"spotctl": 1}
IMAGES = {"Ubuntu Server 22.04 LTS R535 CUDA 12.2": 11, "Ubuntu Server 22.04 LTS": 12}
VOLUME_TYPES = ("Cloud-SSD",)
VOLUME_PER_GB_MIN = 1  # micro-dollars per GB per minute ($0.0432 per GB-month)

# Which VM states bill, and how (the research table: SHUTOFF bills in full, transitions do not).
# Hyperstack's docs (docs/providers.md, "VM states and billing") say so: ACTIVE and SHUTOFF bill
# in full, HIBERNATED only storage and the public IP, HIBERNATING/RESTORING and ERROR nothing.
# Unverified on an account; spotctl's idle hibernation pays off only if it holds.
BILLED_ACTIVE = {"ACTIVE", "SHUTOFF"}
BILLED_HIBERNATED = {"HIBERNATED"}


@dataclass
class Resource:
    id: int
    kind: str  # vm | volume
    name: str
    created_ms: int
    state: str
    billed_until_ms: int  # the last minute boundary already charged
    total_micros: int = 0
    deleted_ms: int | None = None
    labels: list[str] = field(default_factory=list)
    environment: str = "default"
    exclude_billing: bool = False  # the provider does not bill it (usage row flag)
    # VMs
    flavor: Flavor | None = None
    pending: tuple[int, str] | None = None  # (due_ms, next_state) for transitions
    keypair: str | None = None
    image: str | None = None
    user_data: str | None = None
    floating_ip: bool = False  # assign_floating_ip
    ip: str | None = None  # this VM's own loopback address (its network), set by the server
    volume_ids: list[int] = field(default_factory=list)  # attached volumes, in order
    booted: bool = False  # has run its first boot (cloud-init runs once per instance)
    power_lost: bool = False  # reclaimed with no notice: its processes die at once (no drain)
    rate_factor_pct: int = 100  # control API: bill this % of the quoted rate (price truth)
    # volumes
    size_gb: int = 0
    attached_to: int | None = None

    @property
    def alive(self) -> bool:
        return self.deleted_ms is None

    @property
    def spot(self) -> bool:
        return self.flavor is not None and self.flavor.spot

    def quoted_per_min(self) -> int:
        """The list rate of the current state (what the pricebook quotes), micro-$/min."""
        if not self.alive:
            return 0
        if self.kind == "volume":
            return self.size_gb * VOLUME_PER_GB_MIN
        assert self.flavor is not None
        if self.state in BILLED_ACTIVE:
            return self.flavor.active_per_min
        if self.state in BILLED_HIBERNATED:
            return self.flavor.hibernated_per_min
        return 0

    def rate_per_min(self) -> int:
        """Micro-dollars per minute actually billed in the current state."""
        return self.quoted_per_min() * self.rate_factor_pct // 100


@dataclass
class Event:
    ms: int
    resource: str
    kind: str
    detail: str = ""


class CloudError(Exception):
    """A request the provider refuses (maps to HTTP 400/404 with Hyperstack's error body)."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


class LocalCloud:
    """The account. Thread-safe; every public method first brings billing up to the clock."""

    def __init__(self, clock: Clock, *, start_credit_micros: int = 1_000_000_000,
                 on_vm_active: Callable[[Resource], None] | None = None,
                 on_vm_inactive: Callable[[Resource], None] | None = None,
                 on_attach: Callable[[Resource, Resource], None] | None = None,
                 on_detach: Callable[[Resource, Resource], None] | None = None,
                 on_vm_drain: Callable[[Resource], None] | None = None,
                 org_id: int = 7613, ip_net: int | None = None) -> None:
        import random

        self.clock = clock
        # each VM gets its own loopback address 127.<net>.<hi>.<lo> (its "network"): engines of
        # two VMs can listen on the same port, as on two machines. <net> is random per local
        # cloud so that two local clouds on one machine do not collide.
        self.ip_net = ip_net or random.Random().randint(16, 250)  # noqa: S311
        self.org_id = org_id
        self._lock = threading.RLock()
        self._vms: dict[int, Resource] = {}
        self._volumes: dict[int, Resource] = {}
        # VM and volume ids are separate sequences that collide on purpose, as on Hyperstack.
        self._next_vm = 100
        self._next_volume = 100
        self.topups: list[tuple[int, int, str]] = []  # (ms, micros, payment id)
        self._credit_base = start_credit_micros
        self.events: list[Event] = []
        self.daily: dict[int, dict[str, int]] = {}  # UTC day start ms -> {kind: micros}
        self.spot_available = True  # the control API can take spot capacity away
        self.on_vm_active = on_vm_active or (lambda vm: None)
        self.on_vm_inactive = on_vm_inactive or (lambda vm: None)
        self.on_attach = on_attach or (lambda vm, vol: None)
        self.on_detach = on_detach or (lambda vm, vol: None)
        # a graceful preemption's shutdown: stop the VM's units and wait (blocking, no lock)
        self.on_vm_drain = on_vm_drain or (lambda vm: None)

    # -- time and billing -----------------------------------------------------------------
    def now_ms(self) -> int:
        return to_ms(self.clock.now())

    def _charge(self, res: Resource, until_ms: int) -> None:
        """Charge every whole minute boundary up to ``until_ms`` at the current state's rate,
        and book it on the UTC day of each boundary (for the provider's daily figures)."""
        minutes = (until_ms - res.billed_until_ms) // MINUTE_MS
        if minutes <= 0:
            return
        rate = res.rate_per_min()
        res.total_micros += minutes * rate
        if rate:
            t, last = res.billed_until_ms, res.billed_until_ms + minutes * MINUTE_MS
            while t < last:
                boundary = t + MINUTE_MS
                day = boundary - boundary % DAY_MS
                # boundaries boundary, boundary + 1 min, ... before the next midnight, up to last
                n = min((last - t) // MINUTE_MS,
                        (day + DAY_MS - boundary - 1) // MINUTE_MS + 1)
                if not res.exclude_billing:
                    book = self.daily.setdefault(day, {})
                    book[res.kind] = book.get(res.kind, 0) + n * rate
                t += n * MINUTE_MS
        res.billed_until_ms += minutes * MINUTE_MS

    def _advance(self) -> int:
        """Bring every resource to now: charge minutes and complete due transitions in order."""
        now = self.now_ms()
        while True:
            due = [(vm.pending[0], vm.id) for vm in self._vms.values()
                   if vm.pending and vm.pending[0] <= now]
            if not due:
                break
            at, vm_id = min(due)
            vm = self._vms[vm_id]
            for res in self._all():
                self._charge(res, at)
            _, new_state = vm.pending  # type: ignore[misc]
            vm.pending = None
            self._set_state(vm, new_state, at)
        for res in self._all():
            self._charge(res, now)
        return now

    def _all(self) -> list[Resource]:
        return [*self._vms.values(), *self._volumes.values()]

    def _set_state(self, vm: Resource, state: str, at_ms: int) -> None:
        was_active = vm.state == "ACTIVE"
        vm.state = state
        self.events.append(Event(at_ms, f"vm:{vm.id}", state.lower()))
        if state == "ACTIVE" and not was_active:
            self.on_vm_active(vm)
        elif was_active and state != "ACTIVE":
            self.on_vm_inactive(vm)

    # -- VMs ------------------------------------------------------------------------------
    def create_vm(self, name: str, flavor_name: str, *, environment: str = "default",
                  key_name: str = "spotctl", image_name: str | None = None,
                  labels: list[str] | None = None, user_data: str | None = None,
                  assign_floating_ip: bool = False) -> Resource:
        """Create a VM (CREATING, then ACTIVE after ``CREATE_S``). Every reference must name an
        existing resource of the account, as on Hyperstack."""
        with self._lock:
            now = self._advance()
            flavor = FLAVORS.get(flavor_name)
            if flavor is None:
                raise CloudError(400, f"Flavor {flavor_name} not found", "flavor_not_found")
            if environment not in ENVIRONMENTS:
                raise CloudError(404, f"Environment {environment} not found",
                                 "environment_not_found")
            if key_name not in KEYPAIRS:
                raise CloudError(404, f"Keypair {key_name} not found", "keypair_not_found")
            if image_name is not None and image_name not in IMAGES:
                raise CloudError(404, f"Image {image_name} not found", "image_not_found")
            if self.credit_micros() <= 0:
                raise CloudError(400, "Insufficient credit", "insufficient_credit")
            if not self.in_stock(flavor):
                raise CloudError(400, f"Flavor {flavor_name} is out of stock", "out_of_stock")
            vm = Resource(self._next_vm, "vm", name, now, "CREATING", now, flavor=flavor,
                          environment=environment, labels=list(labels or []),
                          keypair=key_name, image=image_name, user_data=user_data,
                          floating_ip=assign_floating_ip)
            vm.ip = f"127.{self.ip_net}.{vm.id >> 8 & 255}.{vm.id & 255}"
            self._next_vm += 1
            vm.pending = (now + CREATE_S * 1000, "ACTIVE")
            self._vms[vm.id] = vm
            self.events.append(Event(now, f"vm:{vm.id}", "creating", flavor_name))
            return vm

    def in_stock(self, flavor: Flavor) -> bool:
        return self.spot_available or not flavor.spot

    def _vm(self, vm_id: int) -> Resource:
        vm = self._vms.get(vm_id)
        if vm is None or not vm.alive:
            raise CloudError(404, f"Virtual machine {vm_id} not found", "not_found")
        return vm

    def get_vm(self, vm_id: int) -> Resource:
        with self._lock:
            self._advance()
            return self._vm(vm_id)

    def list_vms(self) -> list[Resource]:
        """Live VMs, oldest first (as Hyperstack lists them)."""
        with self._lock:
            self._advance()
            return [vm for vm in self._vms.values() if vm.alive]

    def hibernate(self, vm_id: int) -> Resource:
        with self._lock:
            now = self._advance()
            vm = self._vm(vm_id)
            if vm.state != "ACTIVE":
                raise CloudError(400, f"Cannot hibernate a VM in {vm.state} state",
                                 "invalid_state")
            self._set_state(vm, "HIBERNATING", now)
            vm.pending = (now + HIBERNATE_S * 1000, "HIBERNATED")
            return vm

    def restore(self, vm_id: int) -> Resource:
        with self._lock:
            now = self._advance()
            vm = self._vm(vm_id)
            if vm.state != "HIBERNATED":
                raise CloudError(
                    400, f"VM is in {vm.state} state; only HIBERNATED VMs can be restored",
                    "invalid_state")
            self._set_state(vm, "RESTORING", now)
            vm.pending = (now + RESTORE_S * 1000, "ACTIVE")
            return vm

    def delete_vm(self, vm_id: int, *, reason: str = "deleted") -> Resource:
        with self._lock:
            now = self._advance()
            vm = self._vm(vm_id)
            if vm.state == "ACTIVE":
                self.on_vm_inactive(vm)
            for vol_id in list(vm.volume_ids):  # a deleted VM releases its volumes
                self._detach(vm, self._volumes[vol_id])
            vm.state, vm.pending, vm.deleted_ms = "DELETED", None, now
            self.events.append(Event(now, f"vm:{vm.id}", reason))
            return vm

    def preempt(self, vm_id: int, *, graceful: bool = False) -> Resource:
        """Spot capacity reclaimed: the VM is deleted (its final total stays in deleted=true).

        ``graceful``: first the VM is shut down as an OS shutdown would (its units get SIGTERM,
        so ``vllm serve --shutdown-timeout`` drains the requests in flight and accepts no new
        ones), while it is still listed ACTIVE and billing; then it is deleted. This blocks for
        the drain (up to the units' TimeoutStopSec): call it off the server's event loop.
        Whether Hyperstack gives any notice or shutdown window before it reclaims a machine is
        unverified (none is documented that we found); ``abrupt`` (the default) is no
        notice: the VM is gone from the API and its bill at once, and its processes are killed
        (SIGKILL: nothing drains, requests in flight are cut)."""
        with self._lock:
            vm = self._vm(vm_id)
            if not vm.spot:
                raise CloudError(400, "Only spot VMs can be preempted", "not_spot")
            if not graceful:
                # No notice: the machine is gone, and so are its processes, at once (SIGKILL,
                # no --shutdown-timeout drain): open connections reset, as when a host vanishes.
                vm.power_lost = True
                return self.delete_vm(vm_id, reason="preempted")
        self.on_vm_drain(vm)  # outside the lock: the cloud keeps answering meanwhile
        with self._lock:
            return self.delete_vm(vm_id, reason="preempted")

    # -- volumes --------------------------------------------------------------------------
    def create_volume(self, name: str, size_gb: int, *, volume_type: str = "Cloud-SSD",
                      environment: str = "default") -> Resource:
        with self._lock:
            now = self._advance()
            if size_gb <= 0 or size_gb > 1_048_576:
                raise CloudError(400, "size must be between 1 and 1048576 GB", "invalid_size")
            if volume_type not in VOLUME_TYPES:
                raise CloudError(400, f"Volume type {volume_type} not found",
                                 "volume_type_not_found")
            if environment not in ENVIRONMENTS:
                raise CloudError(404, f"Environment {environment} not found",
                                 "environment_not_found")
            vol = Resource(self._next_volume, "volume", name, now, "available", now,
                           size_gb=size_gb, environment=environment)
            self._next_volume += 1
            self._volumes[vol.id] = vol
            self.events.append(Event(now, f"volume:{vol.id}", "created"))
            return vol

    def _volume(self, vol_id: int) -> Resource:
        vol = self._volumes.get(vol_id)
        if vol is None or not vol.alive:
            raise CloudError(404, f"Volume {vol_id} not found", "not_found")
        return vol

    def get_volume(self, vol_id: int) -> Resource:
        with self._lock:
            self._advance()
            return self._volume(vol_id)

    def delete_volume(self, vol_id: int) -> Resource:
        with self._lock:
            now = self._advance()
            vol = self._volume(vol_id)
            if vol.attached_to is not None:
                raise CloudError(400, f"Volume {vol_id} is attached to virtual machine "
                                      f"{vol.attached_to}; detach it first", "volume_in_use")
            vol.state, vol.deleted_ms = "deleted", now
            self.events.append(Event(now, f"volume:{vol.id}", "deleted"))
            return vol

    def list_volumes(self) -> list[Resource]:
        with self._lock:
            self._advance()
            return [v for v in self._volumes.values() if v.alive]

    def attach(self, vm_id: int, vol_ids: list[int]) -> list[Resource]:
        """Attach volumes to a VM (ACTIVE, SHUTOFF or HIBERNATED; not in a transition)."""
        with self._lock:
            now = self._advance()
            vm = self._vm(vm_id)
            if vm.state not in ("ACTIVE", "SHUTOFF", "HIBERNATED"):
                raise CloudError(400, f"Cannot attach volumes to a VM in {vm.state} state",
                                 "invalid_state")
            vols = [self._volume(v) for v in vol_ids]
            for vol in vols:
                if vol.attached_to not in (None, vm.id):
                    raise CloudError(400, f"Volume {vol.id} is already attached to virtual "
                                          f"machine {vol.attached_to}", "volume_in_use")
                if vol.environment != vm.environment:
                    raise CloudError(400, f"Volume {vol.id} is in another environment",
                                     "environment_mismatch")
            for vol in vols:
                if vol.attached_to is None:
                    vol.attached_to, vol.state = vm.id, "in-use"
                    vm.volume_ids.append(vol.id)
                    self.events.append(Event(now, f"volume:{vol.id}", "attached", f"vm:{vm.id}"))
                    self.on_attach(vm, vol)
            return vols

    def attach_at_create(self, vm_id: int, vol_id: int) -> None:
        """``volume_name`` in the create payload: attached before the VM first boots."""
        with self._lock:
            vm, vol = self._vm(vm_id), self._volume(vol_id)
            if vol.attached_to is not None:
                raise CloudError(400, f"Volume {vol.id} is already attached to virtual machine "
                                      f"{vol.attached_to}", "volume_in_use")
            vol.attached_to, vol.state = vm.id, "in-use"
            vm.volume_ids.append(vol.id)
            self.on_attach(vm, vol)

    def detach(self, vm_id: int, vol_ids: list[int]) -> list[Resource]:
        with self._lock:
            self._advance()
            vm = self._vm(vm_id)
            vols = [self._volume(v) for v in vol_ids]
            for vol in vols:
                if vol.attached_to != vm.id:
                    raise CloudError(400, f"Volume {vol.id} is not attached to virtual machine "
                                          f"{vm.id}", "not_attached")
            for vol in vols:
                self._detach(vm, vol)
            return vols

    def _detach(self, vm: Resource, vol: Resource) -> None:
        vol.attached_to, vol.state = None, "available"
        if vol.id in vm.volume_ids:
            vm.volume_ids.remove(vol.id)
        self.events.append(Event(self.now_ms(), f"volume:{vol.id}", "detached", f"vm:{vm.id}"))
        self.on_detach(vm, vol)

    def volume(self, vol_id: int) -> Resource | None:
        return self._volumes.get(vol_id)

    def resource(self, key: str) -> Resource:
        """``vm:101`` or ``volume:101`` (alive or not)."""
        kind, _, ident = key.partition(":")
        table = self._vms if kind == "vm" else self._volumes if kind == "volume" else {}
        res = table.get(int(ident)) if ident.isdigit() else None
        if res is None:
            raise CloudError(404, f"{key} not found", "not_found")
        return res

    def set_rate_factor(self, key: str, pct: int) -> Resource:
        """Bill ``pct`` % of the quoted rate from now on (a provider overbilling its quote)."""
        with self._lock:
            self._advance()
            res = self.resource(key)
            res.rate_factor_pct = pct
            return res

    def exclude_billing(self, key: str) -> Resource:
        """The provider flags the resource ``exclude_billing`` (from its creation on)."""
        with self._lock:
            self._advance()
            res = self.resource(key)
            if res.total_micros:
                raise CloudError(400, "exclude_billing applies from creation on (this resource "
                                      "has already billed)", "invalid_state")
            res.exclude_billing = True
            return res

    # -- billing views ----------------------------------------------------------------------
    def usage(self, deleted: bool) -> list[Resource]:
        """Resources for /billing/billing/usage: live ones, or (deleted=True) terminated ones."""
        with self._lock:
            self._advance()
            return [r for r in self._all() if (r.deleted_ms is not None) == deleted]

    def topup(self, micros: int) -> str:
        with self._lock:
            now = self._advance()
            pid = f"pay_{len(self.topups) + 1:05d}"
            self.topups.append((now, micros, pid))
            self.events.append(Event(now, "account", "topup", str(micros)))
            return pid

    def billed_micros(self) -> int:
        with self._lock:
            self._advance()
            return sum(r.total_micros for r in self._all() if not r.exclude_billing)

    def credit_micros(self) -> int:
        with self._lock:
            self._advance()
            return self._credit_base + sum(m for _, m, _ in self.topups) - sum(
                r.total_micros for r in self._all() if not r.exclude_billing)

    def invoice(self) -> dict:
        """The exact sum of what was billed, per resource and in total."""
        with self._lock:
            self._advance()
            items = {f"{r.kind}:{r.id}": r.total_micros for r in self._all()
                     if not r.exclude_billing}
            return {"total_micros": sum(items.values()), "resources": items,
                    "as_of_ms": self.now_ms()}

    def billed_on_day(self, day_start_ms: int) -> dict[str, int]:
        """What was billed during one UTC day, by kind (for last-day-cost and history)."""
        with self._lock:
            self._advance()
            return dict(self.daily.get(day_start_ms, {}))
