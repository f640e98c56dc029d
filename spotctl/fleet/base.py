"""The one interface every fleet backend (SkyPilot, Hyperstack, local cloud) implements.

The CLI, the daemon and the gateway's wake-on-request talk only to this interface.
Backends must be importable without importing SkyPilot: the SkyPilot backend imports ``sky``
lazily inside its methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, Protocol, runtime_checkable

from spotctl.config import TierConfig

CapacityKind = Literal["spot", "on-demand"]


class TierState(StrEnum):
    ABSENT = "absent"  # nothing exists (never launched, or down)
    PROVISIONING = "provisioning"  # launching, setup, engine loading
    READY = "ready"  # serving: a real completion succeeded
    HIBERNATING = "hibernating"
    HIBERNATED = "hibernated"  # not serving, weights kept; wakeable
    WAKING = "waking"
    PREEMPTED = "preempted"  # spot capacity reclaimed; recovery pending
    FAILED = "failed"


@dataclass(frozen=True)
class TierStatus:
    tier: str
    state: TierState
    capacity: CapacityKind | None = None  # what was actually obtained
    cloud: str | None = None
    region: str | None = None
    endpoint: str | None = None  # base URL the gateway can reach (after any tunnel), no /v1
    resource_id: str | None = None  # the billing resource id ("vm:123") for attribution
    detail: str | None = None
    # The rate the provider quoted when this machine was launched (flavor price, pricebook or the
    # SkyPilot catalog), micro-dollars per hour; the billing poller compares the billed rate with
    # it. An estimate of price, never used for spend.
    quoted_rate_micros_per_h: int | None = None


# progress(phase, fraction_or_None, message)
Progress = Callable[[str, float | None, str], None]


def no_progress(phase: str, fraction: float | None, message: str) -> None:
    return None


@dataclass
class PhaseTimings:
    """Durations of an operation's phases, in seconds of the spotctl clock."""

    phases: dict[str, float] = field(default_factory=dict)


class FleetBackend(Protocol):
    name: str

    def up(self, tier: TierConfig, capacity: CapacityKind, progress: Progress = no_progress
           ) -> tuple[TierStatus, PhaseTimings]: ...

    def down(self, tier: TierConfig, *, delete_storage: bool = False) -> TierStatus: ...

    def hibernate(self, tier: TierConfig) -> tuple[TierStatus, PhaseTimings]: ...

    def wake(self, tier: TierConfig, progress: Progress = no_progress
             ) -> tuple[TierStatus, PhaseTimings]: ...

    def status(self, tier: TierConfig) -> TierStatus: ...


@dataclass(frozen=True)
class Machine:
    """One provider machine that belongs to a tier (by name ``spotctl-<tier>`` or its label)."""

    resource_id: str  # the billing resource id: "vm:123"
    name: str
    state: TierState
    capacity: CapacityKind | None = None
    created_ms: int | None = None
    endpoint: str | None = None


@runtime_checkable
class EnumeratesMachines(Protocol):
    """A backend that can list and delete every machine of a tier individually (Hyperstack, the
    local cloud). The fleet uses it to return to spot beside an on-demand machine, to find
    orphans that keep billing, and to make ``down`` delete every machine of the tier. SkyPilot
    (one cluster per tier) does not implement it. Checked with ``isinstance``."""

    def machines(self, tier: TierConfig) -> list[Machine]: ...

    def delete_machine(self, tier: TierConfig, resource_id: str) -> None: ...


@runtime_checkable
class RestartsEngine(Protocol):
    """A backend that can restart a tier's engine on its running machine (cheaper than a new
    machine). The daemon uses it to recover an engine that stopped answering; without it, the
    machine is replaced. Checked with ``isinstance``."""

    def restart_engine(self, tier: TierConfig) -> TierStatus:
        """Restart the engine and return once it serves a real completion again (raise a
        :class:`~spotctl.errors.SpotctlError` otherwise)."""
        ...
