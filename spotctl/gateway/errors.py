"""The gateway's error contract: OpenAI's error body with a stable ``code``.

| HTTP | code | when |
|---|---|---|
| 400 | invalid_request | not a JSON object with a string ``model`` (and a boolean ``stream``) |
| 401 | invalid_api_key | missing, unknown or revoked key |
| 404 | model_not_found | no tier serves this model |
| 408 | request_timeout | the request's headers or body did not arrive within the read deadlines |
| 413 | request_too_large | body over ``[gateway] max_body_bytes`` |
| 429 | budget_exhausted | the day's budget (global or the key's) is spent; Retry-After |
| 431 | headers_too_large | more header bytes or header fields than the limits allow |
| 502 | upstream_unreachable | the engine could not be reached or failed before answering |
| 503 | billing_stale | the gate is closed because spend cannot be known |
| 503 | usage_unrecordable | usage rows cannot be made durable (ledger and spool both failing) |
| 503 | ledger_unreachable | the gate cannot read the ledger |
| 503 | rate_mismatch | a serving resource is billed off its launch quote (``close_on_rate_mismatch``) |
| 503 | no_upstream | no tier can serve or be woken (or the tier is draining); Retry-After |
| 503 | overloaded | more requests in flight than ``[gateway] max_concurrent_requests``; Retry-After |
| 504 | wake_timeout | waking a hibernated tier took longer than the wake cap |
| 504 | upstream_timeout | the engine did not answer within a timeout |

Messages never carry a provider's or an engine's own error text (it may hold account details
or keys): the operator finds those in the gateway's log, scrubbed, and in ``spotctl events``.
"""

from __future__ import annotations

import orjson

from spotctl.errors import scrub  # noqa: F401 - the gateway's name for it

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         408: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
         431: "invalid_request_error", 502: "api_error", 503: "service_unavailable",
         504: "timeout"}


class GatewayError(Exception):
    """A refusal with a documented status and code, rendered as OpenAI's error body."""

    def __init__(self, status: int, code: str, message: str,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or []


def error_body(status: int, code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": TYPES.get(status, "api_error"),
                                   "param": None, "code": code}})
