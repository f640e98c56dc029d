"""The Hyperstack backend pointed at ``spotctl localcloud``.

Same API, same hibernate / restore semantics; two differences: the local cloud has a spot
market (a ``spot`` flag on create, ``no_spot_capacity`` when it has none), and each VM's engine
listens on this machine's loopback at the port the local cloud reports for it.
"""

from __future__ import annotations

from spotctl.clock import Clock
from spotctl.config import Config
from spotctl.fleet.hyperstack import HyperstackBackend


class LocalCloudBackend(HyperstackBackend):
    name = "localcloud"

    def __init__(self, cfg: Config, clock: Clock, *, wait_timeout_s: float = 1800.0) -> None:
        super().__init__(cfg, clock, local=True, wait_timeout_s=wait_timeout_s)
