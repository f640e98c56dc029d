"""The backend for a tier, by ``tier.backend``: skypilot | hyperstack | localcloud.

Imports are lazy: ``spotctl.fleet.skypilot`` (and through it ``sky``) is imported only when a
tier's backend is skypilot, so the gateway and the local-cloud paths never pay for it.

:class:`Backends` is what a :class:`~spotctl.fleet.manager.FleetManager` is given: one backend
object per kind, built on first use (SkyPilot's SDK client is costly to build). Tests pass their
own backends (``Backends(cfg, clock, {"localcloud": wrapped})``); nothing global is cached.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from spotctl.clock import Clock
from spotctl.config import Config, TierConfig
from spotctl.errors import ConfigError
from spotctl.fleet.base import FleetBackend


class Backends:
    def __init__(self, cfg: Config, clock: Clock,
                 given: Mapping[str, FleetBackend] | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self._built: dict[str, FleetBackend] = dict(given or {})
        self._lock = threading.Lock()

    def for_tier(self, tier: TierConfig) -> FleetBackend:
        with self._lock:
            if tier.backend not in self._built:
                self._built[tier.backend] = build_backend(tier.backend, self.cfg, self.clock)
            return self._built[tier.backend]


def build_backend(kind: str, cfg: Config, clock: Clock) -> FleetBackend:
    if kind == "skypilot":
        from spotctl.fleet.skypilot import SkyPilotBackend

        return SkyPilotBackend(cfg, clock)
    if kind == "hyperstack":
        from spotctl.fleet.hyperstack import HyperstackBackend

        return HyperstackBackend(cfg, clock)
    if kind == "localcloud":
        from spotctl.fleet.localcloud import LocalCloudBackend

        return LocalCloudBackend(cfg, clock)
    raise ConfigError(f"unknown tier backend {kind!r}: expected skypilot, hyperstack or localcloud")
