"""The budget gate: serve only while the day's invoice-true spend is known and under budget.

It fails closed:
- ``billing_stale`` when billing for any configured provider is stale or failing (the verdict of
  :func:`spotctl.billing.health.provider_health`), when today's spend is incomplete, or when a
  billing poll is stamped in the future beyond ``[gateway] clock_skew_s`` (the clocks disagree:
  spend read "as of now" would miss samples, so it cannot be known);
- ``budget_exhausted`` when spend reaches the budget, until the budget day rolls over
  (``[budget] timezone``);
- ``rate_mismatch`` (with ``[budget] close_on_rate_mismatch = true``) while a resource that is
  serving bills a rate off the one quoted at its launch: the provider's newest successful poll
  recorded a ``rate_mismatch`` anomaly for it today (a resource that was off earlier today and
  is gone, or billed right again, does not close the gate);
- ``ledger_unreachable`` when the ledger cannot be read;
- ``usage_unrecordable`` (decided by the gateway, not here) when usage rows cannot be made
  durable.

Freshness does not trust the wall clock alone. A gateway process keeps a :class:`PollWatch`: it
notes, on the monotonic clock, when it saw each provider's newest successful poll appear (by
insertion order, not by timestamp). Billing whose newest poll has not changed for
``[billing] stale_after_s`` of monotonic time is stale, whatever the wall clock says, so a clock
stepped back cannot make an old poll look fresh.

Per-key budgets use an attribution, since providers bill machines, not keys: a key's share of
the day's spend is the day's spend × its share of the day's output tokens, read from the
per-minute rollups (the cost grows with minutes, not requests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from spotctl.clock import Clock, to_ms
from spotctl.config import Config
from spotctl.ledger.billing_reads import RateMismatch, rate_mismatches
from spotctl.ledger.db import Ledger
from spotctl.ledger.keys import KeyInfo, list_keys
from spotctl.ledger.usage import newest_ok_polls, output_tokens_since

OPEN, BILLING_STALE, BUDGET_EXHAUSTED = "open", "billing_stale", "budget_exhausted"
USAGE_UNRECORDABLE, LEDGER_UNREACHABLE = "usage_unrecordable", "ledger_unreachable"
RATE_MISMATCH = "rate_mismatch"
HTTP_STATUS = {BILLING_STALE: 503, BUDGET_EXHAUSTED: 429, USAGE_UNRECORDABLE: 503,
               LEDGER_UNREACHABLE: 503, RATE_MISMATCH: 503}
STATES = (OPEN, BILLING_STALE, BUDGET_EXHAUSTED, USAGE_UNRECORDABLE, LEDGER_UNREACHABLE,
          RATE_MISMATCH)


@dataclass(frozen=True)
class GateState:
    status: str  # one of STATES
    reason: str
    spend_micros: int | None
    budget_micros: int | None
    day_start_ms: int
    retry_after_s: int  # until the budget day rolls over
    checked_ms: int
    closed_keys: frozenset[str] = field(default_factory=frozenset)  # per-key budgets spent
    key_spend_micros: dict[str, int] = field(default_factory=dict)
    billing_age_s: float | None = None  # the oldest provider's newest good poll
    # serving resources billed off their launch quote (newest good poll, today), per provider
    rate_mismatches: dict[str, tuple[RateMismatch, ...]] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        return self.status == OPEN

    def to_json(self) -> dict:
        from spotctl.clock import from_ms, iso
        from spotctl.money import usd_str

        return {"state": self.status, "reason": self.reason,
                "spend_today_usd": None if self.spend_micros is None else usd_str(
                    self.spend_micros),
                "budget_usd": None if self.budget_micros is None else usd_str(
                    self.budget_micros),
                "day_start": iso(from_ms(self.day_start_ms)),
                "retry_after_s": self.retry_after_s, "closed_keys": sorted(self.closed_keys),
                "rate_mismatches": [{"provider": m.provider, "resource_id": m.resource_id,
                                     "at": iso(from_ms(m.observed_ms)),
                                     "off_pct": round(m.off_pct, 2)}
                                    for ms in self.rate_mismatches.values() for m in ms]}


def budget_day(now: datetime, tz_name: str) -> tuple[datetime, datetime]:
    """Start and end of the budget day holding ``now`` in the budget's time zone."""
    tz = ZoneInfo(tz_name)
    local = now.astimezone(tz)
    start_local = local.replace(hour=0, minute=0, second=0, microsecond=0)
    end_local = (start_local + timedelta(days=1, hours=3)).replace(hour=0)  # DST-safe
    return start_local, end_local


