-- Retention (purge), trends counted in the database, and reads that do not
-- grow with the history of finished deliveries.

-- purge: finished deliveries by age
CREATE INDEX deliveries_finished ON {schema}.deliveries (updated_at)
    WHERE status IN ('succeeded', 'resolved', 'discarded');
-- stats: the open deliveries (finished ones are counted below)
CREATE INDEX deliveries_open ON {schema}.deliveries (destination, status, error_category)
    WHERE status IN ('pending', 'in_flight', 'retry_scheduled', 'needs_action');
-- error_trend(): failed attempts in a time window, by category
CREATE INDEX audit_errors_by_time ON {schema}.audit (finished_at, error_category)
    WHERE error IS NOT NULL;
-- purge: records of actions on destinations, by age
CREATE INDEX audit_destinations_by_time ON {schema}.audit (finished_at)
    WHERE delivery_id IS NULL;
-- purge: completed idempotency keys by expiry
CREATE INDEX idempotency_keys_expiry ON {schema}.idempotency_keys (expires_at)
    WHERE state = 'completed';

-- How many finished deliveries each destination has, by status, kept by the
-- triggers below so that stats() never counts the history row by row. Each
-- backend adds to its own shard, so workers completing at once never wait
-- for each other's counter row; stats() sums the shards.
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

CREATE FUNCTION {schema}.count_finished_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.finished_counts AS c (destination, status, shard, count)
    SELECT n.destination, n.status, (pg_backend_pid() % 16)::smallint, count(*)
    FROM new_rows AS n
    WHERE n.status IN ('succeeded', 'resolved', 'discarded')
    GROUP BY n.destination, n.status
    ON CONFLICT (destination, status, shard) DO UPDATE SET count = c.count + EXCLUDED.count;
    RETURN NULL;
END $$;

CREATE FUNCTION {schema}.count_finished_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.finished_counts AS c (destination, status, shard, count)
    SELECT x.destination, x.status, (pg_backend_pid() % 16)::smallint, sum(x.delta)
    FROM (
        SELECT o.destination, o.status, -1 AS delta
        FROM old_rows AS o JOIN new_rows AS n ON n.id = o.id
        WHERE o.status IS DISTINCT FROM n.status
          AND o.status IN ('succeeded', 'resolved', 'discarded')
        UNION ALL
        SELECT n.destination, n.status, 1
        FROM old_rows AS o JOIN new_rows AS n ON n.id = o.id
        WHERE o.status IS DISTINCT FROM n.status
          AND n.status IN ('succeeded', 'resolved', 'discarded')
    ) AS x
    GROUP BY x.destination, x.status
    ON CONFLICT (destination, status, shard) DO UPDATE SET count = c.count + EXCLUDED.count;
    RETURN NULL;
END $$;

CREATE FUNCTION {schema}.count_finished_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.finished_counts AS c (destination, status, shard, count)
    SELECT o.destination, o.status, (pg_backend_pid() % 16)::smallint, -count(*)
    FROM old_rows AS o
    WHERE o.status IN ('succeeded', 'resolved', 'discarded')
    GROUP BY o.destination, o.status
    ON CONFLICT (destination, status, shard) DO UPDATE SET count = c.count + EXCLUDED.count;
    RETURN NULL;
END $$;

CREATE TRIGGER deliveries_count_inserted AFTER INSERT ON {schema}.deliveries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.count_finished_inserted();
CREATE TRIGGER deliveries_count_updated AFTER UPDATE ON {schema}.deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.count_finished_updated();
CREATE TRIGGER deliveries_count_deleted AFTER DELETE ON {schema}.deliveries
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.count_finished_deleted();
