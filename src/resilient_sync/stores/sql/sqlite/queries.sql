-- Named queries of the SQLite stores, loaded by name (`-- name: <name>`).
-- Parameters are named (:now) or numbered (?1). Times are INTEGER
-- microseconds since the epoch; JSON columns hold JSON text.

-- name: schema_version
-- the highest applied migration (the table exists from migration 1 on)
SELECT COALESCE(MAX(version), 0) FROM resilient_sync_migrations;

-- name: has_migrations_table
SELECT COUNT(*) FROM sqlite_master
WHERE type = 'table' AND name = 'resilient_sync_migrations';

-- name: record_migration
INSERT INTO resilient_sync_migrations (version, name, applied_at)
VALUES (:version, :name, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));

-- ---------------------------------------------------------------- enqueue

-- name: max_seq
SELECT COALESCE(MAX(seq), 0) FROM resilient_sync_deliveries;

-- name: insert_delivery
-- a delivery whose id or (event_id, destination) is already stored is skipped
INSERT INTO resilient_sync_deliveries (
    id, event_id, destination, ordering_key, event, status, idempotency_key,
    attempts, next_attempt_at, due_at, last_error, error_category, result,
    created_at, updated_at, lease_token, lease_owner, lease_expires_at, open_key, key_waits
) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
          -- (ORs, not IN: an IN list builds a temporary table at every row)
          CASE WHEN ?6 = 'pending' OR ?6 = 'in_flight' OR ?6 = 'retry_scheduled'
                    OR ?6 = 'needs_action' THEN ?4 END,
          -- a waiting delivery behind an unfinished one of its key (0005); every
          -- stored row is older than this one
          CASE WHEN ?4 IS NOT NULL AND (?6 = 'pending' OR ?6 = 'retry_scheduled')
                    AND EXISTS (
                        SELECT 1 FROM resilient_sync_deliveries AS o
                        WHERE o.destination = ?3 AND o.open_key = ?4
                          AND o.open_key IS NOT NULL)
               THEN 1 ELSE 0 END)
ON CONFLICT DO NOTHING;

-- name: inserted_since
-- the rows this transaction inserted (seq is AUTOINCREMENT and we hold the write lock)
SELECT id, seq FROM resilient_sync_deliveries WHERE seq > ?1;

-- name: save_cursor
INSERT INTO resilient_sync_cursors (source, value) VALUES (?1, ?2)
ON CONFLICT (source) DO UPDATE SET value = excluded.value;

-- name: get_cursor
SELECT value FROM resilient_sync_cursors WHERE source = ?1;

-- ------------------------------------------------------------------ claim

