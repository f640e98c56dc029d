"""Prometheus metrics, kept as plain counters (one process, one event loop: no locks needed)."""

from __future__ import annotations

from collections import Counter

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()  # (model, code)
        self.tokens: Counter[str] = Counter()  # prompt / completion
        self.latency_counts = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        self.wakes = 0
        self.wake_seconds = 0.0
        self.gate_open = 1

    def observe_latency(self, seconds: float) -> None:
        self.latency_sum += seconds
        for i, b in enumerate(BUCKETS):
            if seconds <= b:
                self.latency_counts[i] += 1
                return
        self.latency_counts[-1] += 1

    def render(self) -> bytes:
        lines = ["# TYPE spotctl_gateway_requests_total counter"]
        for (model, code), n in sorted(self.requests.items()):
            lines.append(f'spotctl_gateway_requests_total{{model="{model}",code="{code}"}} {n}')
        lines.append("# TYPE spotctl_gateway_tokens_total counter")
        for kind, n in sorted(self.tokens.items()):
            lines.append(f'spotctl_gateway_tokens_total{{kind="{kind}"}} {n}')
        lines.append("# TYPE spotctl_gateway_upstream_latency_seconds histogram")
        running = 0
        for b, n in zip(BUCKETS, self.latency_counts, strict=False):
            running += n
            lines.append(f'spotctl_gateway_upstream_latency_seconds_bucket{{le="{b}"}} {running}')
        total = sum(self.latency_counts)
        lines.append(f'spotctl_gateway_upstream_latency_seconds_bucket{{le="+Inf"}} {total}')
        lines.append(f"spotctl_gateway_upstream_latency_seconds_sum {self.latency_sum:.6f}")
        lines.append(f"spotctl_gateway_upstream_latency_seconds_count {total}")
        lines += ["# TYPE spotctl_gateway_gate_open gauge",
                  f"spotctl_gateway_gate_open {self.gate_open}",
                  "# TYPE spotctl_gateway_wakes_total counter",
                  f"spotctl_gateway_wakes_total {self.wakes}",
                  "# TYPE spotctl_gateway_wake_seconds_total counter",
                  f"spotctl_gateway_wake_seconds_total {self.wake_seconds:.3f}"]
        return ("\n".join(lines) + "\n").encode()
