"""Prometheus metrics through ``prometheus-client``.

One private registry per gateway; with several worker processes (``spotctl gateway --workers
N``) the parent sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start and ``/metrics``
aggregates every worker's values (multiprocess mode; gauges say how they combine).

Labels are bounded: ``model`` is a configured model or ``other``, ``tier`` a configured tier.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as mp

disable_created_metrics()  # no *_created series: they double the output and nobody reads them

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
WAKE = (1, 5, 10, 30, 60, 120, 300, 600, 1200)


def multiprocess_mode() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class GatewayMetrics:
    def __init__(self, models: list[str], tiers: list[str]) -> None:
        self.models = frozenset(models)
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "spotctl_gateway_requests", "Requests answered, by model, outcome code and HTTP "
            "status; refusals before the proxy (401, 400, 429, 503...) included.",
            ["model", "code", "status"], registry=r)
        self.tokens = Counter("spotctl_gateway_tokens", "Tokens in usage rows, by tier and kind "
                              "(prompt or completion).", ["tier", "kind"], registry=r)
        self.estimated = Counter("spotctl_gateway_estimated_rows", "Usage rows whose tokens "
                                 "were estimated (the engine did not report them).", ["tier"],
                                 registry=r)
        self.ttft = Histogram("spotctl_gateway_time_to_first_token_seconds", "From the request "
                              "to the first byte of the engine's answer relayed.", ["tier"],
                              buckets=LATENCY, registry=r)
        self.latency = Histogram("spotctl_gateway_request_duration_seconds", "From the request "
                                 "to the end of the response.", ["tier"], buckets=LATENCY,
                                 registry=r)
        self.overhead = Histogram("spotctl_gateway_overhead_seconds", "Time spent in the gateway "
                                  "itself per response (total minus waiting on the engine), as "
                                  "sent in x-spotctl-overhead-ms.", buckets=FAST, registry=r)
        self.wake = Histogram("spotctl_gateway_wake_duration_seconds", "Waking a hibernated tier "
                              "on request.", ["tier"], buckets=WAKE, registry=r)
        self.spend = Gauge("spotctl_gateway_spend_today_usd", "Invoice-true spend of the budget "
                           "day so far (NaN when unknown).", registry=r,
                           multiprocess_mode="mostrecent")
        self.budget = Gauge("spotctl_gateway_budget_usd", "The daily budget (NaN when none).",
                            registry=r, multiprocess_mode="mostrecent")
        self.billing_age = Gauge("spotctl_gateway_billing_age_seconds", "Age of the newest "
                                 "successful billing poll, on the monotonic clock (NaN when "
                                 "none).", registry=r, multiprocess_mode="mostrecent")
        self.gate_open = Gauge("spotctl_gateway_gate_open", "1 when the gate admits requests.",
                               registry=r, multiprocess_mode="livemin")
        self.gate_state = Gauge("spotctl_gateway_gate_state", "1 for the gate's current state.",
                                ["state"], registry=r, multiprocess_mode="livemax")
        self.in_flight = Gauge("spotctl_gateway_in_flight_requests", "Requests in flight per "
                               "tier.", ["tier"], registry=r, multiprocess_mode="livesum")
        self.not_durable = Gauge("spotctl_gateway_usage_rows_not_durable", "Usage rows neither "
                                 "the ledger nor the spool could take (the gate is closed while "
                                 "> 0).", registry=r, multiprocess_mode="livesum")
        self.spooled = Gauge("spotctl_gateway_usage_rows_spooled", "Usage rows in the spool "
                             "waiting to be replayed into the ledger.", registry=r,
                             multiprocess_mode="livesum")
        self._req: dict[tuple[str, str, int], object] = {}
        self._tier_children = {t: (self.tokens.labels(t, "prompt"),
                                   self.tokens.labels(t, "completion"), self.ttft.labels(t),
                                   self.latency.labels(t), self.estimated.labels(t))
                               for t in [*tiers, ""]}
        for t in tiers:
            self.in_flight.labels(t).set(0)

    def request(self, model: str, code: str, status: int) -> None:
        key = (model, code, status)
        child = self._req.get(key)
        if child is None:
            child = self._req[key] = self.requests.labels(
                model if model in self.models else "other", code, str(status))
        child.inc()

    def finished(self, tier: str | None, prompt: int, completion: int, estimated: bool,
                 ttft_s: float | None, total_s: float) -> None:
        children = self._tier_children.get(tier or "")
        if children is None:
            return
        p, c, ttft, latency, est = children
        if prompt:
            p.inc(prompt)
        if completion:
            c.inc(completion)
        if estimated:
            est.inc()
        if ttft_s is not None:
            ttft.observe(ttft_s)
        latency.observe(total_s)

    def render(self) -> bytes:
        if multiprocess_mode():
            registry = CollectorRegistry()
            mp.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
