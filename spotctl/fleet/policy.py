"""Pure fleet decisions: given what the journal, the gateway and the backend say now, what to do
next.

No I/O and no clock here: the daemon gathers :class:`Facts` (from the ledger, the backend and
its engine probes) under the tier's lock (a tier another process operates on is skipped, not
decided) and executes the :class:`Decision`. Because every fact
but the probe count comes from persistent state, a daemon restarted at any moment takes the same
decision as the one that died.

Rules:
- an unfinished operation is finished (or undone) before anything else: a ``draining`` stops the
  tier once its open requests are done (or the drain cap passed; an idle drain is aborted when a
  request arrived since it began), a return to spot is completed or undone, an engine recovery
  goes on;
- a tier the journal says exists but the provider no longer has was preempted; if it was
  serving it is recovered, if it was hibernated it stays down until the next request;
- recovery (and a launch a dead process left unfinished) tries spot once per pass until
  ``spot_retry_minutes`` after it began, then on-demand (``spot-first``); ``spot`` tiers keep
  trying spot; ``on-demand`` tiers relaunch on-demand at once;
- a serving tier whose engine failed ``probe_failures`` probes in a row is recovered;
- a tier with open requests is never hibernated; one idle for ``idle_minutes`` (counted from the
  later of its last request's start or completion, or when it began serving) is drained and
  hibernated; ``idle_minutes = 0`` means never;
- a ``spot-first`` tier running on-demand checks for spot capacity every
  :data:`SPOT_CHECK_MINUTES` (since it began serving or its last check) and moves back when it
  finds some.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from spotctl.fleet.base import CapacityKind, TierState

SPOT_CHECK_MINUTES = 5
MINUTE_MS = 60_000

_LAUNCHING = ("preempted", "fell_back", "launching", "launched")
_SERVING = ("ready", "woke", "returned_to_spot", "stayed_on_demand", "drain_aborted", "failed")


class Action(StrEnum):
    NOTHING = "nothing"
    FINISH = "finish"  # an unfinished operation: complete it from the machines' state
    MARK_PREEMPTED = "mark_preempted"
    LAUNCH = "launch"  # one launch attempt with ``capacity``
    HIBERNATE = "hibernate"  # idle: drain, then hibernate
    STOP_DRAINED = "stop_drained"  # a drain is over: hibernate or down, as the operation says
    ABORT_DRAIN = "abort_drain"  # an idle drain saw a request: keep serving
    CHECK_SPOT = "check_spot"  # on-demand now: try spot, move there if it comes up
    RECOVER_ENGINE = "recover_engine"  # the engine stopped answering: restart it or relaunch


@dataclass(frozen=True)
class Facts:
    now_ms: int
    state: TierState  # the backend's view, journal-corrected (vanished -> PREEMPTED)
    capacity: CapacityKind | None  # what the machine actually runs on
    last_event: str | None  # the newest journal event of the tier
    op_started_ms: int | None  # when the newest operation began (its first journal entry)
    serving_since_ms: int | None  # the newest ready / woke / returned_to_spot
    last_request_ms: int | None  # the later of the last request's start and completion
    operation: str | None = None  # the kind of the newest operation (up, idle, down, ...)
    open_requests: int = 0  # requests the gateways have in flight to the tier
    probe_failures: int = 0  # engine probes failed in a row
    last_spot_check_ms: int | None = None  # the newest return-to-spot attempt


@dataclass(frozen=True)
class TierPolicy:
    capacity: str  # spot-first | spot | on-demand (the tier's configured preference)
    spot_retry_minutes: int
    idle_minutes: int
    probe_failures: int = 3  # failed engine probes in a row before recovering
    drain_timeout_s: int = 120  # the longest a hibernate or down waits for open requests


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


def drain_decision(policy: TierPolicy, facts: Facts) -> Decision:
    """A ``draining`` tier: stop it once its requests are done (or the cap passed); an idle
    drain gives way to any request that arrived after it began."""
    started = facts.op_started_ms if facts.op_started_ms is not None else facts.now_ms
    if facts.operation == "idle":
        if facts.last_request_ms is not None and facts.last_request_ms > started:
            return Decision(Action.ABORT_DRAIN, "a request arrived while draining for idleness")
        if facts.open_requests > 0:
            return Decision(Action.ABORT_DRAIN, f"{facts.open_requests} request(s) in flight")
        return Decision(Action.STOP_DRAINED, "drained: idle")
    if facts.open_requests <= 0:
        return Decision(Action.STOP_DRAINED, "drained: no request in flight")
    waited_s = (facts.now_ms - started) // 1000
    if waited_s >= policy.drain_timeout_s:
        return Decision(Action.STOP_DRAINED, f"drain cap of {policy.drain_timeout_s} s reached "
                        f"with {facts.open_requests} request(s) in flight")
    return Decision(Action.NOTHING, f"draining: {facts.open_requests} request(s) in flight")


def decide(policy: TierPolicy, facts: Facts) -> Decision:
    ev, st = facts.last_event, facts.state
    if ev is None or ev == "down":
        return Decision(Action.NOTHING, "not launched")
    if ev == "draining":
        return drain_decision(policy, facts)
    if ev in ("returning_to_spot", "relaunching", "restarting_engine"):
        return Decision(Action.FINISH, f"{ev} was left unfinished")
    if ev == "failed" and st in (TierState.ABSENT, TierState.PREEMPTED):
        return Decision(Action.NOTHING, "last operation failed; run `spotctl up` again")
    if st == TierState.PREEMPTED and ev not in _LAUNCHING:
        was_serving = ev not in ("hibernated", "hibernating")
        return Decision(Action.MARK_PREEMPTED, "gone from the provider", was_serving=was_serving)
    if ev in _LAUNCHING:
        if st in (TierState.READY, TierState.PROVISIONING, TierState.WAKING):
            return Decision(Action.FINISH, f"{ev} under way; its machine exists")
        started = facts.op_started_ms if facts.op_started_ms is not None else facts.now_ms
        cap = launch_capacity(policy, started, facts.now_ms)
        waited = max(0, facts.now_ms - started) // MINUTE_MS
        return Decision(Action.LAUNCH, f"recovering for {waited} min: trying {cap}", cap)
    if ev in ("waking", "hibernating"):
        return Decision(Action.FINISH, f"{ev} was left unfinished")
    if st == TierState.READY and ev in _SERVING:
        if facts.probe_failures >= policy.probe_failures > 0:
            return Decision(Action.RECOVER_ENGINE,
                            f"engine failed {facts.probe_failures} probes in a row")
        idle = idle_ms(facts)
        if policy.idle_minutes > 0 and idle is not None and \
                idle >= policy.idle_minutes * MINUTE_MS:
            if facts.open_requests > 0:
                return Decision(Action.NOTHING, f"idle by the clock but {facts.open_requests} "
                                "request(s) in flight")
            return Decision(Action.HIBERNATE, f"idle for {idle // MINUTE_MS} min")
        if facts.capacity == "on-demand" and policy.capacity == "spot-first" and \
                facts.serving_since_ms is not None:
            since = max(facts.serving_since_ms, facts.last_spot_check_ms or 0)
            minutes = max(0, facts.now_ms - since) // MINUTE_MS
            if minutes >= SPOT_CHECK_MINUTES:
                return Decision(Action.CHECK_SPOT, f"on-demand for {minutes} min since the "
                                "last spot check: is spot back?")
            return Decision(Action.NOTHING, "on-demand; next spot check within "
                            f"{SPOT_CHECK_MINUTES - minutes} min")
        return Decision(Action.NOTHING, "serving")
    return Decision(Action.NOTHING, st.value)
