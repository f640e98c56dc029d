"""The backend for a tier, by ``tier.backend``: skypilot | hyperstack | localcloud.

Imports are lazy: ``spotctl.fleet.skypilot`` (and through it ``sky``) is imported only when a
tier's backend is skypilot, so the gateway and the local-cloud paths never pay for it.
"""

from __future__ import annotations

import threading

from spotctl.clock import Clock
from spotctl.config import Config, TierConfig
from spotctl.errors import ConfigError
from spotctl.fleet.base import FleetBackend

# One backend object per (backend kind, config object): SkyPilot's SDK client is costly to build.
_BACKENDS: dict[str, FleetBackend] = {}
_LOCK = threading.Lock()


def backend_for(tier: TierConfig, cfg: Config, clock: Clock) -> FleetBackend:
    """The tier's backend, built once per configuration."""
    with _LOCK:
        key = f"{tier.backend}:{id(cfg)}"
        if key not in _BACKENDS:
            _BACKENDS[key] = _build(tier.backend, cfg, clock)
        return _BACKENDS[key]


def _build(kind: str, cfg: Config, clock: Clock) -> FleetBackend:
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
