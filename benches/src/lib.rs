//! Load generator and micro-benchmarks (see benches/RESULTS.md).
//!
//! The pieces of `skuld-load` that are plain logic live here so they can be
//! unit-tested: recording latencies per second, summarising them, the
//! open-loop timetable, and the SVG report.

pub mod plot;
pub mod stats;
