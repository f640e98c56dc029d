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


def test_the_documented_tree_names_every_error_class_in_errors_py():
    import inspect

    import spotctl.errors as errors

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, SpotctlError) and c.__module__ == errors.__name__]
    assert len(classes) > 20
    tree = errors.__doc__.split("::", 1)[1]
    missing = [c.__name__ for c in classes if f" {c.__name__} " not in tree]
    assert missing == []
    # and each is drawn under its real base class: its base's line comes before it
    for cls in classes:
        if cls is not SpotctlError:
            assert tree.index(f" {cls.__mro__[1].__name__} ") < tree.index(f" {cls.__name__} ")


def test_the_http_layer_raises_the_tree_and_defines_no_error_class_of_its_own():
    import inspect

    import spotctl.clients.bearer as bearer
    import spotctl.clients.http as http
    import spotctl.clients.hyperstack as hyperstack

    for mod in (http, bearer, hyperstack):
        own = [name for name, c in inspect.getmembers(mod, inspect.isclass)
               if issubclass(c, BaseException) and c.__module__ == mod.__name__]
        assert own == [], mod.__name__


def test_each_provider_error_names_its_poll_outcome():
    import spotctl.errors as e
    from spotctl.billing.poller import classify

    expected = {  # what billing_polls.outcome has always recorded for each
        e.ProviderError: "http_4xx", e.ProviderAuthError: "auth", e.ProviderQuotaError: "http_4xx",
        e.ProviderNotFound: "http_4xx", e.ProviderBadState: "http_4xx",
        e.ProviderUnavailable: "unreachable", e.ProviderTimeout: "timeout",
        e.ProviderUnreachable: "unreachable", e.ProviderRateLimited: "http_429",
        e.ProviderServerError: "http_5xx", e.AmbiguousWrite: "unreachable",
        e.ProviderRequestError: "http_4xx", e.ProviderMalformed: "malformed",
        e.GraphQLRejected: "malformed", e.NoSpotCapacity: "http_4xx",
        e.LedgerError: "ledger", e.LedgerUnavailable: "ledger", e.ConfigError: "config",
        e.SpotctlError: "error", e.FleetError: "error", e.UsageError: "error",
    }
    assert {cls: classify(cls("x")) for cls in expected} == expected
    assert classify(BillingError("unsupported", "not credit-only")) == "unsupported"
    assert all(k in BillingError.KINDS for k in expected.values() if k != "error")
