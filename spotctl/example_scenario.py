"""Build an example ledger from the example scenario (example data, clearly labelled).

The scenario is package data (``spotctl/data/scenario.toml``), so ``spotctl example`` works from
an installed wheel.

The generator plays the provider: per minute, each resource's running total grows by its rate
for that minute (that is what a provider's meter does), and the gateway's usage rows follow the
scenario's traffic. Everything is then written through the real ledger write functions, so
``spotctl cost`` reads it exactly as it reads a real ledger.
"""

from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from spotctl.clock import to_ms
from spotctl.ledger.db import Ledger
from spotctl.ledger.records import BillingSample, CumulativeKind, PollRecord, UsageRecord
from spotctl.ledger.writes import record_poll, record_usage
from spotctl.money import to_micros

MINUTE_MS = 60_000


@dataclass
class ExampleSummary:
    samples: int
    requests: int
    start: datetime
    end: datetime


def _rate_per_min_micros(segments: list[list], minute: int) -> int:
    hour = minute / 60
    for start, end, usd_per_h in segments:
        if start <= hour < end:
            per_min = to_micros(Decimal(str(usd_per_h))) / 60
            if per_min != int(per_min):
                raise ValueError(f"rate {usd_per_h}/h is not a whole micro-dollar per minute")
            return int(per_min)
    return 0


def scenario_text() -> str:
    """The packaged example scenario."""
    from importlib.resources import files

    return files("spotctl").joinpath("data", "scenario.toml").read_text(encoding="utf-8")


def build_example(ledger: Ledger, end: datetime, scenario: str | None = None) -> ExampleSummary:
    """Write the scenario (default: the packaged one) into ``ledger``, ending at ``end``."""
    sc = tomllib.loads(scenario if scenario is not None else scenario_text())
    hours = int(sc["hours"])
    rng = random.Random(sc.get("seed", 0))  # noqa: S311 - example data, not security
    start = end - timedelta(hours=hours)
    start_ms = to_ms(start) - to_ms(start) % MINUTE_MS
    prov = sc["provider"]["name"]
    dark = {m for d in sc.get("dark", []) for m in range(d["start_minute"],
                                                        d["start_minute"] + d["minutes"])}
    totals = {r["id"]: 0 for r in sc["resources"]}
    n_samples = 0
    for minute in range(hours * 60 + 1):
        t = start_ms + minute * MINUTE_MS
        samples = []
        for r in sc["resources"]:
            if minute:
                totals[r["id"]] += _rate_per_min_micros(r["segments"], minute - 1)
            samples.append(BillingSample(
                prov, "example", r["id"], r["kind"], t, totals[r["id"]],
                CumulativeKind.RESOURCE_TOTAL, "example",
                rate_micros_per_h=_rate_per_min_micros(r["segments"], minute) * 60,
                tier=r.get("tier"), created_ms=start_ms, state="ACTIVE", spot=r.get("spot")))
        if minute in dark:
            record_poll(ledger, PollRecord(prov, t, t + 10_000, "timeout",
                                           "billing API did not answer in 10 s"))
            continue
        record_poll(ledger, PollRecord(prov, t, t + 200, "ok", resources_seen=len(samples)),
                    samples)
        n_samples += len(samples)
    tr = sc["traffic"]
    rows = []
    for hour, per_hour in enumerate(tr["per_hour"][:hours]):
        for i in range(per_hour):
            done = start_ms + hour * 3_600_000 + rng.randrange(3_600_000)
            out = rng.randint(*tr["completion_tokens"])
            rows.append(UsageRecord(
                id=f"example-{hour}-{i}", started_ms=done - 2_000, completed_ms=done,
                status="ok", key_id="example", tier=tr["tier"], model=tr["model"],
                prompt_tokens=rng.randint(*tr["prompt_tokens"]), completion_tokens=out,
                http_status=200, latency_ms=2_000, ttft_ms=150, stream=True))
    record_usage(ledger, rows)
    return ExampleSummary(n_samples, len(rows), start, end)
