"""The fleet service: what ``spotctl up / down / hibernate / wake / status / events`` do, and the
gateway's view of the fleet (:class:`FleetRuntime`).

Arrows: ``cli/fleet.py`` → here → ``fleet/`` (operations, journal, pure policy), ``ledger/``
(reads), and ``gateway.upstreams`` (the :class:`~spotctl.gateway.upstreams.TierRuntime`
Protocol the gateway defines; this module adapts the fleet to it, so the fleet never imports
the gateway).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from spotctl.clock import Clock, get_clock, parse_iso, to_ms
from spotctl.config import Config, TierConfig
from spotctl.errors import FleetError, SpotctlError, UsageError
from spotctl.fleet.base import Progress, TierState, TierStatus, no_progress
from spotctl.fleet.lease import Waiting
from spotctl.fleet.manager import FleetManager, OrphanReport
from spotctl.fleet.registry import Backends
from spotctl.ledger.db import Ledger
from spotctl.ledger.journal import FleetEntry, fleet_events, last_fleet_event, latest_vm_rate
from spotctl.ledger.usage import last_request_ms
from spotctl.money import usd_str


def fleet_manager(cfg: Config, clock: Clock | None = None,
                  backends: Backends | None = None, on_wait: Waiting | None = None
                  ) -> FleetManager:
    """The fleet manager of a configuration, with its backends (built on first use).
    ``on_wait`` is told, once per operation, who holds a tier's lease this one waits for (a
    daemon or another host operating on the tier)."""
    clock = clock or get_clock()
    manager = FleetManager(cfg, clock, backends or Backends(cfg, clock))
    manager.on_wait = on_wait
    return manager


def fleet_tier(cfg: Config, name: str) -> TierConfig:
    """A tier spotctl manages the machines of (exit 2 for an unknown or fixed one)."""
    tier = cfg.tier(name)
    if not tier.fleet_managed:
        raise UsageError(f"tier {name!r} is a fixed engine ({tier.endpoint}); spotctl does not "
                         "manage its machine")
    return tier


# -- commands -------------------------------------------------------------------------------------
def up(cfg: Config, name: str, progress: Progress = no_progress,
       on_wait: Waiting | None = None) -> TierStatus:
    return fleet_manager(cfg, on_wait=on_wait).up(fleet_tier(cfg, name), progress)


def dry_run(cfg: Config, name: str) -> str:
    """What ``up`` would launch, for people (Hyperstack: after discovery on the account)."""
    from spotctl.fleet.dryrun import render_dry_run

    return render_dry_run(fleet_tier(cfg, name), cfg)


def dry_run_json(cfg: Config, name: str) -> dict:
    """What ``up`` would launch, for scripts: Hyperstack's exact requests, in order."""
    from spotctl.fleet.dryrun import dry_run_json as as_json

    return as_json(fleet_tier(cfg, name), cfg)


def hibernate(cfg: Config, name: str, on_wait: Waiting | None = None) -> TierStatus:
    return fleet_manager(cfg, on_wait=on_wait).hibernate(fleet_tier(cfg, name))


def wake(cfg: Config, name: str, progress: Progress = no_progress,
         on_wait: Waiting | None = None) -> TierStatus:
    return fleet_manager(cfg, on_wait=on_wait).wake(fleet_tier(cfg, name), progress)


def down(cfg: Config, name: str, delete_storage: bool = False,
         on_wait: Waiting | None = None,
         confirm: Callable[[str], bool] | None = None) -> TierStatus | None:
    """Tear the tier down. With ``delete_storage``, ``confirm`` (when given) is asked first,
    once the tier is known to be one spotctl manages; None when it says no (nothing done)."""
    tier = fleet_tier(cfg, name)
    if delete_storage and confirm is not None and not confirm(
            f"Delete the weights storage of {name!r} too? The next up re-downloads them."):
        return None
    return fleet_manager(cfg, on_wait=on_wait).down(tier, delete_storage)


def delete_orphans(cfg: Config, name: str, on_wait: Waiting | None = None) -> OrphanReport:
    """``down TIER --orphans``: delete the tier's machines that bill in no journal state."""
    report = fleet_manager(cfg, on_wait=on_wait).delete_orphans(fleet_tier(cfg, name))
    if not report.settled:
        raise FleetError(f"tier {name}: an operation is under way; its machines cannot be told "
                         "from orphans yet (try again once it has ended)")
    return report


