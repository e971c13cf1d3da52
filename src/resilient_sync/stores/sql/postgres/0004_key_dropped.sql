-- A delivery that no longer has an ordering key waits behind none.
--
-- An operator's edit (or a corrected event) that removed the ordering key of
-- a delivery waiting behind its key left key_waits true on it: the claim,
-- which never reads a row marked so, never handed it out again, and nothing
-- cleared the flag. (Found by the key-heads fuzz test in its long mode: enqueue
-- two deliveries of a key, remove the key of the second, and it was never
-- claimed.) The flag is now cleared whenever a row without a key is written
-- with it, and the rows stuck so are cleared here.
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

UPDATE {schema}.deliveries SET key_waits = false
WHERE ordering_key IS NULL AND key_waits;
