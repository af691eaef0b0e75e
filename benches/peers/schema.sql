-- The PostgreSQL peer of skuld's reservation benchmarks (issue 15): one row
-- per position; a reservation of one unit is one guarded UPDATE
-- (hot.sql, spread.sql). 10,000 rows; the hot scenario uses row 1 alone.
-- Stock is far beyond what any run reserves, so the guard never refuses.
CREATE TABLE positions (
    id       integer PRIMARY KEY,
    on_hand  bigint  NOT NULL,
    reserved bigint  NOT NULL DEFAULT 0
);
INSERT INTO positions (id, on_hand, reserved)
SELECT id, 1000000000000, 0 FROM generate_series(1, 10000) AS id;
VACUUM ANALYZE positions;
