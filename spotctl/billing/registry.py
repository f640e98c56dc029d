"""Provider kind → billing adapter (imported lazily)."""

from __future__ import annotations

from importlib import import_module

from spotctl.billing.base import BillingError
from spotctl.clock import Clock
from spotctl.config import Config, ProviderConfig

_ADAPTERS = {
    "hyperstack": ("spotctl.billing.hyperstack", "HyperstackAdapter"),
    "localcloud": ("spotctl.billing.hyperstack", "HyperstackAdapter"),
    "runpod": ("spotctl.billing.runpod", "RunPodAdapter"),
    "vast": ("spotctl.billing.vast", "VastAdapter"),
    "lambda": ("spotctl.billing.lambda_", "LambdaAdapter"),
}


def adapter_for(provider: ProviderConfig, cfg: Config, clock: Clock, transport=None):
    """The provider's adapter; ``transport``: an httpx transport for its client (tests)."""
    module, name = _ADAPTERS[provider.kind]
    try:
        cls = getattr(import_module(module), name)
    except (ImportError, AttributeError):
        raise BillingError("config", f"{provider.name}: no adapter for {provider.kind!r} "
                                     "in this build") from None
    return cls(provider, cfg, clock, transport=transport)
