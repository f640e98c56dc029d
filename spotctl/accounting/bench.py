"""``spotctl bench``: the pure parts of the capacity load test (mix, statistics, the ramp).

A bench ramps concurrency 1, 2, 4, 8, … through the gateway, one step of closed-loop streams at
a time, until the time to first token breaks the SLO. A step's throughput counts the output
tokens streamed inside the step's measured part (after a warm-up fifth, before its end). The
saturated capacity is the best throughput of the steps that met the SLO.

Default prompt/output mix (``DEFAULT_MIX``, tokens, weight): mostly chat turns, some long
prompts, a few long answers — close to the ShareGPT-style and "balanced" workloads public vLLM
benchmarks report (silybench "chat 128/128", "prefill 1024/128", "2048/2048"):

    256 in / 128 out  × 6     (chat)
    1024 in / 128 out × 2     (retrieval, long prompt)
    512 in / 512 out  × 2     (long answer)

Override with ``--mix "IN:OUT:WEIGHT,..."``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from spotctl.errors import UsageError

DEFAULT_MIX_TEXT = "256:128:6,1024:128:2,512:512:2"
WARMUP_FRACTION = 0.2
MAX_ERROR_RATE = 0.05  # a step with more failed requests than this breaks the SLO too


@dataclass(frozen=True)
class MixItem:
    prompt_tokens: int
    output_tokens: int
    weight: int


def parse_mix(text: str) -> list[MixItem]:
    items = []
    for part in (text or "").split(","):
        bits = part.strip().split(":")
        try:
            if len(bits) != 3:
                raise ValueError
            p, o, w = (int(b) for b in bits)
            if p < 1 or o < 1 or w < 1 or p > 200_000 or o > 100_000:
                raise ValueError
        except ValueError:
            raise UsageError(f"bad --mix {text!r}: expected IN:OUT:WEIGHT items separated by "
                             f"commas, such as {DEFAULT_MIX_TEXT}") from None
        items.append(MixItem(p, o, w))
    return items


def draw(mix: Sequence[MixItem], rng: random.Random) -> MixItem:
    return rng.choices(list(mix), weights=[m.weight for m in mix])[0]


_WORDS = ("spot", "invoice", "token", "ledger", "gateway", "preempt", "hibernate", "wake",
          "cluster", "volume", "budget", "minute", "stream", "engine", "weights", "capacity")


def prompt_text(n_tokens: int, rng: random.Random) -> str:
    """About ``n_tokens`` tokens of varied words, with a random head so that prefix caching
    does not make the prompts free."""
    head = f"[{rng.getrandbits(48):012x}]"
    return head + " " + " ".join(rng.choice(_WORDS) for _ in range(max(1, n_tokens - 2)))


def quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile (the value at rank ⌈q·n⌉); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass
class RequestSample:
    started_s: float
    ttft_s: float | None = None  # None: no token arrived
    chunk_times: list[float] = field(default_factory=list)  # arrival of each content chunk
    output_tokens: int | None = None  # from the usage event, when the engine sent one
    prompt_tokens: int = 0
    error: str | None = None
    finished: bool = False


@dataclass
class StepResult:
    concurrency: int
    started_s: float
    ended_s: float
    requests: int = 0
    errors: int = 0
    output_tokens: int = 0  # from usage, over finished requests
    prompt_tokens: int = 0
    output_tokens_per_s: float = 0.0
    ttft_ms: dict[str, float | None] = field(default_factory=dict)
    itl_ms: dict[str, float | None] = field(default_factory=dict)

    def meets(self, slo_ms: float) -> bool:
        p = self.ttft_ms.get("p90")
        if p is None or p > slo_ms:
            return False
        return self.errors <= MAX_ERROR_RATE * max(1, self.requests)

    def to_json(self) -> dict:
        return {"concurrency": self.concurrency, "seconds": round(self.ended_s - self.started_s, 3),
                "requests": self.requests, "errors": self.errors,
                "output_tokens": self.output_tokens, "prompt_tokens": self.prompt_tokens,
                "output_tokens_per_s": round(self.output_tokens_per_s, 1),
                "ttft_ms": self.ttft_ms, "itl_ms": self.itl_ms}


def _pcts(values: Sequence[float]) -> dict[str, float | None]:
    return {f"p{int(q * 100)}": (None if (v := quantile(values, q)) is None else round(v, 1))
            for q in (0.5, 0.9, 0.99)}


def summarise_step(concurrency: int, started_s: float, ended_s: float,
                   samples: Sequence[RequestSample]) -> StepResult:
    """Throughput and latency of one step from its requests (times in seconds, one clock)."""
    res = StepResult(concurrency, started_s, ended_s)
    lo = started_s + WARMUP_FRACTION * (ended_s - started_s)
    chunks_in = 0
    usage_tokens = usage_chunks = 0
    ttfts, itls = [], []
    for s in samples:
        res.requests += 1
        if s.error:
            res.errors += 1
        if s.ttft_s is not None:
            ttfts.append(s.ttft_s * 1000)
        itls.extend((b - a) * 1000 for a, b in zip(s.chunk_times, s.chunk_times[1:], strict=False))
        chunks_in += sum(1 for t in s.chunk_times if lo <= t <= ended_s)
        if s.finished and s.output_tokens is not None and s.chunk_times:
            usage_tokens += s.output_tokens
            usage_chunks += len(s.chunk_times)
            res.output_tokens += s.output_tokens
            res.prompt_tokens += s.prompt_tokens
    # chunks carry one token each on vLLM; calibrate with the usage of finished requests
    per_chunk = usage_tokens / usage_chunks if usage_chunks else 1.0
    itls = [gap / per_chunk for gap in itls]  # inter-token latency, per token
    span = ended_s - lo
    res.output_tokens_per_s = chunks_in * per_chunk / span if span > 0 else 0.0
    res.ttft_ms = _pcts(ttfts)
    res.itl_ms = _pcts(itls)
    return res


def next_concurrency(steps: Sequence[StepResult], slo_ms: float, max_concurrency: int
                     ) -> int | None:
    """The next step's concurrency, or None when the ramp is over (the SLO broke, or the cap)."""
    if not steps:
        return 1
    last = steps[-1]
    if not last.meets(slo_ms):
        return None
    nxt = last.concurrency * 2
    return nxt if nxt <= max_concurrency else None


def saturation(steps: Sequence[StepResult], slo_ms: float) -> tuple[StepResult | None, bool]:
    """(the best step that met the SLO, whether a later step broke it). With no step meeting
    the SLO, the first step (concurrency 1) is all the tier can do within it: (None, True)."""
    good = [s for s in steps if s.meets(slo_ms)]
    broken = any(not s.meets(slo_ms) for s in steps)
    if not good:
        return None, broken
    return max(good, key=lambda s: s.output_tokens_per_s), broken


def parse_seconds(text: str, what: str) -> float:
    """``60s``, ``2m``, ``1.5s`` or a bare number of seconds."""
    t = (text or "").strip().lower()
    scale = 1.0
    if t.endswith("ms"):
        t, scale = t[:-2], 0.001
    elif t.endswith("s"):
        t = t[:-1]
    elif t.endswith("m"):
        t, scale = t[:-1], 60.0
    try:
        value = float(t) * scale
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value <= 0 or value > 86_400:
        raise UsageError(f"bad {what} {text!r}: expected a duration such as 60s, 2m or 500ms")
    return value
