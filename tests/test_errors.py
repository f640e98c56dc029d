"""The error tree: typed errors, never a search through a message's text."""

from __future__ import annotations

from spotctl.billing.base import BillingError
from spotctl.errors import (
    ConfigError,
    ExitCode,
    NoSpotCapacity,
    ProviderError,
    SpotctlError,
    UsageError,
)
from spotctl.fleet.manager import no_spot


def test_a_tier_named_spot_is_not_a_spot_capacity_refusal():
    # Before: any error whose text contained "spot" was retried as "no spot capacity", so a
    # tier named spot-llama retried a VM error forever.
    assert not no_spot(SpotctlError("tier 'spot-llama': VM 7 went ERROR"))
    assert not no_spot(ProviderError("spot instance quota: HTTP 400"))
    assert no_spot(NoSpotCapacity("no spot capacity for n3-H100x1"))


def test_tree_and_exit_codes():
    assert issubclass(ConfigError, UsageError)
    assert ConfigError("x").exit_code == ExitCode.USAGE
    assert issubclass(NoSpotCapacity, ProviderError)
    err = BillingError("timeout", "no answer")
    assert isinstance(err, ProviderError) and err.kind == "timeout" and err.message == "no answer"
