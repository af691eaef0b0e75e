-- One reservation of one unit on one of 10,000 positions, uniformly.
\set id random(1, 10000)
UPDATE positions SET reserved = reserved + 1 WHERE id = :id AND on_hand - reserved >= 1;
