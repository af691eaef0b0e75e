#!/bin/bash
# Issue 12 runs: baseline (743bfb7) vs current, 0/1/10 subscribers; 3 rounds.
cd /work/main
OUT=benches/out/events12
BASE=/tmp/skuld-base-target/release/skuld
CUR=target/release/skuld
LOAD=target/release/skuld-load
busy() { pgrep -x cargo >/dev/null || pgrep -x rustc >/dev/null || pgrep -f "cargo-clippy|skuld-e2e|/deps/skuld_tests|target/debug/deps" >/dev/null; }
wait_quiet() {
  local waited=0 quiet=0
  while [ $quiet -lt 15 ]; do
    if busy; then quiet=0; else quiet=$((quiet+1)); fi
    sleep 1; waited=$((waited+1))
    [ $waited -gt 2400 ] && { echo "waited 2400 s, running anyway" ; return; }
  done
  echo "waited ${waited}s for quiet"
}
run() { # round scenario variant
  local r=$1 sc=$2 v=$3 bin subs
  case $v in base) bin=$BASE; subs=0;; ev0) bin=$CUR; subs=0;; ev1) bin=$CUR; subs=1;; ev10) bin=$CUR; subs=10;; esac
  local dir=$OUT/r$r-$sc-$v
  mkdir -p $dir
  wait_quiet | tee $dir/env.txt
  { date -u +%FT%TZ; cat /proc/loadavg; grep some /proc/pressure/cpu; } >> $dir/env.txt
  ( while sleep 1; do busy && echo "busy $(date -u +%T)"; done ) > $dir/busy.txt &
  local mon=$!
  local cmd="$LOAD --spawn-node --node-binary $bin --scenario $sc --duration 10 --warmup 2 --concurrency 64"
  [ $subs -gt 0 ] && cmd="$cmd --subscribers $subs"
  echo "$cmd --out $dir" > $dir/cmd.txt
  $cmd --out $dir > $dir/stdout.txt 2> $dir/stderr.txt
  echo "rc $?" >> $dir/env.txt
  kill $mon 2>/dev/null; wait $mon 2>/dev/null
  { cat /proc/loadavg; grep some /proc/pressure/cpu; } >> $dir/env.txt
  echo "== r$r $sc $v: $(grep -E 'throughput' $dir/stdout.txt) $(grep -E 'delivery lag' $dir/stdout.txt) busy=$(wc -l < $dir/busy.txt)"
}
orders=("base ev0 ev1 ev10" "ev0 ev1 ev10 base" "ev1 ev10 base ev0")
for r in 1 2 3; do
  order=${orders[$((r-1))]}
  for sc in spread hot; do
    for v in $order; do run $r $sc $v; done
  done
done
echo ALL DONE
