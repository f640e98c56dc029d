"""The economics commands' orchestration: ``bench`` (capacity), ``compare`` and ``advise``.

``bench`` drives load through the gateway (the OpenAI-compatible HTTP API, streaming), so it
measures what clients get: engine, network, tunnel and gateway together.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from spotctl.errors import SpotctlError, UsageError

if TYPE_CHECKING:
    import httpx

    from spotctl.accounting.bench import MixItem, RequestSample, StepResult
    from spotctl.config import Config, TierConfig

    # progress(fraction 0..1, concurrency, last step or None)
    BenchProgress = Callable[[float, int, StepResult | None], None]

# httpx, asyncio and the load model are imported by the functions that drive the load (bench):
# `cost`, which imports this module for the hosted-API comparison, must not pay for them.


@dataclass
class BenchOutcome:
    tier: str
    model: str
    started_ms: int
    finished_ms: int
    slo_ttft_ms: int
    steps: list[StepResult] = field(default_factory=list)
    best: StepResult | None = None
    slo_broken: bool = False
    engine_version: str | None = None
    accelerator: str | None = None
    mix: list[MixItem] = field(default_factory=list)
    bench_id: int | None = None

    @property
    def output_tokens_per_s(self) -> float:
        if self.best is not None:
            return self.best.output_tokens_per_s
        return self.steps[0].output_tokens_per_s if self.steps else 0.0

    @property
    def concurrency(self) -> int:
        return self.best.concurrency if self.best is not None else 1

    def to_json(self) -> dict:
        from spotctl.clock import from_ms, iso

        best = self.best or (self.steps[0] if self.steps else None)
        return {
            "tier": self.tier, "model": self.model,
            "started": iso(from_ms(self.started_ms)), "finished": iso(from_ms(self.finished_ms)),
            "engine_version": self.engine_version, "accelerator": self.accelerator,
            "slo_ttft_ms": self.slo_ttft_ms, "slo_quantile": "p90",
            "saturated": self.slo_broken,
            "output_tokens_per_s": round(self.output_tokens_per_s, 1),
            "concurrency": self.concurrency,
            "ttft_ms": best.ttft_ms if best else {}, "itl_ms": best.itl_ms if best else {},
            "mix": [{"prompt_tokens": m.prompt_tokens, "output_tokens": m.output_tokens,
                     "weight": m.weight} for m in self.mix],
            "steps": [s.to_json() for s in self.steps],
            "bench_id": self.bench_id,
        }


def default_engine_version(tier: TierConfig) -> str | None:
    """What spotctl launched: vLLM at the configured version on the backends that launch it;
    unknown for fixed endpoints and the local cloud (which may run the built-in engine)."""
    if tier.fleet_managed and tier.backend in ("skypilot", "hyperstack"):
        return f"vllm {tier.vllm_version}"
    return None


async def _one_request(client: httpx.AsyncClient, url: str, headers: dict, model: str,
                       item: MixItem, rng: random.Random, deadline: float,
                       sample: RequestSample) -> None:
    import httpx
    from httpx_sse import aconnect_sse

    from spotctl.accounting.bench import prompt_text

    body = {"model": model, "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": item.output_tokens,
            # vLLM: generate exactly max_tokens, so the mix is the mix (ignored elsewhere)
            "ignore_eos": True,
            "messages": [{"role": "user", "content": prompt_text(item.prompt_tokens, rng)}]}
    t0 = sample.started_s
    import orjson

    try:
        async with aconnect_sse(client, "POST", url, json=body, headers=headers) as source:
            if source.response.status_code != 200:
                await source.response.aread()
                sample.error = f"http {source.response.status_code}"
                return
            async for event in source.aiter_sse():
                if event.data.strip() == "[DONE]":
                    break
                payload = orjson.loads(event.data)
                if "error" in payload:
                    sample.error = "stream error"
                    return
                now = time.monotonic()  # clock-ok: latency is measured in real time
                for choice in payload.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content") or choice.get("text"):
                        if sample.ttft_s is None:
                            sample.ttft_s = now - t0
                        sample.chunk_times.append(now)
                usage = payload.get("usage")
                if isinstance(usage, dict):
                    sample.output_tokens = int(usage.get("completion_tokens") or 0)
                    sample.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                if now > deadline + 120:
                    sample.error = "too slow"
                    return
        sample.finished = True
    except (httpx.HTTPError, ValueError) as exc:
        sample.error = type(exc).__name__


async def _step(client: httpx.AsyncClient, url: str, headers: dict, model: str,
                mix: list[MixItem], concurrency: int, seconds: float, rng: random.Random
                ) -> StepResult:
    import asyncio

    from spotctl.accounting.bench import RequestSample, draw, summarise_step

    started = time.monotonic()  # clock-ok
    deadline = started + seconds
    samples: list[RequestSample] = []

    async def worker() -> None:
        while time.monotonic() < deadline:  # clock-ok
            s = RequestSample(time.monotonic())  # clock-ok
            samples.append(s)
            await _one_request(client, url, headers, model, draw(mix, rng), rng, deadline, s)
            if s.error and s.ttft_s is None:
                await asyncio.sleep(0.05)  # clock-ok: do not spin on a refusing gateway

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    done, pending = await asyncio.wait(tasks, timeout=seconds)
    ended = time.monotonic()  # clock-ok
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for t in done:
        if t.exception() is not None:
            raise t.exception()  # type: ignore[misc]
    # requests cut at the step's end count for latency and streamed tokens, not for usage
    return summarise_step(concurrency, started, ended, samples)


async def _wait_for_key(client: httpx.AsyncClient, base: str, headers: dict,
                        timeout_s: float = 20.0) -> None:
    """A key created just now is known to the gateway after its next refresh."""
    import asyncio

    import httpx

    deadline = time.monotonic() + timeout_s  # clock-ok
    while True:
        try:
            r = await client.get(f"{base}/v1/models", headers=headers)
        except httpx.HTTPError as exc:
            raise SpotctlError(f"the gateway at {base} is not reachable: "
                               f"{type(exc).__name__}; start it with `spotctl gateway`") from None
        if r.status_code != 401:
            return
        if time.monotonic() > deadline:  # clock-ok
            raise SpotctlError(f"the gateway at {base} refuses the bench key (401)")
        await asyncio.sleep(0.25)  # clock-ok


def run_bench(
    cfg: Config, tier: TierConfig, *, gateway_url: str, api_key: str, duration_s: float,
    step_s: float, slo_ttft_ms: int, mix: list[MixItem], max_concurrency: int = 512,
    progress: BenchProgress | None = None, seed: int = 0,
) -> BenchOutcome:
    """Ramp concurrency through the gateway until TTFT p90 breaks the SLO (or time runs out)."""
    import asyncio

    import httpx

    from spotctl.accounting.bench import next_concurrency, saturation
    from spotctl.clock import get_clock, to_ms

    if step_s <= 0 or duration_s < step_s:
        raise UsageError("--duration must be at least one step (--step)")
    rng = random.Random(seed)  # noqa: S311 - load shape, not security
    base = gateway_url.rstrip("/").removesuffix("/v1")
    url = f"{base}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"}
    out = BenchOutcome(tier.name, tier.public_model, to_ms(get_clock().now()), 0, slo_ttft_ms,
                       engine_version=default_engine_version(tier),
                       accelerator=tier.hardware, mix=mix)
    n_steps = max(1, int(duration_s // step_s))

    async def main() -> None:
        limits = httpx.Limits(max_connections=max_concurrency + 8,
                              max_keepalive_connections=max_concurrency + 8)
        timeout = httpx.Timeout(connect=10, read=step_s + 300, write=30, pool=step_s + 60)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            await _wait_for_key(client, base, headers)
            for i in range(n_steps):
                conc = next_concurrency(out.steps, slo_ttft_ms, max_concurrency)
                if conc is None:
                    break
                if progress:
                    progress(i / n_steps, conc, out.steps[-1] if out.steps else None)
                out.steps.append(await _step(client, url, headers, tier.public_model, mix, conc,
                                             step_s, rng))
            if progress:
                progress(1.0, out.steps[-1].concurrency if out.steps else 0,
                         out.steps[-1] if out.steps else None)

    asyncio.run(main())
    out.finished_ms = to_ms(get_clock().now())
    out.best, out.slo_broken = saturation(out.steps, slo_ttft_ms)
    if not out.steps or all(s.requests == s.errors for s in out.steps):
        raise SpotctlError(f"bench {tier.name}: no request succeeded through the gateway "
                           f"({out.steps[0].errors if out.steps else 0} failed); see "
                           "`spotctl budget status` and the gateway's log")
    return out


def bench(
    cfg: Config, tier: str, *, gateway_url: str | None, api_key_env: str | None,
    duration_s: float, step_s: float, slo_ttft_ms: int, mix: list[MixItem],
    max_concurrency: int = 512, engine_version: str | None = None,
    progress: BenchProgress | None = None,
) -> BenchOutcome:
    """``spotctl bench``: load the tier through the gateway (default: the ``[gateway]`` listen
    address) with the key in ``api_key_env``, else with a temporary key created in the ledger
    and revoked afterwards (also on failure); record the outcome in the ledger."""
    import os

    from spotctl.clock import get_clock, to_ms
    from spotctl.ledger.db import Ledger
    from spotctl.ledger.keys import create_key, revoke_key

    t = cfg.tier(tier)
    if max_concurrency < 1:
        raise UsageError("--max-concurrency must be at least 1")
    url = gateway_url or f"http://{cfg.gateway.listen}"
    temp_key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise UsageError(f"--api-key-env {api_key_env}: that variable is not set")
    else:
        temp_key = f"bench-{tier}-{to_ms(get_clock().now())}"
        with Ledger(cfg.ledger_target) as ledger:
            key = create_key(ledger, temp_key, to_ms(get_clock().now()), None)
    try:
        out = run_bench(cfg, t, gateway_url=url, api_key=key, duration_s=duration_s,
                        step_s=step_s, slo_ttft_ms=slo_ttft_ms, mix=mix,
                        max_concurrency=max_concurrency, progress=progress)
    finally:
        if temp_key:
            with Ledger(cfg.ledger_target) as ledger:
                revoke_key(ledger, temp_key, to_ms(get_clock().now()))
    if engine_version:
        out.engine_version = engine_version
    with Ledger(cfg.ledger_target) as ledger:
        record_bench(ledger, out)
    return out


def record_bench(ledger, out: BenchOutcome) -> int:
    from spotctl.ledger.queries import BenchRecord, record_bench_run

    best = out.best or out.steps[0]
    rec = BenchRecord(
        out.tier, out.started_ms, out.finished_ms, out.model, out.engine_version,
        out.accelerator, out.output_tokens_per_s, out.concurrency, out.slo_ttft_ms,
        out.slo_broken, best.ttft_ms, best.itl_ms,
        sum(s.requests for s in out.steps), sum(s.errors for s in out.steps),
        sum(s.prompt_tokens for s in out.steps), sum(s.output_tokens for s in out.steps),
        [vars(m) for m in out.mix], [s.to_json() for s in out.steps])
    out.bench_id = record_bench_run(ledger, rec)
    return out.bench_id


# -- compare ----------------------------------------------------------------------------------

SHIPPED_PRICES = "hosted-prices.toml"


def prices_path(cfg: Config, explicit: str | None):
    """--prices FILE, else hosted-prices.toml beside the configuration, else the copy shipped
    with spotctl (examples/hosted-prices.toml)."""
    from pathlib import Path

    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise UsageError(f"--prices {explicit}: file not found")
        return path, "file"
    if cfg.source is not None and (cfg.source.parent / SHIPPED_PRICES).is_file():
        return cfg.source.parent / SHIPPED_PRICES, "beside the configuration"
    return Path(__file__).resolve().parents[1] / "accounting" / SHIPPED_PRICES, "shipped example"


def load_offers(path) -> list:
    import tomllib
    from decimal import Decimal

    from spotctl.accounting.compare import parse_offers
    from spotctl.errors import ConfigError

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_offers(data, str(path))


def compare(ledger, cfg: Config, start_ms: int, end_ms: int, prices: str | None = None,
            bucket_s: int = 3600) -> dict:
    """What the window's tokens would have cost on each hosted offer, against its spend."""
    from spotctl.services.cost import cost_report

    report = cost_report(ledger, cfg, start_ms, end_ms, bucket_s=bucket_s)
    return hosted_compare(report, cfg, prices)


