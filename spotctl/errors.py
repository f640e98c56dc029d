"""Exit codes and the one error tree. The same codes for every command.

Every error meant for a person is a :class:`SpotctlError`: one line, a documented exit code, no
traceback. Foreign errors (httpx, SkyPilot, a provider's HTTP answers, sqlite3/psycopg) are
mapped to this tree **once**, at the module that talks to the foreign thing (the provider
clients, ``fleet/skypilot.py``, ``ledger/``); nothing above those modules inspects a foreign
exception or searches an error's text.

::

    SpotctlError                      exit 1 unless a subclass says otherwise
    ├── UsageError                    exit 2: bad flags, arguments or input
    │   └── ConfigError               exit 2: spotctl.toml is wrong (names file, key, expected, found)
    ├── LedgerError                   the ledger cannot be opened, migrated or written
    │   └── LedgerUnavailable         the ledger server cannot be reached (or no pooled
    │                                 connection came in time): ``reason`` says which
    ├── ProviderError                 a provider's API refused or failed (``provider`` names it)
    │   ├── ProviderAuthError         401/403: the key is wrong or lacks a permission
    │   ├── ProviderQuotaError        quota, credit or limit exhausted
    │   ├── ProviderNotFound          the resource does not exist (any more)
    │   ├── ProviderBadState          the resource is in a state that forbids the call
    │   ├── ProviderUnavailable       unreachable, timed out, 429/5xx after the retries
    │   │   ├── ProviderTimeout       no answer within the timeout
    │   │   ├── ProviderUnreachable   the connection failed (DNS, refused, reset, TLS)
    │   │   ├── ProviderRateLimited   429: ``retry_after_s`` is the provider's Retry-After
    │   │   ├── ProviderServerError   5xx: ``retry_after_s`` as for 429
    │   │   └── AmbiguousWrite        a state-changing call's outcome is unknown: read back
    │   ├── ProviderRequestError      any other 4xx (bad request, unknown field, ...)
    │   ├── ProviderMalformed         the answer is not the JSON the provider's API defines
    │   │   └── GraphQLRejected       a GraphQL answer carrying ``errors`` (RunPod)
    │   └── NoSpotCapacity            spot capacity refused: worth retrying later, or on demand
    ├── FleetError                    a fleet operation failed (VM error, not ready in time, ...)
    │   └── LeaseLost                 this process no longer holds the tier's lease: do not act
    ├── ThresholdCrossed              exit 3: --fail-over, a closed budget, reconcile drift
    └── ObservabilityLost             exit 4: billing stale/failing, --fail-stale

The HTTP mapping (status and transport failure → class) is in :mod:`spotctl.clients.http`.
Every :class:`ProviderError` names in ``kind`` the outcome a billing poll that failed with it
records (``billing_polls.outcome``: auth, timeout, unreachable, http_429, http_5xx, http_4xx,
malformed); a subclass without its own inherits its base's.
``spotctl.billing.base.BillingError`` is the poller's classification of one failed poll (its
``kind`` is stored as the poll outcome); it is a :class:`ProviderError`.
"""

from __future__ import annotations

import re
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # unexpected error
    USAGE = 2  # bad usage, input or configuration
    THRESHOLD = 3  # a threshold was crossed (--fail-over, budget closed, drift)
    OBSERVABILITY = 4  # observability not ok (stale/failing billing, --fail-stale)


