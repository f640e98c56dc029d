"""Gateway API keys: the in-memory table the request path looks keys up in.

Creation, revocation and listing live in :mod:`spotctl.ledger.keys` (SQL only in the ledger).
"""

from __future__ import annotations

import hmac

from spotctl.ledger.keys import KeyInfo, create_key, hash_key, list_keys, revoke_key

__all__ = ["KeyInfo", "KeyTable", "create_key", "hash_key", "list_keys", "revoke_key"]


class KeyTable:
    """The active keys, by hash; refreshed from the ledger by the gateway's background thread."""

    def __init__(self) -> None:
        self._by_hash: dict[str, KeyInfo] = {}

    def load(self, keys: list[KeyInfo]) -> None:
        self._by_hash = {k.key_sha256: k for k in keys if k.revoked_ms is None}

    def lookup(self, presented: str) -> KeyInfo | None:
        digest = hash_key(presented)
        found = None
        for known, info in self._by_hash.items():  # constant time per comparison
            if hmac.compare_digest(known, digest):
                found = info
        return found
