"""Ledger operations as one call each: ``spotctl ledger migrate``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spotctl.config import Config
    from spotctl.ledger.check import CheckResult
    from spotctl.ledger.migrate import MigrateResult


@dataclass
class MigrateOutcome:
    result: MigrateResult
    checks: dict[str, list[CheckResult]]  # "source" / "destination" → `ledger check` on it

    @property
    def ok(self) -> bool:
        return all(r.ok for rs in self.checks.values() for r in rs)


def migrate(cfg: Config, to: str,
            progress: Callable[[str, int, int], None] | None = None) -> MigrateOutcome:
    """Copy the configured SQLite ledger into the PostgreSQL ledger at ``to`` (all or nothing,
    idempotent), then run ``ledger check`` on both. A config already on PostgreSQL or a ``to``
    that is not a valid postgresql:// URL is a usage error (its message never repeats the URL:
    it may hold a password)."""
    from pydantic import ValidationError

    from spotctl.config import LedgerConfig
    from spotctl.errors import UsageError
    from spotctl.ledger.check import check_ledger
    from spotctl.ledger.db import Ledger
    from spotctl.ledger.migrate import migrate_sqlite_to_postgres

    if cfg.ledger.url:
        raise UsageError("[ledger] already names a PostgreSQL url; migrate copies the SQLite "
                         "ledger at [ledger] path")
    if not to.startswith(("postgresql://", "postgres://")):
        raise UsageError(f"--to: expected a postgresql:// URL, got {to.split(':', 1)[0]!r}")
    try:
        LedgerConfig(url=to)
    except ValidationError as exc:
        msg = exc.errors(include_url=False)[0].get("msg", "invalid URL")
        raise UsageError(f"--to: {msg.removeprefix('Value error, ')}") from None
    result = migrate_sqlite_to_postgres(cfg.ledger_path, to, progress)
    checks = {}
    for where, target in (("source", cfg.ledger_target), ("destination", to)):
        with Ledger(target, readonly=True) as led:
            checks[where] = check_ledger(led)
    return MigrateOutcome(result, checks)