class PollWatch:
    """Billing freshness on the monotonic clock (see the module doc). One per process."""

    def __init__(self) -> None:
        self.after_id = 0  # newest poll id already seen
        self._newest: dict[str, tuple[int, int, float]] = {}  # provider: (id, finished, mono)
        self._max_stamp: int | None = None

    def update(self, ledger: Ledger, now_ms: int, mono: float) -> None:
        for pid, provider, finished_ms in newest_ok_polls(ledger, self.after_id):
            self.after_id = max(self.after_id, pid)
            self._max_stamp = max(self._max_stamp or finished_ms, finished_ms)
            seen = self._newest.get(provider)
            if seen is None or pid > seen[0]:
                # first sight: as old as its stamp says (never younger than 0 s)
                age = max(0.0, (now_ms - finished_ms) / 1000) if seen is None else 0.0
                self._newest[provider] = (pid, finished_ms, mono - age)

    def age_s(self, provider: str, mono: float) -> float | None:
        seen = self._newest.get(provider)
        return None if seen is None else mono - seen[2]

    def stamp_ms(self, provider: str) -> int | None:
        seen = self._newest.get(provider)
        return None if seen is None else seen[1]

    def latest_stamp_ms(self) -> int | None:
        """The latest stamp of any successful poll seen (samples may be stamped after our
        "now" when the clock stepped back: spend is read up to here, so they still count)."""
        return self._max_stamp

