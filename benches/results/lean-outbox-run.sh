#!/bin/bash
# How the "Lean outbox" numbers in benches/RESULTS.md were taken: rounds
# alternating the baseline node (743bfb7, before events) and the current
# one, each a fresh node on a fresh data directory, spread scenario with the
# node's own commit metrics read at 3 s and 11 s, then hot, then subscribers.
#   BASE=/path/to/skuld-743bfb7 NEW=target/release/skuld benches/results/lean-outbox-run.sh
set -u
LOAD=${LOAD:-target/release/skuld-load}
run() { # label binary scenario [extra skuld-load args]
    local label=$1 bin=$2 scenario=$3; shift 3
    local log; log=$(mktemp)
    "$LOAD" --spawn-node --node-binary "$bin" --scenario "$scenario" --duration 10 --warmup 2 \
        --concurrency 64 "$@" > "$log" 2>&1 &
    sleep 3
    local port; port=$(grep -o "http 127.0.0.1:[0-9]*" "$log" | cut -d: -f2)
    local first second
    first=$(curl -s "127.0.0.1:$port/metrics"); sleep 8; second=$(curl -s "127.0.0.1:$port/metrics")
    wait
    python3 - "$label" "$scenario" "$log" <<PY
import re, sys
def parse(text):
    values = {}
    for line in text.splitlines():
        match = re.match(r'(skuld_store_commit_(?:seconds|batch_entities)_(?:sum|count)) (\S+)$', line)
        if match: values[match.group(1)] = float(match.group(2))
    return values
a, b = parse("""$first"""), parse("""$second""")
delta = lambda k: b.get(k, 0) - a.get(k, 0)
commits = max(delta('skuld_store_commit_seconds_count'), 1)
summary = [' '.join(l.split()) for l in open(sys.argv[3]) if 'throughput' in l or 'CPU ' in l or 'lag' in l]
print(sys.argv[1], sys.argv[2], f"commit_ms={1000 * delta('skuld_store_commit_seconds_sum') / commits:.3f}",
      f"entities/commit={delta('skuld_store_commit_batch_entities_sum') / commits:.1f}", *summary)
PY
    rm -f "$log"
}
for round in 1 2 3 4 5 6; do run base "$BASE" spread; run new "$NEW" spread; done
for round in 1 2 3; do run base "$BASE" hot; run new "$NEW" hot; done
run new "$NEW" spread --subscribers 1
run new "$NEW" spread --subscribers 10