def hosted_compare(report, cfg: Config, prices: str | None = None) -> dict:
    """The compare figures for a cost report already built (no second read)."""
    from spotctl.accounting.compare import compare_offers, fully_loaded
    from spotctl.clock import from_ms, iso
    from spotctl.money import usd_str
    from spotctl.services.cost import fixed_costs

    start_ms, end_ms = report.start_ms, report.end_ms
    path, origin = prices_path(cfg, prices)
    offers = load_offers(path)
    rows = compare_offers(offers, report, cfg.tiers)
    return {
        "window": {"start": iso(from_ms(start_ms)), "end": iso(from_ms(end_ms))},
        "self_hosted_usd": usd_str(report.total.spend_micros),
        "spend_complete": report.spend.complete,
        "prompt_tokens": report.total.prompt_tokens,
        "output_tokens": report.total.output_tokens,
        "usd_per_mtok_output": (None if report.total.usd_per_mtok_output is None
                                else str(report.total.usd_per_mtok_output)),
        "usd_per_mtok_at_full_load": (None if report.total.usd_per_mtok_at_full_load is None
                                      else str(report.total.usd_per_mtok_at_full_load)),
        "utilisation": (None if report.total.utilisation is None
                        else str(report.total.utilisation)),
        "prices": {"path": str(path), "origin": origin},
        "offers": [r.to_json() for r in rows if r.tiers],
        "offers_without_tier": [r.offer.name for r in rows if not r.tiers],
        "fully_loaded": fully_loaded(report.total.spend_micros, fixed_costs(cfg),
                                     end_ms - start_ms),
        "note": "estimates: list prices × this window's tokens; cached input tokens are not "
                "recorded, so every prompt token is priced uncached",
    }


