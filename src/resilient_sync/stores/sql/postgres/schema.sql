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
    (1, 'initial'), (2, 'retention_and_flat_reads'), (3, 'key_waits'), (4, 'key_dropped'),
    (5, 'timed_claim');

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
    -- true: an older delivery of its ordering key was unfinished when this
    -- row was written, so the claim need not read it; never true on the
    -- oldest unfinished delivery of a key (the triggers below keep that) (0003)
    key_waits        boolean     NOT NULL DEFAULT false,
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

-- The claim's indexes (0005) and the key_waits flag's triggers (0003).
-- the claim, per destination, without the rows that wait behind their key:
-- those due when last written (no due time, or one no later than
-- updated_at) in submission order, and the others (a due time to come when
-- written, or in flight until the lease ends) in the order they fall due,
-- so that the claim never reads one due later
CREATE INDEX deliveries_claim_ready ON {schema}.deliveries (destination, seq)
    WHERE status IN ('pending', 'retry_scheduled')
      AND (next_attempt_at IS NULL OR next_attempt_at <= updated_at)
      AND NOT key_waits;
CREATE INDEX deliveries_claim_timed ON {schema}.deliveries (
        destination,
        (CASE WHEN status = 'in_flight' THEN lease_expires_at ELSE next_attempt_at END),
        seq)
    WHERE status IN ('pending', 'retry_scheduled', 'in_flight')
      AND (status = 'in_flight' OR next_attempt_at > updated_at)
      AND NOT key_waits;

-- the advisory lock of one (destination, ordering key) in this schema
CREATE FUNCTION {schema}.ordering_key_lock(destination text, ordering_key text)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT hashtextextended(destination || chr(31) || ordering_key,
                              hashtextextended('{schema}', 0)) $$;

-- The seq of the oldest unfinished delivery of (destination, ordering key)
-- other than the one with id p_not (NULL: none), for the triggers. Asked as
-- the first entry of deliveries_open_by_key from (destination, key) on, with
-- no condition on the columns alone: only that index returns rows in this
-- order, so no plan walks the table in seq order instead (with the
-- statistics saying one key holds every delivery, "is there an older one?"
-- was planned as such a walk, which read the whole history before the
-- oldest delivery of the key). The claim and the completion ask it the same
-- way in their own text (a function called for each row cost them 5 to 14
-- ms a batch of 100).
CREATE FUNCTION {schema}.key_head_seq(p_destination text, p_ordering_key text, p_not text)
RETURNS bigint LANGUAGE plpgsql STABLE AS $$
DECLARE
    h record;
BEGIN
    SELECT o.destination, o.ordering_key, o.seq INTO h
    FROM {schema}.deliveries AS o
    WHERE (o.destination, o.ordering_key, o.seq) >= (p_destination, p_ordering_key, -1)
      AND o.ordering_key IS NOT NULL
      AND o.status IN ('pending', 'in_flight', 'retry_scheduled', 'needs_action')
      AND o.id IS DISTINCT FROM p_not
    ORDER BY o.destination, o.ordering_key, o.seq
    LIMIT 1;
    IF FOUND AND h.destination = p_destination AND h.ordering_key = p_ordering_key THEN
        RETURN h.seq;
    END IF;
    RETURN NULL;
END
$$;

-- a new delivery waits if an older one of its key is unfinished; only under
-- READ COMMITTED, where the check after the lock sees every commit before it
-- (under a stricter isolation the snapshot may predate one: it never waits)
CREATE FUNCTION {schema}.deliveries_key_waits_on_insert()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status NOT IN ('pending', 'retry_scheduled') THEN
        NEW.key_waits := false;
        RETURN NEW;
    END IF;
    PERFORM pg_advisory_xact_lock({schema}.ordering_key_lock(NEW.destination, NEW.ordering_key));
    NEW.key_waits := current_setting('transaction_isolation') = 'read committed'
        AND coalesce({schema}.key_head_seq(NEW.destination, NEW.ordering_key, NEW.id) < NEW.seq,
                     false);
    RETURN NEW;
END
$$;

CREATE TRIGGER deliveries_key_waits_insert
BEFORE INSERT ON {schema}.deliveries
FOR EACH ROW WHEN (NEW.ordering_key IS NOT NULL)
EXECUTE FUNCTION {schema}.deliveries_key_waits_on_insert();

