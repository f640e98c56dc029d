"""The cost report: spend, tokens, $/Mtok band, utilisation, spend by capacity and
observability for a window. Pure: built from one :class:`WindowData` snapshot.

Used by ``spotctl cost``, ``price``, ``compare``, the HTML report and the demo. The JSON shape
(:meth:`CostReport.to_json`) is documented in the README and stable: fields are only added.

Definitions (per tier, and in total over the tiers):

* ``serving``: time a VM of the tier billed in a running state (from the billing samples'
  states, see :mod:`spotctl.accounting.capacity`), summed over its VMs;
* ``utilisation`` = output tokens ÷ (capacity × serving seconds), capacity in output tokens/s
  per VM from the newest ``spotctl bench`` of the tier, else the tier's
  ``rated_output_tokens_per_s``; null when neither is known;
* ``usd_per_mtok_at_full_load`` = the billed $/h of the serving resources (their invoice-true
  spend while serving ÷ serving hours) ÷ capacity: what a million output tokens would cost if
  the paid machines were busy all the time;
* ``idle_share`` (time-weighted): the share of the tier's serving time with no request in
  flight; ``idle_spend_usd`` is that share of the serving spend (an allocation, not a bill);
* ``zero_token_spend_usd`` / ``zero_token_share``: spend in buckets that served no token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

from spotctl.accounting.bands import band, usd_per_mtok
from spotctl.accounting.capacity import CATEGORIES
from spotctl.accounting.spend import SpendResult
from spotctl.clock import from_ms, iso
from spotctl.money import usd_str

_RATIO = Decimal("0.000001")
_MTOK = Decimal("0.0001")


def _dec(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def ratio(num: int | Decimal, den: int | Decimal) -> Decimal | None:
    if not den:
        return None
    return (Decimal(num) / Decimal(den)).quantize(_RATIO, rounding=ROUND_HALF_EVEN)


def union_length(spans: Sequence[tuple[int, int]]) -> int:
    total, cur_s, cur_e = 0, None, None
    for s, e in sorted(spans):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s  # type: ignore[operator]
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s  # type: ignore[operator]
    return total


def merge(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def intersect_length(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> int:
    """Length of (∪a) ∩ (∪b)."""
    a, b = merge(a), merge(b)
    i = j = total = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


@dataclass(frozen=True)
class Capacity:
    """Output tokens/s one VM of a tier serves at saturation, and where the figure comes from."""

    tokens_per_s: Decimal
    source: str  # bench | rated
    detail: str = ""
    lower_bound: bool = False  # a bench that ended before the TTFT SLO broke


@dataclass
class Bucket:
    start_ms: int  # aligned bucket start, clipped to the window
    end_ms: int
    spend_micros: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    dark: bool = False
    by_capacity: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    capacity_tokens: Decimal | None = None  # capacity × serving seconds, over tiers with one
    rated_output_tokens: int = 0  # output tokens of the tiers with a capacity

    @property
    def index(self) -> int:  # kept for callers that label buckets by position
        return self.start_ms

    @property
    def usd_per_mtok_output(self) -> Decimal | None:
        return usd_per_mtok(self.spend_micros, self.output_tokens)

    @property
    def utilisation(self) -> Decimal | None:
        if not self.capacity_tokens:
            return None
        return ratio(self.rated_output_tokens, self.capacity_tokens)

    def to_json(self) -> dict:
        return {
            "start": iso(from_ms(self.start_ms)), "end": iso(from_ms(self.end_ms)),
            "spend_usd": usd_str(self.spend_micros), "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens, "requests": self.requests,
            "usd_per_mtok_output": _dec(self.usd_per_mtok_output), "dark": self.dark,
            "spend_by_capacity": {k: usd_str(v) for k, v in self.by_capacity.items()},
            "utilisation": _dec(self.utilisation),
        }


@dataclass
class Breakdown:
    """Spend and tokens for one slice (a tier, a provider, or the whole window)."""

    name: str
    spend_micros: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    zero_token_micros: int = 0
    band: dict[str, Decimal | None] = field(default_factory=lambda: band([]))
    by_capacity: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    serving_ms: int = 0  # machine-time billed in a running state
    serving_micros: int = 0  # spend billed in a running state
    serving_union_ms: int = 0  # time at least one machine served
    busy_serving_ms: int = 0  # of which some request was in flight
    capacity: Capacity | None = None
    # totals over several tiers: output tokens of the tiers with a capacity, and their
    # capacity × serving seconds (None unless every serving tier has a capacity)
    rated_output_tokens: int = 0
    capacity_tokens: Decimal | None = None
    extra: dict = field(default_factory=dict)  # economics sections (interruptions, savings)

    @property
    def usd_per_mtok_output(self) -> Decimal | None:
        return usd_per_mtok(self.spend_micros, self.output_tokens)

    @property
    def usd_per_mtok_total(self) -> Decimal | None:
        return usd_per_mtok(self.spend_micros, self.prompt_tokens + self.output_tokens)

    @property
    def zero_token_share(self) -> Decimal | None:
        return ratio(self.zero_token_micros, self.spend_micros) if self.spend_micros > 0 else None

    @property
    def idle_share(self) -> Decimal | None:
        """Time-weighted: the share of serving time with no request in flight."""
        if self.serving_union_ms <= 0:
            return None
        return ratio(self.serving_union_ms - self.busy_serving_ms, self.serving_union_ms)

    @property
    def idle_micros(self) -> int:
        share = self.idle_share
        if share is None:
            return 0
        return int((Decimal(self.serving_micros) * share).quantize(Decimal(1), ROUND_HALF_EVEN))

    @property
    def utilisation(self) -> Decimal | None:
        if not self.capacity_tokens:
            return None
        return ratio(self.rated_output_tokens, self.capacity_tokens)

    @property
    def usd_per_mtok_at_full_load(self) -> Decimal | None:
        """$ per million output tokens if the serving machines had been saturated."""
        if not self.capacity_tokens or self.serving_micros <= 0:
            return None
        return usd_per_mtok(self.serving_micros, int(self.capacity_tokens)) if int(
            self.capacity_tokens) > 0 else None

    @property
    def billed_usd_per_h_serving(self) -> Decimal | None:
        if self.serving_ms <= 0:
            return None
        return (Decimal(self.serving_micros) * 3600 / Decimal(self.serving_ms) / 1000
                ).quantize(_MTOK, ROUND_HALF_EVEN)

    def to_json(self) -> dict:
        cap = self.capacity
        return {
            "name": self.name,
            "spend_usd": usd_str(self.spend_micros),
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "usd_per_mtok_output": _dec(self.usd_per_mtok_output),
            "usd_per_mtok_total": _dec(self.usd_per_mtok_total),
            "band": {k: _dec(v) for k, v in self.band.items()},
            "idle_spend_usd": usd_str(self.idle_micros),
            "idle_share": _dec(self.idle_share),
            "zero_token_spend_usd": usd_str(self.zero_token_micros),
            "zero_token_share": _dec(self.zero_token_share),
            "spend_by_capacity": {k: usd_str(v) for k, v in self.by_capacity.items()},
            "serving_seconds": self.serving_ms // 1000,
            "billed_usd_per_h_serving": _dec(self.billed_usd_per_h_serving),
            "capacity_output_tokens_per_s": None if cap is None else str(cap.tokens_per_s),
            "capacity_source": None if cap is None else cap.source,
            "utilisation": _dec(self.utilisation),
            "usd_per_mtok_at_full_load": _dec(self.usd_per_mtok_at_full_load),
            **self.extra,
        }


@dataclass
class CostReport:
    start_ms: int
    end_ms: int
    bucket_ms: int
    min_tokens: int
    spend: SpendResult
    total: Breakdown
    tiers: list[Breakdown]
    providers: list[Breakdown]
    buckets: list[Bucket]
    unattributed_micros: int
    estimated_requests: int
    extras: dict = field(default_factory=dict)  # economics sections added by services
    data: object = None  # the WindowData snapshot the report was built from
    compare: dict | None = None  # the hosted-API comparison, when computed (not in to_json)

    @property
    def spend_complete(self) -> bool:
        return self.spend.complete

    def sentence(self) -> str:
        """One plain sentence saying what the numbers mean."""
        from spotctl.money import fmt_usd

        t = self.total
        if not self.spend.complete:
            until = (iso(from_ms(self.spend.known_until_ms))
                     if self.spend.known_until_ms is not None else "nothing")
            head = (f"Spend is only known up to {until}: at least {fmt_usd(t.spend_micros)}, "
                    f"the rest is unknown (billing went dark), not zero.")
        else:
            head = f"The providers billed {fmt_usd(t.spend_micros)} in this window."
        if t.output_tokens == 0:
            return head + " No tokens were served, so cost per token is undefined."
        p10, p90 = t.band.get("p10"), t.band.get("p90")
        mid = t.usd_per_mtok_output
        rng = (f" (P10–P90 across buckets: ${p10:.2f}–${p90:.2f})"
               if p10 is not None and p90 is not None else "")
        return (f"{head} Serving {t.output_tokens:,} output tokens cost ${mid:.2f} per million"
                f"{rng}.")

    def to_json(self) -> dict:
        s = self.spend
        out = {
            "window": {"start": iso(from_ms(self.start_ms)), "end": iso(from_ms(self.end_ms)),
                       "bucket_seconds": self.bucket_ms // 1000},
            "spend_complete": s.complete,
            "spend_known_until": (iso(from_ms(s.known_until_ms))
                                  if s.known_until_ms is not None else None),
            "spend_uncertain_usd": usd_str(s.uncertain_micros),
            "estimated_spend_usd": usd_str(s.estimate_micros),
            "unattributed_spend_usd": usd_str(self.unattributed_micros),
            "anomalies": s.anomalies,
            "estimated_token_requests": self.estimated_requests,
            "observability": {
                "status": s.status,
                "dark_seconds": s.dark_seconds,
                "last_sample_at": (iso(from_ms(s.coverage.last_sample_ms))
                                   if s.coverage.last_sample_ms is not None else None),
                "reasons": s.reasons,
                "dark_intervals": [
                    {"start": iso(from_ms(i.start_ms)), "end": iso(from_ms(i.end_ms)),
                     "provider": i.provider, "kind": i.kind, "reason": i.reason}
                    for i in s.coverage.intervals
                ],
            },
            "idle_share_resolution": (self.data.busy_resolution if self.data is not None
                                      else "request"),
            "tiers": [t.to_json() for t in self.tiers],
            "providers": [p.to_json() for p in self.providers],
            "buckets": [b.to_json() for b in self.buckets],
        }
        total = self.total.to_json()
        total.pop("name")
        total.pop("capacity_source")
        out.update(total)
        out.update(self.extras)
        return out


def _band_of(pairs: dict[int, tuple[int, int]], min_tokens: int) -> dict[str, Decimal | None]:
    values = []
    for spend, tokens in pairs.values():
        if tokens >= min_tokens and tokens > 0:
            values.append((usd_per_mtok(spend, tokens), tokens))
    return band(values)  # type: ignore[arg-type]


def _off_pct(m) -> Decimal | None:
    """How far the billed rate is off the quote, in percent of the quote (None: no quote)."""
    if not m.quoted_micros_per_h:
        return None
    return (Decimal(m.billed_micros_per_h - m.quoted_micros_per_h) * 100
            / Decimal(m.quoted_micros_per_h)).quantize(Decimal("0.01"), ROUND_HALF_EVEN)


def rate_mismatch_json(items: Sequence) -> dict:
    """Billed rates off the launch quote (``rate_mismatch`` anomalies, an estimate of price, not
    spend): how many samples, and the worst one (the largest difference from its quote; the
    newest of equals)."""
    if not items:
        return {"count": 0, "worst": None}

    def size(m) -> tuple:
        off = _off_pct(m)
        return (Decimal("Infinity") if off is None else abs(off), m.observed_ms)

    w = max(items, key=size)
    off = _off_pct(w)
    return {"count": len(items), "worst": {
        "provider": w.provider, "resource_id": w.resource_id, "at": iso(from_ms(w.observed_ms)),
        "quoted_usd_per_hour": usd_str(w.quoted_micros_per_h),
        "billed_usd_per_hour": usd_str(w.billed_micros_per_h),
        "off_pct": None if off is None else str(off)}}


def tier_capacity(tier_cfg, bench_rows) -> Capacity | None:
    """The newest bench of the tier for its current model, else its rated figure, else None."""
    for row in bench_rows or ():
        if row.output_tokens_per_s > 0 and (
                tier_cfg is None or row.model in (None, tier_cfg.model, tier_cfg.public_model)):
            when = iso(from_ms(row.finished_ms))
            return Capacity(Decimal(str(round(row.output_tokens_per_s, 1))), "bench",
                            f"spotctl bench at {when}, {row.concurrency} concurrent streams",
                            lower_bound=not row.slo_broken)
    rated = tier_cfg.rated_output_tokens_per_s if tier_cfg is not None else None
    if rated:
        return Capacity(Decimal(str(rated)), "rated", "tier config rated_output_tokens_per_s")
    return None


def build_report(data, spend: SpendResult, cfg, *, min_tokens: int = 1000,
                 tiers: set[str] | None = None) -> CostReport:
    """The report from one snapshot (``WindowData``) and the spend computed from it."""
    start_ms, end_ms = data.start_ms, data.end_ms
    bucket_ms = data.bucket_ms or (end_ms - start_ms)
    starts = data.bucket_starts
    buckets = {b: Bucket(max(b, start_ms), min(end_ms, b + bucket_ms)) for b in starts}
    ordered = [buckets[b] for b in starts]
    for interval in spend.coverage.intervals:
        for bk in ordered:
            if interval.start_ms < bk.end_ms and interval.end_ms > bk.start_ms:
                bk.dark = True

    tier_cfgs = {t.name: t for t in cfg.tiers}
    tier_names = {s.data.tier for s in spend.series if s.data.tier} | {
        t for (_b, t) in data.tokens if t} | set(tier_cfgs)
    if tiers is not None:
        tier_names &= tiers
    rows = {name: Breakdown(name) for name in sorted(tier_names)}
    for name, row in rows.items():
        row.capacity = tier_capacity(tier_cfgs.get(name), data.bench.get(name))

    total = Breakdown("total")
    tier_bucket_spend: dict[str, dict[int, int]] = {n: {} for n in rows}
    tier_bucket_out: dict[str, dict[int, int]] = {n: {} for n in rows}
    tier_bucket_serving: dict[str, dict[int, int]] = {n: {} for n in rows}
    tier_serving_spans: dict[str, list[tuple[int, int]]] = {n: [] for n in rows}
    prov_spend: dict[str, int] = {}
    prov_cap: dict[str, dict[str, int]] = {}
    unattributed = 0
    for r in spend.series:
        tier = r.data.tier
        row = rows.get(tier) if tier else None
        if tier is None:
            unattributed += r.spend.micros
        prov_spend[r.data.provider] = prov_spend.get(r.data.provider, 0) + r.spend.micros
        pc = prov_cap.setdefault(r.data.provider, dict.fromkeys(CATEGORIES, 0))
        total_cap = total.by_capacity
        row_spend = tier_bucket_spend[row.name] if row is not None else None
        for (b, label), micros in r.spend.by_bucket_label.items():
            category = label.category
            bk = buckets.get(b)
            if bk is not None:
                bk.spend_micros += micros
                bk.by_capacity[category] += micros
            total_cap[category] += micros
            pc[category] += micros
            if row is not None:
                row.by_capacity[category] += micros
                row.spend_micros += micros
                row_spend[b] = row_spend.get(b, 0) + micros  # type: ignore[index]
                if label.serving:
                    row.serving_micros += micros
        if row is not None:
            row_serving = tier_bucket_serving[row.name]
            for (b, label), ms in r.spend.ms_by_bucket_label.items():
                if label.serving:
                    row.serving_ms += ms
                    row_serving[b] = row_serving.get(b, 0) + ms
        if row is not None:
            tier_serving_spans[row.name].extend(_serving_spans(r, start_ms, end_ms))
    total.spend_micros = spend.micros

    for (b, tier), tok in data.tokens.items():
        if tiers is not None and tier not in tiers:
            continue
        bk = buckets.get(b)
        if bk is not None:
            bk.output_tokens += tok.output
            bk.prompt_tokens += tok.prompt
            bk.requests += tok.requests
        total.output_tokens += tok.output
        total.prompt_tokens += tok.prompt
        row = rows.get(tier)
        if row is not None:
            row.output_tokens += tok.output
            row.prompt_tokens += tok.prompt
            tier_bucket_out[tier][b] = tier_bucket_out[tier].get(b, 0) + tok.output

    # capacity, utilisation, idle time
    capacity_tokens = Decimal(0)
    full_load_ok = True
    for name, row in rows.items():
        spans = tier_serving_spans[name]
        row.serving_union_ms = union_length(spans)
        row.busy_serving_ms = intersect_length(spans, data.busy.get(name, []))
        total.serving_ms += row.serving_ms
        total.serving_micros += row.serving_micros
        total.serving_union_ms += row.serving_union_ms
        total.busy_serving_ms += row.busy_serving_ms
        if row.capacity is not None:
            row.capacity_tokens = row.capacity.tokens_per_s * row.serving_ms / 1000
            row.rated_output_tokens = row.output_tokens
            capacity_tokens += row.capacity_tokens
            total.rated_output_tokens += row.output_tokens
            for b, ms in tier_bucket_serving[name].items():
                bk = buckets.get(b)
                if bk is not None:
                    bk.capacity_tokens = (bk.capacity_tokens or Decimal(0)) + (
                        row.capacity.tokens_per_s * ms / 1000)
                    bk.rated_output_tokens += tier_bucket_out[name].get(b, 0)
        elif row.serving_ms > 0:
            full_load_ok = False
    if full_load_ok and capacity_tokens > 0:
        total.capacity_tokens = capacity_tokens

    # bands and zero-token spend
    for name, row in rows.items():
        ks = set(tier_bucket_spend[name]) | set(tier_bucket_out[name])
        pairs = {k: (tier_bucket_spend[name].get(k, 0), tier_bucket_out[name].get(k, 0))
                 for k in ks}
        row.band = _band_of(pairs, min_tokens)
        row.zero_token_micros = sum(sp for sp, out in pairs.values() if out == 0)
    pairs = {b: (bk.spend_micros, bk.output_tokens) for b, bk in buckets.items()}
    total.band = _band_of(pairs, min_tokens)
    total.zero_token_micros = sum(sp for sp, out in pairs.values() if out == 0)

    prov_rows = [Breakdown(p, spend_micros=m, by_capacity=prov_cap.get(
        p, dict.fromkeys(CATEGORIES, 0))) for p, m in sorted(prov_spend.items())]

    # billed rates off the launch quote, by the tier of the resource and by provider
    mismatches = data.rate_mismatches
    tier_of = {(s.provider, s.resource_id): s.tier for s in data.series}
    if tiers is not None:
        mismatches = [m for m in mismatches if tier_of.get((m.provider, m.resource_id)) in tiers]
    for name, row in rows.items():
        row.extra["rate_mismatches"] = rate_mismatch_json(
            [m for m in mismatches if tier_of.get((m.provider, m.resource_id)) == name])
    for prow in prov_rows:
        prow.extra["rate_mismatches"] = rate_mismatch_json(
            [m for m in mismatches if m.provider == prow.name])
    total.extra["rate_mismatches"] = rate_mismatch_json(mismatches)
    estimated = sum(tok.estimated for (_b, t), tok in data.tokens.items()
                    if tiers is None or t in tiers)
    return CostReport(start_ms, end_ms, bucket_ms, min_tokens, spend, total, list(rows.values()),
                      prov_rows, ordered, unattributed, estimated, data=data)


def _serving_spans(r, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """The intervals (between consecutive samples) in which this series billed as serving."""
    return [(lo, hi) for lo, hi, label in r.spend.spans if label.serving]
