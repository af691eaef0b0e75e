-- Small records of no shard that every node reads: webhook endpoints, sink
-- cursors, dead letters. (kind, id) -> value.
CREATE TABLE records (
    kind text NOT NULL,
    id text NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (kind, id)
);
