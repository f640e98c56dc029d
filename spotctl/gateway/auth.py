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
    """Keys by digest; a key presented before is found without hashing it again (only valid
    keys are remembered, and only until the next reload)."""

    def __init__(self) -> None:
        # (by digest, presented key → key): one attribute, swapped at once by load()
        self._tables: tuple[dict[str, KeyInfo], dict[str, KeyInfo]] = ({}, {})

    def load(self, keys: list[KeyInfo]) -> None:
        self._tables = ({k.key_sha256: k for k in keys if k.revoked_ms is None}, {})

    def lookup(self, presented: str) -> KeyInfo | None:
        by_hash, seen = self._tables
        info = seen.get(presented)
        if info is None:
            info = by_hash.get(hashlib.sha256(presented.encode()).hexdigest())
            if info is not None and len(seen) < 4096:
                seen[presented] = info
        return info


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