-- a delivery left (destination, ordering key): its oldest unfinished delivery
-- may go. The lock waits for an insert of the key still in progress, and the
-- update after it (a new snapshot under READ COMMITTED) sees that insert.
CREATE FUNCTION {schema}.key_head_may_go(p_destination text, p_ordering_key text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({schema}.ordering_key_lock(p_destination, p_ordering_key));
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'a delivery with an ordering key left its key in a transaction at '
            'isolation level %; resilient_sync needs READ COMMITTED there, or the next '
            'delivery of the key could go on waiting', current_setting('transaction_isolation');
    END IF;
    UPDATE {schema}.deliveries SET key_waits = false
    WHERE seq = {schema}.key_head_seq(p_destination, p_ordering_key, NULL) AND key_waits;
END
$$;

-- a delivery that joins a key again (re-sent, or moved here by an edit or a
-- corrected event) waits if an older one of the key is unfinished, as a new
-- one does (a re-sent backlog passes under the claim again); in flight, or
-- at a stricter isolation, it never waits
CREATE FUNCTION {schema}.deliveries_key_joined()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status NOT IN ('pending', 'retry_scheduled')
       OR current_setting('transaction_isolation') <> 'read committed' THEN
        NEW.key_waits := false;
        RETURN NEW;
    END IF;
    PERFORM pg_advisory_xact_lock({schema}.ordering_key_lock(NEW.destination, NEW.ordering_key));
    NEW.key_waits := coalesce(
        {schema}.key_head_seq(NEW.destination, NEW.ordering_key, NEW.id) < NEW.seq, false);
    RETURN NEW;
END
$$;

CREATE TRIGGER deliveries_key_joined
BEFORE UPDATE ON {schema}.deliveries
FOR EACH ROW WHEN (
    NEW.ordering_key IS NOT NULL
    AND NEW.status IN ('pending', 'in_flight', 'retry_scheduled', 'needs_action')
    AND (OLD.status NOT IN ('pending', 'in_flight', 'retry_scheduled', 'needs_action')
         OR OLD.ordering_key IS DISTINCT FROM NEW.ordering_key))
EXECUTE FUNCTION {schema}.deliveries_key_joined();

-- a delivery left its key (it finished, moved to another key, or was deleted).
-- The library's statements took the key's lock before they wrote (in one
-- order, so that writers of several keys never wait for each other in a
-- circle); another writer takes it here. The completion of a batch lets the
-- next deliveries go in its own statement, all at once (a row at a time
-- here cost five times as much), and says so for its transaction with
-- resilient_sync.keys_handled.
CREATE FUNCTION {schema}.deliveries_key_left()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {schema}.key_head_may_go(OLD.destination, OLD.ordering_key);
    RETURN NULL;
END
$$;

CREATE TRIGGER deliveries_key_left
AFTER UPDATE ON {schema}.deliveries
FOR EACH ROW WHEN (
    current_setting('resilient_sync.keys_handled', true) IS DISTINCT FROM 'on'
    AND OLD.ordering_key IS NOT NULL
    AND OLD.status IN ('pending', 'in_flight', 'retry_scheduled', 'needs_action')
    AND (NEW.status NOT IN ('pending', 'in_flight', 'retry_scheduled', 'needs_action')
         OR NEW.ordering_key IS DISTINCT FROM OLD.ordering_key))
EXECUTE FUNCTION {schema}.deliveries_key_left();

CREATE TRIGGER deliveries_key_removed
AFTER DELETE ON {schema}.deliveries
FOR EACH ROW WHEN (
    OLD.ordering_key IS NOT NULL
    AND OLD.status IN ('pending', 'in_flight', 'retry_scheduled', 'needs_action'))
EXECUTE FUNCTION {schema}.deliveries_key_left();

-- 0004: a delivery that no longer has an ordering key (an edit removed it)
-- waits behind none: without this, the claim never handed it out again
CREATE FUNCTION {schema}.deliveries_key_dropped()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.key_waits := false;
    RETURN NEW;
END
$$;

CREATE TRIGGER deliveries_key_dropped
BEFORE UPDATE ON {schema}.deliveries
FOR EACH ROW WHEN (NEW.ordering_key IS NULL AND NEW.key_waits)
EXECUTE FUNCTION {schema}.deliveries_key_dropped();
