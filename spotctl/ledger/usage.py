"""The gateway's rows in the ledger: usage, its rollups, tier activity and open requests.

Portable SQL only (``?`` placeholders, ``ON CONFLICT``, no SQLite-only functions), so that a
PostgreSQL backend can run the same statements.

- ``usage``: one row per request (written in batches by the gateway's usage writer);
- ``usage_minutes``: per minute and tier, kept in the same transaction (window token counts);
- ``usage_key_minutes``: per minute and key, same transaction (the gate's per-key budgets read
  it, so their cost grows with minutes, not with requests);
- ``gateway_tiers``: per gateway process and tier, the requests in flight and a heartbeat: the
  fleet never hibernates a tier with open requests (:func:`open_requests`);
- ``tier_activity``: the last request per tier (kept for the fleet's idle timer).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

from spotctl.ledger.db import Ledger
from spotctl.ledger.records import UsageRecord

MINUTE_MS = 60_000
# open_requests: a gateway that stopped heart-beating while it had requests in flight is
# presumed to still have them until its heartbeat is older than this (the fleet's default
# drain cap, ``[fleet] drain_timeout_s``): unknown is not zero.
DEFAULT_DRAIN_CAP_MS = 120_000
_CHUNK = 400  # ids per IN (...) lookup: well under every backend's parameter limit

_USAGE_HEAD = (
    "INSERT INTO usage (id, started_ms, completed_ms, key_id, tier, model, prompt_tokens, "
    "completion_tokens, status, http_status, latency_ms, ttft_ms, stream, tokens_estimated)")

_ROLLUP_SQL = """
INSERT INTO usage_minutes (minute_ms, tier, requests, prompt_tokens, completion_tokens,
                           estimated_requests)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (minute_ms, tier) DO UPDATE SET
    requests = usage_minutes.requests + excluded.requests,
    prompt_tokens = usage_minutes.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = usage_minutes.completion_tokens + excluded.completion_tokens,
    estimated_requests = usage_minutes.estimated_requests + excluded.estimated_requests
"""

_KEY_ROLLUP_SQL = """
INSERT INTO usage_key_minutes (minute_ms, key_id, requests, prompt_tokens, completion_tokens)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (minute_ms, key_id) DO UPDATE SET
    requests = usage_key_minutes.requests + excluded.requests,
    prompt_tokens = usage_key_minutes.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = usage_key_minutes.completion_tokens + excluded.completion_tokens