def evaluate_gate(ledger: Ledger, cfg: Config, clock: Clock, *, watch: PollWatch | None = None,
                  keys: list[KeyInfo] | None = None) -> GateState:
    from spotctl.accounting.spend import spend_of
    from spotctl.billing.health import KNOWN_SPEND, SUSPECT, provider_health
    from spotctl.money import to_micros

    now = clock.now()
    now_ms = to_ms(now)
    mono = clock.monotonic()
    start, end = budget_day(now, cfg.budget.timezone)
    start_ms = to_ms(start)
    retry = max(1, int((end - now).total_seconds()))
    budget = None if cfg.budget.daily_usd is None else to_micros(cfg.budget.daily_usd)

    def closed(status: str, reason: str, spend: int | None = None, age: float | None = None
               ) -> GateState:
        return GateState(status, reason, spend, budget, start_ms, retry, now_ms,
                         billing_age_s=age, rate_mismatches=mismatched)

    if watch is None:
        watch = PollWatch()
        watch.update(ledger, now_ms, mono)
    else:
        watch.update(ledger, now_ms, mono)
    health = provider_health(ledger, cfg, now_ms)
    mismatched = serving_rate_mismatches(ledger, health, start_ms)
    ages = []
    for h in health:
        if h.status == SUSPECT:  # a poll stamped in the future: the check below, from the ledger
            return closed(BILLING_STALE, f"billing for {h.provider} is suspect: {h.last_error}")
        if h.status not in KNOWN_SPEND:
            return closed(BILLING_STALE, f"billing for {h.provider} is {h.status}; spend cannot "
                          "be known")
        stamp = watch.stamp_ms(h.provider)
        skew_ms = int(cfg.gateway.clock_skew_s * 1000)
        if stamp is not None and stamp > now_ms + skew_ms:
            return closed(BILLING_STALE, f"billing for {h.provider}: the newest poll is stamped "
                          f"{(stamp - now_ms) / 1000:.0f} s in the future (clocks disagree); "
                          "spend cannot be known")
        age = watch.age_s(h.provider, mono)
        if age is not None:
            ages.append(age)
            if age > cfg.billing.stale_after_s:
                return closed(BILLING_STALE, f"billing for {h.provider}: no new successful "
                              f"poll for {age:.0f} s; spend cannot be known", age=age)
    billing_age = max(ages) if ages else None
    if not cfg.providers:
        if budget is None:
            return GateState(OPEN, "no billing provider configured: no budget can be enforced",
                             None, budget, start_ms, retry, now_ms)
        return closed(BILLING_STALE, "a budget is set but no billing provider is configured")
    end_ms = max(now_ms, start_ms + 1, min(watch.latest_stamp_ms() or 0, end_of_day_ms(end)))
    from spotctl.ledger.queries import read_configured_window

    spend = spend_of(read_configured_window(ledger, cfg, start_ms, end_ms, tokens=False,
                                            fleet=False), cfg)
    if not spend.complete:
        return closed(BILLING_STALE, "today's spend is incomplete: " +
                      "; ".join(spend.reasons[:2]), spend.micros, billing_age)
    if budget is not None and spend.micros >= budget:
        return closed(BUDGET_EXHAUSTED, "the daily budget is spent", spend.micros, billing_age)
    if mismatched and cfg.budget.close_on_rate_mismatch:
        first = next(m for ms in mismatched.values() for m in ms)
        n = sum(len(ms) for ms in mismatched.values())
        return closed(RATE_MISMATCH, f"{first.provider} bills {first.resource_id} "
                      f"{first.off_pct:+.1f} % off its launch quote"
                      + (f" (and {n - 1} more resource(s))" if n > 1 else "")
                      + "; [budget] close_on_rate_mismatch is on", spend.micros, billing_age)
    closed_keys, key_spend = per_key_spend(ledger, start_ms, spend.micros,
                                           list_keys(ledger) if keys is None else keys)
    return GateState(OPEN, "billing fresh and under budget", spend.micros, budget, start_ms,
                     retry, now_ms, frozenset(closed_keys), key_spend, billing_age,
                     mismatched)


def serving_rate_mismatches(ledger: Ledger, health, day_start_ms: int
                            ) -> dict[str, tuple[RateMismatch, ...]]:
    """Per provider, the resources its newest successful poll billed off their launch quote,
    when that poll is of today. Every poll checks each running resource's rate
    (``billing.base.rate_check``), so a mismatch in the newest poll is a resource serving now
    at the wrong rate; older ones were fixed or their resource is gone."""
    out: dict[str, tuple[RateMismatch, ...]] = {}
    for h in health:
        newest = h.rate_mismatch
        if newest is None or newest.observed_ms < day_start_ms:
            continue
        found = {m.resource_id: m for m in rate_mismatches(
            ledger, newest.observed_ms - 1, provider=h.provider)}
        out[h.provider] = tuple(found[r] for r in sorted(found))
    return out


def end_of_day_ms(end: datetime) -> int:
    return to_ms(end) - 1


def per_key_spend(ledger: Ledger, start_ms: int, spend_micros: int, keys: list[KeyInfo]
                  ) -> tuple[set[str], dict[str, int]]:
    """Each active key's attributed spend today, and the keys whose own budget it reached."""
    total_out, per_key = output_tokens_since(ledger, start_ms)
    closed, shares = set(), {}
    for k in keys:
        if k.revoked_ms is not None:
            continue
        out = per_key.get(k.name, 0)
        share = spend_micros * out // total_out if total_out else 0
        shares[k.name] = share
        if k.daily_budget_micros is not None and share >= k.daily_budget_micros:
            closed.add(k.name)
    return closed, shares
