"""The pure fleet policy: decisions from facts alone (no I/O, no clock)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from spotctl.fleet.base import TierState
from spotctl.fleet.policy import MINUTE_MS, Action, Facts, TierPolicy, decide

POLICY = TierPolicy("spot-first", spot_retry_minutes=3, idle_minutes=10, probe_failures=3,
                    drain_timeout_s=120)
NOW = 1_000 * MINUTE_MS
SERVING = Facts(now_ms=NOW, state=TierState.READY, capacity="spot", last_event="ready",
                op_started_ms=NOW - 60 * MINUTE_MS, serving_since_ms=NOW - 60 * MINUTE_MS,
                last_request_ms=NOW - MINUTE_MS)


def test_open_requests_block_idle_hibernation():
    idle = replace(SERVING, last_request_ms=NOW - 30 * MINUTE_MS)
    assert decide(POLICY, idle).action == Action.HIBERNATE
    assert decide(POLICY, replace(idle, open_requests=1)).action == Action.NOTHING


def test_idle_counts_from_the_latest_request_mark():
    assert decide(POLICY, replace(SERVING, last_request_ms=NOW - 9 * MINUTE_MS)).action == \
        Action.NOTHING
    assert decide(POLICY, replace(SERVING, last_request_ms=NOW - 10 * MINUTE_MS)).action == \
        Action.HIBERNATE


def test_a_clock_stepped_back_hibernates_nothing_and_checks_nothing():
    back = replace(SERVING, now_ms=NOW - 120 * MINUTE_MS, capacity="on-demand")
    assert decide(POLICY, back).action == Action.NOTHING


@pytest.mark.parametrize(("operation", "open_", "last_request", "waited_s", "action"), [
    ("hibernate", 0, None, 1, Action.STOP_DRAINED),
    ("hibernate", 2, None, 60, Action.NOTHING),
    ("hibernate", 2, None, 120, Action.STOP_DRAINED),  # the cap
    ("down", 1, None, 10, Action.NOTHING),
    ("idle", 0, None, 1, Action.STOP_DRAINED),
    ("idle", 0, "after", 1, Action.ABORT_DRAIN),  # a request came while draining
    ("idle", 1, None, 1, Action.ABORT_DRAIN),
])
def test_drains(operation, open_, last_request, waited_s, action):
    began = NOW - waited_s * 1000
    facts = replace(SERVING, last_event="draining", operation=operation, op_started_ms=began,
                    open_requests=open_, last_request_ms=began + 1 if last_request else
                    began - MINUTE_MS)
    assert decide(POLICY, facts).action == action


def test_a_dead_engine_is_recovered_after_n_failed_probes():
    assert decide(POLICY, replace(SERVING, probe_failures=2)).action == Action.NOTHING
    d = decide(POLICY, replace(SERVING, probe_failures=3))
    assert d.action == Action.RECOVER_ENGINE
    never = replace(POLICY, probe_failures=0)
    assert decide(never, replace(SERVING, probe_failures=30)).action == Action.NOTHING


def test_spot_checks_every_five_minutes_since_the_last_one():
    od = replace(SERVING, capacity="on-demand", serving_since_ms=NOW - 12 * MINUTE_MS)
    assert decide(POLICY, od).action == Action.CHECK_SPOT
    checked = replace(od, last_spot_check_ms=NOW - 3 * MINUTE_MS, last_event="stayed_on_demand")
    assert decide(POLICY, checked).action == Action.NOTHING
    assert decide(POLICY, replace(checked, last_spot_check_ms=NOW - 5 * MINUTE_MS)).action == \
        Action.CHECK_SPOT


@pytest.mark.parametrize("event", ["returning_to_spot", "relaunching", "restarting_engine",
                                   "waking", "hibernating"])
def test_unfinished_operations_are_finished_first(event):
    assert decide(POLICY, replace(SERVING, last_event=event, probe_failures=9)).action == \
        Action.FINISH


def test_recovery_tries_spot_within_the_window_then_on_demand():
    gone = replace(SERVING, state=TierState.PREEMPTED, last_event="preempted",
                   op_started_ms=NOW - 2 * MINUTE_MS)
    assert decide(POLICY, gone).capacity == "spot"
    assert decide(POLICY, replace(gone, op_started_ms=NOW - 3 * MINUTE_MS)).capacity == \
        "on-demand"
    fresh = replace(SERVING, state=TierState.PREEMPTED, last_event="ready")
    assert decide(POLICY, fresh).action == Action.MARK_PREEMPTED
    slept = replace(fresh, last_event="hibernated")
    assert decide(POLICY, slept).was_serving is False
