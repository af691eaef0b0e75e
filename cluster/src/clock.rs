//! The wall clock a node reads, injected.
//!
//! Production reads the system clock; the deterministic simulation passes
//! a clock that follows simulated time with a per-node skew (two days
//! ahead on one node, say), so the clock-skew faults run in simulation.
//! Monotonic time is `tokio::time::Instant` everywhere, which the
//! simulation's paused runtimes drive; this is only the calendar time.

use std::fmt;
use std::sync::Arc;

/// Milliseconds since the unix epoch, by some clock.
#[derive(Clone)]
pub struct WallClock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl WallClock {
    /// The system clock.
    pub fn system() -> Self {
        Self(Arc::new(system_now_ms))
    }

    /// A clock that reads `now_ms` (the simulation's).
    pub fn from_fn(now_ms: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(now_ms))
    }

    /// Milliseconds since the unix epoch now.
    pub fn now_ms(&self) -> i64 {
        (self.0)()
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for WallClock {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("WallClock")
    }
}

/// The system clock in unix milliseconds (0 before 1970, saturating far
/// in the future).
pub(crate) fn system_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_injected_clock_is_read_and_the_system_clock_is_after_2020() {
        let fixed = WallClock::from_fn(|| 42);
        assert_eq!(fixed.clone().now_ms(), 42);
        assert!(WallClock::system().now_ms() > 1_577_836_800_000);
    }
}
