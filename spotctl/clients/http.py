"""The HTTP layer every provider client shares.

- One ``httpx.Client`` per provider client, with a ``transport=`` seam: tests pass an
  ``httpx.MockTransport`` (provider fixtures) and never need a server.
- **Reads** (GETs, and POSTs of read-only queries such as GraphQL) are retried on 429, 5xx,
  timeouts and connection failures, with exponential backoff and full jitter, waiting at least
  the ``Retry-After`` the provider sent (seconds or an HTTP date). The waits go through the
  injected clock, so tests do not sleep. Retries use **tenacity** (well kept, and unlike
  stamina it lets the wait read the failed response's ``Retry-After`` and the sleep be our
  one clock).
- **Writes** (anything that changes state, including Hyperstack's state-changing GETs) are never
  retried: a timeout after sending may or may not have done the thing. They raise
  :class:`AmbiguousWrite` (a :class:`ProviderUnavailable`) so the caller reads the state back.
- Errors are mapped **once, here**, into :mod:`spotctl.errors` (which documents the tree): 401/403 →
  :class:`ProviderAuthError`, 404 → :class:`ProviderNotFound`, 409 → :class:`ProviderBadState`,
  402 → :class:`ProviderQuotaError`, 429/5xx/timeouts/connection errors (after the retries) →
  a :class:`ProviderUnavailable` subclass naming which, other 4xx → :class:`ProviderRequestError`,
  a body that is not JSON → :class:`ProviderMalformed`. Provider clients refine with the
  provider's own error body (Hyperstack ``error_reason``). Messages never carry a secret.
- Bodies are parsed with ``parse_float=Decimal`` (money stays exact) and hashed (sha256 of the
  verbatim bytes), so a ledger sample can point at the payload it came from.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from spotctl.clock import Clock
from spotctl.errors import (
    AmbiguousWrite,
    ProviderAuthError,
    ProviderBadState,
    ProviderError,
    ProviderMalformed,
    ProviderNotFound,
    ProviderQuotaError,
    ProviderRateLimited,
    ProviderRequestError,
    ProviderServerError,
    ProviderTimeout,
    ProviderUnavailable,
    ProviderUnreachable,
)

_SSL_CONTEXT = None


def ssl_context():
    """One verifying SSL context per process (building one costs ~40 ms of CA loading)."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        import ssl

        _SSL_CONTEXT = ssl.create_default_context()
    return _SSL_CONTEXT


@dataclass(frozen=True)
class Fetched:
    """A parsed response: JSON data (floats as Decimal), the sha256 of the verbatim body, the
    HTTP status and the request that produced it."""

    data: Any
    sha256: str
    status: int = 200


@dataclass(frozen=True)
class Sent:
    """One request as sent (method, path relative to the base, query, JSON body), recorded by
    a client in ``record`` mode for ``up --dry-run --json``."""

    method: str
    path: str
    params: dict[str, Any] | None
    body: Any


# Maps (status, parsed body) to a more specific error for one provider, or None.
Refine = Callable[[int, Any, str], ProviderError | None]


