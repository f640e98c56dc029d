"""The ledger's schema and its forward migrations.

Units, everywhere in the ledger:
- time: INTEGER epoch milliseconds UTC, columns named ``*_ms``;
- money: INTEGER micro-dollars (1e-6 USD), columns named ``*_micros``;
- rates: INTEGER micro-dollars per hour, ``rate_micros_per_h``.

Migrations are append-only: never edit a released step, add a new one.
"""

from __future__ import annotations

# Each entry migrates the schema from version i to i+1.
MIGRATIONS: list[str] = [
    # 0 -> 1: the first schema.
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );

    -- Every poll attempt of one provider, whatever its outcome. Billing health derives from it.
    CREATE TABLE billing_polls (
        id INTEGER PRIMARY KEY,
        provider TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        finished_ms INTEGER NOT NULL,
        outcome TEXT NOT NULL,          -- 'ok' or an error class: timeout, http_5xx, http_429,
                                        -- auth, malformed, regressed, unreachable, ...
        error_message TEXT,             -- one line, never a secret
        resources_seen INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX ix_polls_provider_time ON billing_polls (provider, started_ms);
    CREATE INDEX ix_polls_ok ON billing_polls (provider, outcome, finished_ms);

    -- One resource (or the account) as the provider billed it at one poll.
    CREATE TABLE billing_samples (
        id INTEGER PRIMARY KEY,
        poll_id INTEGER NOT NULL REFERENCES billing_polls(id),
        provider TEXT NOT NULL,
        account TEXT NOT NULL,
        resource_id TEXT NOT NULL,      -- namespaced by kind: 'vm:318442', 'volume:91877'
        resource_kind TEXT NOT NULL,    -- vm, volume, account, ...
        tier TEXT,
        observed_ms INTEGER NOT NULL,   -- when spotctl received the response
        provider_ts TEXT,               -- the provider's own timestamp, verbatim, when it gives one
        rate_micros_per_h INTEGER,      -- the provider's current rate, never used for spend
        cumulative_micros INTEGER,      -- the provider's running total (see cumulative_kind)
        cumulative_kind TEXT NOT NULL,  -- resource_total | account_total | balance_derived | estimate
        created_ms INTEGER,             -- resource creation time, when the provider says
        state TEXT,                     -- the provider's state string (ACTIVE, HIBERNATED, ...)
        spot INTEGER,                   -- 1 spot, 0 on-demand, NULL unknown
        balance_micros INTEGER,         -- account rows: the prepaid balance
        payload_sha256 TEXT NOT NULL,   -- hash of the raw response(s) this sample came from
        UNIQUE (provider, account, resource_id, observed_ms)
    );
    CREATE INDEX ix_samples_series ON billing_samples
        (provider, account, resource_id, observed_ms);
    CREATE INDEX ix_samples_time ON billing_samples (observed_ms);

    -- One row per billing series (provider, account, resource): a catalogue kept in the same
    -- transaction as the samples, so that window queries find their series without a scan.
    CREATE TABLE billing_series (
        provider TEXT NOT NULL,
        account TEXT NOT NULL,
        resource_id TEXT NOT NULL,
        resource_kind TEXT NOT NULL,
        cumulative_kind TEXT NOT NULL,
        tier TEXT,
        created_ms INTEGER,
        first_ms INTEGER NOT NULL,
        last_ms INTEGER NOT NULL,
        last_state TEXT,
        PRIMARY KEY (provider, account, resource_id)
    ) WITHOUT ROWID;

    -- Money added to a prepaid balance that is not spend (top-ups, vouchers, refunds).
    CREATE TABLE credit_events (
        provider TEXT NOT NULL,
        account TEXT NOT NULL,
        event_id TEXT NOT NULL,
        occurred_ms INTEGER NOT NULL,
        amount_micros INTEGER NOT NULL,
        kind TEXT NOT NULL,             -- payment, auto_topup, voucher, refund, inferred
        confirmed INTEGER NOT NULL,     -- 0 for rises seen only in the balance
        PRIMARY KEY (provider, account, event_id)
    );

    -- A cumulative that went down, or other provider oddities. Shown, never counted as refunds.
    CREATE TABLE billing_anomalies (
        id INTEGER PRIMARY KEY,
        provider TEXT NOT NULL,
        account TEXT NOT NULL,
        resource_id TEXT NOT NULL,
        observed_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,             -- cumulative_decreased, ...
        previous_micros INTEGER,
        current_micros INTEGER,
        detail TEXT,
        UNIQUE (provider, account, resource_id, observed_ms, kind)
    );
    CREATE INDEX ix_anomalies_time ON billing_anomalies (observed_ms);

    -- One row per gateway request.
    CREATE TABLE usage (
        id TEXT PRIMARY KEY,            -- request id
        started_ms INTEGER NOT NULL,
        completed_ms INTEGER NOT NULL,  -- tokens count in the window holding this time
        key_id TEXT,
        tier TEXT,
        model TEXT,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,           -- ok, client_cancelled, upstream_error, ... or an error code
        http_status INTEGER,
        latency_ms INTEGER,
        ttft_ms INTEGER,
        stream INTEGER NOT NULL DEFAULT 0,
        tokens_estimated INTEGER NOT NULL DEFAULT 0  -- 0: the engine reported them
    );
    CREATE INDEX ix_usage_completed ON usage (completed_ms);

    -- Per-minute, per-tier rollup of usage, kept in the same transaction as each usage insert,
    -- so that a window's tokens cost O(minutes in window), not O(requests in ledger).
    CREATE TABLE usage_minutes (
        minute_ms INTEGER NOT NULL,
        tier TEXT NOT NULL,             -- '' when no tier served the request
        requests INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        estimated_requests INTEGER NOT NULL,
        PRIMARY KEY (minute_ms, tier)
    ) WITHOUT ROWID;

    -- The fleet journal: every change, with phase durations.
    CREATE TABLE fleet_events (
        id INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        tier TEXT NOT NULL,
        event TEXT NOT NULL,            -- launching, launched, ready, hibernating, hibernated,
                                        -- waking, woke, preempted, fell_back, returned_to_spot,
                                        -- down, failed
        operation_id TEXT,              -- groups the events of one operation (resumable)
        capacity TEXT,                  -- spot | on-demand
        cloud TEXT,
        region TEXT,
        resource_id TEXT,               -- the billing resource id this tier runs on
        endpoint TEXT,
        phases_json TEXT,               -- {"provisioning": 41.2, "setup": 3.0, ...} in seconds
        detail TEXT
    );
    CREATE INDEX ix_events_tier_time ON fleet_events (tier, ts_ms);

    -- Gateway API keys: only the SHA-256 of the key is stored.
    CREATE TABLE api_keys (
        name TEXT PRIMARY KEY,
        key_sha256 TEXT NOT NULL UNIQUE,
        created_ms INTEGER NOT NULL,
        revoked_ms INTEGER,
        daily_budget_micros INTEGER
    );

    -- Last request per tier (for the idle policy), written by the gateway.
    CREATE TABLE tier_activity (
        tier TEXT PRIMARY KEY,
        last_request_ms INTEGER NOT NULL
    );
    """,
    # 1 -> 2 (gateway, issue 11 §4 and issue 15): open requests per gateway process and tier,
    # and the per-key usage rollup the budget gate reads.
    """
    -- One row per gateway process (and worker) and tier: requests in flight now, the latest
    -- request (start or completion), and when the process last wrote (its heartbeat). The
    -- fleet never hibernates a tier with open requests (spotctl.ledger.usage.open_requests).
    CREATE TABLE gateway_tiers (
        gateway_id TEXT NOT NULL,
        tier TEXT NOT NULL,
        in_flight INTEGER NOT NULL,
        last_request_ms INTEGER,
        heartbeat_ms INTEGER NOT NULL,
        PRIMARY KEY (gateway_id, tier)
    );
    CREATE INDEX ix_gateway_tiers_tier ON gateway_tiers (tier, heartbeat_ms);

    -- Per-minute, per-key rollup of usage, kept in the same transaction as each usage insert:
    -- the gate's per-key budgets cost O(minutes × keys), not O(requests today).
    CREATE TABLE usage_key_minutes (
        minute_ms INTEGER NOT NULL,
        key_id TEXT NOT NULL,           -- '' when the request had no key
        requests INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        PRIMARY KEY (minute_ms, key_id)
    );
    INSERT INTO usage_key_minutes (minute_ms, key_id, requests, prompt_tokens, completion_tokens)
        SELECT completed_ms - completed_ms % 60000, coalesce(key_id, ''), count(*),
               sum(prompt_tokens), sum(completion_tokens)
        FROM usage GROUP BY completed_ms - completed_ms % 60000, coalesce(key_id, '');
    """,
    # 2 -> 3: views for people querying the ledger by hand (sqlite3 spotctl.db). Portable SQL;
    # times stay epoch ms and money micro-dollars, as in the tables, e.g. in sqlite3:
    #   SELECT datetime(day_ms / 1000, 'unixepoch') AS day, resource_id, spend_micros / 1e6
    #   FROM spend_per_resource_day ORDER BY day_ms;
    """
    CREATE VIEW spend_per_resource_hour AS
    -- Spend per billing resource per UTC hour: the growth of the resource's running total
    -- between consecutive samples, counted in the hour of the later sample. A total that went
    -- down is held at its high-water mark (an anomaly, never a refund), so growth is never
    -- negative; the first sample of a series adds nothing (what came before it is unknown).
    -- Estimate-only samples are left out: they are not invoice-true. For hand queries:
    -- `spotctl cost` splits growth exactly at window edges and reports dark time.
    SELECT provider, account, resource_id, resource_kind, tier, cumulative_kind,
           observed_ms - observed_ms % 3600000 AS hour_ms,
           sum(growth_micros) AS spend_micros,
           count(*) AS samples
    FROM (
        SELECT provider, account, resource_id, resource_kind, tier, cumulative_kind,
               observed_ms,
               CASE WHEN prev_high IS NULL OR cumulative_micros <= prev_high THEN 0
                    ELSE cumulative_micros - prev_high END AS growth_micros
        FROM (
            SELECT provider, account, resource_id, resource_kind, tier, cumulative_kind,
                   observed_ms, cumulative_micros,
                   max(cumulative_micros) OVER (
                       PARTITION BY provider, account, resource_id ORDER BY observed_ms
                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_high
            FROM billing_samples
            WHERE cumulative_micros IS NOT NULL AND cumulative_kind <> 'estimate'
        ) AS ordered
    ) AS growth
    GROUP BY provider, account, resource_id, resource_kind, tier, cumulative_kind,
             observed_ms - observed_ms % 3600000;

    CREATE VIEW spend_per_resource_day AS
    -- spend_per_resource_hour summed per UTC day.
    SELECT provider, account, resource_id, resource_kind, tier, cumulative_kind,
           hour_ms - hour_ms % 86400000 AS day_ms,
           sum(spend_micros) AS spend_micros,
           sum(samples) AS samples
    FROM spend_per_resource_hour
    GROUP BY provider, account, resource_id, resource_kind, tier, cumulative_kind,
             hour_ms - hour_ms % 86400000;

    CREATE VIEW usage_per_key_day AS
    -- Gateway usage per API key (api_keys.name; '' when the request had no key) per UTC day,
    -- counted when each request completed; from the per-minute rollup usage_key_minutes.
    SELECT key_id,
           minute_ms - minute_ms % 86400000 AS day_ms,
           sum(requests) AS requests,
           sum(prompt_tokens) AS prompt_tokens,
           sum(completion_tokens) AS completion_tokens
    FROM usage_key_minutes
    GROUP BY key_id, minute_ms - minute_ms % 86400000;
    """,
    # 3 -> 4 (fleet, issue 11 §2): each journal entry names its operation's kind, so a
    # restarted daemon knows what a half-done operation was for (a `draining` of a down, of a
    # hibernation, ...); and the rate the provider quoted at launch (an estimate of price,
    # never spend: the billing poller compares the billed rate with it).
    """
    ALTER TABLE fleet_events ADD COLUMN operation TEXT;  -- up, wake, hibernate, down, ...
    ALTER TABLE fleet_events ADD COLUMN quoted_rate_micros_per_h INTEGER;
    CREATE INDEX ix_events_operation ON fleet_events (operation_id);
    """,
    # 4 -> 5: capacity measurements (`spotctl bench`): saturated output tokens/s per tier.
    """
    CREATE TABLE bench_runs (
        id INTEGER PRIMARY KEY,
        tier TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        finished_ms INTEGER NOT NULL,
        model TEXT,                      -- the model the tier served
        engine_version TEXT,             -- e.g. vllm 0.11.0 (NULL when unknown)
        accelerator TEXT,                -- e.g. H100:1 or the provider flavor
        output_tokens_per_s REAL NOT NULL,  -- saturated output tokens/s within the TTFT SLO
        concurrency INTEGER NOT NULL,    -- concurrent streams at that throughput
        slo_ttft_ms INTEGER NOT NULL,    -- the TTFT SLO the ramp stopped at
        slo_broken INTEGER NOT NULL,     -- 1: the ramp went past the SLO (saturation found);
                                         -- 0: it ended first, so capacity is at least this
        ttft_p50_ms REAL, ttft_p90_ms REAL, ttft_p99_ms REAL,
        itl_p50_ms REAL, itl_p90_ms REAL, itl_p99_ms REAL,
        requests INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        mix_json TEXT NOT NULL,          -- the prompt/output mix used
        steps_json TEXT NOT NULL         -- one entry per concurrency step
    );
    CREATE INDEX ix_bench_tier_time ON bench_runs (tier, finished_ms);
    """,
    # 5 -> 6 (issue 14) leases: one holder at a time per name (a daemon acting on a tier), with a
    # fencing token that grows with each new holder (spotctl.ledger.coordination).
    """
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,          -- 'fleet:<tier>', ...
        holder TEXT NOT NULL,           -- host:pid:random of the process holding it
        token INTEGER NOT NULL,         -- fencing token: +1 for every new holder
        acquired_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL
    );
    """,
    # 6 -> 7 (econ): bench latencies as integer microseconds (``*_us``): every ``*_ms`` column
    # is an integer epoch/duration in ms (ledger check), and 4->5 stored them as REAL.
    """
    CREATE TABLE bench_runs_v7 (
        id INTEGER PRIMARY KEY,
        tier TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        finished_ms INTEGER NOT NULL,
        model TEXT,
        engine_version TEXT,
        accelerator TEXT,
        output_tokens_per_s REAL NOT NULL,
        concurrency INTEGER NOT NULL,
        slo_ttft_ms INTEGER NOT NULL,
        slo_broken INTEGER NOT NULL,
        ttft_p50_us INTEGER, ttft_p90_us INTEGER, ttft_p99_us INTEGER,
        itl_p50_us INTEGER, itl_p90_us INTEGER, itl_p99_us INTEGER,
        requests INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        mix_json TEXT NOT NULL,
        steps_json TEXT NOT NULL
    );
    INSERT INTO bench_runs_v7 (id, tier, started_ms, finished_ms, model, engine_version,
        accelerator, output_tokens_per_s, concurrency, slo_ttft_ms, slo_broken, ttft_p50_us,
        ttft_p90_us, ttft_p99_us, itl_p50_us, itl_p90_us, itl_p99_us, requests, errors,
        prompt_tokens, output_tokens, mix_json, steps_json)
        SELECT id, tier, started_ms, finished_ms, model, engine_version, accelerator,
        output_tokens_per_s, concurrency, slo_ttft_ms, slo_broken,
        CAST(round(ttft_p50_ms * 1000) AS INTEGER), CAST(round(ttft_p90_ms * 1000) AS INTEGER),
        CAST(round(ttft_p99_ms * 1000) AS INTEGER), CAST(round(itl_p50_ms * 1000) AS INTEGER),
        CAST(round(itl_p90_ms * 1000) AS INTEGER), CAST(round(itl_p99_ms * 1000) AS INTEGER),
        requests, errors, prompt_tokens, output_tokens, mix_json, steps_json FROM bench_runs;
    DROP TABLE bench_runs;
    ALTER TABLE bench_runs_v7 RENAME TO bench_runs;
    CREATE INDEX ix_bench_runs_tier_time ON bench_runs (tier, finished_ms);
    """,
    # 7 -> 8 (econ, issue 14 §4 bench): catalogues so that a window's accounting reads
    # O(state changes + hours) rows instead of every sample and every minute of the window
    # (`cost --window 30d` on a 90-day ledger), in a few range scans instead of one index seek
    # per series and bucket. Each is written in the same transaction as the rows it summarises
    # (spotctl.ledger.queries.catalogue_samples / roll_up_hours) and verified by
    # `spotctl ledger check`.
    """
    -- The last sample (with a running total) of each billing series in each UTC clock hour,
    -- the hour (hour_ms, hour_ms + 3600000] (a sample on the hour closes the hour before it,
    -- like accounting's buckets): a copy of that sample's figures, so the points of hourly
    -- buckets over a month are one range scan per series. Never used for spend on its own:
    -- spend is still the growth of the provider's running total between samples.
    CREATE TABLE billing_series_hours (
        provider TEXT NOT NULL,
        account TEXT NOT NULL,
        resource_id TEXT NOT NULL,
        hour_ms INTEGER NOT NULL,
        observed_ms INTEGER NOT NULL,
        cumulative_micros INTEGER NOT NULL,
        state TEXT,
        spot INTEGER,
        rate_micros_per_h INTEGER,
        PRIMARY KEY (provider, account, resource_id, hour_ms)
    ) WITHOUT ROWID;
    INSERT INTO billing_series_hours (provider, account, resource_id, hour_ms, observed_ms,
                                      cumulative_micros, state, spot, rate_micros_per_h)
        SELECT s.provider, s.account, s.resource_id, l.hour_ms, s.observed_ms,
               s.cumulative_micros, s.state, s.spot, s.rate_micros_per_h
        FROM billing_samples s JOIN (
            SELECT provider, account, resource_id,
                   observed_ms - 1 - (observed_ms - 1) % 3600000 AS hour_ms,
                   max(observed_ms) AS last_ms
            FROM billing_samples WHERE cumulative_micros IS NOT NULL
            GROUP BY provider, account, resource_id, observed_ms - 1 - (observed_ms - 1) % 3600000
        ) AS l ON s.provider = l.provider AND s.account = l.account
              AND s.resource_id = l.resource_id AND s.observed_ms = l.last_ms;

    -- Every change of a billing series' state or spot flag: a sample (with a running total)
    -- whose (state, spot) differs from the previous such sample of its series. Accounting
    -- splits spend by capacity at these points without scanning the window's samples. May
    -- hold a row that is no longer a change (a sample written late, between two others, can
    -- end a change): an extra point never alters a figure; a missing one would (ledger check).
    CREATE TABLE billing_state_changes (
        provider TEXT NOT NULL,
        account TEXT NOT NULL,
        resource_id TEXT NOT NULL,
        observed_ms INTEGER NOT NULL,   -- the first sample of the new (state, spot)
        PRIMARY KEY (provider, account, resource_id, observed_ms)
    ) WITHOUT ROWID;
    CREATE INDEX ix_state_changes_time ON billing_state_changes (observed_ms);
    INSERT INTO billing_state_changes (provider, account, resource_id, observed_ms)
        SELECT provider, account, resource_id, observed_ms FROM (
            SELECT provider, account, resource_id, observed_ms, state, spot,
                   LAG(observed_ms) OVER w AS prev_ms, LAG(state) OVER w AS prev_state,
                   LAG(spot) OVER w AS prev_spot
            FROM billing_samples WHERE cumulative_micros IS NOT NULL
            WINDOW w AS (PARTITION BY provider, account, resource_id ORDER BY observed_ms)
        ) AS s
        WHERE prev_ms IS NOT NULL
          AND (state IS DISTINCT FROM prev_state OR spot IS DISTINCT FROM prev_spot);

    -- Per-hour, per-tier rollup of usage_minutes (UTC clock hours), rewritten from the minutes
    -- of each hour a usage insert touches, in the same transaction: a month's tokens by hourly
    -- bucket cost O(hours). busy_minutes: minutes of the hour in which a request completed
    -- (60: the whole hour was busy), for the idle share at minute resolution.
    CREATE TABLE usage_hours (
        hour_ms INTEGER NOT NULL,
        tier TEXT NOT NULL,             -- '' when no tier served the request
        requests INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        estimated_requests INTEGER NOT NULL,
        busy_minutes INTEGER NOT NULL,
        PRIMARY KEY (hour_ms, tier)
    ) WITHOUT ROWID;
    INSERT INTO usage_hours (hour_ms, tier, requests, prompt_tokens, completion_tokens,
                             estimated_requests, busy_minutes)
        SELECT minute_ms - minute_ms % 3600000, tier, sum(requests), sum(prompt_tokens),
               sum(completion_tokens), sum(estimated_requests),
               sum(CASE WHEN requests > 0 THEN 1 ELSE 0 END)
        FROM usage_minutes GROUP BY minute_ms - minute_ms % 3600000, tier;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
