-- Named queries of the PostgreSQL stores. Each starts with a `-- name: <name>`
-- line; `{schema}` is replaced by the quoted schema name when loaded.
-- Parameters are psycopg's %(name)s placeholders; arrays are sent in binary
-- (%(name)b), which spares psycopg quoting every element.

-- name: bootstrap
-- Run under the migration lock before any migration.
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migration_lock
SELECT pg_advisory_xact_lock(%(lock)s);

-- name: applied_migrations
SELECT version FROM {schema}.schema_migrations ORDER BY version;

-- name: record_migration
INSERT INTO {schema}.schema_migrations (version, name) VALUES (%(version)s, %(name)s);

-- name: has_migrations_table
SELECT to_regclass(%(table)s) IS NOT NULL;

-- name: lock_ordering_keys
-- Serialises the writers of one (destination, ordering_key) until commit:
-- enqueues, so that `seq` order per key is also commit order (a claim that
-- sees a delivery also sees every older one of its key), and the statements
-- that let the next delivery of a key go (0003). Taken in one order, before
-- the statement that writes, so that two writers of several keys never wait
-- for each other in a circle.
SELECT pg_advisory_xact_lock(k.lock)
FROM (SELECT DISTINCT {schema}.ordering_key_lock(u.destination, u.ordering_key) AS lock
      FROM unnest(%(destinations)b::text[], %(keys)b::text[]) AS u(destination, ordering_key)
     ) AS k
ORDER BY k.lock;

