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


def needs_tunnel(tier: TierConfig) -> bool:
    """Engines on remote VMs are reached through SSH unless the tier is exposed publicly; the
    local cloud's engines already listen on this machine's loopback."""
    return tier.exposure == "ssh" and tier.backend != "localcloud"


class FleetRuntime:
    def __init__(self, cfg: Config, clock: Clock) -> None:
        self.manager = FleetManager(cfg, clock)
        self._tunnels = None

    def _reachable(self, tier: TierConfig, endpoint: str | None) -> str | None:
        """The engine's endpoint as the gateway reaches it (through the tier's SSH tunnel)."""
        if endpoint is None or not needs_tunnel(tier):
            return endpoint
        from urllib.parse import urlsplit

        from spotctl.fleet.tunnel import SSHTarget, TunnelManager

        if self._tunnels is None:
            self._tunnels = TunnelManager()
        parts = urlsplit(endpoint)
        target = SSHTarget(parts.hostname or "", tier.ssh_port, tier.ssh_user,
                           tier.ssh_key_path.expanduser(), tier.ssh_known_hosts.expanduser(),
                           remote_port=parts.port or tier.engine_port)
        return self._tunnels.endpoint_for(tier.name, target)

    def _key(self, tier: TierConfig) -> str | None:
        return os.environ.get(tier.api_key_env) if tier.api_key_env else None

    def current(self, tier: TierConfig) -> Upstream:
        st = self.manager.status(tier)
        state = _MAP.get(st.state, FAILED)
        if state == SERVING and not st.endpoint:
            state = WAKING
        endpoint = self._reachable(tier, st.endpoint) if state == SERVING else None
        return Upstream(state, endpoint, self._key(tier))

    def wake(self, tier: TierConfig) -> Upstream:
        st = self.manager.wake(tier)
        state = SERVING if st.state == TierState.READY else _MAP.get(st.state, FAILED)
        endpoint = self._reachable(tier, st.endpoint) if state == SERVING else None
        return Upstream(state, endpoint, self._key(tier))