# -- advise -----------------------------------------------------------------------------------

def measured_rates(cfg: Config, data, spend, tier: str, wakes_, tax_micros: int):
    """The rates a tier's window billed, per hour, from its invoice-true spend and times."""
    from spotctl.accounting.advise import Rates
    from spotctl.accounting.capacity import HIBERNATED, ON_DEMAND, SPOT
    from spotctl.services.cost import local_flavor, on_demand_rate

    micros: dict[tuple[str, bool], int] = {}
    ms: dict[tuple[str, bool], int] = {}
    constant = 0
    hib_sample_rate = None
    for r in spend.series:
        if r.data.tier != tier:
            continue
        for lab, m in r.spend.by_label().items():
            micros[(lab.category, lab.serving)] = micros.get((lab.category, lab.serving), 0) + m
            if lab.category not in (SPOT, ON_DEMAND, HIBERNATED):
                constant += m
        for lab, t in r.spend.ms_by_label().items():
            ms[(lab.category, lab.serving)] = ms.get((lab.category, lab.serving), 0) + t
        for state, _spot, rate in r.data.meta.values():
            if rate and (state or "").lower() in ("hibernated", "shelved", "shelved_offloaded"):
                hib_sample_rate = rate
    notes = []

    def per_hour(key) -> int | None:
        t = ms.get(key, 0)
        return None if t <= 0 else int(micros.get(key, 0) * 3_600_000 // t)

    spot = per_hour((SPOT, True))
    od = per_hour((ON_DEMAND, True))
    flavor = local_flavor(cfg, tier)
    if od is None:
        rate = on_demand_rate(cfg, data, tier)
        od = rate.micros_per_h
        notes.append(f"on-demand serving rate: {rate.source}")
    spot_flavor = _spot_flavor(flavor)
    if spot is None and spot_flavor is not None:
        spot = spot_flavor.active_per_min * 60
        notes.append(f"spot serving rate: price list, local cloud flavor {spot_flavor.name}")
    hib = per_hour((HIBERNATED, False))
    if hib is None:
        if hib_sample_rate is not None:
            hib = hib_sample_rate
            notes.append("hibernated rate: the provider's reported rate for the hibernated VM")
        elif flavor is not None:
            hib = flavor.hibernated_per_min * 60
            notes.append(f"hibernated rate: price list, local cloud flavor {flavor.name}")
    done = [w for w in wakes_ if w.woke_ms is not None]
    wake_ms = int(sum(w.until_ms - w.waking_ms for w in done) / len(done)) if done else None
    waking_total_ms = sum(w.until_ms - w.waking_ms for w in done)
    from spotctl.accounting.economics import tier_spend

    waking_vm = sum(tier_spend(spend, tier, w.waking_ms, w.until_ms, vms_only=True)
                    for w in done)  # storage is counted apart, under every policy
    waking = int(waking_vm * 3_600_000 // waking_total_ms) if waking_total_ms > 0 else 0
    if wake_ms is None:
        notes.append("no wake in the window: wakes are priced at 0 s and $0 (optimistic)")
    spot_serving_ms = ms.get((SPOT, True), 0)
    tax = int(tax_micros * 3_600_000 // spot_serving_ms) if spot_serving_ms > 0 else 0
    return Rates(spot, od, hib, waking, wake_ms, constant, tax, tuple(notes))


def _spot_flavor(flavor):
    """The local cloud's spot flavor of the on-demand ``flavor`` (its own entry,
    ``<name>-spot``, with the spot price as its active rate), or None."""
    if flavor is None:
        return None
    from spotctl.localcloud.model import FLAVORS, SPOT_SUFFIX

    return FLAVORS.get(flavor.name + SPOT_SUFFIX)


def advise(ledger, cfg: Config, start_ms: int, end_ms: int, tier: str | None = None) -> dict:
    """Replay the window's arrivals per tier under each idle timeout and capacity choice."""
    from spotctl.accounting.report import build_report
    from spotctl.services.cost import read_window, spend_of

    _check_advised(cfg, tier)
    data = read_window(ledger, cfg, start_ms, end_ms, 3_600_000, arrivals=True)
    spend = spend_of(data, cfg)
    return advise_report(build_report(data, spend, cfg, min_tokens=1), cfg, tier)


def _check_advised(cfg: Config, tier: str | None) -> None:
    if tier is not None and not cfg.tier(tier).fleet_managed:  # unknown: the one-line error
        raise UsageError(f"tier {tier!r} is a fixed engine: spotctl cannot hibernate it, so "
                         "there is no idle policy to advise")


def advise_report(report, cfg: Config, tier: str | None = None) -> dict:
    """``advise`` on a cost report already built (its snapshot must hold the arrivals:
    ``cost_report(..., arrivals=True)``), so that both describe the same moment. Each tier's
    actual spend and tokens are the report's; ``report`` must not be filtered by tier."""
    from spotctl.accounting.advise import advise_tier
    from spotctl.accounting.economics import SERVING_EVENTS, interruptions, wakes
    from spotctl.clock import from_ms, iso

    _check_advised(cfg, tier)
    data, spend = report.data, report.spend
    start_ms, end_ms = report.start_ms, report.end_ms
    # fixed engines are not spotctl's to hibernate: only fleet-managed tiers have a policy
    names = [t.name for t in cfg.tiers if t.fleet_managed and (tier is None or t.name == tier)]
    woken = wakes(data, spend)
    items = interruptions(data, spend)
    out = []
    for name in names:
        row = next((r for r in report.tiers if r.name == name), None)
        tier_cfg = cfg.tier(name)
        rates = measured_rates(cfg, data, spend, name, [w for w in woken if w.tier == name],
                               sum(i.spend_micros for i in items if i.tier == name))
        before = data.events_before.get(name)
        mine = [e for e in data.events if e.tier == name]
        # replay only while the tier existed: from its launch when that was inside the window,
        # to its `down` when that was the last thing that happened to it
        lo, hi = start_ms, end_ms
        if (before is None or before.event == "down") and mine:
            lo = mine[0].ts_ms
        if mine and mine[-1].event == "down":
            hi = mine[-1].ts_ms
        at_start = before is None or before.event in SERVING_EVENTS or lo > start_ms
        advice = advise_tier(
            name, data.busy.get(name, []), data.arrivals.get(name, []), lo, max(lo + 1, hi),
            rates, row.output_tokens if row else 0, row.spend_micros if row else 0,
            tier_cfg.idle_minutes or None, tier_cfg.capacity, serving_at_start=at_start)
        out.append(advice.to_json())
    return {"window": {"start": iso(from_ms(start_ms)), "end": iso(from_ms(end_ms))},
            "spend_complete": spend.complete, "tiers": out,
            "note": "estimates: the window's arrivals replayed with the rates it measured; the "
                    "backtest error is the current policy's prediction against its actual "
                    "spend"}
