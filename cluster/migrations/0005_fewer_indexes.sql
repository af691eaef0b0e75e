-- Indexes no query reads, dropped: each cost an index insertion per row on
-- the write path of every reservation.
-- * idempotency_recorded_at: the purge goes by (shard, recorded_at_ms),
--   rows from before migration 2 by `shard IS NULL` in the same index.
-- * events_shard_recorded_at: retention walks a shard's prefix by seq (the
--   primary key) and reads recorded_at_ms from the rows.
-- * timers_due: a node scans the timers of its own shards (timers_shard_due);
--   a store used without shards (tools, tests) reads the table.
DROP INDEX IF EXISTS idempotency_recorded_at;
DROP INDEX IF EXISTS events_shard_recorded_at;
DROP INDEX IF EXISTS timers_due;
