"""Who is asking: the gateway keys, looked up in memory on the request path.

The table is a dict from SHA-256 digest to key, reloaded from the ledger by the gate thread
every ``[gateway] gate_cache_s`` (a revoked key stops working within that time). Looking up a
digest leaks nothing useful about stored keys: an attacker cannot choose the digest of a guess.
"""

from __future__ import annotations

import hashlib

from spotctl.gateway.errors import GatewayError
from spotctl.ledger.keys import KeyInfo


class KeyTable:
    def __init__(self) -> None:
        self._by_hash: dict[str, KeyInfo] = {}

    def load(self, keys: list[KeyInfo]) -> None:
        self._by_hash = {k.key_sha256: k for k in keys if k.revoked_ms is None}

    def lookup(self, presented: str) -> KeyInfo | None:
        return self._by_hash.get(hashlib.sha256(presented.encode()).hexdigest())


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The bearer token of an ASGI header list (``None`` when there is none)."""
    for name, value in headers:
        if name == b"authorization":
            if value[:7].lower() == b"bearer ":
                return value[7:].strip().decode("latin-1")
            return None
    return None


def authenticate(keys: KeyTable, headers: list[tuple[bytes, bytes]]) -> KeyInfo:
    token = bearer(headers)
    info = keys.lookup(token) if token else None
    if info is None:
        raise GatewayError(401, "invalid_api_key", "Missing API key." if not token else
                           "Missing, unknown or revoked API key.")
    return info
