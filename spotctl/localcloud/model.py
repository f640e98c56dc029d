"""The local cloud's account model: VMs, volumes, states, per-minute billing and a balance.

Pure and deterministic: it reads the time only from the injected clock and never sleeps.
Billing works like a provider's meter: at every whole minute of a resource's life it is charged
the per-minute rate of the state it is in at that moment. Money is integer micro-dollars, so the
invoice (the sum of every resource's running total) is exact.

Hyperstack has no spot market; the local cloud adds one (a VM created with ``spot=True`` bills
at the spot rate and can be preempted), exposed as the VM label ``spot`` and the extension field
``localcloud.spot``.
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
    active_per_min: int  # micro-dollars per minute, on demand
    spot_per_min: int  # micro-dollars per minute, spot
    hibernated_per_min: int  # disk + IP while hibernated
    cpu: int = 8
    ram: float = 32.0
    disk: int = 100


FLAVORS: dict[str, Flavor] = {
    f.name: f
    for f in (
        Flavor("n3-H100x1", "H100-80G-PCIe", 1, 40_000, 24_000, 2_000, 28, 180.0),  # $2.40/h
        Flavor("n3-A100x1", "A100-80G-PCIe", 1, 22_500, 13_500, 2_000, 28, 120.0),  # $1.35/h
        Flavor("n3-L40x1", "L40", 1, 16_500, 9_900, 1_500, 16, 64.0),  # $0.99/h
        Flavor("n1-cpu-small", None, 0, 1_000, 600, 300, 4, 8.0),  # $0.06/h
    )
}
VOLUME_PER_GB_MIN = 1  # micro-dollars per GB per minute ($0.0432 per GB-month)

# Which VM states bill, and how (the research table: SHUTOFF bills in full, transitions do not).
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
    # VMs
    flavor: Flavor | None = None
    spot: bool = False
    environment: str = "localcloud-1"
    pending: tuple[int, str] | None = None  # (due_ms, next_state) for transitions
    engine_port: int | None = None
    # volumes
    size_gb: int = 0

    @property
    def alive(self) -> bool:
        return self.deleted_ms is None

    def rate_per_min(self) -> int:
        """Micro-dollars per minute in the current state."""
        if not self.alive:
            return 0
        if self.kind == "volume":
            return self.size_gb * VOLUME_PER_GB_MIN
        assert self.flavor is not None
        if self.state in BILLED_ACTIVE:
            return self.flavor.spot_per_min if self.spot else self.flavor.active_per_min
        if self.state in BILLED_HIBERNATED:
            return self.flavor.hibernated_per_min
        return 0


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
                 org_id: int = 7613) -> None:
        self.clock = clock
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
    def create_vm(self, name: str, flavor_name: str, *, spot: bool = False,
                  environment: str = "localcloud-1", labels: list[str] | None = None) -> Resource:
        with self._lock:
            now = self._advance()
            flavor = FLAVORS.get(flavor_name)
            if flavor is None:
                raise CloudError(400, f"Flavor {flavor_name} not found", "flavor_not_found")
            if self.credit_micros() <= 0:
                raise CloudError(400, "Insufficient credit", "insufficient_credit")
            if spot and not self.spot_available:
                raise CloudError(400, f"No spot capacity for {flavor_name}", "no_spot_capacity")
            vm = Resource(self._next_vm, "vm", name, now, "CREATING", now, flavor=flavor,
                          spot=spot, environment=environment, labels=list(labels or []))
            if spot and "spot" not in vm.labels:
                vm.labels.append("spot")
            self._next_vm += 1
            vm.pending = (now + CREATE_S * 1000, "ACTIVE")
            self._vms[vm.id] = vm
            self.events.append(Event(now, f"vm:{vm.id}", "creating", flavor_name))
            return vm

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
            vm.state, vm.pending, vm.deleted_ms = "DELETED", None, now
            self.events.append(Event(now, f"vm:{vm.id}", reason))
            return vm

    def preempt(self, vm_id: int) -> Resource:
        """Spot capacity reclaimed: the VM is deleted (its final total stays in deleted=true)."""
        with self._lock:
            vm = self._vm(vm_id)
            if not vm.spot:
                raise CloudError(400, "Only spot VMs can be preempted", "not_spot")
            return self.delete_vm(vm_id, reason="preempted")

    # -- volumes --------------------------------------------------------------------------
    def create_volume(self, name: str, size_gb: int) -> Resource:
        with self._lock:
            now = self._advance()
            if size_gb <= 0:
                raise CloudError(400, "size must be positive", "invalid_size")
            vol = Resource(self._next_volume, "volume", name, now, "available", now,
                           size_gb=size_gb)
            self._next_volume += 1
            self._volumes[vol.id] = vol
            self.events.append(Event(now, f"volume:{vol.id}", "created"))
            return vol

    def delete_volume(self, vol_id: int) -> Resource:
        with self._lock:
            now = self._advance()
            vol = self._volumes.get(vol_id)
            if vol is None or not vol.alive:
                raise CloudError(404, f"Volume {vol_id} not found", "not_found")
            vol.state, vol.deleted_ms = "deleted", now
            self.events.append(Event(now, f"volume:{vol.id}", "deleted"))
            return vol

    def list_volumes(self) -> list[Resource]:
        with self._lock:
            self._advance()
            return [v for v in self._volumes.values() if v.alive]

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
            return sum(r.total_micros for r in self._all())

    def credit_micros(self) -> int:
        with self._lock:
            self._advance()
            return self._credit_base + sum(m for _, m, _ in self.topups) - sum(
                r.total_micros for r in self._all())

    def invoice(self) -> dict:
        """The exact sum of what was billed, per resource and in total."""
        with self._lock:
            self._advance()
            items = {f"{r.kind}:{r.id}": r.total_micros for r in self._all()}
            return {"total_micros": sum(items.values()), "resources": items,
                    "as_of_ms": self.now_ms()}

    def billed_on_day(self, day_start_ms: int) -> dict[str, int]:
        """What was billed during one UTC day, by kind (for last-day-cost and history)."""
        with self._lock:
            self._advance()
            return dict(self.daily.get(day_start_ms, {}))
