-- Retention (purge), trends counted in the database, and reads that do not
-- grow with the history of finished deliveries. (No triggers and no extra
-- index on the deliveries: measured, each one cost more per claim and
-- completion than the rest of the statement; the store keeps the counts
-- itself, in the same transactions.)

-- the error category of failed attempts, as a column: the error trend groups
-- by it without parsing JSON
ALTER TABLE resilient_sync_audit ADD COLUMN error_category TEXT;
UPDATE resilient_sync_audit SET error_category = json_extract(error, '$.category')
WHERE error IS NOT NULL;

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

INSERT INTO resilient_sync_finished_counts (destination, status, count)
SELECT destination, status, COUNT(*) FROM resilient_sync_deliveries
WHERE status IN ('succeeded', 'resolved', 'discarded')
GROUP BY destination, status;
