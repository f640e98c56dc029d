"""Account-level running totals for providers that only expose a balance.

spend over an interval = earlier balance − later balance + credits added in between. A rise
that no credit explains is an *unconfirmed credit*: it is recorded (``credit_events``,
confirmed = 0), the running total does not move for that interval, and reports show the spend
as uncertain by that amount instead of as a point.
"""

from __future__ import annotations

from dataclasses import dataclass

from spotctl.ledger.db import Ledger
from spotctl.ledger.records import CreditEvent


@dataclass(frozen=True)
class PreviousAccount:
    observed_ms: int
    cumulative_micros: int
    balance_micros: int


def previous_account(ledger: Ledger | None, provider: str) -> PreviousAccount | None:
    if ledger is None:
        return None
    row = ledger.conn.execute(
        "SELECT observed_ms, cumulative_micros, balance_micros FROM billing_samples WHERE "
        "provider=? AND resource_id='account' AND cumulative_micros IS NOT NULL AND "
        "balance_micros IS NOT NULL ORDER BY observed_ms DESC LIMIT 1", (provider,)).fetchone()
    return PreviousAccount(*row) if row else None


def advance(prev: PreviousAccount | None, balance: int, confirmed_credits: int, provider: str,
            account: str, now_ms: int) -> tuple[int, list[CreditEvent]]:
    """The new balance-derived cumulative, and any unconfirmed credit to record."""
    if prev is None:
        return 0, []  # the anchor: spend counts from here
    spent = prev.balance_micros - balance + confirmed_credits
    if spent >= 0:
        return prev.cumulative_micros + spent, []
    unexplained = -spent
    return prev.cumulative_micros, [CreditEvent(provider, account, f"inferred-{now_ms}", now_ms,
                                                unexplained, "inferred", False)]
