-- skuld's cluster-mode schema. Entity keys, scopes and payloads are opaque
-- bytes: bytea compares like memcmp, so key order matches the embedded store.
-- Sequences, epochs and times are u64 in Rust, stored as bigint (<= i64::MAX).

-- One row per shard: the epoch of its current owner. Every commit reads its
-- shards' rows FOR SHARE, so raising an epoch waits for commits in flight.
CREATE TABLE shard_fences (
    shard integer PRIMARY KEY,
    epoch bigint NOT NULL
);

CREATE TABLE journal (
    entity bytea NOT NULL,
    seq bigint NOT NULL,
    entry bytea NOT NULL,
    PRIMARY KEY (entity, seq)
);

CREATE TABLE snapshots (
    entity bytea PRIMARY KEY,
    seq bigint NOT NULL,
    state bytea NOT NULL
);

-- fingerprint: the u128 request fingerprint as 16 big-endian bytes.
CREATE TABLE idempotency (
    entity bytea NOT NULL,
    key text NOT NULL,
    fingerprint bytea NOT NULL,
    reply bytea NOT NULL,
    recorded_at_ms bigint NOT NULL,
    PRIMARY KEY (entity, key)
);
CREATE INDEX idempotency_recorded_at ON idempotency (recorded_at_ms);

-- shard is denormalised from the entity key so a node can scan the timers
-- of the shards it owns without knowing how keys hash.
CREATE TABLE timers (
    entity bytea PRIMARY KEY,
    shard integer NOT NULL,
    due_ms bigint NOT NULL
);
CREATE INDEX timers_shard_due ON timers (shard, due_ms);
CREATE INDEX timers_due ON timers (due_ms);

CREATE TABLE summaries (
    scope bytea NOT NULL,
    entity bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (scope, entity)
);
