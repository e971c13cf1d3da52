-- The current schema of a resilient_sync SQLite file, for reading.
--
-- Not executed by the stores: they apply migrations/NNNN_*.sql in order.
-- tests/test_sqlite_store.py checks that migrating an empty file from scratch
-- yields exactly this schema; when you add a migration, update this file too.
--
-- Every table is prefixed with resilient_sync_ because the file may also hold
-- the application's own tables (the transactional outbox). Times are INTEGER
-- microseconds since 1970-01-01 UTC, so they compare and sort as numbers.
-- JSON columns hold JSON text (NULL for None).

CREATE TABLE resilient_sync_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_at TEXT    NOT NULL
);

CREATE TABLE resilient_sync_deliveries (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order, never reused
    id               TEXT    NOT NULL UNIQUE,
    event_id         TEXT    NOT NULL,
    destination      TEXT    NOT NULL,
    ordering_key     TEXT,                               -- copy of event.ordering_key
    event            TEXT    NOT NULL,                   -- JSON of the Event
    status           TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER,
    -- when the row may next be claimed: next_attempt_at while PENDING or
    -- RETRY_SCHEDULED, lease_expires_at while IN_FLIGHT, NULL otherwise
    -- (NEEDS_ACTION and the final states never are); negated once that time
    -- has come, 0 for "at once": > 0 waiting for its time, <= 0 ready (0007)
    due_at           INTEGER,
    last_error       TEXT,                               -- JSON of the ErrorInfo
    error_category   TEXT,                               -- copy of last_error.category
    result           TEXT,                               -- JSON
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    lease_token      INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    -- ordering_key while the delivery is unfinished (PENDING, IN_FLIGHT,
    -- RETRY_SCHEDULED, NEEDS_ACTION), NULL once finished (0004)
    open_key         TEXT,
    -- 1: an older delivery of its ordering key was unfinished when this row
    -- was written, so the claim need not read it; never 1 on the oldest
    -- unfinished delivery of a key (the triggers below keep that) (0005)
    key_waits        INTEGER NOT NULL DEFAULT 0,
    UNIQUE (event_id, destination)
);

-- claim: the ready rows of each destination in submission order; only rows
-- that can be claimed are in it, so finished deliveries cost the claim
-- nothing, and the claim reads only its key_waits = 0 part, so rows waiting
-- behind their key cost it nothing either (0005), nor do rows waiting for
-- their time, or those of a destination it skips (0007)
CREATE INDEX resilient_sync_deliveries_ready
    ON resilient_sync_deliveries (key_waits, destination, seq)
    WHERE due_at <= 0;

-- claim: the rows waiting for their time, by time: a claim makes those whose
-- time has come ready, without reading those due later (0007)
CREATE INDEX resilient_sync_deliveries_timed
    ON resilient_sync_deliveries (key_waits, due_at)
    WHERE due_at > 0;

-- claim: "is there an older unfinished delivery with my ordering key?"; on
-- open_key, which the claim does not change, so a claim writes no page of it
-- (0004)
CREATE INDEX resilient_sync_deliveries_key
    ON resilient_sync_deliveries (destination, open_key, seq)
    WHERE open_key IS NOT NULL;

-- claim: "is another delivery with my ordering key in flight?" (a few rows)
CREATE INDEX resilient_sync_deliveries_key_in_flight
    ON resilient_sync_deliveries (destination, ordering_key)
    WHERE ordering_key IS NOT NULL AND status = 'in_flight';

-- the flag key_waits: cleared on the next delivery of a key when one leaves it (0005)
-- a delivery left its key (open_key went from the key to NULL or another key):
-- the oldest unfinished delivery of the key may go
CREATE TRIGGER resilient_sync_key_left
AFTER UPDATE OF open_key ON resilient_sync_deliveries
WHEN OLD.open_key IS NOT NULL AND NEW.open_key IS NOT OLD.open_key
BEGIN
    UPDATE resilient_sync_deliveries SET key_waits = 0
    WHERE seq = (
        SELECT o.seq FROM resilient_sync_deliveries AS o
        WHERE o.destination = OLD.destination
          AND o.open_key = OLD.open_key
          AND o.open_key IS NOT NULL
        ORDER BY o.seq
        LIMIT 1)
      AND key_waits = 1;
END;
-- a delivery joined a key (an operator sent a finished one again, or an edit
-- or a corrected event moved it here): it waits if an older delivery of the
-- key is unfinished, as a new one does, so a backlog sent again passes under
-- the claim again
CREATE TRIGGER resilient_sync_key_joined
AFTER UPDATE OF open_key ON resilient_sync_deliveries
WHEN NEW.open_key IS NOT NULL AND NEW.open_key IS NOT OLD.open_key
BEGIN
    UPDATE resilient_sync_deliveries SET key_waits = (
        (NEW.status = 'pending' OR NEW.status = 'retry_scheduled')
        AND EXISTS (
            SELECT 1 FROM resilient_sync_deliveries AS o
            WHERE o.destination = NEW.destination
              AND o.open_key = NEW.open_key
              AND o.seq < NEW.seq
              AND o.open_key IS NOT NULL))
    WHERE seq = NEW.seq;
