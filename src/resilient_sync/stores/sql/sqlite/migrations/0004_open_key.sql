-- The claim's "is there an older unfinished delivery of my key?" reads an
-- index of the open deliveries by key. Its old condition named the status,
-- so every claim (PENDING -> IN_FLIGHT) rewrote each claimed row's entry,
-- and with many deliveries queued per key each entry sits on its own page:
-- at 1M queued (1,000 keys) a claim of 100 wrote 100 of its pages (of the
-- 125 it wrote in all).
-- open_key is the ordering key while the delivery is unfinished and NULL
-- once it is finished: the statements that change the status set it, the
-- claim does not touch it, and so the claim no longer writes this index.
ALTER TABLE resilient_sync_deliveries ADD COLUMN open_key TEXT;
UPDATE resilient_sync_deliveries SET open_key = ordering_key
WHERE ordering_key IS NOT NULL
  AND status IN ('pending', 'in_flight', 'retry_scheduled', 'needs_action');
DROP INDEX resilient_sync_deliveries_key;
CREATE INDEX resilient_sync_deliveries_key
    ON resilient_sync_deliveries (destination, open_key, seq)
    WHERE open_key IS NOT NULL;
