-- A claim that never reads the deliveries that are not due yet.
--
-- The claim walked each destination's claimable deliveries in seq order
-- (deliveries_claim_heads) and kept the due ones, so every delivery not yet
-- due in front of the due ones was read at every claim: after an outage,
-- with 100,000 retries scheduled for later at the front of the queue, an
-- empty claim read about 2,900 pages (27 ms), growing with the backlog; the
-- same for deliveries in flight on live leases. The claimable deliveries
-- are now split in two, each with an index per destination:
--
-- ready: waiting, and due when last written (no due time, or one no later
-- than updated_at: a new delivery, one handed back, an operator's retry),
-- walked in seq order;
-- timed: the others (a retry scheduled for later, a delivery waiting for
-- another worker's lock, one in flight until its lease ends), walked in the
-- order they fall due (an expression index: no column to add, no table to
-- rewrite), so a walk stops at the first one due later.
--
-- next_due, which read a window of the oldest 1,000, reads the same indexes
-- and is exact. The rows that wait behind their key (key_waits) stay out of
-- both, as before.
--
-- A plain CREATE INDEX: the migrations run in one transaction, where
-- CONCURRENTLY is refused; writers to the deliveries wait while it builds.

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
DROP INDEX {schema}.deliveries_claim_heads;
