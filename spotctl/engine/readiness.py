"""Readiness is a real completion, not only ``/health``: an engine can answer /health 200 and
still fail every request (vLLM does, for a moment, after an engine failure)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import httpx

from spotctl.clock import Clock


class NotReady(Exception):
    pass


@dataclass
class ReadyReport:
    phases: dict[str, float] = field(default_factory=dict)  # seconds of the clock per phase
    attempts: int = 0


def wait_ready(base_url: str, api_key: str | None, model: str, timeout_s: float, clock: Clock,
               *, poll_s: float = 0.1, max_real_s: float = 120.0,
               min_real_s: float = 20.0) -> ReadyReport:
    """Wait until ``/health`` answers and a 1-token completion succeeds.

    ``timeout_s`` is in the clock's seconds. The engine is a real process, so the wait also
    counts real seconds: it never gives up before ``min_real_s`` (a simulated clock running
    1000× would otherwise time a real start-up out) nor waits past ``max_real_s``.
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    report = ReadyReport()
    start = clock.monotonic()
    phase_start = start
    phase = "engine_loading"
    real_waited = 0.0
    with httpx.Client(timeout=httpx.Timeout(10.0, connect=2.0), headers=headers) as client:
        while True:
            report.attempts += 1
            try:
                if phase == "engine_loading" and \
                        client.get(f"{base_url}/health").status_code == 200:
                    now = clock.monotonic()
                    report.phases["engine_loading"] = now - phase_start
                    phase, phase_start = "first_completion", now
                if phase == "first_completion":
                    r = client.post(f"{base_url}/v1/completions",
                                    json={"model": model, "prompt": "ping", "max_tokens": 1})
                    if r.status_code == 200 and r.json().get("choices"):
                        report.phases["first_completion"] = clock.monotonic() - phase_start
                        return report
            except (httpx.HTTPError, ValueError):
                pass
            sim_expired = clock.monotonic() - start > timeout_s and real_waited >= min_real_s
            if sim_expired or real_waited > max_real_s:
                raise NotReady(f"engine at {base_url} not ready after {timeout_s:g} s "
                               f"({phase.replace('_', ' ')})")
            threading.Event().wait(poll_s)
            real_waited += poll_s
