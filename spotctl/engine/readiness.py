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


@dataclass(frozen=True)
class Probe:
    """One liveness probe of an engine: ``ok``, else why not (one line, never a secret)."""

    ok: bool
    detail: str


def probe_engine(base_url: str, api_key: str | None, model: str | None = None, *,
                 timeout_s: float = 5.0, completion: bool = False,
                 transport: httpx.BaseTransport | None = None) -> Probe:
    """Is the engine at ``base_url`` serving? ``GET /v1/models`` (listing ``model`` when
    given), or with ``completion`` a real 1-token completion. Short timeout, no retry: the
    caller counts failures in a row (the fleet daemon, the gateway's refresh)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 2.0))
    try:
        with httpx.Client(timeout=timeout, headers=headers, transport=transport) as client:
            if completion:
                r = client.post(f"{base_url}/v1/completions",
                                json={"model": model, "prompt": "ping", "max_tokens": 1})
                if r.status_code != 200:
                    return Probe(False, f"completion: HTTP {r.status_code}")
                if not (r.json() or {}).get("choices"):
                    return Probe(False, "completion: no choices")
                return Probe(True, "completion ok")
            r = client.get(f"{base_url}/v1/models")
            if r.status_code != 200:
                return Probe(False, f"/v1/models: HTTP {r.status_code}")
            if model is not None:
                ids = [m.get("id") for m in (r.json() or {}).get("data") or []
                       if isinstance(m, dict)]
                if model not in ids:
                    return Probe(False, f"/v1/models does not list {model!r}")
            return Probe(True, "/v1/models ok")
    except httpx.TimeoutException:
        return Probe(False, f"no answer within {timeout_s:g} s")
    except httpx.HTTPError as exc:
        return Probe(False, f"unreachable ({type(exc).__name__})")
    except (ValueError, AttributeError, TypeError):
        return Probe(False, "malformed answer")