-- name: lock_keys_of
-- lock_ordering_keys for the current keys of the listed deliveries (those
-- that are unfinished and have one) and the keys they move to (keys, one
-- per id, NULL for none: a corrected or edited event's), all in one order
SELECT pg_advisory_xact_lock(k.lock)
FROM (SELECT DISTINCT {schema}.ordering_key_lock(d.destination, d.ordering_key) AS lock
      FROM {schema}.deliveries AS d
      WHERE d.id = ANY(%(ids)b::text[])
        AND d.ordering_key IS NOT NULL
        AND d.status IN ('pending', 'in_flight', 'retry_scheduled', 'needs_action')
      UNION
      SELECT {schema}.ordering_key_lock(d.destination, u.ordering_key)
      FROM unnest(%(ids)b::text[], %(keys)b::text[]) AS u(id, ordering_key)
      JOIN {schema}.deliveries AS d ON d.id = u.id
      WHERE u.ordering_key IS NOT NULL) AS k
ORDER BY k.lock;

-- name: keys_handled
-- Sent before complete, in its transaction: the complete statement lets the
-- next delivery of each key it finishes go itself, so the per-row trigger
-- of 0003 stands aside in this transaction.
SELECT set_config('resilient_sync.keys_handled', 'on', true);

-- name: by_id_settings
-- Sent before complete and extend_leases, in their transaction: each finds
-- the deliveries it is given by their ids. The planner, which believes few
-- deliveries are in flight (true) and misjudges how many are open (a burst
-- before autovacuum analysed it, or a count analysed while few were in
-- flight), found the batch by reading every open delivery through a bitmap
-- of deliveries_claimable, or the whole table, and kept the 100 in flight:
-- 11 ms a batch at 20,000 queued, growing with the queue. Hash and merge
-- joins would need such a scan; without them, each is one lookup in the
-- primary key.
SELECT set_config('jit', 'off', true),
       set_config('enable_seqscan', 'off', true),
       set_config('enable_bitmapscan', 'off', true),
       set_config('enable_hashjoin', 'off', true),
       set_config('enable_mergejoin', 'off', true);

-- name: read_committed
-- the statements that let a key's next delivery go must see every commit
-- before their lock (0003)
SET TRANSACTION ISOLATION LEVEL READ COMMITTED;

-- name: enqueue
-- Insert new deliveries (a repeated id or (event id, destination) is skipped)
-- and count those that arrive already finished (an import).
WITH inserted AS (
    INSERT INTO {schema}.deliveries (
        id, seq, event_id, destination, ordering_key, event, status, idempotency_key,
        attempts, next_attempt_at, last_error, error_category, result, created_at,
        updated_at, lease_token, lease_owner, lease_expires_at)
    SELECT i.id, nextval('{schema}.delivery_seq'), i.event_id, i.destination, i.ordering_key,
           i.event::json, i.status, i.idempotency_key, i.attempts, i.next_attempt_at,
           i.last_error::json, i.error_category, i.result::json, i.created_at, i.updated_at,
           i.lease_token, i.lease_owner, i.lease_expires_at
    FROM (
        SELECT *
        FROM unnest(
            %(ids)b::text[], %(event_ids)b::text[], %(destinations)b::text[],
            %(ordering_keys)b::text[], %(events)b::text[], %(statuses)b::text[],
            %(idempotency_keys)b::text[], %(attempts)b::integer[],
            %(next_attempt_at)b::timestamptz[], %(last_errors)b::text[],
            %(error_categories)b::text[], %(results)b::text[], %(created_at)b::timestamptz[],
            %(updated_at)b::timestamptz[], %(lease_tokens)b::bigint[], %(lease_owners)b::text[],
            %(lease_expires_at)b::timestamptz[]
        ) WITH ORDINALITY AS u(
            id, event_id, destination, ordering_key, event, status, idempotency_key, attempts,
            next_attempt_at, last_error, error_category, result, created_at, updated_at,
            lease_token, lease_owner, lease_expires_at, ord)
        ORDER BY u.ord
    ) AS i
    ON CONFLICT DO NOTHING
    RETURNING id, seq, destination, status
),
counted AS (
    INSERT INTO {schema}.finished_counts AS f (destination, status, shard, count)
    SELECT destination, status, (pg_backend_pid() %% 16)::smallint, count(*)
    FROM inserted
    WHERE status IN ('succeeded', 'resolved', 'discarded')
    GROUP BY destination, status
    ON CONFLICT (destination, status, shard) DO UPDATE SET count = f.count + EXCLUDED.count
)
SELECT id, seq FROM inserted;

-- name: enqueue_and_notify
-- `enqueue` with these lines in place of its last one (the store joins
-- them), for an enqueue that is its own transaction and has no ordering key
-- to lock: one statement, which also wakes the workers (pg_notify, sent at
-- its commit) when it inserted a row. One round trip in autocommit mode; as
-- BEGIN, INSERT, NOTIFY and COMMIT in a pipeline, a one-event submit took
-- 2.2-2.6 ms and 1.2-1.3 ms of CPU here, against 1.25-2.0 and 0.5-0.9.
, notified AS (
    SELECT pg_notify(%(channel)s, '') FROM (SELECT 1 FROM inserted LIMIT 1) AS any_row
)
SELECT id, seq FROM inserted CROSS JOIN (SELECT count(*) FROM notified) AS woken;

-- name: save_cursor
INSERT INTO {schema}.cursors (source, value) VALUES (%(source)s, %(value)s)
ON CONFLICT (source) DO UPDATE SET value = EXCLUDED.value;

-- name: notify
SELECT pg_notify(%(channel)s, '');

-- name: claim_settings
-- Sent before the claim, in its transaction. The claim walks each
-- destination's deliveries through an index with a LIMIT, which costs a few
-- milliseconds, but the planner prices each walk at what the whole index
-- could cost, times every destination, and above jit_above_cost (100,000
-- by default) it compiled the claim to machine code first: 45 ms of JIT
-- for a claim that ran in 2 ms. And with every queued delivery under one
-- ordering key (the statistics say so once analysed), it answered "is an
-- older delivery of this key unfinished?" by a sequential scan that would
-- stop at the first match, but the oldest delivery of a key has none, so
-- it read the whole table: 20 ms per candidate at 100,000 rows. Every
-- question the claim asks has an index; it never scans a table.
-- (The claim's commit waits for its fsync: committed without it, a claim
-- lost to a crash of the server would take the lease-token sequence's
-- advance with it, and a new claim could be handed the token of a lost one
-- whose worker still runs, which fencing cannot tell apart.)
-- The claim itself is prepared once per connection (its text is long:
-- parsing it at every call cost 0.4 ms of a 2.4 ms claim) and planned for
-- the values at hand at every call all the same (plan_cache_mode: see the
-- claim).
SELECT set_config('jit', 'off', true), set_config('enable_seqscan', 'off', true),
       set_config('plan_cache_mode', 'force_custom_plan', true);

-- name: relaxed_commit
-- Sent first in the transactions of idempotency begin and release: their
-- commit returns without waiting for the WAL to reach the disk (an fsync,
-- on the path from submit to delivery). What a crash of the server can
-- undo is a lock on a key not taken (its delivery is in flight under a
-- durable claim, so no other worker gets it before its lease ends, and
-- finish completes the key whatever the lock) or a lock not dropped (held
-- until its end, the lease's, as after a worker's crash). No more than that
-- can be lost: PostgreSQL writes the WAL in order, so the durable commit
-- that records an outcome makes every lock before it durable too. The
-- SQLite store commits the same steps without an fsync.
SELECT set_config('synchronous_commit', 'off', true);

-- name: claim
-- Lease up to %(limit)s due deliveries, oldest first, and write a
-- "lease_expired" audit record for each one reclaimed from a worker whose
-- lease ran out. A waiting delivery with an ordering key is due only if no
-- older delivery of its (destination, key) is unfinished and none is in
-- flight (an expired one is reclaimed first); rows another claimer holds are
-- skipped, never waited for.
-- Each destination asked for (or, for all of them, each destination with a
-- claimable delivery, found by one descent of each claim index per name)
-- that is neither paused nor held gives its oldest due deliveries from each
-- of its two claim indexes (0005), which leave out those waiting behind
-- their key (key_waits):
--   deliveries_claim_ready: those due when last written (a new delivery,
--   whose due time is its creation; one handed back; an operator's retry),
--   in seq order (still checked against now, for a writer whose clock ran
--   ahead of this claimer's);
--   deliveries_claim_timed: the others (a retry scheduled for later, one
--   in flight until its lease ends), in the order they fall due, read only
--   up to now: one due later is never read (the walk in seq order read the
--   100,000 retries scheduled for later in front of the due ones at every
--   claim: 2,900 pages and 27 ms an empty claim). Of those due, it reads the
--   1,000 (or %(limit)s, if more) that fell due first and takes the oldest
--   of them, a row at a time by seq: oldest first, unless more than 1,000
--   of a destination's are due at once (after an outage), when an older one
--   due later may wait for a later claim. (Reading the 1,000 costs 450 to
--   1,400 pages, against 100 for a claim of 100 from the ready index.)
-- The rows of all of them are sorted by seq and cut to %(limit)s. No plan
-- has to read or sort much more than it hands out, whatever the planner's
-- statistics say (a walk of all destinations at once was read whole and
-- sorted while the statistics said the queue was nearly empty: 175 ms a
-- claim at 100,000 queued, against 3 ms). The conditions on the rows are
-- written as the indexes' predicates are, so that the planner sees that
-- they apply; they are asked of the row that is locked (d), which a claim
-- that committed meanwhile may have changed.
-- PostgreSQL plans it for the values at hand at every call (about 1 ms):
-- the store prepares it once per connection but sends it after
-- plan_cache_mode = force_custom_plan (claim_settings), so no generic plan
-- is ever used. A reused generic plan, tried with the limit and the names
-- written into the text, could not estimate how many rows are due (the
-- time is a parameter): at depth it costed the claim at the whole index
-- and JIT-compiled it, 1.3 s a claim at 100k waiting rows against 10 ms
-- planned per call. (It was sent unprepared before, which also planned it
-- at every call but parsed its text every time too.)
WITH RECURSIVE ready_destinations(name) AS (
    (SELECT d.destination FROM {schema}.deliveries AS d
     WHERE %(all_destinations)s
       AND d.status IN ('pending', 'retry_scheduled')
       AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= d.updated_at)
       AND NOT d.key_waits
     ORDER BY d.destination
     LIMIT 1)
    UNION ALL
    SELECT (SELECT d.destination FROM {schema}.deliveries AS d
            WHERE d.status IN ('pending', 'retry_scheduled')
              AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= d.updated_at)
              AND NOT d.key_waits
              AND d.destination > o.name
            ORDER BY d.destination
            LIMIT 1)
    FROM ready_destinations AS o
    WHERE o.name IS NOT NULL
),
timed_destinations(name) AS (
    (SELECT d.destination FROM {schema}.deliveries AS d
     WHERE %(all_destinations)s
       AND d.status IN ('pending', 'retry_scheduled', 'in_flight')
       AND (d.status = 'in_flight' OR d.next_attempt_at > d.updated_at)
       AND NOT d.key_waits
     ORDER BY d.destination
     LIMIT 1)
    UNION ALL
    SELECT (SELECT d.destination FROM {schema}.deliveries AS d
            WHERE d.status IN ('pending', 'retry_scheduled', 'in_flight')
              AND (d.status = 'in_flight' OR d.next_attempt_at > d.updated_at)
              AND NOT d.key_waits
              AND d.destination > o.name
            ORDER BY d.destination
            LIMIT 1)
    FROM timed_destinations AS o
    WHERE o.name IS NOT NULL
),
names AS (
    SELECT n.name
    FROM (SELECT name FROM ready_destinations WHERE name IS NOT NULL
          UNION
          SELECT name FROM timed_destinations WHERE name IS NOT NULL
          UNION
          SELECT unnest(%(destinations)b::text[])) AS n
    WHERE NOT EXISTS (
        SELECT 1 FROM {schema}.destinations AS x
        WHERE x.name = n.name AND (x.paused OR x.hold_until > %(now)s))
),
candidates AS (
    SELECT c.*
    FROM (
        SELECT r.*
        FROM names AS n CROSS JOIN LATERAL (
            -- ready: oldest first (due unless a writer's clock ran ahead of ours)
            SELECT d.id, d.seq, d.status AS old_status, d.attempts AS old_attempts,
                   d.lease_owner AS old_owner, d.lease_expires_at AS old_expires_at
            FROM {schema}.deliveries AS d
            WHERE d.destination = n.name
              AND d.status IN ('pending', 'retry_scheduled')
              AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= d.updated_at)
              AND NOT d.key_waits
              AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= %(now)s)
              AND (d.ordering_key IS NULL
                   -- the oldest unfinished delivery of its key (the first entry of the
                   -- key's index; asked as key_head_seq in 0003 asks it)
                   OR ((d.destination, d.ordering_key, d.seq) = (
                           SELECT o.destination, o.ordering_key, o.seq
                           FROM {schema}.deliveries AS o
                           WHERE (o.destination, o.ordering_key, o.seq)
                                 >= (d.destination, d.ordering_key, -1)
                             AND o.ordering_key IS NOT NULL
                             AND o.status IN ('pending', 'in_flight', 'retry_scheduled',
                                              'needs_action')
                           ORDER BY o.destination, o.ordering_key, o.seq
                           LIMIT 1)
                       AND NOT EXISTS (  -- another delivery of the key in flight, even if expired
                           -- ("ordering_key IS NOT NULL" lets the planner read the partial
                           -- index deliveries_one_in_flight_per_key, also when it hashes
                           -- this subquery; without it, it scanned the whole table)
                           SELECT 1 FROM {schema}.deliveries AS f
                           WHERE f.destination = d.destination
                             AND f.ordering_key = d.ordering_key
                             AND f.ordering_key IS NOT NULL
                             AND f.status = 'in_flight')))
            ORDER BY d.seq
            LIMIT %(limit)s
            FOR UPDATE OF d SKIP LOCKED
        ) AS r
        UNION ALL
        SELECT t.*
        FROM names AS n CROSS JOIN LATERAL (
            -- timed: of those due longest ago, the oldest: their seqs from the
            -- index, sorted, then each row by its seq
            SELECT x.*
            FROM (SELECT s.seq
                  FROM (SELECT e.seq
                        FROM {schema}.deliveries AS e
                        WHERE e.destination = n.name
                          AND e.status IN ('pending', 'retry_scheduled', 'in_flight')
                          AND (e.status = 'in_flight' OR e.next_attempt_at > e.updated_at)
                          AND NOT e.key_waits
                          AND CASE WHEN e.status = 'in_flight' THEN e.lease_expires_at
                                   ELSE e.next_attempt_at END <= %(now)s
                        ORDER BY CASE WHEN e.status = 'in_flight' THEN e.lease_expires_at
                                      ELSE e.next_attempt_at END,
                                 e.seq
                        LIMIT greatest(%(limit)s, 1000)) AS s
                  ORDER BY s.seq) AS due
            CROSS JOIN LATERAL (
                SELECT d.id, d.seq, d.status AS old_status, d.attempts AS old_attempts,
                       d.lease_owner AS old_owner, d.lease_expires_at AS old_expires_at
                FROM {schema}.deliveries AS d
                WHERE d.seq = due.seq
                  -- still due, if a claim that committed meanwhile changed it (one
                  -- condition, "IS TRUE": no index but the one of seq applies; planned
                  -- before the statistics were analysed, a walk of the timed index
                  -- for every seq read 500,000 pages)
                  AND (d.status IN ('pending', 'retry_scheduled', 'in_flight')
                       AND (d.status = 'in_flight' OR d.next_attempt_at > d.updated_at)
                       AND NOT d.key_waits
                       AND CASE WHEN d.status = 'in_flight' THEN d.lease_expires_at
                                ELSE d.next_attempt_at END <= %(now)s) IS TRUE
                  AND (d.ordering_key IS NULL
                       -- an expired in-flight delivery holds its key: it may always be
                       -- reclaimed
                       OR d.status = 'in_flight'
                       -- the oldest unfinished delivery of its key, none in flight (as
                       -- above)
                       OR ((d.destination, d.ordering_key, d.seq) = (
                               SELECT o.destination, o.ordering_key, o.seq
                               FROM {schema}.deliveries AS o
                               WHERE (o.destination, o.ordering_key, o.seq)
                                     >= (d.destination, d.ordering_key, -1)
                                 AND o.ordering_key IS NOT NULL
                                 AND o.status IN ('pending', 'in_flight', 'retry_scheduled',
                                                  'needs_action')
                               ORDER BY o.destination, o.ordering_key, o.seq
                               LIMIT 1)
                           AND NOT EXISTS (
                               SELECT 1 FROM {schema}.deliveries AS f
                               WHERE f.destination = d.destination
                                 AND f.ordering_key = d.ordering_key
                                 AND f.ordering_key IS NOT NULL
                                 AND f.status = 'in_flight')))
                FOR UPDATE OF d SKIP LOCKED
            ) AS x
            ORDER BY due.seq
            LIMIT %(limit)s
        ) AS t
    ) AS c
    ORDER BY c.seq
    LIMIT %(limit)s
),
claimed AS (
    UPDATE {schema}.deliveries AS t
    SET status = 'in_flight',
        attempts = t.attempts + 1,
        lease_token = nextval('{schema}.lease_tokens'),
        lease_owner = %(worker)s,
        lease_expires_at = %(lease_until)s,
        updated_at = %(now)s
    FROM candidates AS c
    WHERE t.id = c.id
    RETURNING t.id, t.seq, t.event, t.destination, t.status, t.idempotency_key, t.attempts,
              t.next_attempt_at, t.last_error, t.result, t.created_at, t.updated_at,
              t.lease_token, t.lease_owner, t.lease_expires_at,
              c.old_status, c.old_attempts, c.old_owner, c.old_expires_at
),
expired AS (
    INSERT INTO {schema}.audit (
        delivery_id, destination, action, actor, started_at, finished_at, number, outcome,
        reason, details)
    SELECT id, destination, 'lease_expired', 'worker:' || %(worker)s::text, %(now)s, %(now)s,
           old_attempts, 'in_flight',
           'the lease of ' || coalesce(old_owner, 'None') || ' expired at '
               || coalesce(to_char(old_expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
                           || CASE WHEN to_char(old_expires_at AT TIME ZONE 'UTC', 'US') = '000000'
                                   THEN '' ELSE to_char(old_expires_at AT TIME ZONE 'UTC', '.US') END
                           || '+00:00', 'None')
               || '; attempt ' || old_attempts
               || ' had no recorded outcome (worker crashed or stalled)',
           '{}'
    FROM claimed
    WHERE old_status = 'in_flight'
    ORDER BY seq
)
SELECT id, seq, event::text, destination, status, idempotency_key, attempts, next_attempt_at,
       last_error::text, result::text, created_at, updated_at, lease_token, lease_owner,
       lease_expires_at
FROM claimed
ORDER BY seq;

-- name: complete
-- Apply outcomes fenced by lease token, and the audit records of the applied
-- ones, in one statement. Returns the index (1-based) of each applied outcome
-- (and a NULL row when it notified listeners). The outcomes and the audit
-- records come as two JSON arrays of rows, one text parameter each: encoding
-- them is one call in C, where two dozen typed arrays were dumped value by
-- value in Python, and the round trip of a batch of 100 takes half as long.
-- The values that may be large (results, corrected events) come apart, as a
-- json array of texts beside the rows: a jsonb value holds at most 256 MB,
-- json up to 1 GB (as a typed array did), and each is parsed once. Times are
-- ISO 8601 in UTC, exact to the microsecond.
WITH c AS (
    SELECT u.e->>0 AS id, (u.e->>1)::bigint AS token, u.e->>2 AS status,
           (u.e->>3)::timestamptz AS finished_at, (u.e->>4)::timestamptz AS next_attempt_at,
           u.e->>5 AS error, u.e->>6 AS error_category, u.result, u.event,
           u.e->>7 AS ordering_key, u.e->>8 AS idempotency_key,
           (u.e->>9)::boolean AS count_attempt, u.ci
    FROM ROWS FROM (
        jsonb_array_elements(%(outcomes)s::jsonb),
        json_array_elements_text(%(results)s::json),
        json_array_elements_text(%(events)s::json)
    ) WITH ORDINALITY AS u(e, result, event, ci)
),
applied AS (
    UPDATE {schema}.deliveries AS t
    SET status = c.status,
        next_attempt_at = c.next_attempt_at,
        last_error = CASE WHEN c.error IS NULL AND c.status <> 'succeeded'
                          THEN t.last_error ELSE c.error::json END,
        error_category = CASE WHEN c.error IS NULL AND c.status <> 'succeeded'
                              THEN t.error_category ELSE c.error_category END,
        result = CASE WHEN c.status = 'succeeded' THEN c.result::json ELSE t.result END,
        event = coalesce(c.event::json, t.event),
        ordering_key = CASE WHEN c.event IS NULL THEN t.ordering_key ELSE c.ordering_key END,
        idempotency_key = coalesce(c.idempotency_key, t.idempotency_key),
        attempts = CASE WHEN c.count_attempt THEN t.attempts ELSE t.attempts - 1 END,
        lease_owner = NULL,
        lease_expires_at = NULL,
        updated_at = c.finished_at
    -- p: the delivery as it was before this statement (its ordering key)
    FROM c JOIN {schema}.deliveries AS p ON p.id = c.id
    -- (written "IS TRUE" so that the planner cannot read it as the predicate
    -- of deliveries_claimable and scan that index for the batch: each
    -- outcome is found by its id, whatever the statistics; see
    -- by_id_settings)
    WHERE t.id = c.id AND (t.status = 'in_flight') IS TRUE AND t.lease_token = c.token
    RETURNING c.ci, c.status, t.destination, t.id, t.ordering_key, p.ordering_key AS old_key
),
-- a delivery that finished (or moved to another key) lets the next one of its
-- key go (key_waits, 0003); the caller holds the keys' locks, so an enqueue of
-- the key committed before this statement began, and its snapshot has it
let_go AS (
    UPDATE {schema}.deliveries AS u SET key_waits = false
    FROM applied AS a
    WHERE a.old_key IS NOT NULL
      AND (a.status IN ('succeeded', 'resolved', 'discarded')
           OR a.ordering_key IS DISTINCT FROM a.old_key)
      -- the key's oldest unfinished delivery but the one that left (this
      -- statement's snapshot still shows it unfinished), asked as
      -- key_head_seq in 0003 asks it
      AND u.destination = a.destination
      AND u.ordering_key = a.old_key
      AND u.seq = (
          SELECT o.seq FROM {schema}.deliveries AS o
          WHERE (o.destination, o.ordering_key, o.seq) >= (a.destination, a.old_key, -1)
            AND o.ordering_key IS NOT NULL
            AND o.status IN ('pending', 'in_flight', 'retry_scheduled', 'needs_action')
            AND o.id <> a.id
          ORDER BY o.destination, o.ordering_key, o.seq
          LIMIT 1)
      AND u.key_waits
),
counted AS (
    INSERT INTO {schema}.finished_counts AS f (destination, status, shard, count)
    SELECT destination, status, (pg_backend_pid() %% 16)::smallint, count(*)
    FROM applied
    WHERE status IN ('succeeded', 'resolved', 'discarded')
    GROUP BY destination, status
    ON CONFLICT (destination, status, shard) DO UPDATE SET count = f.count + EXCLUDED.count
),
audited AS (
    INSERT INTO {schema}.audit (
        delivery_id, destination, action, actor, started_at, finished_at, number, outcome,
        reason, error, error_category, details)
    SELECT a.e->>1, a.e->>2, a.e->>3, a.e->>4, (a.e->>5)::timestamptz,
           (a.e->>6)::timestamptz, (a.e->>7)::integer, a.e->>8, a.e->>9,
           (a.e->>10)::json, a.e->>11, (a.e->>12)::json
    FROM jsonb_array_elements(%(records)s::jsonb) WITH ORDINALITY AS a(e, ord)
    -- (an array built once: without hash joins, "IN (SELECT ...)" compared
    -- every record with every applied outcome, extracting its index each time)
    WHERE (a.e->>0)::bigint = ANY (ARRAY(SELECT applied.ci FROM applied))
    ORDER BY a.ord
),
-- wake idle workers when a delivery was handed back or rescheduled
notified AS (
    SELECT pg_notify(%(channel)s, '')
    FROM (SELECT 1 FROM applied WHERE status IN ('pending', 'retry_scheduled') LIMIT 1) AS w
)
SELECT ci FROM applied
UNION ALL
SELECT NULL FROM notified;

-- name: insert_audit
-- The records come as one JSON array of rows, as in complete (index 0 unused).
INSERT INTO {schema}.audit (
    delivery_id, destination, action, actor, started_at, finished_at, number, outcome,
    reason, error, error_category, details)
SELECT a.e->>1, a.e->>2, a.e->>3, a.e->>4, (a.e->>5)::timestamptz,
       (a.e->>6)::timestamptz, (a.e->>7)::integer, a.e->>8, a.e->>9,
       (a.e->>10)::json, a.e->>11, (a.e->>12)::json
FROM jsonb_array_elements(%(records)s::jsonb) WITH ORDINALITY AS a(e, ord)
ORDER BY a.ord;

-- name: transition
-- Move the listed deliveries that are in one of the from statuses (and, when
-- guarded, still as the caller read them), keeping the finished counters.
WITH old AS (
    SELECT id, status AS old_status
    FROM {schema}.deliveries
    WHERE id = ANY(%(ids)b::text[]) AND status = ANY(%(from_status)b::text[])
      AND (NOT %(guarded)s OR (
          status = %(g_status)s::text AND attempts = %(g_attempts)s::integer
          AND lease_token = %(g_token)s::bigint AND updated_at = %(g_updated_at)s::timestamptz))
    FOR UPDATE
),
moved AS (
    UPDATE {schema}.deliveries AS t
    SET status = %(to_status)s,
        next_attempt_at = NULL,
        attempts = CASE WHEN %(reset_attempts)s THEN 0 ELSE t.attempts END,
        event = coalesce(%(event)s::json, t.event),
        ordering_key = CASE WHEN %(event)s::text IS NULL THEN t.ordering_key
                            ELSE %(ordering_key)s::text END,
        idempotency_key = coalesce(%(idempotency_key)s, t.idempotency_key),
        lease_owner = NULL,
        lease_expires_at = NULL,
        updated_at = %(now)s
    FROM old
    WHERE t.id = old.id
    RETURNING t.id, t.seq, t.event::text AS event, t.destination, t.status,
              t.idempotency_key, t.attempts, t.next_attempt_at, t.last_error::text AS last_error,
              t.result::text AS result, t.created_at, t.updated_at, t.lease_token,
              t.lease_owner, t.lease_expires_at, old.old_status
),
counted AS (
    INSERT INTO {schema}.finished_counts AS f (destination, status, shard, count)
    SELECT x.destination, x.status, (pg_backend_pid() %% 16)::smallint, sum(x.delta)
    FROM (
        SELECT destination, old_status AS status, -1 AS delta FROM moved
        WHERE old_status IN ('succeeded', 'resolved', 'discarded')
        UNION ALL
        SELECT destination, status, 1 FROM moved
        WHERE status IN ('succeeded', 'resolved', 'discarded')
    ) AS x
    GROUP BY x.destination, x.status
    ON CONFLICT (destination, status, shard) DO UPDATE SET count = f.count + EXCLUDED.count
)
SELECT id, seq, event, destination, status, idempotency_key, attempts, next_attempt_at,
       last_error, result, created_at, updated_at, lease_token, lease_owner, lease_expires_at
FROM moved;

-- name: set_destination
INSERT INTO {schema}.destinations AS s (
    name, paused, paused_reason, hold_until, hold_reason, updated_at)
VALUES (
    %(name)s,
    coalesce(%(paused)s::boolean, false),
    CASE WHEN %(paused)s::boolean THEN %(paused_reason)s::text END,
    %(hold_until)s::timestamptz,
    CASE WHEN %(hold_until)s::timestamptz IS NOT NULL THEN %(hold_reason)s::text END,
    %(now)s)
ON CONFLICT (name) DO UPDATE SET
    paused = coalesce(%(paused)s::boolean, s.paused),
    paused_reason = CASE WHEN %(paused)s::boolean IS NULL THEN s.paused_reason
                         WHEN %(paused)s::boolean THEN %(paused_reason)s::text END,
    hold_until = CASE WHEN %(hold_until)s::timestamptz > s.hold_until OR s.hold_until IS NULL
                      THEN coalesce(%(hold_until)s::timestamptz, s.hold_until)
                      ELSE s.hold_until END,
    hold_reason = CASE WHEN %(hold_until)s::timestamptz > s.hold_until
                            OR (s.hold_until IS NULL AND %(hold_until)s::timestamptz IS NOT NULL)
                       THEN %(hold_reason)s::text
                       ELSE s.hold_reason END,
    updated_at = %(now)s
RETURNING name, paused, paused_reason, hold_until, hold_reason, updated_at;

-- name: destinations
SELECT name, paused, paused_reason, hold_until, hold_reason, updated_at
FROM {schema}.destinations
ORDER BY name;

-- name: get
SELECT id, seq, event::text, destination, status, idempotency_key, attempts,
       next_attempt_at, last_error::text, result::text, created_at, updated_at,
       lease_token, lease_owner, lease_expires_at
FROM {schema}.deliveries
WHERE id = %(id)s;

-- name: ids_with_prefix
-- ids_with_prefix(): a range scan of the primary key; the left() test keeps
-- the answer exact whatever the collation
SELECT id FROM {schema}.deliveries
WHERE id >= %(low)s AND id < %(high)s AND left(id, %(length)s) = %(prefix)s
ORDER BY id LIMIT %(limit)s;

-- name: list
-- list(): this base, then the list_where_* fragments of the filters given,
-- then list_order (the store joins them; each is a constant)
SELECT id, seq, event::text, destination, status, idempotency_key, attempts,
       next_attempt_at, last_error::text, result::text, created_at, updated_at,
       lease_token, lease_owner, lease_expires_at
FROM {schema}.deliveries
WHERE seq > %(after)s

-- name: list_where_needs_action
-- status=[NEEDS_ACTION] alone: written out, so the operator queue's partial index applies
AND status = 'needs_action'

-- name: list_where_status
AND status = ANY(%(statuses)b::text[])

-- name: list_where_destination
AND destination = %(destination)s::text

-- name: list_where_category
AND error_category = %(category)s::text

-- name: list_where_since
AND updated_at >= %(since)s::timestamptz

-- name: list_where_until
AND updated_at < %(until)s::timestamptz

-- name: list_where_event_type
AND event->>'type' = %(event_type)s::text

-- name: list_where_search
AND (event_id ILIKE %(search)s::text OR event::text ILIKE %(search)s::text)

-- name: list_order
ORDER BY seq
LIMIT %(limit)s;

-- name: attempts
SELECT id, delivery_id, destination, action, actor, started_at, finished_at, number,
       outcome, reason, error::text, details::text
FROM {schema}.audit
WHERE delivery_id = %(id)s
ORDER BY id;

-- name: audit
SELECT id, delivery_id, destination, action, actor, started_at, finished_at, number,
       outcome, reason, error::text, details::text
FROM {schema}.audit
WHERE (%(since)s::timestamptz IS NULL OR finished_at >= %(since)s::timestamptz)
  AND (NOT %(errors_only)s OR error IS NOT NULL)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: get_cursor
SELECT value FROM {schema}.cursors WHERE source = %(source)s;

-- name: stats_open
-- the open deliveries through their partial indexes: the claimable ones and
-- the operator queue (the queue's depth, never the history)
SELECT destination, status, NULL::text, count(*)
FROM {schema}.deliveries
WHERE status IN ('pending', 'retry_scheduled', 'in_flight')
GROUP BY destination, status
UNION ALL
SELECT destination, status, error_category, count(*)
FROM {schema}.deliveries
WHERE status = 'needs_action'
GROUP BY destination, status, error_category;

-- name: stats_finished
-- the finished deliveries, counted by triggers as they finish (shards summed)
SELECT destination, status, sum(count)::bigint
FROM {schema}.finished_counts
GROUP BY destination, status
HAVING sum(count) > 0;

-- name: stats_oldest_waiting
-- the oldest waiting delivery: the lowest seq among the claimable ones
SELECT created_at FROM {schema}.deliveries
WHERE status IN ('pending', 'retry_scheduled', 'in_flight') AND status <> 'in_flight'
ORDER BY seq
LIMIT 1;

-- name: error_counts
-- failed attempts per time bucket and category in [since, until)
SELECT floor(extract(epoch FROM finished_at - %(since)s::timestamptz) / %(width)s)::bigint,
       error_category, count(*)
FROM {schema}.audit
WHERE error IS NOT NULL
  AND finished_at >= %(since)s::timestamptz AND finished_at < %(until)s::timestamptz
GROUP BY 1, 2
ORDER BY 1, 2;

-- name: purge
-- one batch of retention: finished deliveries last changed before %(before)s
-- with their audit records, and old records of actions on destinations
WITH victims AS (
    -- in submission order: the oldest first, so the scan rarely goes far
    SELECT id FROM {schema}.deliveries
    WHERE status IN ('succeeded', 'resolved', 'discarded') AND updated_at < %(before)s
    ORDER BY seq
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
gone_audit AS (
    DELETE FROM {schema}.audit WHERE delivery_id IN (SELECT id FROM victims)
),
gone_destination_audit AS (
    DELETE FROM {schema}.audit
    WHERE id IN (SELECT id FROM {schema}.audit
                 WHERE delivery_id IS NULL AND finished_at < %(before)s
                 LIMIT %(limit)s)
),
gone AS (
    DELETE FROM {schema}.deliveries WHERE id IN (SELECT id FROM victims)
    RETURNING destination, status
),
counted AS (
    INSERT INTO {schema}.finished_counts AS f (destination, status, shard, count)
    SELECT destination, status, (pg_backend_pid() %% 16)::smallint, -count(*)
    FROM gone
    GROUP BY destination, status
    ON CONFLICT (destination, status, shard) DO UPDATE SET count = f.count + EXCLUDED.count
)
SELECT count(*) FROM gone;

-- name: purge_count
SELECT count(*) FROM {schema}.deliveries
WHERE status IN ('succeeded', 'resolved', 'discarded') AND updated_at < %(before)s;

-- name: idempotency_purge
DELETE FROM {schema}.idempotency_keys
WHERE key IN (
    SELECT key FROM {schema}.idempotency_keys
    WHERE (state = 'completed' AND expires_at <= %(now)s)
       OR (state = 'in_progress' AND locked_until <= %(now)s)
    LIMIT %(limit)s)
RETURNING state;

-- name: database_time
SELECT clock_timestamp();

-- name: delivery_states
-- after a lost reply: what the listed deliveries look like now
SELECT id, status, lease_token, updated_at FROM {schema}.deliveries WHERE id = ANY(%(ids)b::text[]);

-- name: existing_ids
SELECT id, seq, event_id, destination, created_at
FROM {schema}.deliveries WHERE id = ANY(%(ids)b::text[]);

-- name: next_due_settings
-- Sent before next_due, in its transaction: as for the claim (see
-- claim_settings), no JIT and no sequential scan. next_due has no
-- parameter, so the plan PostgreSQL makes at its first run on a connection
-- is the one it would make every time; the store prepares it once and the
-- server keeps that plan until the tables' statistics change (planning it
-- at every idle poll cost 0.9 ms of 1.5).
SELECT set_config('jit', 'off', true), set_config('enable_seqscan', 'off', true);

-- name: next_due
-- The earliest time a delivery may become claimable without anyone acting:
-- per destination that is not paused (found as the claim finds them), the
-- due time of the first delivery the claim would take from each of its
-- claim indexes: the oldest of those due when written (its due time, none
-- if it has none: due now), and the first to fall due of the others (a due
-- time or a lease end). A held destination's deliveries count from the end
-- of the hold (in flight too: the claim passes over the destination until
-- then). Deliveries that wait for something other than time (a paused
-- destination, an older delivery of their ordering key) are left out, so an
-- idle worker does not spin on them. An idle worker asks this at every
-- empty claim: it reads a few entries per destination, however deep the
-- queue (before 0005 it read the oldest 1,000 open deliveries, and missed
-- one due sooner behind them).
WITH RECURSIVE ready_destinations(name) AS (
    (SELECT d.destination FROM {schema}.deliveries AS d
     WHERE d.status IN ('pending', 'retry_scheduled')
       AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= d.updated_at)
       AND NOT d.key_waits
     ORDER BY d.destination
     LIMIT 1)
    UNION ALL
    SELECT (SELECT d.destination FROM {schema}.deliveries AS d
            WHERE d.status IN ('pending', 'retry_scheduled')
              AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= d.updated_at)
              AND NOT d.key_waits
              AND d.destination > o.name
            ORDER BY d.destination
            LIMIT 1)
    FROM ready_destinations AS o
    WHERE o.name IS NOT NULL
),
timed_destinations(name) AS (
    (SELECT d.destination FROM {schema}.deliveries AS d
     WHERE d.status IN ('pending', 'retry_scheduled', 'in_flight')
       AND (d.status = 'in_flight' OR d.next_attempt_at > d.updated_at)
       AND NOT d.key_waits
     ORDER BY d.destination
     LIMIT 1)
    UNION ALL
    SELECT (SELECT d.destination FROM {schema}.deliveries AS d
            WHERE d.status IN ('pending', 'retry_scheduled', 'in_flight')
              AND (d.status = 'in_flight' OR d.next_attempt_at > d.updated_at)
              AND NOT d.key_waits
              AND d.destination > o.name
            ORDER BY d.destination
            LIMIT 1)
    FROM timed_destinations AS o
    WHERE o.name IS NOT NULL
),
names AS (
    SELECT n.name, x.hold_until
    FROM (SELECT name FROM ready_destinations WHERE name IS NOT NULL
          UNION
          SELECT name FROM timed_destinations WHERE name IS NOT NULL) AS n
    LEFT JOIN {schema}.destinations AS x ON x.name = n.name
    WHERE x.paused IS NOT TRUE
)
SELECT min(least(CASE WHEN r.found THEN greatest(r.due, n.hold_until) END,
                 CASE WHEN t.due IS NOT NULL THEN greatest(t.due, n.hold_until) END))
FROM names AS n
LEFT JOIN LATERAL (
    -- the oldest the claim would take of those due when written (its conditions)
    SELECT true AS found, d.next_attempt_at AS due
    FROM {schema}.deliveries AS d
    WHERE d.destination = n.name
      AND d.status IN ('pending', 'retry_scheduled')
      AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= d.updated_at)
      AND NOT d.key_waits
      AND (d.ordering_key IS NULL
           OR ((d.destination, d.ordering_key, d.seq) = (
                   SELECT o.destination, o.ordering_key, o.seq
                   FROM {schema}.deliveries AS o
                   WHERE (o.destination, o.ordering_key, o.seq)
                         >= (d.destination, d.ordering_key, -1)
                     AND o.ordering_key IS NOT NULL
                     AND o.status IN ('pending', 'in_flight', 'retry_scheduled', 'needs_action')
                   ORDER BY o.destination, o.ordering_key, o.seq
                   LIMIT 1)
               AND NOT EXISTS (
                   SELECT 1 FROM {schema}.deliveries AS f
                   WHERE f.destination = d.destination
                     AND f.ordering_key = d.ordering_key
                     AND f.ordering_key IS NOT NULL
                     AND f.status = 'in_flight')))
    ORDER BY d.seq
    LIMIT 1
) AS r ON true
LEFT JOIN LATERAL (
    -- the first to fall due that the claim would take then
    SELECT CASE WHEN d.status = 'in_flight' THEN d.lease_expires_at
                ELSE d.next_attempt_at END AS due
    FROM {schema}.deliveries AS d
    WHERE d.destination = n.name
      AND d.status IN ('pending', 'retry_scheduled', 'in_flight')
      AND (d.status = 'in_flight' OR d.next_attempt_at > d.updated_at)
      AND NOT d.key_waits
      AND (d.ordering_key IS NULL
           OR d.status = 'in_flight'
           OR ((d.destination, d.ordering_key, d.seq) = (
                   SELECT o.destination, o.ordering_key, o.seq
                   FROM {schema}.deliveries AS o
                   WHERE (o.destination, o.ordering_key, o.seq)
                         >= (d.destination, d.ordering_key, -1)
                     AND o.ordering_key IS NOT NULL
                     AND o.status IN ('pending', 'in_flight', 'retry_scheduled', 'needs_action')
                   ORDER BY o.destination, o.ordering_key, o.seq
                   LIMIT 1)
               AND NOT EXISTS (
                   SELECT 1 FROM {schema}.deliveries AS f
                   WHERE f.destination = d.destination
                     AND f.ordering_key = d.ordering_key
                     AND f.ordering_key IS NOT NULL
                     AND f.status = 'in_flight')))
    ORDER BY CASE WHEN d.status = 'in_flight' THEN d.lease_expires_at
                  ELSE d.next_attempt_at END,
             d.seq
    LIMIT 1
) AS t ON true;

