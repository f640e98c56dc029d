"""Prometheus metrics through ``prometheus-client``.

One private registry per gateway; with several worker processes (``spotctl gateway --workers
N``) the parent sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start and ``/metrics``
aggregates every worker's values (multiprocess mode; gauges say how they combine).

Labels are bounded: ``model`` is a configured model or ``other``, ``tier`` a configured tier.

The request path does not touch prometheus-client (a lock and a bucket search per value, nine
values per request: ~10 % of the gateway's CPU per request, issue 15): it counts in plain Python
(:meth:`GatewayMetrics.request`, :meth:`GatewayMetrics.finished`) and :meth:`flush` adds the counts
to the prometheus-client metrics before every render. With workers (multiprocess mode, where
another worker may answer the scrape) each worker also flushes when it has nothing in flight
and at least every ``FLUSH_S`` under load.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left

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
FLUSH_S = 1.0  # multiprocess mode: the longest a worker's counts wait under load


class _Hist:
    """Observations of one histogram child, counted locally until the next flush."""

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child) -> None:
        self.child = child
        self.bounds = list(child._upper_bounds)  # ends with +Inf
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "le": the first bound >= value (bisect_left), as observe() does
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def flush(self) -> None:
        counts, self.counts = self.counts, [0] * len(self.bounds)
        total, self.total = self.total, 0.0
        if not any(counts):
            return
        # prometheus-client has no bulk observe: add to the child's bucket and sum values, the
        # same ones observe() increments (tests/test_gateway_app.py compares the rendering with
        # a Histogram that observed the same values one by one)
        buckets = self.child._buckets
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
        self.child._sum.inc(total)


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
        self.rate_mismatch = Gauge("spotctl_rate_mismatch", "Serving resources the provider "
                                   "billed off the rate quoted at their launch, in its newest "
                                   "successful poll of the budget day (a rate_mismatch anomaly; "
                                   "with [budget] close_on_rate_mismatch the gate closes).",
                                   ["provider"], registry=r, multiprocess_mode="mostrecent")
        self.spooled = Gauge("spotctl_gateway_usage_rows_spooled", "Usage rows in the spool "
                             "waiting to be replayed into the ledger.", registry=r,
                             multiprocess_mode="livesum")
        self._req: dict[tuple[str, str, int], list] = {}  # key: [count, child]
        self._tier: dict[str, list] = {}
        for t in [*tiers, ""]:
            self._tier[t] = [0, 0, 0, self.tokens.labels(t, "prompt"),
                             self.tokens.labels(t, "completion"), self.estimated.labels(t),
                             _Hist(self.ttft.labels(t)), _Hist(self.latency.labels(t))]
        self._overhead = _Hist(self.overhead)
        self._flush_lock = threading.Lock()
        self._multiprocess = multiprocess_mode()
        self._flushed = time.monotonic()  # clock-ok: real pacing of the flush
        for t in tiers:
            self.in_flight.labels(t).set(0)

    def request(self, model: str, code: str, status: int) -> None:
        key = (model, code, status)
        entry = self._req.get(key)
        if entry is None:
            entry = self._req[key] = [0, self.requests.labels(
                model if model in self.models else "other", code, str(status))]
        entry[0] += 1

    def finished(self, tier: str | None, prompt: int, completion: int, estimated: bool,
                 ttft_s: float | None, total_s: float, overhead_s: float | None = None,
                 idle: bool = False) -> None:
        """One request ended (counted locally; see the module doc)."""
        if overhead_s is not None:
            self._overhead.observe(overhead_s)
        entry = self._tier.get(tier or "")
        if entry is not None:
            entry[0] += prompt
            entry[1] += completion
            if estimated:
                entry[2] += 1
            if ttft_s is not None:
                entry[6].observe(ttft_s)
            entry[7].observe(total_s)
        if self._multiprocess:
            self.maybe_flush(idle)

    def maybe_flush(self, idle: bool) -> None:
        """Multiprocess mode: flush when this worker is idle or ``FLUSH_S`` passed."""
        if self._multiprocess and (idle or time.monotonic() - self._flushed >= FLUSH_S):  # clock-ok
            self.flush()

    def flush(self) -> None:
        """Add the counts since the last flush to the prometheus-client metrics."""
        with self._flush_lock:
            self._flushed = time.monotonic()  # clock-ok
            for entry in self._req.values():
                n, entry[0] = entry[0], 0
                if n:
                    entry[1].inc(n)
            for entry in self._tier.values():
                p, c, e = entry[0], entry[1], entry[2]
                entry[0] = entry[1] = entry[2] = 0
                if p:
                    entry[3].inc(p)
                if c:
                    entry[4].inc(c)
                if e:
                    entry[5].inc(e)
                entry[6].flush()
                entry[7].flush()
            self._overhead.flush()

    def render(self) -> bytes:
        self.flush()
        if multiprocess_mode():
            registry = CollectorRegistry()
            mp.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
