//! A token bucket whose state the emulators report exactly as each channel does.
//!
//! Shopify calls it a leaky bucket (CHANNELS.md A.4), Amazon and Walmart a token
//! bucket (B.2, C.3): all three are "a level that refills at a fixed rate up to a
//! capacity, and a request takes its cost from the level". One struct serves all
//! three so each emulator can expose `currentlyAvailable`, `x-current-token-count`
//! and the like straight from it.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    refill_per_second: f64,
    level: f64,
    refilled_at: Instant,
}

/// Why a request could not take its cost: how long until it could.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shortfall {
    pub wait: Duration,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(capacity: f64, refill_per_second: f64) -> Self {
        Self {
            capacity,
            refill_per_second,
            level: capacity,
            refilled_at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.level = (self.level + elapsed * self.refill_per_second).min(self.capacity);
        self.refilled_at = now;
    }

    /// Takes `cost` if the level covers it; otherwise leaves the level alone.
    pub fn try_take(&mut self, cost: f64) -> Result<(), Shortfall> {
        self.refill();
        if self.level + 1e-9 >= cost {
            self.level -= cost;
            Ok(())
        } else {
            Err(Shortfall {
                wait: self.time_until(cost),
            })
        }
    }

    /// Gives back part of a charge (Shopify refunds requested minus actual cost).
    pub fn refund(&mut self, amount: f64) {
        self.refill();
        self.level = (self.level + amount).min(self.capacity);
    }

    /// The current level, refilled to now.
    pub fn level(&mut self) -> f64 {
        self.refill();
        self.level
    }

    pub fn capacity(&self) -> f64 {
        self.capacity
    }

    pub fn refill_per_second(&self) -> f64 {
        self.refill_per_second
    }

    /// How long until the level reaches `cost` (zero if it already has).
    pub fn time_until(&mut self, cost: f64) -> Duration {
        self.refill();
        let missing = (cost - self.level).max(0.0);
        if missing == 0.0 {
            return Duration::ZERO;
        }
        // A day stands for "not soon": also what a zero, tiny or broken rate gives.
        let not_soon = Duration::from_secs(86_400);
        if self.refill_per_second <= 0.0 {
            return not_soon;
        }
        Duration::try_from_secs_f64(missing / self.refill_per_second)
            .map(|wait| wait.min(not_soon))
            .unwrap_or(not_soon)
    }

    /// Empties the bucket (a fault: "the channel throttles now").
    pub fn drain(&mut self) {
        self.refill();
        self.level = 0.0;
    }

    /// Shrinks or grows the bucket (Shopify "may temporarily reduce limits",
    /// A.4); the level is clamped to the new capacity.
    pub fn resize(&mut self, capacity: f64, refill_per_second: f64) {
        self.refill();
        self.capacity = capacity;
        self.refill_per_second = refill_per_second;
        self.level = self.level.min(capacity);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn takes_until_empty_then_refuses_with_the_wait() {
        let mut bucket = TokenBucket::new(2.0, 1.0);
        assert!(bucket.try_take(1.0).is_ok());
        assert!(bucket.try_take(1.0).is_ok());
        let shortfall = bucket.try_take(1.0).unwrap_err();
        assert!(shortfall.wait > Duration::from_millis(900));
        assert!(bucket.level() < 0.1);
    }

    #[test]
    fn refills_at_its_rate_up_to_capacity() {
        let mut bucket = TokenBucket::new(10.0, 1000.0);
        bucket.drain();
        std::thread::sleep(Duration::from_millis(5));
        let level = bucket.level();
        assert!((4.0..=10.0).contains(&level), "{level}");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(bucket.level(), 10.0);
    }
}