class HttpClient:
    """One provider's HTTP client (see the module doc for retries and errors)."""

    def __init__(self, base_url: str, headers: dict[str, str], clock: Clock, *,
                 provider: str, timeout_s: float = 10.0, attempts: int = 3,
                 backoff_s: float = 1.0, max_wait_s: float = 30.0,
                 transport: httpx.BaseTransport | None = None,
                 secrets: tuple[str, ...] = (), refine: Refine | None = None,
                 user_agent: str = "spotctl/0.1") -> None:
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.provider = provider
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s
        self._secrets = tuple(s for s in secrets if s)
        self._refine = refine
        self._rng = random.Random()  # noqa: S311 - jitter, not security
        kwargs: dict[str, Any] = {}
        if transport is not None:
            kwargs["transport"] = transport
        else:
            kwargs["verify"] = ssl_context()
        self.client = httpx.Client(
            base_url=self.base_url, headers={"User-Agent": user_agent, **headers},
            timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)), **kwargs)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def clean(self, text: str) -> str:
        """``text`` without any secret this client knows, cut to one short line."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return " ".join(text.split())[:300]

    # -- reads ------------------------------------------------------------------------------
    def read(self, method: str, path: str, *, params: dict[str, Any] | None = None,
             json_body: Any = None) -> Fetched:
        """A request that changes nothing: retried on 429/5xx/timeouts/connection errors."""
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            retry=retry_if_exception(lambda e: isinstance(e, ProviderUnavailable)),
            wait=self._wait, sleep=self.clock.sleep, reraise=True)
        return retrying(self._once, method, path, params, json_body)

    def _wait(self, state: RetryCallState) -> float:
        """Full jitter on an exponential base, but never less than the provider's Retry-After."""
        exc = state.outcome.exception() if state.outcome else None
        cap = min(self.max_wait_s, self.backoff_s * (2 ** (state.attempt_number - 1)))
        wait = self._rng.uniform(0, cap)
        if isinstance(exc, ProviderRateLimited | ProviderServerError) and \
                exc.retry_after_s is not None:
            wait = max(wait, min(exc.retry_after_s, self.max_wait_s))
        return wait

    # -- writes -----------------------------------------------------------------------------
    def write(self, method: str, path: str, *, params: dict[str, Any] | None = None,
              json_body: Any = None) -> Fetched:
        """A state-changing request: sent once. A failure whose outcome is unknown raises
        :class:`AmbiguousWrite`; the caller reads the state back (never a blind retry)."""
        try:
            return self._once(method, path, params, json_body)
        except (ProviderTimeout, ProviderUnreachable, ProviderServerError) as exc:
            raise AmbiguousWrite(f"{method} {path}: outcome unknown ({exc.message}); the state "
                                 "is read back before anything else is tried",
                                 provider=self.provider, status=exc.status) from None

    # -- one request ------------------------------------------------------------------------
    def _once(self, method: str, path: str, params: dict[str, Any] | None,
              json_body: Any) -> Fetched:
        where = f"{self.provider}: {method} {path}"
        try:
            resp = self.client.request(method, path, params=params, json=json_body)
        except httpx.TimeoutException:
            raise ProviderTimeout(f"{where}: no answer within the timeout",
                                  provider=self.provider) from None
        except httpx.HTTPError as exc:
            raise ProviderUnreachable(f"{where}: unreachable ({self.clean(type(exc).__name__)})",
                                      provider=self.provider) from None
        body = resp.content
        if resp.status_code >= 400:
            raise self._status_error(where, resp)
        return self.parse(where, body, resp.status_code)

    def parse(self, where: str, body: bytes, status: int = 200) -> Fetched:
        digest = hashlib.sha256(body).hexdigest()
        try:
            data = json.loads(body, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError):
            raise ProviderMalformed(f"{where}: the response is not valid JSON",
                                    provider=self.provider, status=status) from None
        return Fetched(data, digest, status)

    def _status_error(self, where: str, resp: httpx.Response) -> ProviderError:
        code = resp.status_code
        try:
            body = json.loads(resp.content, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError):
            body = None
        detail = ""
        if isinstance(body, dict):
            for key in ("message", "error", "error_reason"):
                value = body.get(key)
                if isinstance(value, str) and value:
                    detail = value
                    break
                if isinstance(value, dict) and isinstance(value.get("message"), str):
                    detail = value["message"]
                    break
        msg = self.clean(f"{where}: HTTP {code}" + (f" ({detail})" if detail else ""))
        if self._refine is not None:
            refined = self._refine(code, body, msg)
            if refined is not None:
                return refined
        kw = {"provider": self.provider, "status": code}
        if code in (401, 403):
            return ProviderAuthError(msg, **kw)
        if code == 404:
            return ProviderNotFound(msg, **kw)
        if code == 409:
            return ProviderBadState(msg, **kw)
        if code == 402:
            return ProviderQuotaError(msg, **kw)
        err: ProviderRateLimited | ProviderServerError
        if code == 429:
            err = ProviderRateLimited(msg, **kw)
        elif code >= 500:
            err = ProviderServerError(msg, **kw)
        else:
            return ProviderRequestError(msg, **kw)
        err.retry_after_s = retry_after_seconds(resp.headers.get("retry-after"), self.clock)
        return err


def retry_after_seconds(value: str | None, clock: Clock) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - clock.now().astimezone(UTC)).total_seconds())
