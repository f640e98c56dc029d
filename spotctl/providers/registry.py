"""Provider kind → billing adapter (imported lazily)."""

from __future__ import annotations

from importlib import import_module

from spotctl.clock import Clock
from spotctl.config import Config, ProviderConfig
from spotctl.providers.base import BillingError

_ADAPTERS = {
    "hyperstack": ("spotctl.providers.hyperstack", "HyperstackAdapter"),
    "localcloud": ("spotctl.providers.hyperstack", "HyperstackAdapter"),
    "runpod": ("spotctl.providers.runpod", "RunPodAdapter"),
    "vast": ("spotctl.providers.vast", "VastAdapter"),
    "lambda": ("spotctl.providers.lambda_", "LambdaAdapter"),
}


def adapter_for(provider: ProviderConfig, cfg: Config, clock: Clock):
    module, name = _ADAPTERS[provider.kind]
    try:
        cls = getattr(import_module(module), name)
    except (ImportError, AttributeError):
        raise BillingError("config", f"{provider.name}: no adapter for {provider.kind!r} "
                                     "in this build") from None
    return cls(provider, cfg, clock)