-- name: idempotency_begin
-- Take each key that is absent, expired or abandoned; report the others as
-- they are. `holder` tells this call's takes from keys someone else holds.
INSERT INTO {schema}.idempotency_keys AS k (
    key, state, fingerprint, result, locked_until, expires_at, holder)
SELECT u.e->>0, 'in_progress', u.e->>1, NULL, %(lock_until)s, NULL, %(holder)s
FROM jsonb_array_elements(%(entries)s::jsonb) WITH ORDINALITY AS u(e, ord)  -- [[key, fp], ...]
ORDER BY u.ord
ON CONFLICT (key) DO UPDATE SET
    state = CASE WHEN k.state = 'completed' AND k.expires_at <= %(now)s
                      OR k.state = 'in_progress' AND (k.locked_until IS NULL OR k.locked_until <= %(now)s)
                 THEN 'in_progress' ELSE k.state END,
    fingerprint = CASE WHEN k.state = 'completed' AND k.expires_at <= %(now)s
                            OR k.state = 'in_progress' AND (k.locked_until IS NULL OR k.locked_until <= %(now)s)
                       THEN EXCLUDED.fingerprint ELSE k.fingerprint END,
    result = CASE WHEN k.state = 'completed' AND k.expires_at <= %(now)s
                       OR k.state = 'in_progress' AND (k.locked_until IS NULL OR k.locked_until <= %(now)s)
                  THEN NULL ELSE k.result END,
    locked_until = CASE WHEN k.state = 'completed' AND k.expires_at <= %(now)s
                             OR k.state = 'in_progress' AND (k.locked_until IS NULL OR k.locked_until <= %(now)s)
                        THEN EXCLUDED.locked_until ELSE k.locked_until END,
    expires_at = CASE WHEN k.state = 'completed' AND k.expires_at <= %(now)s
                           OR k.state = 'in_progress' AND (k.locked_until IS NULL OR k.locked_until <= %(now)s)
                      THEN NULL ELSE k.expires_at END,
    holder = CASE WHEN k.state = 'completed' AND k.expires_at <= %(now)s
                       OR k.state = 'in_progress' AND (k.locked_until IS NULL OR k.locked_until <= %(now)s)
                  THEN EXCLUDED.holder ELSE k.holder END
