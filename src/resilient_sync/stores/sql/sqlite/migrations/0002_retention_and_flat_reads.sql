-- Retention (purge), trends counted in the database, and reads that do not
-- grow with the history of finished deliveries.

-- the error category of failed attempts, as a column: the error trend groups
-- by it without parsing JSON
ALTER TABLE resilient_sync_audit ADD COLUMN error_category TEXT;
UPDATE resilient_sync_audit SET error_category = json_extract(error, '$.category')
WHERE error IS NOT NULL;

-- purge: finished deliveries by age
CREATE INDEX resilient_sync_deliveries_finished
    ON resilient_sync_deliveries (updated_at)
    WHERE status IN ('succeeded', 'resolved', 'discarded');

-- stats: the open deliveries by status (finished ones are counted below)
CREATE INDEX resilient_sync_deliveries_open
    ON resilient_sync_deliveries (destination, status, error_category, seq)
    WHERE status IN ('pending', 'in_flight', 'retry_scheduled', 'needs_action');

-- error_trend(): failed attempts in a time window, by category
CREATE INDEX resilient_sync_audit_errors_by_time
    ON resilient_sync_audit (finished_at, error_category)
    WHERE error IS NOT NULL;

-- purge: completed idempotency keys by expiry
CREATE INDEX resilient_sync_idempotency_expiry
    ON resilient_sync_idempotency (expires_at)
    WHERE expires_at IS NOT NULL;

-- purge: the records of destination actions (pause, hold ...) by age
CREATE INDEX resilient_sync_audit_destinations_by_time
    ON resilient_sync_audit (finished_at)
    WHERE delivery_seq IS NULL;

-- how many finished deliveries each destination has, by status, kept by the
-- triggers below so that stats() never counts the history row by row
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

CREATE TRIGGER resilient_sync_count_finished_insert
AFTER INSERT ON resilient_sync_deliveries
WHEN new.status IN ('succeeded', 'resolved', 'discarded')
BEGIN
    INSERT INTO resilient_sync_finished_counts (destination, status, count)
    VALUES (new.destination, new.status, 1)
    ON CONFLICT (destination, status) DO UPDATE SET count = count + 1;
END;

CREATE TRIGGER resilient_sync_count_finished_update
AFTER UPDATE OF status ON resilient_sync_deliveries
WHEN new.status IS NOT old.status
 AND (new.status IN ('succeeded', 'resolved', 'discarded')
      OR old.status IN ('succeeded', 'resolved', 'discarded'))
BEGIN
    UPDATE resilient_sync_finished_counts SET count = count - 1
    WHERE old.status IN ('succeeded', 'resolved', 'discarded')
      AND destination = old.destination AND status = old.status;
    INSERT INTO resilient_sync_finished_counts (destination, status, count)
    SELECT new.destination, new.status, 1
    WHERE new.status IN ('succeeded', 'resolved', 'discarded')
    ON CONFLICT (destination, status) DO UPDATE SET count = count + 1;
END;

CREATE TRIGGER resilient_sync_count_finished_delete
AFTER DELETE ON resilient_sync_deliveries
WHEN old.status IN ('succeeded', 'resolved', 'discarded')
BEGIN
    UPDATE resilient_sync_finished_counts SET count = count - 1
    WHERE destination = old.destination AND status = old.status;
END;
