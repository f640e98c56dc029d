"""The cost report: spend, tokens, $/Mtok band, idle share and observability for a window.

Used by ``spotctl cost``, ``spotctl price``, the HTML report and the demo. The JSON shape
(:meth:`CostReport.to_json`) is documented in the README and stable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from spotctl.accounting.bands import band, usd_per_mtok
from spotctl.accounting.spend import SpendResult, spend_between
from spotctl.clock import from_ms, iso
from spotctl.config import Config
from spotctl.ledger import queries
from spotctl.ledger.db import Ledger
from spotctl.money import usd_str


def _dec(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


@dataclass
class Bucket:
    index: int
    start_ms: int
    end_ms: int
    spend_micros: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    dark: bool = False

    @property
    def usd_per_mtok_output(self) -> Decimal | None:
        return usd_per_mtok(self.spend_micros, self.output_tokens)

    def to_json(self) -> dict:
        return {
            "start": iso(from_ms(self.start_ms)), "end": iso(from_ms(self.end_ms)),
            "spend_usd": usd_str(self.spend_micros), "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens, "requests": self.requests,
            "usd_per_mtok_output": _dec(self.usd_per_mtok_output), "dark": self.dark,
        }


@dataclass
class Breakdown:
    """Spend and tokens for one slice (a tier, a provider, or the whole window)."""

    name: str
    spend_micros: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    idle_micros: int = 0
    band: dict[str, Decimal | None] = field(default_factory=lambda: band([]))

    @property
    def usd_per_mtok_output(self) -> Decimal | None:
        return usd_per_mtok(self.spend_micros, self.output_tokens)

    @property
    def usd_per_mtok_total(self) -> Decimal | None:
        return usd_per_mtok(self.spend_micros, self.prompt_tokens + self.output_tokens)

    @property
    def idle_share(self) -> Decimal | None:
        if self.spend_micros <= 0:
            return None
        return (Decimal(self.idle_micros) / Decimal(self.spend_micros)).quantize(Decimal("0.0001"))

    def to_json(self) -> dict:
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
        idle = t.idle_share
        idle_txt = (f"; {idle * 100:.0f}% of spend fell in buckets that served nothing"
                    if idle else "")
        return (f"{head} Serving {t.output_tokens:,} output tokens cost ${mid:.2f} per million"
                f"{rng}{idle_txt}.")

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
            "tiers": [t.to_json() for t in self.tiers],
            "providers": [p.to_json() for p in self.providers],
            "buckets": [b.to_json() for b in self.buckets],
        }
        total = self.total.to_json()
        total.pop("name")
        out.update(total)
        return out


def _band_of(buckets: dict[int, tuple[int, int]], min_tokens: int) -> dict[str, Decimal | None]:
    values = []
    for spend, tokens in buckets.values():
        if tokens >= min_tokens and tokens > 0:
            values.append((usd_per_mtok(spend, tokens), tokens))
    return band(values)  # type: ignore[arg-type]


def build_cost_report(
    ledger: Ledger, cfg: Config, start_ms: int, end_ms: int, *,
    bucket_s: int = 3600, min_tokens: int = 1000,
    tiers: set[str] | None = None, providers: set[str] | None = None,
) -> CostReport:
    if end_ms <= start_ms:
        raise ValueError("the window ends before it starts")
    bucket_ms = bucket_s * 1000
    nbuckets = -(-(end_ms - start_ms) // bucket_ms)
    spend = spend_between(ledger, start_ms, end_ms, cfg, providers=providers, tiers=tiers,
                          bucket_ms=bucket_ms)
    tokens = queries.token_buckets(ledger.conn, start_ms, end_ms, bucket_ms)

    buckets = [Bucket(k, start_ms + k * bucket_ms, min(end_ms, start_ms + (k + 1) * bucket_ms))
               for k in range(nbuckets)]
    for interval in spend.coverage.intervals:
        for b in buckets:
            if interval.start_ms < b.end_ms and interval.end_ms > b.start_ms:
                b.dark = True

    # per (slice, bucket) spend
    tier_spend: dict[str, dict[int, int]] = {}
    prov_spend: dict[str, dict[int, int]] = {}
    unattributed = 0
    for r in spend.series:
        tier = r.data.tier
        if tier is None:
            unattributed += r.spend.micros
        for k, micros in r.spend.by_bucket.items():
            k = min(k, nbuckets - 1)
            buckets[k].spend_micros += micros
            if tier is not None:
                tier_spend.setdefault(tier, {}).setdefault(k, 0)
                tier_spend[tier][k] += micros
            prov_spend.setdefault(r.data.provider, {}).setdefault(k, 0)
            prov_spend[r.data.provider][k] += micros

    tier_prompt: dict[str, int] = {}
    tier_output: dict[str, dict[int, int]] = {}
    for (k, tier), out_tokens in tokens.output.items():
        if tiers is not None and tier not in tiers:
            continue
        k = min(k, nbuckets - 1)
        buckets[k].output_tokens += out_tokens
        buckets[k].prompt_tokens += tokens.prompt.get((k, tier), 0)
        buckets[k].requests += tokens.requests.get((k, tier), 0)
        tier_output.setdefault(tier, {}).setdefault(k, 0)
        tier_output[tier][k] += out_tokens
        tier_prompt[tier] = tier_prompt.get(tier, 0) + tokens.prompt.get((k, tier), 0)

    def breakdown(name: str, by_bucket_spend: dict[int, int], by_bucket_out: dict[int, int],
                  prompt: int) -> Breakdown:
        ks = set(by_bucket_spend) | set(by_bucket_out)
        pairs = {k: (by_bucket_spend.get(k, 0), by_bucket_out.get(k, 0)) for k in ks}
        return Breakdown(
            name=name,
            spend_micros=sum(by_bucket_spend.values()),
            prompt_tokens=prompt,
            output_tokens=sum(by_bucket_out.values()),
            idle_micros=sum(sp for sp, out in pairs.values() if out == 0),
            band=_band_of(pairs, min_tokens),
        )

    total = breakdown(
        "total", {b.index: b.spend_micros for b in buckets},
        {b.index: b.output_tokens for b in buckets}, sum(b.prompt_tokens for b in buckets))
    tier_names = sorted(({t.name for t in cfg.tiers} | set(tier_spend) | set(tier_output))
                        - {""})
    if tiers is not None:
        tier_names = [t for t in tier_names if t in tiers]
    tier_rows = [breakdown(t, tier_spend.get(t, {}), tier_output.get(t, {}),
                           tier_prompt.get(t, 0)) for t in tier_names]
    prov_rows = [breakdown(p, prov_spend[p], {}, 0) for p in sorted(prov_spend)]
    for row in prov_rows:
        row.idle_micros = 0
        row.band = band([])
    return CostReport(start_ms, end_ms, bucket_ms, min_tokens, spend, total, tier_rows, prov_rows,
                      buckets, unattributed, tokens.estimated_requests)