RETURNING k.key, k.state, k.fingerprint, k.result::text, k.locked_until, k.expires_at,
          k.holder = %(holder)s AS taken;

-- name: idempotency_finish
INSERT INTO {schema}.idempotency_keys (
    key, state, fingerprint, result, locked_until, expires_at, holder)
SELECT u.e->>0, 'completed', u.e->>1, u.result::json, NULL, %(expires_at)s, NULL
FROM ROWS FROM (  -- [[key, fp], ...] and the results apart (see complete)
    jsonb_array_elements(%(entries)s::jsonb),
    json_array_elements_text(%(results)s::json)
) WITH ORDINALITY AS u(e, result, ord)
ORDER BY u.ord
ON CONFLICT (key) DO UPDATE SET
    state = 'completed',
    fingerprint = EXCLUDED.fingerprint,
    result = EXCLUDED.result,
    locked_until = NULL,
    expires_at = EXCLUDED.expires_at,
    holder = NULL;

-- name: idempotency_extend_locks
-- move the locks still held under the holder's fence (locked_until) to until
UPDATE {schema}.idempotency_keys SET locked_until = %(until)s
WHERE key = ANY(%(keys)b::text[]) AND state = 'in_progress'
  AND locked_until = %(locked_until)s::timestamptz
RETURNING key;

-- name: idempotency_release
-- locked_until: the lock_until the releasing worker took the locks with (NULL: any holder)
DELETE FROM {schema}.idempotency_keys
WHERE key = ANY(%(keys)b::text[]) AND state = 'in_progress'
  AND (%(locked_until)s::timestamptz IS NULL OR locked_until = %(locked_until)s::timestamptz);

-- name: idempotency_get
SELECT key, state, fingerprint, result::text, locked_until, expires_at
FROM {schema}.idempotency_keys
WHERE key = %(key)s;

-- name: extend_leases
-- move the lease end of deliveries still held under their token; never earlier
-- (by_id_settings before it, and the fence written as in complete: each
-- delivery is found by its id)
UPDATE {schema}.deliveries AS t
SET lease_expires_at = greatest(t.lease_expires_at, %(until)s)
FROM unnest(%(ids)b::text[], %(tokens)b::bigint[]) AS u(id, token)
WHERE t.id = u.id AND (t.status = 'in_flight') IS TRUE AND t.lease_token = u.token
RETURNING t.id, t.lease_token;