-- name: claim_promote
-- the rows whose time has come (a retry, a lease's end) become ready: the
-- earliest first, at most :promote of them per claim (a mass of retries
-- falling due together is spread over the next claims instead of holding
-- the write lock for all of them at once); rows due later are not read
UPDATE resilient_sync_deliveries SET due_at = -due_at
WHERE seq IN (
    SELECT seq FROM resilient_sync_deliveries INDEXED BY resilient_sync_deliveries_timed
    WHERE key_waits = 0 AND due_at > 0 AND due_at <= :now
    ORDER BY due_at
    LIMIT :promote);

-- name: claim_candidates
-- the ready rows oldest first: each destination asked for (or each with a
-- ready row, found by one descent of the index per name) that is neither
-- paused nor held gives its oldest ones through its part of
-- resilient_sync_deliveries_ready, so a paused or held destination's backlog
-- is never read; a ready row that is not the head (oldest unfinished row) of
-- its ordering key is skipped, and the rows known to wait behind their key
-- (key_waits = 1) are not even read; a row made ready by a claimer whose
-- clock runs ahead waits for this one's (-due_at <= :now)
WITH RECURSIVE names(name) AS (
    SELECT (SELECT destination
            FROM resilient_sync_deliveries INDEXED BY resilient_sync_deliveries_ready
            WHERE key_waits = 0 AND due_at <= 0
            ORDER BY destination
            LIMIT 1)
    WHERE :destinations IS NULL
    UNION ALL
    SELECT (SELECT destination
            FROM resilient_sync_deliveries INDEXED BY resilient_sync_deliveries_ready
            WHERE key_waits = 0 AND due_at <= 0 AND destination > names.name
            ORDER BY destination
            LIMIT 1)
    FROM names
    WHERE names.name IS NOT NULL
),
wanted(name) AS (
    SELECT name FROM (
        SELECT name FROM names WHERE name IS NOT NULL
        UNION
        SELECT value FROM json_each(:destinations) WHERE :destinations IS NOT NULL)
    WHERE name NOT IN (
        SELECT name FROM resilient_sync_destinations
        WHERE paused = 1 OR hold_until > :now)
)
SELECT seq, id, event, destination, status, idempotency_key, attempts,
       next_attempt_at, last_error, result, created_at, updated_at,
       lease_token, lease_owner, lease_expires_at
FROM resilient_sync_deliveries
WHERE seq IN (
    SELECT seq FROM wanted AS w, resilient_sync_deliveries AS d
    WHERE d.seq IN (
        SELECT r.seq FROM resilient_sync_deliveries AS r INDEXED BY resilient_sync_deliveries_ready
        WHERE r.key_waits = 0
          AND r.destination = w.name
          AND r.due_at <= 0
          AND -r.due_at <= :now
          AND (r.ordering_key IS NULL
               -- an expired in-flight delivery holds its key: it may always be reclaimed
               OR r.status = 'in_flight'
               OR (NOT EXISTS (  -- an older unfinished delivery of the key
                       SELECT 1 FROM resilient_sync_deliveries AS o
                       WHERE o.destination = r.destination
                         AND o.open_key = r.ordering_key
                         AND o.seq < r.seq
                         AND o.open_key IS NOT NULL)
                   AND NOT EXISTS (  -- another delivery of the key in flight, even if expired
                       -- (the conditions repeat resilient_sync_deliveries_key_in_flight's
                       -- word for word, so that SQLite reads that small index)
                       SELECT 1 FROM resilient_sync_deliveries AS f INDEXED BY
                           resilient_sync_deliveries_key_in_flight
                       WHERE f.destination = r.destination
                         AND f.ordering_key = r.ordering_key
                         AND f.ordering_key IS NOT NULL
                         AND f.status = 'in_flight')))
        ORDER BY r.seq
        LIMIT :limit)
    ORDER BY d.seq
    LIMIT :limit)
ORDER BY seq;

-- name: take_tokens
-- reserve ?1 fencing tokens; read the last one with last_token
UPDATE resilient_sync_counters SET value = value + ?1 WHERE name = 'lease_token';

-- name: last_token
SELECT value FROM resilient_sync_counters WHERE name = 'lease_token';

-- name: claim_delivery
UPDATE resilient_sync_deliveries
SET status = 'in_flight', attempts = attempts + 1, lease_token = ?1, lease_owner = ?2,
    lease_expires_at = ?3, due_at = max(?3, 1), updated_at = ?4
WHERE seq = ?5;

-- --------------------------------------------------------------- complete

-- name: in_flight_tokens
-- the current lease token (destination and ordering key) of each listed
-- delivery still IN_FLIGHT
SELECT id, lease_token, destination, ordering_key FROM resilient_sync_deliveries
WHERE id IN (SELECT value FROM json_each(?1)) AND status = 'in_flight';

-- name: complete_delivery
-- ?1 status, ?2 next_attempt_at, ?3 due_at, ?4 error JSON, ?5 error category,
-- ?6 result JSON, ?7 event JSON, ?8 ordering key (with ?7), ?9 idempotency key,
-- ?10 undone attempts (0 or 1), ?11 finished_at, ?12 id, ?13 lease token
UPDATE resilient_sync_deliveries
SET status = ?1,
    next_attempt_at = ?2,
    due_at = ?3,
    last_error = CASE WHEN ?4 IS NULL AND ?1 <> 'succeeded' THEN last_error ELSE ?4 END,
    error_category = CASE WHEN ?4 IS NULL AND ?1 <> 'succeeded' THEN error_category ELSE ?5 END,
    result = CASE WHEN ?1 = 'succeeded' THEN ?6 ELSE result END,
    event = COALESCE(?7, event),
    ordering_key = CASE WHEN ?7 IS NULL THEN ordering_key ELSE ?8 END,
    open_key = CASE WHEN ?1 = 'pending' OR ?1 = 'in_flight' OR ?1 = 'retry_scheduled'
                         OR ?1 = 'needs_action'
                    THEN CASE WHEN ?7 IS NULL THEN ordering_key ELSE ?8 END END,
    idempotency_key = COALESCE(?9, idempotency_key),
    attempts = attempts - ?10,
    lease_owner = NULL,
    lease_expires_at = NULL,
    updated_at = ?11
WHERE id = ?12 AND status = 'in_flight' AND lease_token = ?13;

-- name: complete_delivery_unkeyed
-- complete_delivery for a delivery without an ordering key whose corrected
-- event (if any) has none either: it leaves ordering_key and open_key alone,
-- so the triggers on open_key (0005) are not even looked at (they cost about
-- 15,000 CPU instructions a delivery, bench/instructions.py); same parameters
UPDATE resilient_sync_deliveries
SET status = ?1,
    next_attempt_at = ?2,
    due_at = ?3,
    last_error = CASE WHEN ?4 IS NULL AND ?1 <> 'succeeded' THEN last_error ELSE ?4 END,
    error_category = CASE WHEN ?4 IS NULL AND ?1 <> 'succeeded' THEN error_category ELSE ?5 END,
    result = CASE WHEN ?1 = 'succeeded' THEN ?6 ELSE result END,
    event = COALESCE(?7, event),
    idempotency_key = COALESCE(?9, idempotency_key),
    attempts = attempts - ?10,
    lease_owner = NULL,
    lease_expires_at = NULL,
    updated_at = ?11
WHERE id = ?12 AND status = 'in_flight' AND lease_token = ?13;

-- name: insert_audit
-- ?1 delivery id (its seq is looked up for the index), ?2 destination, ?3 action,
-- ?4 actor, ?5 started_at, ?6 finished_at, ?7 number, ?8 outcome, ?9 reason,
-- ?10 error JSON, ?11 details JSON, ?12 error category
INSERT INTO resilient_sync_audit (
    delivery_id, delivery_seq, destination, action, actor, started_at, finished_at, number,
    outcome, reason, error, details, error_category
) VALUES (
    ?1, (SELECT seq FROM resilient_sync_deliveries WHERE id = ?1), ?2, ?3, ?4, ?5, ?6, ?7,
    ?8, ?9, ?10, ?11, ?12
);

-- ------------------------------------------------------------- transition

-- name: transition_delivery
-- ?1 status, ?2 next_attempt_at, ?3 due_at, ?4 attempts, ?5 event JSON,
-- ?6 ordering key, ?7 idempotency key, ?8 updated_at, ?9 seq
UPDATE resilient_sync_deliveries
SET status = ?1, next_attempt_at = ?2, due_at = ?3, attempts = ?4, event = ?5,
    ordering_key = ?6, idempotency_key = ?7, lease_owner = NULL, lease_expires_at = NULL,
    updated_at = ?8,
    open_key = CASE WHEN ?1 = 'pending' OR ?1 = 'in_flight' OR ?1 = 'retry_scheduled'
                         OR ?1 = 'needs_action' THEN ?6 END
WHERE seq = ?9;

-- ----------------------------------------------------------- destinations

-- name: get_destination
SELECT name, paused, paused_reason, hold_until, hold_reason, updated_at
FROM resilient_sync_destinations WHERE name = ?1;

-- name: all_destinations
SELECT name, paused, paused_reason, hold_until, hold_reason, updated_at
FROM resilient_sync_destinations ORDER BY name;

-- name: save_destination
INSERT INTO resilient_sync_destinations
    (name, paused, paused_reason, hold_until, hold_reason, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT (name) DO UPDATE SET
    paused = excluded.paused, paused_reason = excluded.paused_reason,
    hold_until = excluded.hold_until, hold_reason = excluded.hold_reason,
    updated_at = excluded.updated_at;

-- ---------------------------------------------------------------- reading

-- name: get_delivery
SELECT seq, id, event, destination, status, idempotency_key, attempts,
       next_attempt_at, last_error, result, created_at, updated_at,
       lease_token, lease_owner, lease_expires_at
FROM resilient_sync_deliveries WHERE id = ?1;

-- name: ids_with_prefix
-- ids_with_prefix(): a range scan of the id index (?2 is ?1 with its last
-- character incremented, so every id that starts with ?1 sorts in between)
SELECT id FROM resilient_sync_deliveries
WHERE id >= ?1 AND id < ?2 AND substr(id, 1, length(?1)) = ?1
ORDER BY id LIMIT ?3;

-- name: list_deliveries
-- list(): this base, then the list_where_* fragments of the filters given,
-- then list_order (the store joins them; each is a constant)
SELECT seq, id, event, destination, status, idempotency_key, attempts,
       next_attempt_at, last_error, result, created_at, updated_at,
       lease_token, lease_owner, lease_expires_at
FROM resilient_sync_deliveries
WHERE seq > :after

-- name: list_where_needs_action
-- status=[NEEDS_ACTION] alone: uses the partial index of the operator queue
AND status = 'needs_action'

-- name: list_where_status
AND status IN (SELECT value FROM json_each(:statuses))

-- name: list_where_destination
AND destination = :destination

-- name: list_where_category
AND error_category = :category

-- name: list_where_since
AND updated_at >= :since

-- name: list_where_until
AND updated_at < :until

-- name: list_where_event_type
AND json_extract(event, '$.type') = :event_type

-- name: list_where_search
-- a text search on the event id and the event's JSON (a scan of the rows the
-- other filters leave, bounded by the page size); :search is a LIKE pattern
AND (event_id LIKE :search ESCAPE '\' OR event LIKE :search ESCAPE '\')

-- name: list_where_search_folded
-- the same with a needle of non-ASCII letters (:search is lower case):
-- rs_fold() lowers by Unicode's rules, as the other stores compare
AND (rs_fold(event_id) LIKE :search ESCAPE '\' OR rs_fold(event) LIKE :search ESCAPE '\')

-- name: list_order
ORDER BY seq
LIMIT :limit;

-- name: attempts
SELECT id, delivery_id, destination, action, actor, started_at, finished_at, number,
       outcome, reason, error, details
FROM resilient_sync_audit
WHERE delivery_seq = (SELECT seq FROM resilient_sync_deliveries WHERE id = ?1)
ORDER BY id;

-- name: audit
-- :limit is -1 for no limit
SELECT id, delivery_id, destination, action, actor, started_at, finished_at, number,
       outcome, reason, error, details
FROM resilient_sync_audit
WHERE (:since IS NULL OR finished_at >= :since)
ORDER BY id DESC
LIMIT :limit;

-- name: audit_errors
-- audit(errors_only=True): the same as audit, but able to use the errors index
SELECT id, delivery_id, destination, action, actor, started_at, finished_at, number,
       outcome, reason, error, details
FROM resilient_sync_audit
WHERE error IS NOT NULL
  AND (:since IS NULL OR finished_at >= :since)
ORDER BY id DESC
LIMIT :limit;

-- name: stats_open
-- the open deliveries through their partial indexes: the claimable ones
-- (ready or waiting for their time) and the operator queue; as many rows as
-- the queue is deep, never the history; with the oldest (lowest seq) of each
-- group, for the oldest waiting delivery
SELECT destination, status, NULL, COUNT(*), MIN(seq)
FROM resilient_sync_deliveries INDEXED BY resilient_sync_deliveries_ready
WHERE due_at <= 0
GROUP BY destination, status
UNION ALL
SELECT destination, status, NULL, COUNT(*), MIN(seq)
FROM resilient_sync_deliveries INDEXED BY resilient_sync_deliveries_timed
WHERE due_at > 0
GROUP BY destination, status
UNION ALL
SELECT destination, status, error_category, COUNT(*), MIN(seq)
FROM resilient_sync_deliveries INDEXED BY resilient_sync_deliveries_needs_action
WHERE status = 'needs_action'
GROUP BY destination, error_category;

-- name: stats_finished
-- the finished deliveries, counted by the store as they finish
SELECT destination, status, count FROM resilient_sync_finished_counts WHERE count > 0;

-- name: created_at
SELECT created_at FROM resilient_sync_deliveries WHERE seq = ?1;

-- name: count_finished
-- ?1 destination, ?2 status, ?3 how many more (or fewer) finished deliveries
INSERT INTO resilient_sync_finished_counts (destination, status, count)
VALUES (?1, ?2, ?3)
ON CONFLICT (destination, status) DO UPDATE SET count = count + excluded.count;

-- name: next_due
-- The earliest time a delivery may become claimable: the first of the rows
-- waiting for their time (one step into its index, however many are
-- scheduled), and for each destination with ready rows (one descent of
-- their index per name) the time the earliest of :window of them fell due,
-- or the end of the destination's hold if later; not a paused
-- destination's (time alone does not release them, and a time in the past
-- would hide the next one to come from an idle worker, which does not wait
-- for a past time). Not the deliveries marked as waiting behind their key
-- either.
WITH RECURSIVE names(name) AS (
    SELECT (SELECT destination
            FROM resilient_sync_deliveries INDEXED BY resilient_sync_deliveries_ready
            WHERE key_waits = 0 AND due_at <= 0
            ORDER BY destination
            LIMIT 1)
    UNION ALL
    SELECT (SELECT destination
            FROM resilient_sync_deliveries INDEXED BY resilient_sync_deliveries_ready
            WHERE key_waits = 0 AND due_at <= 0 AND destination > names.name
            ORDER BY destination
            LIMIT 1)
    FROM names
    WHERE names.name IS NOT NULL
)
SELECT MIN(t) FROM (
    SELECT due_at AS t FROM (
        SELECT due_at FROM resilient_sync_deliveries INDEXED BY resilient_sync_deliveries_timed
        WHERE key_waits = 0 AND due_at > 0
        ORDER BY due_at
        LIMIT 1)
    UNION ALL
    SELECT NULLIF(max(
        COALESCE(x.hold_until, 0),
        COALESCE((SELECT MIN(-r.due_at) FROM (
                      SELECT due_at
                      FROM resilient_sync_deliveries INDEXED BY resilient_sync_deliveries_ready
                      WHERE key_waits = 0 AND destination = n.name AND due_at <= 0
                        AND due_at < 0  -- (0, "at once", gives no time)
                      LIMIT :window) AS r), 0)), 0)
    FROM names AS n
    LEFT JOIN resilient_sync_destinations AS x ON x.name = n.name
    WHERE n.name IS NOT NULL AND x.paused IS NOT 1);

-- ------------------------------------------------------------ idempotency

-- name: idempotency_get_many
-- per listed key: its completed record and its lock (NULLs where absent)
SELECT k.value, c.fingerprint, c.result, c.expires_at, l.fingerprint, l.locked_until
FROM json_each(?1) AS k
LEFT JOIN resilient_sync_idempotency AS c ON c.key = k.value
LEFT JOIN resilient_sync_idempotency_locks AS l ON l.key = k.value;

-- name: idempotency_get
SELECT ?1, c.fingerprint, c.result, c.expires_at, l.fingerprint, l.locked_until
FROM (SELECT 1) AS one
LEFT JOIN resilient_sync_idempotency AS c ON c.key = ?1
LEFT JOIN resilient_sync_idempotency_locks AS l ON l.key = ?1;

-- name: idempotency_purge_locks
-- locks whose holder is gone (they count as absent anyway)
DELETE FROM resilient_sync_idempotency_locks WHERE locked_until <= ?1;

-- name: idempotency_lock
INSERT OR REPLACE INTO resilient_sync_idempotency_locks (key, fingerprint, locked_until)
VALUES (?1, ?2, ?3);

-- name: idempotency_complete
INSERT OR REPLACE INTO resilient_sync_idempotency (key, fingerprint, result, expires_at)
VALUES (?1, ?2, ?3, ?4);

-- name: idempotency_unlock
DELETE FROM resilient_sync_idempotency_locks WHERE key = ?1;

-- name: idempotency_extend_lock
-- ?2: the holder's fence (the lock_until it took the lock with); ?3 the new end
UPDATE resilient_sync_idempotency_locks SET locked_until = ?3
WHERE key = ?1 AND locked_until = ?2;

-- name: idempotency_release
-- ?2: the lock_until the releasing worker took the lock with (NULL: any holder)
DELETE FROM resilient_sync_idempotency_locks
WHERE key = ?1 AND (?2 IS NULL OR locked_until = ?2);

-- -------------------------------------------------------------- retention

-- name: purge_scan
-- deliveries in submission order from a seq on (the oldest first), for the
-- purge to pick finished ones changed before its cutoff; it stops reading at
-- the first delivery created after the cutoff
SELECT seq, status, updated_at, created_at, destination
FROM resilient_sync_deliveries
WHERE seq > ?1
ORDER BY seq;

-- name: purge_recheck
-- the listed deliveries that are still finished and old enough (in the write
-- transaction: an operator may have revived one since the scan)
SELECT seq, status, destination FROM resilient_sync_deliveries
WHERE seq IN (SELECT value FROM json_each(?1))
  AND status IN ('succeeded', 'resolved', 'discarded') AND updated_at < ?2;

-- name: purge_audit_of
-- the audit records of the listed deliveries (by seq, through their index)
DELETE FROM resilient_sync_audit
WHERE delivery_seq IN (SELECT value FROM json_each(?1));

-- name: purge_deliveries
DELETE FROM resilient_sync_deliveries WHERE seq IN (SELECT value FROM json_each(?1));

-- name: purge_destination_audit
-- records of actions on destinations (pause, hold ...) older than :before
DELETE FROM resilient_sync_audit
WHERE id IN (
    SELECT id FROM resilient_sync_audit INDEXED BY resilient_sync_audit_destinations_by_time
    WHERE delivery_seq IS NULL AND finished_at < :before
    LIMIT :limit);

-- name: purge_destination_audit_count
SELECT COUNT(*) FROM resilient_sync_audit INDEXED BY resilient_sync_audit_destinations_by_time
WHERE delivery_seq IS NULL AND finished_at < :before;

-- name: error_counts
-- failed attempts per time bucket and category since :since (until :until)
SELECT (finished_at - :since) / :width, error_category, COUNT(*)
FROM resilient_sync_audit INDEXED BY resilient_sync_audit_errors_by_time
WHERE error IS NOT NULL AND finished_at >= :since AND finished_at < :until
GROUP BY 1, 2
ORDER BY 1, 2;

-- name: idempotency_purge
-- completed keys that expired (a batch of them)
DELETE FROM resilient_sync_idempotency
WHERE key IN (
    SELECT key FROM resilient_sync_idempotency
    WHERE expires_at IS NOT NULL AND expires_at <= :now
    LIMIT :limit);

-- name: has_our_tables
SELECT COUNT(*) FROM sqlite_master
WHERE type = 'table' AND name IN ('resilient_sync_migrations', 'resilient_sync_deliveries');

-- name: extend_lease
-- ?1 new lease end, ?2 id, ?3 lease token; never shortens a lease; the row
-- waits for its lease's end again, even if a claim had found that end
-- passed and made it ready (due_at from the lease, never from a due_at that
-- is negative once ready)
UPDATE resilient_sync_deliveries
SET lease_expires_at = max(lease_expires_at, ?1), due_at = max(lease_expires_at, ?1, 1)
WHERE id = ?2 AND status = 'in_flight' AND lease_token = ?3;
