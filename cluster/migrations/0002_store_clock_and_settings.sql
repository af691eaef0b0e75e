-- Idempotency records are stamped by the database's clock (now()) and purged
-- per shard by the shard's owner, so no node's wall clock decides when a key
-- is forgotten. Rows written before this migration have no shard; the owner
-- of shard 0 purges those.
ALTER TABLE idempotency ADD COLUMN shard integer;
CREATE INDEX idempotency_shard_recorded_at ON idempotency (shard, recorded_at_ms);

-- Facts the store was written under, checked by every node at start:
-- 'shard_count' (keys hash to shards by it; a different count would route
-- every key to the wrong fence).
CREATE TABLE cluster_settings (
    name text PRIMARY KEY,
    value text NOT NULL
);
