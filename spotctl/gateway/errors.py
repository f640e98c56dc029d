"""The gateway's error contract: OpenAI's error body with a stable ``code``.

| HTTP | code | when |
|---|---|---|
| 400 | invalid_request | the body is not a JSON object with a string ``model`` |
| 401 | invalid_api_key | missing, unknown or revoked key |
| 404 | model_not_found | no tier serves this model |
| 413 | request_too_large | body over ``[gateway] max_body_bytes`` |
| 429 | budget_exhausted | the day's budget (global or the key's) is spent; Retry-After |
| 502 | upstream_unreachable | the engine could not be reached or failed before answering |
| 503 | billing_stale | the gate is closed because spend cannot be known |
| 503 | no_upstream | no tier can serve or be woken |
| 504 | wake_timeout | waking a hibernated tier took longer than the wake cap |
| 504 | upstream_timeout | the engine did not answer within a timeout |
"""

from __future__ import annotations

import orjson

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         413: "invalid_request_error", 429: "rate_limit_error", 502: "api_error",
         503: "service_unavailable", 504: "timeout"}


def error_body(status: int, code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": TYPES.get(status, "api_error"),
                                   "param": None, "code": code}})
