-- The outbox: every event is written by the commit of the change that caused
-- it. seq numbers a shard's events 1, 2, 3, ... without gaps: a commit takes
-- the next numbers from event_bounds.head under that row's lock, so commits
-- to one shard number and become visible in the same order.
CREATE TABLE events (
    shard integer NOT NULL,
    seq bigint NOT NULL,
    recorded_at_ms bigint NOT NULL,
    entity bytea NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (shard, seq)
);
-- One aggregate's history, and retention by age.
CREATE INDEX events_entity ON events (entity, seq);
CREATE INDEX events_shard_recorded_at ON events (shard, recorded_at_ms);

-- Events floor + 1 ..= head of a shard are retained; retention raises the
-- floor as it deletes a prefix. One row per shard, created with the fences.
CREATE TABLE event_bounds (
    shard integer PRIMARY KEY,
    floor bigint NOT NULL DEFAULT 0,
    head bigint NOT NULL DEFAULT 0
);
