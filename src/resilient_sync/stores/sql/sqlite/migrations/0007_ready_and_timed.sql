-- A claim reads the deliveries it can take, not those due later or those of
-- destinations it skips.
--
-- The claim walked one index of every claimable row in submission order and
-- skipped, row by row, those not yet due and those of a paused or held
-- destination. After an outage the front of the queue is exactly that:
-- retries scheduled for later, and the backlog of the destination that is
-- down (held by its circuit breaker) or paused. With 100,000 of them in
-- front, an empty claim read all 100,000 entries (7.5 ms) and a claim of 100
-- due deliveries behind them 9 ms, at every claim and every idle poll; 14 ms
-- behind a paused destination's 100,000.
--
-- due_at now tells the two kinds of claimable row apart:
--   > 0   waiting for its time (a scheduled retry, a lease running): the
--         time, in resilient_sync_deliveries_timed, by time;
--   <= 0  ready: -due_at is the time it fell due (0: at once), in
--         resilient_sync_deliveries_ready, by destination and submission
--         order.
-- A row is written ready when it is due when written (a new delivery, a
-- hand-back); a claim first moves the rows whose time has come from the
-- first index to the second (the earliest first, at most a bounded number
-- per claim), then walks each destination it may take apart, in submission
-- order, through the ready index: rows due later, and the destinations it
-- skips, are never read. The rows due at the time of migrating are marked
-- ready here.
DROP INDEX resilient_sync_deliveries_due;
-- a time before 1970 (negative) would read as "ready since" a time to come
UPDATE resilient_sync_deliveries SET due_at = 0 WHERE due_at < 0;
UPDATE resilient_sync_deliveries SET due_at = -due_at
WHERE due_at > 0
  AND due_at <= CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER);
CREATE INDEX resilient_sync_deliveries_ready
    ON resilient_sync_deliveries (key_waits, destination, seq)
    WHERE due_at <= 0;
CREATE INDEX resilient_sync_deliveries_timed
    ON resilient_sync_deliveries (key_waits, due_at)
    WHERE due_at > 0;
