"""The billing-adapter interface and its classified errors.

An adapter is a pure translator: ``poll(now_ms, prior) -> PollResult`` turns one poll of a
provider's API (through that provider's client in :mod:`spotctl.clients`) and what the ledger
remembers (:class:`PriorState`, read by :mod:`spotctl.ledger.billing_reads`) into samples,
credits and anomalies. It runs no SQL. spotctl never fills a gap with rate × time, except in
the Lambda adapter (Lambda has no billing API), whose samples are marked as estimates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from spotctl.clock import Clock
from spotctl.config import Config, ProviderConfig
from spotctl.errors import ProviderError
from spotctl.ledger.billing_reads import LastSample, PreviousAccount, PriorState
from spotctl.ledger.records import Anomaly, BillingSample, CreditEvent
from spotctl.naming import tier_for_resource

__all__ = ["BillingAdapter", "BillingError", "ClientAdapter", "LastSample", "PollResult",
           "PreviousAccount", "PriorState", "api_key_for", "rate_check", "tier_for_resource"]


class BillingError(ProviderError):
    """A classified poll failure. ``kind`` is stored as the poll's outcome."""

    KINDS = ("timeout", "unreachable", "http_5xx", "http_429", "auth", "malformed", "http_4xx",
             "config", "ledger", "unsupported")

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class PollResult:
    samples: list[BillingSample] = field(default_factory=list)
    credits: list[CreditEvent] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    resources_seen: int = 0


class BillingAdapter(Protocol):
    provider: ProviderConfig

    def poll(self, now_ms: int, prior: PriorState) -> PollResult: ...

    def close(self) -> None: ...


class ClientAdapter:
    """What every adapter starts with: the provider's config, the clock and one API client of
    ``client_class`` (the key read from the environment, the ``[billing]`` timeout, and the
    test ``transport``), closed by :meth:`close`. A subclass sets ``client_class`` and
    writes ``poll``."""

    client_class: ClassVar[type]

    def __init__(self, provider: ProviderConfig, cfg: Config, clock: Clock, *,
                 transport=None) -> None:
        self.provider, self.cfg, self.clock = provider, cfg, clock
        self.client: Any = self.client_class(provider.base_url, api_key_for(provider), clock,
                                             timeout_s=cfg.billing.timeout_s,
                                             transport=transport)

    def close(self) -> None:
        self.client.close()


def rate_check(provider: str, account: str, resource_id: str, observed_ms: int,
               billed_micros_per_h: int | None, prior: PriorState) -> Anomaly | None:
    """Price truth: a ``rate_mismatch`` anomaly when the billed rate of a running resource is
    more than ``prior.rate_tolerance_pct`` away from the rate quoted at its launch."""
    quote = prior.quotes.get(resource_id)
    if quote is None or billed_micros_per_h is None or quote <= 0:
        return None
    off = abs(billed_micros_per_h - quote) * 100.0 / quote
    if off <= prior.rate_tolerance_pct:
        return None
    return Anomaly(provider, account, resource_id, observed_ms, "rate_mismatch", quote,
                   billed_micros_per_h,
                   f"billed {billed_micros_per_h / 1e6:.4f} $/h vs quoted {quote / 1e6:.4f} $/h "
                   f"({(billed_micros_per_h - quote) * 100.0 / quote:+.1f} %)")


def api_key_for(provider: ProviderConfig) -> str:
    """The provider's key, from the environment variable named in the config (never the file)."""
    if not provider.api_key_env:
        raise BillingError("config", f"{provider.name}: api_key_env is not set in the config")
    key = os.environ.get(provider.api_key_env)
    if not key:
        raise BillingError("config", f"{provider.name}: ${provider.api_key_env} is not set")
    return key