"""


def open_writer(path: str | os.PathLike[str], busy_timeout_ms: int) -> Ledger:
    """A ledger connection for the usage writer: it waits ``busy_timeout_ms`` for a write lock
    and, on PostgreSQL, as long for a connection (short: a batch that cannot be written promptly
    goes to the spool instead; with ``[ledger] pool_timeout_s``, 10 s, a database restarting
    held the rows in memory, not durable, for 10 s)."""
    from spotctl.config import LedgerConfig

    if isinstance(path, LedgerConfig) and path.url:  # [ledger] naming a PostgreSQL server
        path = path.model_copy(update={"pool_timeout_s": max(0.1, busy_timeout_ms / 1000)})
    ledger = Ledger(path)
    ledger.set_busy_timeout(busy_timeout_ms)
    return ledger


def record_usage(ledger: Ledger, rows: Iterable[UsageRecord]) -> int:
    """Insert usage rows and their per-minute rollups in one transaction; returns rows added.

    A row whose id is already in the ledger (a replayed spool, a retried batch) is skipped and
    not counted twice in the rollups: replaying the same rows any number of times adds them once.
    """
    by_id: dict[str, UsageRecord] = {}
    for r in rows:
        by_id.setdefault(r.id, r)
    if not by_id:
        return 0
    with ledger.transaction() as conn:
        ids = list(by_id)
        for i in range(0, len(ids), _CHUNK):
            part = ids[i:i + _CHUNK]
            marks = ",".join("?" * len(part))
            for (known,) in conn.execute(
                    f"SELECT id FROM usage WHERE id IN ({marks})", part):  # noqa: S608
                by_id.pop(known, None)
        fresh = list(by_id.values())
        if not fresh:
            return 0
        from spotctl.ledger.writes import insert_many  # one multi-row INSERT per 500 rows

        insert_many(conn, _USAGE_HEAD, [
            (r.id, r.started_ms, r.completed_ms, r.key_id, r.tier, r.model, r.prompt_tokens,
             r.completion_tokens, r.status, r.http_status, r.latency_ms, r.ttft_ms,
             int(r.stream), int(r.tokens_estimated)) for r in fresh],
            "ON CONFLICT (id) DO NOTHING")
        minutes: dict[tuple[int, str], list[int]] = {}
        keys: dict[tuple[int, str], list[int]] = {}
        for r in fresh:
            minute = r.completed_ms - r.completed_ms % MINUTE_MS
            m = minutes.setdefault((minute, r.tier or ""), [0, 0, 0, 0])
            m[0] += 1
            m[1] += r.prompt_tokens
            m[2] += r.completion_tokens
            m[3] += int(r.tokens_estimated)
            k = keys.setdefault((minute, r.key_id or ""), [0, 0, 0])
            k[0] += 1
            k[1] += r.prompt_tokens
            k[2] += r.completion_tokens
        conn.executemany(_ROLLUP_SQL, [(*key, *v) for key, v in minutes.items()])
        from spotctl.ledger.queries import roll_up_hours  # the accounting's hourly rollup

        roll_up_hours(conn, minutes)
        conn.executemany(_KEY_ROLLUP_SQL, [(*key, *v) for key, v in keys.items()])
    return len(fresh)


def touch_tiers(ledger: Ledger, last_request_ms: Mapping[str, int]) -> None:
    """Record each tier's last request time (only ever moves forward)."""
    if not last_request_ms:
        return
    with ledger.transaction() as conn:
        conn.executemany(
            "INSERT INTO tier_activity (tier, last_request_ms) VALUES (?, ?) "
            "ON CONFLICT (tier) DO UPDATE SET last_request_ms = CASE WHEN "
            "excluded.last_request_ms > tier_activity.last_request_ms THEN "
            "excluded.last_request_ms ELSE tier_activity.last_request_ms END",
            list(last_request_ms.items()),
        )


# -- open requests per tier (gateway → fleet) ---------------------------------------------------
def publish_tiers(ledger: Ledger, gateway_id: str, heartbeat_ms: int,
                  tiers: Mapping[str, tuple[int, int | None]]) -> None:
    """Upsert this gateway process's row per tier: ``tiers[name] = (in_flight,
    last_request_ms)``. ``last_request_ms`` only moves forward (the later of the last request
    start and the last completion)."""
    if not tiers:
        return
    with ledger.transaction() as conn:
        conn.executemany(
            "INSERT INTO gateway_tiers (gateway_id, tier, in_flight, last_request_ms, "
            "heartbeat_ms) VALUES (?, ?, ?, ?, ?) ON CONFLICT (gateway_id, tier) DO UPDATE SET "
            "in_flight = excluded.in_flight, heartbeat_ms = excluded.heartbeat_ms, "
            "last_request_ms = CASE WHEN gateway_tiers.last_request_ms IS NULL OR "
            "excluded.last_request_ms > gateway_tiers.last_request_ms THEN "
            "coalesce(excluded.last_request_ms, gateway_tiers.last_request_ms) "
            "ELSE gateway_tiers.last_request_ms END",
            [(gateway_id, tier, int(n), last, heartbeat_ms) for tier, (n, last) in tiers.items()])


