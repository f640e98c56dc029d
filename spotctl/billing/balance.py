"""Account-level running totals for providers that only expose a balance (pure arithmetic).

spend over an interval = earlier balance − later balance + credits added in between. A rise
that no credit explains is an *unconfirmed credit*: it is recorded (``credit_events``,
confirmed = 0), the running total does not move for that interval, and reports show the spend
as uncertain by that amount instead of as a point. The previous account row comes from the
ledger through :class:`~spotctl.ledger.billing_reads.PriorState`.
"""

from __future__ import annotations

from spotctl.ledger.billing_reads import PreviousAccount
from spotctl.ledger.records import CreditEvent

__all__ = ["PreviousAccount", "advance"]


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
