//! Exponential backoff with full jitter (CHANNELS.md item 19), the delay the
//! push worker waits before attempt `n + 1` of a failed push.
//!
//! Full jitter (a uniform draw from zero to the exponential ceiling) rather
//! than a fixed exponential: after a channel outage every key's retry would
//! otherwise land in the same instant and trip the rate limit together. A
//! small function of `rand` rather than a crate: `backoff` is unmaintained
//! and `backon` drives the retry loop itself, which here is the worker's
//! (its state is `PushState::attempts`).

use std::time::Duration;

use rand::Rng;

/// The ceiling of the first retry.
pub const BASE: Duration = Duration::from_millis(500);
/// No retry waits longer than this (a channel down for hours is retried
/// every few minutes, not every few hours).
pub const CAP: Duration = Duration::from_secs(300);

/// The ceiling for `attempt` (0 for the first retry): `min(CAP, BASE * 2^attempt)`.
pub fn ceiling(attempt: u32) -> Duration {
    ceiling_with(attempt, BASE, CAP)
}

pub fn ceiling_with(attempt: u32, base: Duration, cap: Duration) -> Duration {
    // 2^20 * 500 ms is far above any sane cap: stop doubling there.
    let factor = 1u32 << attempt.min(20);
    base.saturating_mul(factor).min(cap)
}

/// The delay before retry `attempt`: uniform in `[0, ceiling(attempt)]`.
pub fn backoff(attempt: u32) -> Duration {
    jittered(ceiling(attempt), &mut rand::rng())
}

/// Full jitter of `ceiling` from `rng` (tests pass a seeded one).
pub fn jittered(ceiling: Duration, rng: &mut impl Rng) -> Duration {
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.random_range(0..=ceiling_ms))
}

/// The delay before retry `attempt` when the channel also named one
/// (`Retry-After`, Shopify's throttle arithmetic, the local limiter): never
/// sooner than the channel asked, and still spread by the jitter.
pub fn retry_delay(attempt: u32, hint: Duration) -> Duration {
    hint.max(backoff(attempt))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn ceilings_double_up_to_the_cap() {
        assert_eq!(ceiling(0), Duration::from_millis(500));
        assert_eq!(ceiling(1), Duration::from_secs(1));
        assert_eq!(ceiling(3), Duration::from_secs(4));
        assert_eq!(ceiling(9), Duration::from_secs(256));
        assert_eq!(ceiling(10), CAP);
        assert_eq!(ceiling(u32::MAX), CAP);
    }

    #[test]
    fn draws_stay_under_the_ceiling_and_spread() {
        let mut rng = StdRng::seed_from_u64(7);
        let draws: Vec<Duration> = (0..200).map(|_| jittered(ceiling(4), &mut rng)).collect();
        assert!(draws.iter().all(|d| *d <= ceiling(4)));
        let below_half = draws.iter().filter(|d| **d < ceiling(4) / 2).count();
        assert!((60..=140).contains(&below_half), "{below_half}");
        for attempt in 0..30 {
            assert!(backoff(attempt) <= CAP);
        }
    }

    #[test]
    fn a_hint_is_a_floor() {
        let hint = Duration::from_secs(400);
        assert_eq!(retry_delay(0, hint), hint);
        assert!(retry_delay(12, Duration::ZERO) <= CAP);
    }
}