def open_requests(ledger: Ledger, tier: str, now_ms: int, heartbeat_stale_ms: int, *,
                  drain_cap_ms: int = DEFAULT_DRAIN_CAP_MS) -> int:
    """Requests open on ``tier`` across every gateway process.

    The sum of ``in_flight`` over gateways whose heartbeat is fresh (within
    ``heartbeat_stale_ms``), plus, for a gateway whose heartbeat went stale while it reported
    requests in flight, that count (it may have died, or be hung mid-stream: unknown is not
    zero) until its heartbeat is older than ``drain_cap_ms``. A heartbeat stamped in the future
    (a clock stepped back) counts as fresh.
    """
    horizon = now_ms - max(heartbeat_stale_ms, drain_cap_ms)
    row = ledger.conn.execute(
        "SELECT coalesce(sum(in_flight), 0) FROM gateway_tiers WHERE tier = ? AND "
        "in_flight > 0 AND heartbeat_ms >= ?", (tier, horizon)).fetchone()
    return int(row[0])


def last_request_ms(ledger: Ledger, tier: str) -> int | None:
    """The tier's latest request (start or completion) over every gateway and ``tier_activity``."""
    row = ledger.conn.execute(
        "SELECT max(t) FROM (SELECT max(last_request_ms) AS t FROM gateway_tiers WHERE tier = ? "
        "UNION ALL SELECT last_request_ms AS t FROM tier_activity WHERE tier = ?) u",
        (tier, tier)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def forget_gateways(ledger: Ledger, older_than_ms: int) -> int:
    """Delete heartbeat rows older than ``older_than_ms`` with nothing in flight (housekeeping)."""
    with ledger.transaction() as conn:
        cur = conn.execute("DELETE FROM gateway_tiers WHERE heartbeat_ms < ? AND in_flight = 0",
                           (older_than_ms,))
        return cur.rowcount


# -- reads for the gate ----------------------------------------------------------------------------
def output_tokens_since(ledger: Ledger, since_ms: int) -> tuple[int, dict[str, int]]:
    """Output (completion) tokens since ``since_ms`` (a minute boundary): the total over every
    request and the split per key, both from the per-minute rollups (O(minutes × keys))."""
    conn = ledger.conn
    since = since_ms - since_ms % MINUTE_MS
    total = conn.execute(
        "SELECT coalesce(sum(completion_tokens), 0) FROM usage_minutes WHERE minute_ms >= ?",
        (since,)).fetchone()[0]
    per_key = {k: int(n) for k, n in conn.execute(
        "SELECT key_id, sum(completion_tokens) FROM usage_key_minutes WHERE minute_ms >= ? "
        "GROUP BY key_id", (since,))}
    return int(total), per_key


def latest_tier_events(ledger: Ledger, tiers: Sequence[str] | None = None) -> dict[str, str]:
    """The newest fleet journal event per tier (``draining`` means: admit nothing new)."""
    rows = ledger.conn.execute(
        "SELECT e.tier, e.event FROM fleet_events e JOIN (SELECT tier, max(id) AS id FROM "
        "fleet_events GROUP BY tier) m ON m.id = e.id").fetchall()
    wanted = None if tiers is None else set(tiers)
    return {t: ev for t, ev in rows if wanted is None or t in wanted}


def newest_ok_polls(ledger: Ledger, after_id: int) -> list[tuple[int, str, int]]:
    """Successful billing polls by insertion order, as ``(id, provider, finished_ms)``, for the
    gate's clock-independent freshness: with ``after_id == 0`` the newest per provider, else every
    one inserted after ``after_id`` (a primary-key range: O(new polls))."""
    conn = ledger.conn
    if after_id > 0:
        return [(int(i), p, int(f)) for i, p, f in conn.execute(
            "SELECT id, provider, finished_ms FROM billing_polls WHERE id > ? AND outcome = 'ok' "
            "ORDER BY id", (after_id,))]
    return [(int(i), p, int(f)) for i, p, f in conn.execute(
        "SELECT b.id, b.provider, b.finished_ms FROM billing_polls b JOIN (SELECT provider, "
        "max(id) AS id FROM billing_polls WHERE outcome = 'ok' GROUP BY provider) m "
        "ON m.id = b.id ORDER BY b.id")]
