//! Load generator and micro-benchmarks (see benches/RESULTS.md).
