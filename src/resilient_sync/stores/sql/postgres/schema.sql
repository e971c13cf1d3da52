-- The current schema in one script: what the migrations in this folder
-- produce when applied from scratch (tests/test_postgres_migrations.py checks
-- that they agree). For DBAs who create the schema by hand: run it, then open
-- the stores with migrate=False. `{schema}` is the quoted schema name.

CREATE SCHEMA IF NOT EXISTS {schema};

CREATE TABLE {schema}.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO {schema}.schema_migrations (version, name) VALUES
    (1, 'initial'), (2, 'retention_and_flat_reads');

CREATE SEQUENCE {schema}.delivery_seq;
CREATE SEQUENCE {schema}.lease_tokens;

CREATE TABLE {schema}.deliveries (
    id               text        PRIMARY KEY,
    seq              bigint      NOT NULL UNIQUE,
    event_id         text        NOT NULL,
    destination      text        NOT NULL,
    ordering_key     text,
    event            json        NOT NULL,
    status           text        NOT NULL CHECK (status IN (
        'pending', 'in_flight', 'retry_scheduled', 'succeeded',
        'needs_action', 'resolved', 'discarded')),
    idempotency_key  text        NOT NULL,
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    last_error       json,
    error_category   text,
    result           json,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    lease_token      bigint      NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_expires_at timestamptz,
    CONSTRAINT deliveries_event_destination_key UNIQUE (event_id, destination)
);

-- The claim walks open deliveries in submission order.
CREATE INDEX deliveries_claimable ON {schema}.deliveries (seq)
    WHERE status IN ('pending', 'retry_scheduled', 'in_flight');
-- "Is there an older non-final delivery of this (destination, ordering_key)?"
CREATE INDEX deliveries_open_by_key ON {schema}.deliveries (destination, ordering_key, seq)
    WHERE ordering_key IS NOT NULL
      AND status IN ('pending', 'in_flight', 'retry_scheduled', 'needs_action');
-- The database itself refuses a second in-flight delivery of one key: a key
-- held by one worker is never handed to another, whatever the race.
CREATE UNIQUE INDEX deliveries_one_in_flight_per_key ON {schema}.deliveries (destination, ordering_key)
    WHERE ordering_key IS NOT NULL AND status = 'in_flight';

CREATE TABLE {schema}.audit (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id    text,
    destination    text        NOT NULL,
    action         text        NOT NULL,
    actor          text        NOT NULL,
    started_at     timestamptz NOT NULL,
    finished_at    timestamptz NOT NULL,
    number         integer     NOT NULL DEFAULT 0,
    outcome        text,
    reason         text,
    error          json,
    error_category text,
    details        json
);

CREATE INDEX audit_by_delivery ON {schema}.audit (delivery_id, id);
CREATE INDEX audit_errors ON {schema}.audit (id) WHERE error IS NOT NULL;

CREATE TABLE {schema}.destinations (
    name          text        PRIMARY KEY,
    paused        boolean     NOT NULL DEFAULT false,
    paused_reason text,
    hold_until    timestamptz,
    hold_reason   text,
    updated_at    timestamptz
);

CREATE TABLE {schema}.cursors (
    source text PRIMARY KEY,
    value  text
);

CREATE TABLE {schema}.idempotency_keys (
    key          text PRIMARY KEY,
    state        text NOT NULL CHECK (state IN ('in_progress', 'completed')),
    fingerprint  text NOT NULL,
    result       json,
    locked_until timestamptz,
    expires_at   timestamptz,
    -- who took the key (one random value per begin() call); tells a caller
    -- whether it took the key or found it held
    holder       uuid
);

-- 0002: retention, trends counted in the database, flat reads

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
