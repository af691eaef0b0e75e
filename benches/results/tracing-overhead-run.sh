#!/bin/bash
# How the "Tracing overhead" numbers in benches/RESULTS.md were taken: spread
# on a fresh single node (embedded store), alternating a node without trace
# export and one exporting over OTLP/gRPC to the tests' receiver run as a
# process (otlp-sink), ROUNDS pairs of 20 s runs. The sink prints how many
# spans reached it, to compare with the requests served.
#   cargo build --release -p skuld-node -p skuld-benches
#   cargo build --release -p skuld-tests --bin otlp-sink
#   ROUNDS=1 benches/results/tracing-overhead-run.sh
set -u
LOAD=${LOAD:-target/release/skuld-load}
NODE=${NODE:-target/release/skuld}
SINK=${SINK:-target/release/otlp-sink}
ROUNDS=${ROUNDS:-1}
SINK_ADDR=${SINK_ADDR:-127.0.0.1:43170}
run() { # label [extra skuld-load args]
    local label=$1; shift
    echo "== $label"
    "$LOAD" --spawn-node --node-binary "$NODE" --scenario spread --duration 20 --warmup 2 \
        --concurrency 64 "$@" 2>&1 | grep -E "throughput|errors|CPU|correctness|^  all "
}
for round in $(seq "$ROUNDS"); do
    run "round $round: no trace export"
    "$SINK" "$SINK_ADDR" 40 &
    sink=$!
    sleep 0.5
    run "round $round: OTLP to otlp-sink" --node-arg --otlp-endpoint --node-arg "http://$SINK_ADDR"
    wait "$sink"
done
