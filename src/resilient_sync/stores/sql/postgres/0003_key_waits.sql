-- A claim whose cost does not depend on how deep the queue is.
--
-- 1. Deliveries waiting behind their ordering key. A delivery with an
-- ordering key waits while an older delivery of its key is unfinished, and
-- the claim read those waiting rows one by one: with one key and 20,000
-- queued a claim took 312 ms to hand out one delivery. key_waits = true
-- marks a row the claim may pass over without reading it: an older
-- delivery of its key was unfinished when it was written. The claim still
-- checks every row it reads as before; the flag may be false on a row that
-- waits (that costs a read), but never true on the oldest unfinished row of
-- a key (that would hide it). The insert trigger sets it, and so does the
-- update trigger on a delivery that joins a key (sent again, or moved there
-- by an edit or a corrected event); when a delivery leaves its key (it
-- finishes, moves to another key, is deleted), the key's oldest unfinished
-- delivery is let go: by the completion statement itself for a batch (see
-- queries.sql), by the triggers below for every other writer. Their
-- conditions are checked for each row before any function runs, so
-- deliveries without a key, and claims, which keep a delivery in its key,
-- cost nothing more. Writers of one key take one advisory lock
-- (ordering_key_lock), so that a delivery marked as waiting behind one that
-- is finishing at that moment is seen by the statement that lets the next
-- one go.
--
-- 2. Planned right whatever the statistics say. The claim walked the
-- claimable rows of all destinations in seq order, and a planner whose
-- statistics still said the queue was nearly empty (a burst just arrived,
-- autovacuum has not analysed it yet) read them all through a bitmap and
-- sorted them: 175 ms a claim at 100,000 queued, 3 ms once analysed. It now
-- walks each destination's own index (destination, seq), which returns
-- rows in order, so no plan needs to read more than it hands out.

ALTER TABLE {schema}.deliveries ADD COLUMN key_waits boolean NOT NULL DEFAULT false;
UPDATE {schema}.deliveries AS d SET key_waits = true
WHERE d.ordering_key IS NOT NULL
  AND d.status IN ('pending', 'retry_scheduled')
  AND EXISTS (
      SELECT 1 FROM {schema}.deliveries AS o
      WHERE o.destination = d.destination
        AND o.ordering_key = d.ordering_key
        AND o.status IN ('pending', 'in_flight', 'retry_scheduled', 'needs_action')
        AND o.seq < d.seq);

-- the claim: per destination, in submission order, without the rows that wait
-- behind their key
CREATE INDEX deliveries_claim_heads ON {schema}.deliveries (destination, seq)
    WHERE status IN ('pending', 'retry_scheduled', 'in_flight') AND NOT key_waits;

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
