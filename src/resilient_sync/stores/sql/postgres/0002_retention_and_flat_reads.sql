-- Retention (purge), trends counted in the database, and reads that do not
-- grow with the history of finished deliveries. (No triggers: the store's own
-- statements keep the counts, in the same statement that finishes, revives or
-- purges deliveries; the existing (status, seq) index serves stats and purge.)

-- Every index of the deliveries is paid for by every claim and completion:
-- keep those the hot path and the operator queue need, drop the ones that
-- served only rare reads (those scan in submission order instead).
DROP INDEX {schema}.deliveries_due;
DROP INDEX {schema}.deliveries_leases;
DROP INDEX {schema}.deliveries_by_status;
DROP INDEX {schema}.deliveries_by_destination;
DROP INDEX {schema}.audit_by_time;
-- the operator queue: list(status=NEEDS_ACTION) and stats without the history
CREATE INDEX deliveries_needs_action ON {schema}.deliveries (seq)
    WHERE status = 'needs_action';

-- error_trend(): failed attempts in a time window, by category
CREATE INDEX audit_errors_by_time ON {schema}.audit (finished_at, error_category)
    WHERE error IS NOT NULL;
-- purge: records of actions on destinations, by age
CREATE INDEX audit_destinations_by_time ON {schema}.audit (finished_at)
    WHERE delivery_id IS NULL;
-- purge: completed idempotency keys by expiry
CREATE INDEX idempotency_keys_expiry ON {schema}.idempotency_keys (expires_at)
    WHERE state = 'completed';

-- How many finished deliveries each destination has, by status. Each backend
-- adds to its own shard, so workers completing at once never wait for each
-- other's counter row; stats() sums the shards.
CREATE TABLE {schema}.finished_counts (
    destination text     NOT NULL,
    status      text     NOT NULL,
    shard       smallint NOT NULL,
    count       bigint   NOT NULL,
    PRIMARY KEY (destination, status, shard)
);

INSERT INTO {schema}.finished_counts (destination, status, shard, count)
SELECT destination, status, 0, count(*) FROM {schema}.deliveries
WHERE status IN ('succeeded', 'resolved', 'discarded')
GROUP BY destination, status;
