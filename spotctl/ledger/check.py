"""``spotctl ledger check``: the engine's own checks plus the ledger's invariants.

SQLite: ``integrity_check``, ``foreign_key_check`` and that money/time values are stored as
integers (SQLite's columns accept any type). PostgreSQL enforces types and foreign keys itself, so
there the checks are that every money/time column is 64-bit (``*_ms``, ``*_micros``,
``*_micros_per_h``: BIGINT, never a 32-bit INTEGER) and that no constraint is left unvalidated.
The ledger's invariants are the same SQL on both.

Also the small reads the CLI's first-contact commands need (names seen in the ledger).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spotctl.ledger.db import POSTGRESQL, Ledger
from spotctl.ledger.schema import SCHEMA_VERSION


@dataclass(frozen=True)
class LedgerNames:
    """The tier and provider names the ledger has seen (billing or usage), for validating
    ``--tier``/``--provider`` filters: a tier removed from the config still has its history."""

    tiers: frozenset[str]
    providers: frozenset[str]


def stored_schema_version(path: Path) -> int | None:
    """The schema version of the ledger file at ``path``, read without migrating or creating
    anything (``None``: no file there)."""
    import sqlite3

    from spotctl.errors import LedgerError

    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise LedgerError(f"{path}: cannot open: {exc}") from None
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
                        ).fetchone() is None:
            return 0
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 0
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"{path}: not a usable spotctl ledger: {exc}") from None
    finally:
        conn.close()


def ledger_names(ledger: Ledger) -> LedgerNames:
    conn = ledger.conn
    tiers = {r[0] for r in conn.execute(
        "SELECT tier FROM billing_series WHERE tier IS NOT NULL "
        "UNION SELECT tier FROM usage_minutes WHERE tier <> ''")}
    providers = {r[0] for r in conn.execute(
        "SELECT provider FROM billing_series UNION SELECT DISTINCT provider FROM billing_polls")}
    return LedgerNames(frozenset(tiers), frozenset(providers))


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str = ""


_SQLITE_TYPES: list[tuple[str, str]] = [
    ("money columns are exact integers",
     "SELECT count(*) FROM billing_samples WHERE typeof(cumulative_micros) NOT IN "
     "('integer','null') OR typeof(rate_micros_per_h) NOT IN ('integer','null') OR "
     "typeof(balance_micros) NOT IN ('integer','null')"),
    ("times are integers",
     "SELECT count(*) FROM billing_samples WHERE typeof(observed_ms) != 'integer'"),
]

_PG_TYPES: list[tuple[str, str]] = [
    # A *_ms / *_micros column of a table may be BIGINT or a float (latency percentiles), never
    # a 32-bit INTEGER, which truncates epoch milliseconds and micro-dollars. Views are skipped:
    # PostgreSQL's sum(bigint) is NUMERIC, exact.
    ("money and time columns are never 32-bit integers",
     "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() "
     "AND table_name IN (SELECT table_name FROM information_schema.tables WHERE "
     "table_schema = current_schema() AND table_type = 'BASE TABLE') "
     "AND (column_name LIKE '%\\_ms' ESCAPE '\\' OR column_name LIKE '%\\_micros' ESCAPE '\\' "
     "OR column_name LIKE '%\\_micros\\_per\\_h' ESCAPE '\\') "
     "AND data_type IN ('integer', 'smallint')"),
    ("constraints are validated",
     "SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
     "WHERE n.nspname = current_schema() AND NOT c.convalidated"),
]

_INVARIANTS: list[tuple[str, str]] = [
    ("no negative token counts",
     "SELECT count(*) FROM usage WHERE prompt_tokens < 0 OR completion_tokens < 0"),
    ("every sample belongs to a recorded poll",
     "SELECT count(*) FROM billing_samples s LEFT JOIN billing_polls p ON p.id = s.poll_id "
     "WHERE p.id IS NULL"),
    ("polls finish after they start",
     "SELECT count(*) FROM billing_polls WHERE finished_ms < started_ms"),
    ("usage rollup agrees with usage rows",
     "SELECT count(*) FROM (SELECT minute_ms, tier, requests, prompt_tokens, completion_tokens "
     "FROM usage_minutes EXCEPT SELECT completed_ms - completed_ms % 60000, coalesce(tier, ''), "
     "count(*), sum(prompt_tokens), sum(completion_tokens) FROM usage "
     "GROUP BY completed_ms - completed_ms % 60000, coalesce(tier, '')) d"),
    ("every usage row is in the rollup",
     "SELECT (SELECT count(*) FROM usage) - (SELECT coalesce(sum(requests), 0) "
     "FROM usage_minutes)"),
    ("every falling cumulative is recorded as an anomaly",
     "SELECT count(*) FROM (SELECT provider, account, resource_id, observed_ms, cumulative_micros,"
     " LAG(cumulative_micros) OVER (PARTITION BY provider, account, resource_id "
     "ORDER BY observed_ms) AS prev FROM billing_samples WHERE cumulative_micros IS NOT NULL) s "
     "WHERE s.cumulative_micros < s.prev AND NOT EXISTS (SELECT 1 FROM billing_anomalies a "
     "WHERE a.provider=s.provider AND a.account=s.account AND a.resource_id=s.resource_id AND "
     "a.observed_ms=s.observed_ms AND a.kind='cumulative_decreased')"),
    ("the series catalogue covers every sample",
     "SELECT count(*) FROM (SELECT provider, account, resource_id, min(observed_ms) AS f, "
     "max(observed_ms) AS l FROM billing_samples WHERE cumulative_micros IS NOT NULL "
     "GROUP BY 1, 2, 3) s LEFT JOIN billing_series c USING (provider, account, resource_id) "
     "WHERE c.first_ms IS NULL OR c.first_ms != s.f OR c.last_ms != s.l"),
    ("every change of state or spot flag is catalogued",
     "SELECT count(*) FROM (SELECT provider, account, resource_id, observed_ms, state, spot, "
     "LAG(observed_ms) OVER w AS prev_ms, LAG(state) OVER w AS prev_state, "
     "LAG(spot) OVER w AS prev_spot FROM billing_samples WHERE cumulative_micros IS NOT NULL "
     "WINDOW w AS (PARTITION BY provider, account, resource_id ORDER BY observed_ms)) s "
     "WHERE s.prev_ms IS NOT NULL AND (s.state IS DISTINCT FROM s.prev_state OR "
     "s.spot IS DISTINCT FROM s.prev_spot) AND NOT EXISTS (SELECT 1 FROM "
     "billing_state_changes c WHERE c.provider=s.provider AND c.account=s.account AND "
     "c.resource_id=s.resource_id AND c.observed_ms=s.observed_ms)"),
    ("each series' last sample per hour is catalogued",
     "SELECT (SELECT count(*) FROM (SELECT provider, account, resource_id, hour_ms, observed_ms, "
     "cumulative_micros, state, spot, rate_micros_per_h FROM billing_series_hours EXCEPT "
     "SELECT s.provider, s.account, s.resource_id, l.hour_ms, s.observed_ms, s.cumulative_micros, "
     "s.state, s.spot, s.rate_micros_per_h FROM billing_samples s JOIN (SELECT provider, account, "
     "resource_id, observed_ms - 1 - (observed_ms - 1) % 3600000 AS hour_ms, max(observed_ms) AS "
     "last_ms FROM billing_samples WHERE cumulative_micros IS NOT NULL GROUP BY provider, "
     "account, resource_id, observed_ms - 1 - (observed_ms - 1) % 3600000) l ON "
     "s.provider = l.provider AND s.account = l.account AND s.resource_id = l.resource_id AND "
     "s.observed_ms = l.last_ms) a) + (SELECT count(*) FROM (SELECT s.provider, s.account, "
     "s.resource_id, l.hour_ms, s.observed_ms, s.cumulative_micros, s.state, s.spot, "
     "s.rate_micros_per_h FROM billing_samples s JOIN (SELECT provider, account, resource_id, "
     "observed_ms - 1 - (observed_ms - 1) % 3600000 AS hour_ms, max(observed_ms) AS last_ms "
     "FROM billing_samples WHERE cumulative_micros IS NOT NULL GROUP BY provider, account, "
     "resource_id, observed_ms - 1 - (observed_ms - 1) % 3600000) l ON s.provider = l.provider "
     "AND s.account = l.account AND s.resource_id = l.resource_id AND s.observed_ms = l.last_ms "
     "EXCEPT SELECT provider, account, resource_id, hour_ms, observed_ms, cumulative_micros, "
     "state, spot, rate_micros_per_h FROM billing_series_hours) b)"),
    ("hourly usage rollup agrees with the minute rollup",
     "SELECT (SELECT count(*) FROM (SELECT hour_ms, tier, requests, prompt_tokens, "
     "completion_tokens, estimated_requests, busy_minutes FROM usage_hours EXCEPT "
     "SELECT minute_ms - minute_ms % 3600000, tier, sum(requests), sum(prompt_tokens), "
     "sum(completion_tokens), sum(estimated_requests), sum(CASE WHEN requests > 0 THEN 1 ELSE 0 "
     "END) FROM usage_minutes GROUP BY minute_ms - minute_ms % 3600000, tier) a) + "
     "(SELECT count(*) FROM (SELECT minute_ms - minute_ms % 3600000, tier, sum(requests), "
     "sum(prompt_tokens), sum(completion_tokens), sum(estimated_requests), sum(CASE WHEN "
     "requests > 0 THEN 1 ELSE 0 END) FROM usage_minutes GROUP BY minute_ms - minute_ms % "
     "3600000, tier EXCEPT SELECT hour_ms, tier, requests, prompt_tokens, completion_tokens, "
     "estimated_requests, busy_minutes FROM usage_hours) b)"),
    ("revoked keys were created first",
     "SELECT count(*) FROM api_keys WHERE revoked_ms IS NOT NULL AND revoked_ms < created_ms"),
]


def check_ledger(ledger: Ledger) -> list[CheckResult]:
    """Every check, in order. On SQLite a damaged file fails the checks that cannot read it
    ("database disk image is malformed" is a finding, not an error of the command); the rest
    still run."""
    import sqlite3

    conn = ledger.conn
    results: list[CheckResult] = []

    def run(name: str, check) -> None:
        try:
            results.append(check())
        except sqlite3.DatabaseError as exc:
            results.append(CheckResult(name, False, f"cannot be read: {exc}"))

    if ledger.backend == POSTGRESQL:
        version_row = conn.execute("SHOW server_version").fetchone()
        results.append(CheckResult("postgresql server", True, f"PostgreSQL {version_row[0]}"))
        types = _PG_TYPES
    else:
        results.append(_sqlite_integrity(conn))

        def fk_check() -> CheckResult:
            fk = conn.execute("PRAGMA foreign_key_check").fetchall()
            return CheckResult("foreign keys", not fk, f"{len(fk)} violation(s)" if fk else "")

        run("foreign keys", fk_check)
        types = _SQLITE_TYPES

    def version_check() -> CheckResult:
        version = ledger.schema_version()
        return CheckResult("schema version", version == SCHEMA_VERSION,
                           f"v{version} (expected v{SCHEMA_VERSION})")

    run("schema version", version_check)
    for name, sql in [*types, *_INVARIANTS]:
        def invariant(name: str = name, sql: str = sql) -> CheckResult:
            bad = conn.execute(sql).fetchone()[0]
            return CheckResult(name, bad == 0, f"{bad} row(s) break it" if bad else "")

        run(name, invariant)
    return results


def _sqlite_integrity(conn) -> CheckResult:
    """``PRAGMA integrity_check``: its findings, and the error that stopped it, if one did (a
    malformed page can stop it after it reported a few)."""
    import sqlite3

    rows: list[str] = []
    try:
        for r in conn.execute("PRAGMA integrity_check"):
            rows.append(str(r[0]))
    except sqlite3.DatabaseError as exc:
        rows.append(str(exc))
    return CheckResult("sqlite integrity_check", rows == ["ok"], "; ".join(rows[:3]))


def unreadable(message: str) -> list[CheckResult]:
    """The report for a ledger that cannot even be opened (not a database, a damaged header):
    the check fails, it is not an error of the command."""
    return [CheckResult("ledger opens", False, message)]
