"""Gateway API keys in the ledger: shown once, stored only as their SHA-256."""

from __future__ import annotations

import hashlib
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


def _check_name(name: str) -> None:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise UsageError(f"bad key name {name!r}: letters, digits, - _ . (at most 64)")


def create_key(ledger: Ledger, name: str, now_ms: int, daily_budget_micros: int | None) -> str:
    """Create a key named ``name`` and return it (the only time it exists in clear)."""
    _check_name(name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with ledger.transaction() as conn:
        if conn.execute("SELECT 1 FROM api_keys WHERE name = ?", (name,)).fetchone():
            raise UsageError(f"a key named {name!r} already exists (revoke it first)")
        conn.execute("INSERT INTO api_keys (name, key_sha256, created_ms, daily_budget_micros) "
                     "VALUES (?, ?, ?, ?)", (name, hash_key(key), now_ms, daily_budget_micros))
    return key


def revoke_key(ledger: Ledger, name: str, now_ms: int) -> None:
    with ledger.transaction() as conn:
        cur = conn.execute(
            "UPDATE api_keys SET revoked_ms = ? WHERE name = ? AND revoked_ms IS NULL",
            (now_ms, name))
        if cur.rowcount == 0:
            raise UsageError(f"no active key named {name!r}")


def list_keys(ledger: Ledger) -> list[KeyInfo]:
    return [KeyInfo(*row) for row in ledger.conn.execute(
        "SELECT name, key_sha256, created_ms, revoked_ms, daily_budget_micros FROM api_keys "
        "ORDER BY created_ms, name")]
