"""The rows spotctl writes, as plain typed records (times in epoch ms, money in micro-dollars)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple


class CumulativeKind(StrEnum):
    """How a sample's cumulative was obtained. Only ESTIMATE is never invoice-true."""

    RESOURCE_TOTAL = "resource_total"  # provider's running total for one resource
    ACCOUNT_TOTAL = "account_total"  # provider's running total for the account
    BALANCE_DERIVED = "balance_derived"  # anchor balance - balance + credits added
    ESTIMATE = "estimate"  # rate x time (Lambda): shown apart, never in invoice-true totals


@dataclass(frozen=True, slots=True)
class BillingSample:
    provider: str
    account: str
    resource_id: str  # namespaced by kind: "vm:123", "volume:123", "account"
    resource_kind: str  # vm, volume, account, ...
    observed_ms: int
    cumulative_micros: int | None
    cumulative_kind: CumulativeKind
    payload_sha256: str
    rate_micros_per_h: int | None = None
    tier: str | None = None
    provider_ts: str | None = None
    created_ms: int | None = None
    state: str | None = None
    spot: bool | None = None
    balance_micros: int | None = None


@dataclass(frozen=True, slots=True)
class PollRecord:
    provider: str
    started_ms: int
    finished_ms: int
    outcome: str  # "ok" or an error class
    error_message: str | None = None
    resources_seen: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


@dataclass(frozen=True, slots=True)
class CreditEvent:
    provider: str
    account: str
    event_id: str
    occurred_ms: int
    amount_micros: int
    kind: str
    confirmed: bool


@dataclass(frozen=True, slots=True)
class Anomaly:
    provider: str
    account: str
    resource_id: str
    observed_ms: int
    kind: str
    previous_micros: int | None = None
    current_micros: int | None = None
    detail: str | None = None


class UsageRecord(NamedTuple):
    """One request's usage row. A named tuple, not a dataclass: the gateway builds one per
    request, and a tuple costs a tenth of a frozen dataclass's construction."""

    id: str
    started_ms: int
    completed_ms: int
    status: str
    key_id: str | None = None
    tier: str | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    http_status: int | None = None
    latency_ms: int | None = None
    ttft_ms: int | None = None
    stream: bool = False
    tokens_estimated: bool = False


# The fleet journal's row is spotctl.ledger.journal.FleetEntry (written by append_fleet_event).
