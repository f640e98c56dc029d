"""Test helpers for the fleet: a backend wrapper that dies at a chosen step (as a process killed
with -9 would: nothing after that point runs, the provider keeps what it was asked for)."""

from __future__ import annotations

from spotctl.fleet.base import Machine, PhaseTimings, Progress, TierStatus, no_progress


class Killed(BaseException):
    """The process died here (not an Exception: nothing may catch and carry on)."""


class CrashingBackend:
    """Delegates to a real backend; with ``crash_on_create`` its next ``up`` dies as soon as
    the provider lists the new machine (the VM is CREATING and nobody will wait for it)."""

    def __init__(self, real, *, crash_on_create: bool = False) -> None:
        self.real = real
        self.name = real.name
        self.crash_on_create = crash_on_create

    def up(self, tier, capacity, progress: Progress = no_progress
           ) -> tuple[TierStatus, PhaseTimings]:
        if not self.crash_on_create:
            return self.real.up(tier, capacity, progress)
        before = {m.resource_id for m in self.real.machines(tier)}

        def watch(phase: str, fraction: float | None, message: str) -> None:
            if {m.resource_id for m in self.real.machines(tier)} - before:
                self.crash_on_create = False
                raise Killed(f"killed while creating a {capacity} machine")
            progress(phase, fraction, message)

        return self.real.up(tier, capacity, watch)

    def down(self, tier, *, delete_storage: bool = False) -> TierStatus:
        return self.real.down(tier, delete_storage=delete_storage)

    def hibernate(self, tier):
        return self.real.hibernate(tier)

    def wake(self, tier, progress: Progress = no_progress):
        return self.real.wake(tier, progress)

    def status(self, tier) -> TierStatus:
        return self.real.status(tier)

    def machines(self, tier) -> list[Machine]:
        return self.real.machines(tier)

    def delete_machine(self, tier, resource_id: str) -> None:
        self.real.delete_machine(tier, resource_id)


def live_vms(lc) -> list:
    """The local cloud's VMs that are not deleted (whatever their name)."""
    return [vm for vm in lc.handle.cloud.list_vms() if vm.state != "DELETED"]
