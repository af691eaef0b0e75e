//! Load generator and micro-benchmarks (see benches/RESULTS.md).
//!
//! The pieces of `skuld-load` that are plain logic live here so they can be
//! unit-tested: recording latencies per second, summarising them, the
//! open-loop timetable, key pickers (zipf), the correctness arithmetic and
//! the SVG report.

pub mod check;
pub mod node;
pub mod pick;
pub mod plot;
pub mod stats;
