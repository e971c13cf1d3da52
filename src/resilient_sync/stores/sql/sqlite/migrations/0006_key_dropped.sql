-- A delivery that leaves every key waits behind none.
--
-- An operator's edit (or a corrected event) that removed the ordering key of
-- a delivery waiting behind its key left key_waits = 1 on it: the claim,
-- which reads only the key_waits = 0 part of its index, never handed it out
-- again, and nothing cleared the flag (resilient_sync_key_joined runs only
-- when a row joins a key). (Found by the key-heads fuzz test in its long
-- mode: enqueue two deliveries of a key, remove the key of the second, and
-- it was never claimed.) The flag is now cleared when a row's open key goes
-- to NULL (an edit, or the delivery finished) while it is set (only then:
-- a delivery finishing at the head of its key, the common case, runs no
-- trigger body), and the rows stuck so are cleared here.
CREATE TRIGGER resilient_sync_key_dropped
AFTER UPDATE OF open_key ON resilient_sync_deliveries
WHEN OLD.open_key IS NOT NULL AND NEW.open_key IS NULL AND NEW.key_waits = 1
BEGIN
    UPDATE resilient_sync_deliveries SET key_waits = 0
    WHERE seq = NEW.seq AND key_waits = 1;
END;

UPDATE resilient_sync_deliveries SET key_waits = 0
WHERE open_key IS NULL AND key_waits = 1;
