-- A delivery with an ordering key waits while an older delivery of its key is
-- unfinished, and the claim walked those waiting rows one by one, testing each
-- against the key's index: with few keys and a deep queue (one key, 20,000
-- queued: 15 ms a claim that hands out one delivery) a claim cost as much as
-- the queue was deep. key_waits = 1 marks a row the claim may pass over
-- without reading it: an older delivery of its key was unfinished when it was
-- written. The claim reads only the key_waits = 0 part of its index, and
-- still checks every row it reads as before: the flag may be 0 on a row that
-- waits (that costs a read), but never 1 on the oldest unfinished row of a
-- key (that would hide it). The insert sets the flag; the triggers below let
-- the key's oldest unfinished delivery go when a delivery leaves the key (it
-- finishes, an edit moves it to another key, it is deleted) and set the flag
-- of a delivery that joins a key (sent again, or moved there), whichever
-- statement does it.
ALTER TABLE resilient_sync_deliveries ADD COLUMN key_waits INTEGER NOT NULL DEFAULT 0;
UPDATE resilient_sync_deliveries AS d SET key_waits = 1
WHERE d.open_key IS NOT NULL
  AND d.status IN ('pending', 'retry_scheduled')
  AND EXISTS (
      SELECT 1 FROM resilient_sync_deliveries AS o
      WHERE o.destination = d.destination
        AND o.open_key = d.open_key
        AND o.seq < d.seq
        AND o.open_key IS NOT NULL);
DROP INDEX resilient_sync_deliveries_due;
CREATE INDEX resilient_sync_deliveries_due
    ON resilient_sync_deliveries (key_waits, seq, due_at, destination)
    WHERE due_at IS NOT NULL;
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
