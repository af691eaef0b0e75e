//! When to fetch the shard map again: once it is known stale, at most one
//! fetch at a time and at most one start per interval, so a burst of misses
//! (every request of a moved shard) costs one `GetShardMap`, not thousands.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Debug, Default)]
struct State {
    stale: bool,
    running: bool,
    last_start: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct RefreshGate {
    interval: Duration,
    state: Mutex<State>,
}

impl RefreshGate {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) fn mark_stale(&self) {
        self.state.lock().stale = true;
    }

    pub(crate) fn is_stale(&self) -> bool {
        self.state.lock().stale
    }

    /// Whether a fetch should start at `now`; if so it is taken as started.
    pub(crate) fn try_start(&self, now: Instant) -> bool {
        let mut state = self.state.lock();
        let rested = state
            .last_start
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if !state.stale || state.running || !rested {
            return false;
        }
        state.stale = false;
        state.running = true;
        state.last_start = Some(now);
        true
    }

    /// The fetch ended; a failed one leaves the map stale, to be tried
    /// again after the interval.
    pub(crate) fn finish(&self, fetched: bool) {
        let mut state = self.state.lock();
        state.running = false;
        if !fetched {
            state.stale = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_misses_starts_one_fetch_per_interval() {
        let gate = RefreshGate::new(Duration::from_millis(500));
        let start = Instant::now();
        assert!(!gate.try_start(start), "nothing is stale");
        for _ in 0..100 {
            gate.mark_stale();
        }
        assert!(gate.try_start(start));
        gate.mark_stale();
        assert!(!gate.try_start(start), "one fetch at a time");
        gate.finish(true);
        assert!(
            !gate.try_start(start + Duration::from_millis(100)),
            "within the interval"
        );
        assert!(gate.is_stale(), "the miss is kept for later");
        assert!(gate.try_start(start + Duration::from_millis(500)));
        gate.finish(true);
        assert!(!gate.try_start(start + Duration::from_secs(5)), "fresh");
    }

    #[test]
    fn a_failed_fetch_is_tried_again_after_the_interval() {
        let gate = RefreshGate::new(Duration::from_secs(1));
        let start = Instant::now();
        gate.mark_stale();
        assert!(gate.try_start(start));
        gate.finish(false);
        assert!(gate.is_stale());
        assert!(!gate.try_start(start + Duration::from_millis(999)));
        assert!(gate.try_start(start + Duration::from_secs(1)));
    }
}
