"""The budget gate: serve only while the day's invoice-true spend is known and under budget.

It fails closed: when billing for any configured provider is stale or failing (or the window's
spend is incomplete), the gate closes with ``billing_stale``; when spend reaches the budget it
closes with ``budget_exhausted`` until the budget day rolls over (``[budget] timezone``).

The state is computed off the event loop (a background thread with its own ledger connection)
and cached for ``[gateway] gate_cache_s`` real seconds, so a check on the hot path is a field
read. Per-key budgets use an attribution, since providers bill machines, not keys: a key's share
of the day's spend is the day's spend × its share of the day's output tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from spotctl.clock import Clock, to_ms
from spotctl.config import Config
from spotctl.ledger.db import Ledger

OPEN, BILLING_STALE, BUDGET_EXHAUSTED = "open", "billing_stale", "budget_exhausted"


@dataclass(frozen=True)
class GateState:
    status: str  # open | billing_stale | budget_exhausted
    reason: str
    spend_micros: int | None
    budget_micros: int | None
    day_start_ms: int
    retry_after_s: int  # until the budget day rolls over
    checked_ms: int
    closed_keys: frozenset[str] = field(default_factory=frozenset)  # per-key budgets spent
    key_spend_micros: dict[str, int] = field(default_factory=dict)

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
                "retry_after_s": self.retry_after_s, "closed_keys": sorted(self.closed_keys)}


def budget_day(now: datetime, tz_name: str) -> tuple[datetime, datetime]:
    """Start and end of the budget day holding ``now`` in the budget's time zone."""
    tz = ZoneInfo(tz_name)
    local = now.astimezone(tz)
    start_local = local.replace(hour=0, minute=0, second=0, microsecond=0)
    end_local = (start_local + timedelta(days=1, hours=3)).replace(hour=0)  # DST-safe
    return start_local, end_local


def evaluate_gate(ledger: Ledger, cfg: Config, clock: Clock) -> GateState:
    from spotctl.accounting.spend import spend_between
    from spotctl.billing.health import KNOWN_SPEND, provider_health
    from spotctl.money import to_micros

    now = clock.now()
    now_ms = to_ms(now)
    start, end = budget_day(now, cfg.budget.timezone)
    start_ms = to_ms(start)
    retry = max(1, int((end - now).total_seconds()))
    budget = None if cfg.budget.daily_usd is None else to_micros(cfg.budget.daily_usd)
    unhealthy = [h for h in provider_health(ledger, cfg, now_ms) if h.status not in KNOWN_SPEND]
    if unhealthy:
        h = unhealthy[0]
        return GateState(BILLING_STALE, f"billing for {h.provider} is {h.status}; spend cannot "
                         "be known", None, budget, start_ms, retry, now_ms)
    if not cfg.providers:
        return GateState(OPEN, "no billing provider configured: no budget can be enforced",
                         None, budget, start_ms, retry, now_ms) if budget is None else \
            GateState(BILLING_STALE, "a budget is set but no billing provider is configured",
                      None, budget, start_ms, retry, now_ms)
    spend = spend_between(ledger, start_ms, max(now_ms, start_ms + 1), cfg)
    if not spend.complete:
        return GateState(BILLING_STALE, "today's spend is incomplete: " +
                         "; ".join(spend.reasons[:2]), spend.micros, budget, start_ms, retry,
                         now_ms)
    if budget is not None and spend.micros >= budget:
        return GateState(BUDGET_EXHAUSTED, "the daily budget is spent", spend.micros, budget,
                         start_ms, retry, now_ms)
    closed, key_spend = _per_key(ledger, start_ms, spend.micros)
    return GateState(OPEN, "billing fresh and under budget", spend.micros, budget, start_ms,
                     retry, now_ms, frozenset(closed), key_spend)


def _per_key(ledger: Ledger, start_ms: int, spend_micros: int) -> tuple[set[str], dict[str, int]]:
    rows = ledger.conn.execute(
        "SELECT k.name, k.daily_budget_micros, coalesce(u.out, 0) FROM api_keys k LEFT JOIN "
        "(SELECT key_id, sum(completion_tokens) AS out FROM usage WHERE completed_ms >= ? "
        "GROUP BY key_id) u ON u.key_id = k.name WHERE k.revoked_ms IS NULL", (start_ms,)
    ).fetchall()
    total_out = ledger.conn.execute(
        "SELECT coalesce(sum(completion_tokens), 0) FROM usage_minutes WHERE minute_ms >= ?",
        (start_ms - start_ms % 60_000,)).fetchone()[0]
    closed, shares = set(), {}
    for name, budget, out in rows:
        share = spend_micros * out // total_out if total_out else 0
        shares[name] = share
        if budget is not None and share >= budget:
            closed.add(name)
    return closed, shares
