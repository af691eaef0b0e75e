//! What a node takes from the world besides its I/O: the wall clock and
//! the ids it makes up.
//!
//! `Environment::default()` is production's (the system clock, random
//! ids); the deterministic simulation builds one per node from its seed
//! and a skewed simulated clock.

use skuld_cluster::{Ids, WallClock};

/// The wall clock and id source a node runs with.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    /// Calendar time (expiries, `recorded_at_ms`, membership's
    /// `started_at_ms`); monotonic time is `tokio::time::Instant`.
    pub clock: WallClock,
    /// Incarnations and correlation ids.
    pub ids: Ids,
}
