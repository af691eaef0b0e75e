-- Indexes no query reads, dropped: each cost an index insertion per row on
-- the write path of every reservation.
-- * idempotency_recorded_at: the purge goes by (shard, recorded_at_ms),
--   rows from before migration 2 by `shard IS NULL` in the same index.
-- * events_shard_recorded_at: retention walks a shard's prefix by seq (the
--   primary key) and reads recorded_at_ms from the rows.
-- timers_due stays: under a backlog of overdue timers (after an outage or a
-- takeover) the planner reads it for the due-timer scan of a node's shards
-- (ORDER BY due_ms, entity LIMIT n): 41 ms a scan against 122 ms without
-- it, measured with 80k overdue timers and LIMIT 4096.
DROP INDEX IF EXISTS idempotency_recorded_at;
DROP INDEX IF EXISTS events_shard_recorded_at;
