"""The fleet side of the gateway's :class:`~spotctl.gateway.upstreams.TierRuntime`."""

from __future__ import annotations

import os

from spotctl.clock import Clock
from spotctl.config import Config, TierConfig
from spotctl.fleet.base import TierState
from spotctl.fleet.manager import FleetManager
from spotctl.gateway.upstreams import ABSENT, FAILED, HIBERNATED, SERVING, WAKING, Upstream

_MAP = {TierState.READY: SERVING, TierState.HIBERNATED: HIBERNATED,
        TierState.HIBERNATING: HIBERNATED, TierState.WAKING: WAKING,
        TierState.PROVISIONING: WAKING, TierState.ABSENT: ABSENT,
        TierState.PREEMPTED: ABSENT, TierState.FAILED: FAILED}


class FleetRuntime:
    def __init__(self, cfg: Config, clock: Clock) -> None:
        self.manager = FleetManager(cfg, clock)

    def _key(self, tier: TierConfig) -> str | None:
        return os.environ.get(tier.api_key_env) if tier.api_key_env else None

    def current(self, tier: TierConfig) -> Upstream:
        st = self.manager.status(tier)
        state = _MAP.get(st.state, FAILED)
        if state == SERVING and not st.endpoint:
            state = WAKING
        return Upstream(state, st.endpoint, self._key(tier))

    def wake(self, tier: TierConfig) -> Upstream:
        st = self.manager.wake(tier)
        return Upstream(SERVING if st.state == TierState.READY else _MAP.get(st.state, FAILED),
                        st.endpoint, self._key(tier))
