"""Where a tier's engine is, and how to wake it: the interface the fleet implements.

The gateway asks a :class:`TierRuntime` for a tier's current upstream (in a small thread pool,
with a timeout: a hung call keeps the last known state); when every tier of a model is
hibernated it calls ``wake`` (blocking, in a thread). Fixed engines (``endpoint = ...``) are
served by :class:`StaticRuntime`; fleet-managed tiers by
:class:`spotctl.services.fleet.FleetRuntime` (its ``wake`` runs under the tier's lease in the
ledger, so one wake acts per tier across every gateway, daemon and host; the others wait).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from spotctl.config import TierConfig

SERVING, HIBERNATED, WAKING, ABSENT, FAILED = "serving", "hibernated", "waking", "absent", "failed"
# The fleet is hibernating or stopping the tier and waits for its open requests: admit nothing
# new (issue 11 §4; the gateway also reads it from the journal's newest event).
DRAINING = "draining"


@dataclass(frozen=True)
class Upstream:
    state: str
    endpoint: str | None = None  # base URL without /v1
    api_key: str | None = None

    @property
    def wakeable(self) -> bool:
        return self.state in (HIBERNATED, WAKING, ABSENT)


class TierRuntime(Protocol):
    def current(self, tier: TierConfig) -> Upstream: ...

    def wake(self, tier: TierConfig) -> Upstream: ...


def engine_key(tier: TierConfig) -> str | None:
    return os.environ.get(tier.api_key_env) if tier.api_key_env else None


class StaticRuntime:
    """A fixed engine the user already runs: always 'serving' at its endpoint."""

    def current(self, tier: TierConfig) -> Upstream:
        if not tier.endpoint:
            return Upstream(ABSENT)
        return Upstream(SERVING, tier.endpoint.rstrip("/"), engine_key(tier))

    def wake(self, tier: TierConfig) -> Upstream:
        return self.current(tier)


class RoutingRuntime:
    """Fixed tiers through StaticRuntime, fleet-managed ones through the fleet's runtime."""

    def __init__(self, fleet: TierRuntime | None) -> None:
        self.static = StaticRuntime()
        self.fleet = fleet

    def _for(self, tier: TierConfig) -> TierRuntime | None:
        return self.static if not tier.fleet_managed else self.fleet

    def current(self, tier: TierConfig) -> Upstream:
        rt = self._for(tier)
        return rt.current(tier) if rt else Upstream(ABSENT)

    def wake(self, tier: TierConfig) -> Upstream:
        rt = self._for(tier)
        return rt.wake(tier) if rt else Upstream(ABSENT)
