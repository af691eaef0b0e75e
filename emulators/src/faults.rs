//! Faults a test injects into one emulator's HTTP front door (CHANNELS.md "What
//! skuld should build" 1: throttle, 5xx, latency, drop or duplicate). Throttling
//! and delayed apply are channel-specific and live with each emulator's state.

use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// A fault plan, as the control API takes it (`POST /_control/faults`); every
/// field is optional and replaces only what it names.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultPlan {
    /// Answer the next N requests with `error_status` (the channel's own error body).
    pub fail_next: Option<u32>,
    /// Status for injected failures; 503 by default.
    pub error_status: Option<u16>,
    /// Also fail each request with this probability (0..=1), from a seeded RNG.
    pub fail_probability: Option<f64>,
    /// Seed for `fail_probability`, so a run can be repeated.
    pub seed: Option<u64>,
    /// Wait this long before handling each request.
    pub latency_ms: Option<u64>,
    /// Apply the next N requests, then close the connection without a reply
    /// (the "lost reply": the change happened, the caller cannot know).
    pub drop_reply_next: Option<u32>,
    /// Apply the next N requests twice (a duplicated delivery); the caller gets
    /// the second reply.
    pub duplicate_next: Option<u32>,
}

#[derive(Debug)]
struct FaultState {
    fail_next: u32,
    error_status: u16,
    fail_probability: f64,
    rng: StdRng,
    latency: Duration,
    drop_reply_next: u32,
    duplicate_next: u32,
}

impl Default for FaultState {
    fn default() -> Self {
        Self {
            fail_next: 0,
            error_status: 503,
            fail_probability: 0.0,
            rng: StdRng::seed_from_u64(0),
            latency: Duration::ZERO,
            drop_reply_next: 0,
            duplicate_next: 0,
        }
    }
}

/// What the front door does with one request, decided when it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestFaults {
    pub latency: Duration,
    /// Answer with this status instead of handling the request.
    pub fail_with: Option<u16>,
    pub drop_reply: bool,
    pub duplicate: bool,
}

#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<FaultState>,
}

impl Faults {
    /// Merges a plan into the current faults.
    pub fn apply(&self, plan: &FaultPlan) {
        let mut state = self.state.lock();
        if let Some(count) = plan.fail_next {
            state.fail_next = count;
        }
        if let Some(status) = plan.error_status {
            state.error_status = status;
        }
        if let Some(probability) = plan.fail_probability {
            state.fail_probability = probability.clamp(0.0, 1.0);
        }
        if let Some(seed) = plan.seed {
            state.rng = StdRng::seed_from_u64(seed);
        }
        if let Some(latency_ms) = plan.latency_ms {
            state.latency = Duration::from_millis(latency_ms);
        }
        if let Some(count) = plan.drop_reply_next {
            state.drop_reply_next = count;
        }
        if let Some(count) = plan.duplicate_next {
            state.duplicate_next = count;
        }
    }

    /// Answers the next `count` requests with `status`.
    pub fn fail_next(&self, count: u32, status: u16) {
        self.apply(&FaultPlan {
            fail_next: Some(count),
            error_status: Some(status),
            ..FaultPlan::default()
        });
    }

    /// Fails each request with `probability`, drawn from an RNG seeded with `seed`.
    pub fn fail_randomly(&self, probability: f64, seed: u64, status: u16) {
        self.apply(&FaultPlan {
            fail_probability: Some(probability),
            seed: Some(seed),
            error_status: Some(status),
            ..FaultPlan::default()
        });
    }

    pub fn set_latency(&self, latency: Duration) {
        self.state.lock().latency = latency;
    }

    /// Applies the next `count` requests and drops their replies.
    pub fn drop_reply_next(&self, count: u32) {
        self.state.lock().drop_reply_next = count;
    }

    /// Applies the next `count` requests twice.
    pub fn duplicate_next(&self, count: u32) {
        self.state.lock().duplicate_next = count;
    }

    /// Removes every fault.
    pub fn clear(&self) {
        *self.state.lock() = FaultState::default();
    }

    pub(crate) fn for_request(&self) -> RequestFaults {
        let mut state = self.state.lock();
        let fail_with = if state.fail_next > 0 {
            state.fail_next -= 1;
            Some(state.error_status)
        } else if state.fail_probability > 0.0 {
            let probability = state.fail_probability;
            state
                .rng
                .random_bool(probability)
                .then_some(state.error_status)
        } else {
            None
        };
        let handled = fail_with.is_none();
        let drop_reply = handled && state.drop_reply_next > 0;
        if drop_reply {
            state.drop_reply_next -= 1;
        }
        let duplicate = handled && state.duplicate_next > 0;
        if duplicate {
            state.duplicate_next -= 1;
        }
        RequestFaults {
            latency: state.latency,
            fail_with,
            drop_reply,
            duplicate,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fail_next_counts_down_then_stops() {
        let faults = Faults::default();
        faults.fail_next(2, 500);
        assert_eq!(faults.for_request().fail_with, Some(500));
        assert_eq!(faults.for_request().fail_with, Some(500));
        assert_eq!(faults.for_request().fail_with, None);
    }

    #[test]
    fn a_seeded_probability_repeats() {
        let draws = |seed| {
            let faults = Faults::default();
            faults.fail_randomly(0.5, seed, 503);
            (0..32)
                .map(|_| faults.for_request().fail_with.is_some())
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert!(draws(7).iter().any(|failed| *failed));
        assert!(draws(7).iter().any(|failed| !failed));
    }
}