END;
-- a delivery left every key (an edit removed its ordering key, or it
-- finished): it waits behind none (0006; before, an edit that removed the
-- key of a waiting delivery left it marked, and it was never claimed)
CREATE TRIGGER resilient_sync_key_dropped
AFTER UPDATE OF open_key ON resilient_sync_deliveries
WHEN OLD.open_key IS NOT NULL AND NEW.open_key IS NULL AND NEW.key_waits = 1
BEGIN
    UPDATE resilient_sync_deliveries SET key_waits = 0
    WHERE seq = NEW.seq AND key_waits = 1;
END;
-- an unfinished delivery removed (the purge removes finished ones only)
CREATE TRIGGER resilient_sync_key_removed
AFTER DELETE ON resilient_sync_deliveries
WHEN OLD.open_key IS NOT NULL
BEGIN
    UPDATE resilient_sync_deliveries SET key_waits = 0
    WHERE seq = (
        SELECT o.seq FROM resilient_sync_deliveries AS o
        WHERE o.destination = OLD.destination
          AND o.open_key = OLD.open_key
          AND o.open_key IS NOT NULL
        ORDER BY o.seq
        LIMIT 1)
      AND key_waits = 1;
END;

-- the operator queue: list(status=NEEDS_ACTION) without scanning the history
CREATE INDEX resilient_sync_deliveries_needs_action
    ON resilient_sync_deliveries (seq)
    WHERE status = 'needs_action';

CREATE TABLE resilient_sync_audit (
    id           INTEGER PRIMARY KEY,
    delivery_id  TEXT,                                   -- NULL for destination actions
    delivery_seq INTEGER,                                -- its delivery's seq (for the index)
    destination  TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    actor        TEXT    NOT NULL,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER NOT NULL,
    number       INTEGER NOT NULL,
    outcome      TEXT,
    reason       TEXT,
    error        TEXT,                                   -- JSON of the ErrorInfo
    details      TEXT                                    -- JSON object, NULL when empty
, error_category TEXT);                                  -- copy of error.category (0002)

-- attempts(id); keyed by seq, not by the random delivery id, so that a batch
-- of audit records touches a few index pages instead of one per record
CREATE INDEX resilient_sync_audit_delivery
    ON resilient_sync_audit (delivery_seq)
    WHERE delivery_seq IS NOT NULL;

-- recent_errors() and error_trend(): the failed attempts, newest first
CREATE INDEX resilient_sync_audit_errors
    ON resilient_sync_audit (id)
    WHERE error IS NOT NULL;

CREATE TABLE resilient_sync_cursors (
    source TEXT PRIMARY KEY,
    value  TEXT
) WITHOUT ROWID;

CREATE TABLE resilient_sync_destinations (
    name          TEXT PRIMARY KEY,
    paused        INTEGER NOT NULL DEFAULT 0,
    paused_reason TEXT,
    hold_until    INTEGER,
    hold_reason   TEXT,
    updated_at    INTEGER
) WITHOUT ROWID;

-- strictly increasing counters shared by every process (lease fencing tokens)
CREATE TABLE resilient_sync_counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO resilient_sync_counters (name, value) VALUES ('lease_token', 0);

-- completed idempotency keys (finish)
CREATE TABLE resilient_sync_idempotency (
    key          TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    result       TEXT,                                   -- JSON
    expires_at   INTEGER
) WITHOUT ROWID;

-- keys being attempted (begin, until finish or release): a small, hot table,
-- kept apart so that taking a lock does not rewrite pages of the big one
CREATE TABLE resilient_sync_idempotency_locks (
    key          TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    locked_until INTEGER NOT NULL
) WITHOUT ROWID;

-- 0002: retention, trends counted in the database, flat reads

-- error_trend(): failed attempts in a time window, by category
CREATE INDEX resilient_sync_audit_errors_by_time
    ON resilient_sync_audit (finished_at, error_category)
    WHERE error IS NOT NULL;

-- purge: the records of destination actions (pause, hold ...) by age
CREATE INDEX resilient_sync_audit_destinations_by_time
    ON resilient_sync_audit (finished_at)
    WHERE delivery_seq IS NULL;

-- purge: completed idempotency keys by expiry
CREATE INDEX resilient_sync_idempotency_expiry
    ON resilient_sync_idempotency (expires_at)
    WHERE expires_at IS NOT NULL;

-- how many finished deliveries each destination has, by status: kept by the
-- store in the transactions that finish, revive and purge deliveries, so
-- that stats() never counts the history row by row
CREATE TABLE resilient_sync_finished_counts (
    destination TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    count       INTEGER NOT NULL,
    PRIMARY KEY (destination, status)
) WITHOUT ROWID;
