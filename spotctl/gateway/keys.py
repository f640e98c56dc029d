"""Gateway API keys: shown once, stored only as SHA-256, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from spotctl.errors import UsageError
from spotctl.ledger.db import Ledger

KEY_PREFIX = "sk-spot-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    name: str
    key_sha256: str
    created_ms: int
    revoked_ms: int | None
    daily_budget_micros: int | None


def create_key(ledger: Ledger, name: str, now_ms: int, daily_budget_micros: int | None) -> str:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise UsageError(f"bad key name {name!r}: letters, digits, - _ . (at most 64)")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with ledger.transaction() as conn:
        if conn.execute("SELECT 1 FROM api_keys WHERE name=?", (name,)).fetchone():
            raise UsageError(f"a key named {name!r} already exists (revoke it first)")
        conn.execute("INSERT INTO api_keys (name, key_sha256, created_ms, daily_budget_micros) "
                     "VALUES (?, ?, ?, ?)", (name, hash_key(key), now_ms, daily_budget_micros))
    return key


def revoke_key(ledger: Ledger, name: str, now_ms: int) -> None:
    with ledger.transaction() as conn:
        cur = conn.execute("UPDATE api_keys SET revoked_ms=? WHERE name=? AND revoked_ms IS NULL",
                           (now_ms, name))
        if cur.rowcount == 0:
            raise UsageError(f"no active key named {name!r}")


def list_keys(ledger: Ledger) -> list[KeyInfo]:
    return [KeyInfo(*row) for row in ledger.conn.execute(
        "SELECT name, key_sha256, created_ms, revoked_ms, daily_budget_micros FROM api_keys "
        "ORDER BY created_ms")]


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
