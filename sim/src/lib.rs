//! skuld's real node code under deterministic simulation.
//!
//! Every host (a simulated etcd, three nodes, clients) is a turmoil host:
//! its own single-threaded tokio runtime with a paused clock, all on one
//! OS thread, talking over turmoil's simulated TCP. One `u64` seed fixes
//! the network, the workload and the nemesis, so a failing run replays
//! exactly. See `docs/simulation.md`.

pub mod etcd;
pub mod store;
