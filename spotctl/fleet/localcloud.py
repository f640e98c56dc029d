"""The Hyperstack backend pointed at ``spotctl localcloud``: the same client, the same calls,
the same user_data. The local cloud gives each VM its own loopback address as its floating IP,
so the engine a VM starts is reached exactly as on Hyperstack (``http://<floating_ip>:<port>``).
"""

from __future__ import annotations

from spotctl.clock import Clock
from spotctl.config import Config
from spotctl.fleet.hyperstack import HyperstackBackend


class LocalCloudBackend(HyperstackBackend):
    name = "localcloud"

    def __init__(self, cfg: Config, clock: Clock, *, wait_timeout_s: float = 1800.0,
                 transport=None) -> None:
        super().__init__(cfg, clock, local=True, wait_timeout_s=wait_timeout_s,
                         transport=transport)