def status_rows(cfg: Config, manager: FleetManager | None = None) -> list[dict]:
    """Per tier: the journal-corrected state, every machine (orphans named), the provider's
    current $/h (never used for spend), idle time, time since the last wake, billing age."""
    clock = manager.clock if manager is not None else get_clock()
    now = to_ms(clock.now())
    manager = manager or fleet_manager(cfg, clock)
    rows = []
    with Ledger(cfg.ledger_target) as led:
        for tier in cfg.tiers:
            machines = orphans = None
            st: TierStatus | None = None
            if not tier.fleet_managed:
                st_state = "fixed"
            else:
                try:
                    st = manager.status(tier)
                    st_state = st.state.value
                    listed = manager.machines(tier)
                    machines = None if listed is None else len(listed)
                    orphans = [m.resource_id for m in manager.orphans(tier).machines]
                except SpotctlError as exc:
                    st, st_state = None, f"unknown ({exc.message})"
            rate = latest_vm_rate(led, tier.name)
            last_request = last_request_ms(led, tier.name)
            woke = last_fleet_event(led, tier.name, frozenset({"woke"}))
            rows.append({
                "tier": tier.name, "model": tier.public_model, "state": st_state,
                "capacity": st.capacity if st else None,
                "where": "/".join(x for x in (st.cloud, st.region) if x) if st else None,
                "endpoint": st.endpoint if st else tier.endpoint,
                "usd_per_hour": usd_str(rate[0], 4) if rate and rate[0] is not None else None,
                "idle_seconds": max(0, now - last_request) // 1000 if last_request else None,
                "last_wake_ago_seconds": max(0, now - woke.ts_ms) // 1000 if woke else None,
                "last_wake_duration_seconds": int(woke.phases.get("total", 0)) if woke else None,
                "billing_age_seconds": max(0, now - rate[1]) // 1000 if rate else None,
                "machines": machines,
                "orphans": orphans,
            })
    return rows


def events(cfg: Config, tier: str | None = None, since: str | None = None) -> list[FleetEntry]:
    """The journal, oldest first; ``since`` is an ISO time or a window such as ``24h``."""
    from spotctl.accounting.window import parse_window

    since_ms = 0
    if since:
        try:
            since_ms = to_ms(parse_iso(since))
        except ValueError:
            since_ms = to_ms(get_clock().now() - parse_window(since, what="--since"))
    if tier is not None:
        cfg.tier(tier)  # an unknown tier is exit 2, naming the known ones
    with Ledger(cfg.ledger_target, readonly=True) as led:
        return fleet_events(led, tier, since_ms)


# -- the gateway's view of the fleet ----------------------------------------------------------------
class FleetRuntime:
    """The fleet as the gateway sees it (the gateway's ``TierRuntime`` Protocol): where a
    tier's engine is (through its SSH tunnel when it has one) and how to wake it. A wake that
    finds the tier gone journals the preemption (issue 11 §11). A wake runs under the tier's
    lease like any fleet operation: while a daemon or another host operates on the tier, it
    waits for it and then finds the tier serving (one machine, never a second)."""

    def __init__(self, cfg: Config, clock: Clock, manager: FleetManager | None = None) -> None:
        from spotctl.gateway import upstreams as up

        self.up = up
        self.manager = manager or fleet_manager(cfg, clock)
        self._map = {TierState.READY: up.SERVING, TierState.HIBERNATED: up.HIBERNATED,
                     TierState.HIBERNATING: up.HIBERNATED, TierState.WAKING: up.WAKING,
                     TierState.PROVISIONING: up.WAKING, TierState.ABSENT: up.ABSENT,
                     TierState.PREEMPTED: up.ABSENT, TierState.FAILED: up.FAILED}

    def _key(self, tier: TierConfig) -> str | None:
        return os.environ.get(tier.api_key_env) if tier.api_key_env else None

    def _upstream(self, tier: TierConfig, st: TierStatus):
        up = self.up
        state = self._map.get(st.state, up.FAILED)
        if state == up.SERVING and not st.endpoint:
            state = up.WAKING
        endpoint = self.manager.reach.endpoint(tier, st.endpoint) if state == up.SERVING \
            else None
        return up.Upstream(state, endpoint, self._key(tier))

    def current(self, tier: TierConfig):
        return self._upstream(tier, self.manager.status(tier))

    def wake(self, tier: TierConfig):
        st = self.manager.wake(tier)
        return self._upstream(tier, st)
