-- One reservation of one unit on the hot position (every client, one row).
\set id 1
UPDATE positions SET reserved = reserved + 1 WHERE id = :id AND on_hand - reserved >= 1;
