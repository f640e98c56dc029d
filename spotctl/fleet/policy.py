"""Pure fleet decisions: given what the journal and the backend say now, what to do next.

No I/O and no clock here: the daemon gathers :class:`Facts` (from the ledger and the backend)
and executes the :class:`Decision`. Because every fact comes from persistent state, a daemon
restarted at any moment takes the same decision as the one that died.

Rules:
- a tier idle for ``idle_minutes`` (last request, or when it last started serving, whichever
  is later) hibernates; ``idle_minutes = 0`` means never;
- a tier the journal says exists but the provider no longer has was preempted; if it was
  serving it is recovered, if it was hibernated it stays down until the next request;
- recovery (and a launch a dead process left unfinished) tries spot once per pass until
  ``spot_retry_minutes`` after it began, then on-demand (``spot-first``); ``spot`` tiers keep
  trying spot; ``on-demand`` tiers relaunch on-demand at once;
- a ``spot-first`` tier running on-demand checks for spot capacity every
  :data:`SPOT_CHECK_MINUTES` and moves back when it finds some.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from spotctl.fleet.base import CapacityKind, TierState

SPOT_CHECK_MINUTES = 5
MINUTE_MS = 60_000


class Action(StrEnum):
    NOTHING = "nothing"
    FINISH = "finish"  # an unfinished operation whose machine exists: wait for it, journal it
    MARK_PREEMPTED = "mark_preempted"
    LAUNCH = "launch"  # one launch attempt with ``capacity``
    HIBERNATE = "hibernate"
    CHECK_SPOT = "check_spot"  # on-demand now: try spot, move there if it comes up


@dataclass(frozen=True)
class Facts:
    now_ms: int
    state: TierState  # the backend's view, journal-corrected (vanished -> PREEMPTED)
    capacity: CapacityKind | None  # what the machine actually runs on
    last_event: str | None  # the newest journal event of the tier
    op_started_ms: int | None  # when the newest operation began (its first journal entry)
    serving_since_ms: int | None  # the newest ready / woke / returned_to_spot
    last_request_ms: int | None  # from the gateway (tier_activity)
    busy: bool = False  # another process holds the tier's lock right now


@dataclass(frozen=True)
class TierPolicy:
    capacity: str  # spot-first | spot | on-demand (the tier's configured preference)
    spot_retry_minutes: int
    idle_minutes: int


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    capacity: CapacityKind | None = None
    was_serving: bool = True  # MARK_PREEMPTED: recover now (True) or on the next request


def launch_capacity(policy: TierPolicy, started_ms: int, now_ms: int) -> CapacityKind:
    """Spot while the retry window lasts (``spot-first``), else what the tier allows."""
    if policy.capacity == "on-demand":
        return "on-demand"
    if policy.capacity == "spot":
        return "spot"
    within = now_ms - started_ms < policy.spot_retry_minutes * MINUTE_MS
    return "spot" if within else "on-demand"


def idle_ms(facts: Facts) -> int | None:
    marks = [m for m in (facts.last_request_ms, facts.serving_since_ms) if m is not None]
    return facts.now_ms - max(marks) if marks else None


def decide(policy: TierPolicy, facts: Facts) -> Decision:
    ev, st = facts.last_event, facts.state
    if facts.busy:
        return Decision(Action.NOTHING, "another process is operating on the tier")
    if ev is None or ev == "down":
        return Decision(Action.NOTHING, "not launched")
    if ev == "failed" and st in (TierState.ABSENT, TierState.PREEMPTED):
        return Decision(Action.NOTHING, "last operation failed; run `spotctl up` again")
    if st == TierState.PREEMPTED and ev not in ("preempted", "fell_back", "launching",
                                                 "launched"):
        was_serving = ev not in ("hibernated", "hibernating")
        return Decision(Action.MARK_PREEMPTED, "gone from the provider", was_serving=was_serving)
    if ev in ("preempted", "fell_back", "launching", "launched"):
        if st in (TierState.READY, TierState.PROVISIONING, TierState.WAKING):
            return Decision(Action.FINISH, f"{ev} under way; its machine exists")
        started = facts.op_started_ms if facts.op_started_ms is not None else facts.now_ms
        cap = launch_capacity(policy, started, facts.now_ms)
        waited = (facts.now_ms - started) // MINUTE_MS
        return Decision(Action.LAUNCH, f"recovering for {waited} min: trying {cap}", cap)
    if ev in ("waking", "hibernating"):
        return Decision(Action.FINISH, f"{ev} was left unfinished")
    if st == TierState.READY and ev in ("ready", "woke", "returned_to_spot", "failed"):
        idle = idle_ms(facts)
        if policy.idle_minutes > 0 and idle is not None and \
                idle >= policy.idle_minutes * MINUTE_MS:
            return Decision(Action.HIBERNATE, f"idle for {idle // MINUTE_MS} min")
        if facts.capacity == "on-demand" and policy.capacity == "spot-first" and \
                facts.serving_since_ms is not None:
            minutes = (facts.now_ms - facts.serving_since_ms) // MINUTE_MS
            if minutes > 0 and minutes % SPOT_CHECK_MINUTES == 0:
                return Decision(Action.CHECK_SPOT, f"on-demand for {minutes} min: is spot back?")
            return Decision(Action.NOTHING, "on-demand; next spot check within "
                            f"{SPOT_CHECK_MINUTES - minutes % SPOT_CHECK_MINUTES} min")
        return Decision(Action.NOTHING, "serving")
    return Decision(Action.NOTHING, st.value)
