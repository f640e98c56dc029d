"""The HTTP layer every adapter shares: timeouts, bounded retries for reads, payload hashing,
tolerant JSON with exact decimals, and errors that never carry a secret."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx

from spotctl.billing.base import BillingError
from spotctl.clock import Clock

RETRY_STATUSES = {429, 500, 502, 503, 504}
_SSL_CONTEXT = None


def ssl_context():
    """One verifying SSL context per process (building one costs ~40 ms of CA loading)."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        import ssl

        _SSL_CONTEXT = ssl.create_default_context()
    return _SSL_CONTEXT


@dataclass
class Fetched:
    data: Any
    sha256: str


class ProviderHTTP:
    """A small client for one provider. Reads (GET, or POST of a GraphQL query) are retried on
    429/5xx/timeouts with exponential backoff on the injected clock; nothing else is retried."""

    def __init__(self, base_url: str, headers: dict[str, str], clock: Clock, *,
                 timeout_s: float = 10.0, retries: int = 2, backoff_s: float = 1.0,
                 secrets: tuple[str, ...] = ()) -> None:
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.retries = retries
        self.backoff_s = backoff_s
        self._secrets = tuple(s for s in secrets if s)
        self.client = httpx.Client(
            headers={"User-Agent": "spotctl/0.1 (+billing poller)", **headers},
            timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
            verify=ssl_context(),
        )

    def close(self) -> None:
        self.client.close()

    def _clean(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:300]

    def read(self, method: str, path: str, *, params: dict | None = None,
             json_body: Any = None) -> Fetched:
        url = f"{self.base_url}{path}"
        attempt = 0
        while True:
            try:
                resp = self.client.request(method, url, params=params, json=json_body)
            except httpx.TimeoutException:
                err = BillingError("timeout", f"{path}: no answer within the timeout")
            except httpx.HTTPError as exc:
                err = BillingError("unreachable", f"{path}: {self._clean(type(exc).__name__)}")
            else:
                if resp.status_code < 400:
                    return self._parse(path, resp.content)
                err = self._status_error(path, resp)
                if resp.status_code not in RETRY_STATUSES:
                    raise err
            if attempt >= self.retries:
                raise err
            self.clock.sleep(self.backoff_s * (2 ** attempt))
            attempt += 1

    def _status_error(self, path: str, resp: httpx.Response) -> BillingError:
        code = resp.status_code
        kind = ("auth" if code in (401, 403) else "http_429" if code == 429
                else "http_5xx" if code >= 500 else "http_4xx")
        detail = ""
        try:
            body = resp.json()
            if isinstance(body, dict):
                detail = str(body.get("message") or body.get("error") or "")
        except ValueError:
            pass
        return BillingError(kind, self._clean(f"{path}: HTTP {code}" +
                                              (f" ({detail})" if detail else "")))

    def _parse(self, path: str, body: bytes) -> Fetched:
        digest = hashlib.sha256(body).hexdigest()
        try:
            data = json.loads(body, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError):
            raise BillingError("malformed", f"{path}: the response is not valid JSON") from None
        return Fetched(data, digest)


def need(obj: Any, key: str, typ: type | tuple[type, ...], where: str) -> Any:
    """A required field of the right type, or a classified ``malformed`` error (never a crash)."""
    if not isinstance(obj, dict) or key not in obj:
        raise BillingError("malformed", f"{where}: missing field {key!r}")
    value = obj[key]
    if isinstance(value, bool) and bool not in (typ if isinstance(typ, tuple) else (typ,)):
        raise BillingError("malformed", f"{where}: {key!r} has the wrong type")
    if not isinstance(value, typ):
        raise BillingError("malformed", f"{where}: {key!r} has the wrong type")
    return value


def money(value: Any, where: str) -> int:
    """A JSON number or numeric string (USD) as exact micro-dollars, or ``malformed``."""
    from spotctl.money import MoneyError, to_micros

    if isinstance(value, bool) or value is None:
        raise BillingError("malformed", f"{where}: not an amount")
    if isinstance(value, int | Decimal | str):
        try:
            micros = to_micros(value)
        except MoneyError:
            raise BillingError("malformed", f"{where}: not an amount") from None
        if abs(micros) > 10**15:  # a billion dollars: a corrupt number, not a bill
            raise BillingError("malformed", f"{where}: implausible amount")
        return micros
    raise BillingError("malformed", f"{where}: not an amount")


class BearerAdapter:
    """Shared set-up of adapters whose API takes ``Authorization: Bearer <key>``."""

    default_base = ""

    def __init__(self, provider, cfg, clock: Clock) -> None:
        from spotctl.billing.base import api_key_for

        self.provider, self.cfg, self.clock = provider, cfg, clock
        key = api_key_for(provider)
        self.http = ProviderHTTP(provider.base_url or self.default_base,
                                 {"Authorization": f"Bearer {key}"}, clock,
                                 timeout_s=cfg.billing.timeout_s, secrets=(key,))

    def close(self) -> None:
        self.http.close()