class SpotctlError(Exception):
    """An error meant for the user: one line, a documented exit code, no traceback."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(SpotctlError):
    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    exit_code = ExitCode.USAGE


class LedgerError(SpotctlError):
    exit_code = ExitCode.ERROR


class LedgerUnavailable(LedgerError):
    """The shared ledger (PostgreSQL) cannot be reached, a connection broke, or the pool had no
    free connection in time. ``reason``: ``ledger_unreachable`` or ``pool_exhausted``."""

    def __init__(self, message: str, exit_code: ExitCode | None = None, *,
                 reason: str = "ledger_unreachable") -> None:
        super().__init__(message, exit_code)
        self.reason = reason


class ProviderError(SpotctlError):
    """A provider API call failed. ``provider`` is the configured provider's name (or kind).
    ``kind``: the outcome a billing poll that failed with this error records."""

    exit_code = ExitCode.ERROR
    kind = "http_4xx"

    def __init__(self, message: str, exit_code: ExitCode | None = None, *,
                 provider: str | None = None, status: int | None = None) -> None:
        super().__init__(message, exit_code)
        self.provider = provider
        self.status = status


class ProviderAuthError(ProviderError):
    exit_code = ExitCode.USAGE
    kind = "auth"


class ProviderQuotaError(ProviderError):
    pass


class ProviderNotFound(ProviderError):
    pass


class ProviderBadState(ProviderError):
    pass


class ProviderUnavailable(ProviderError):
    kind = "unreachable"


class ProviderTimeout(ProviderUnavailable):
    kind = "timeout"


class ProviderUnreachable(ProviderUnavailable):
    kind = "unreachable"


class ProviderRateLimited(ProviderUnavailable):
    kind = "http_429"
    retry_after_s: float | None = None  # what the provider's Retry-After asked for


class ProviderServerError(ProviderUnavailable):
    kind = "http_5xx"
    retry_after_s: float | None = None


class AmbiguousWrite(ProviderUnavailable):
    """A state-changing call whose outcome is unknown (timeout, connection lost, 5xx): it may
    have happened. Never retried; the caller reads the state back."""

    kind = "unreachable"


class ProviderRequestError(ProviderError):
    """A 4xx the provider gave no more specific meaning to (bad request, unknown field...)."""

    kind = "http_4xx"


class ProviderMalformed(ProviderError):
    """The provider answered something that is not the JSON its API defines."""

    kind = "malformed"


class GraphQLRejected(ProviderMalformed):
    """A GraphQL answer with ``errors`` (RunPod's SDK raises QueryError: graphql.py:45-51)."""


class NoSpotCapacity(ProviderError):
    """Spot capacity was refused for lack of it. The fleet retries spot within the tier's
    ``spot_retry_minutes`` and then falls back to on-demand; any other error is not retried."""


class FleetError(SpotctlError):
    exit_code = ExitCode.ERROR


class LeaseLost(FleetError):
    """The lease that lets this process act on a tier moved to another holder (or is about to
    lapse): launch, delete and journal writes are refused (spotctl.ledger.coordination)."""


class ThresholdCrossed(SpotctlError):
    exit_code = ExitCode.THRESHOLD


class ObservabilityLost(SpotctlError):
    exit_code = ExitCode.OBSERVABILITY


# -- foreign text made safe -------------------------------------------------------------------
_SECRETISH = re.compile(
    r"(?i)(bearer\s+|api[_-]?key[\"'=:\s]+|token[\"'=:\s]+|authorization[\"'=:\s]+|"
    r"password[\"'=:\s]+|secret[\"'=:\s]+)[^\s\"',;&]+")
_LONG_TOKEN = re.compile(r"\b[A-Za-z0-9_\-]{32,}\b")


def scrub(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """A message from a foreign system (a provider, SkyPilot, an engine), safe for a log line,
    the journal or an error: known secrets, bearer tokens, ``api_key=…``-style values and long
    opaque tokens are replaced, and it is one short line."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    text = _SECRETISH.sub(lambda m: m.group(1) + "***", text)
    text = _LONG_TOKEN.sub("***", text)
    text = " ".join(text.split())
    return text[:300]


def scrub_error(exc: SpotctlError, secrets: tuple[str, ...] | list[str] = ()) -> SpotctlError:
    """``exc`` with its message scrubbed in place (for re-raising at a boundary)."""
    clean = scrub(exc.message, secrets)
    if clean != exc.message:
        exc.message = clean
        exc.args = (clean,)
    return exc
