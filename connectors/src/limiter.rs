//! The account limiter (CHANNELS.md item 17): a local copy of the channel's
//! published budget, charged *before* each call and corrected from the
//! channel's own figures after it, so that a correct connector never makes
//! the channel refuse a call for its rate.
//!
//! Every budget in CHANNELS.md is one model, a level that refills at a fixed
//! rate up to a capacity, from which a call takes its cost:
//! - Shopify's cost points (A.4): capacity and restore rate from the plan,
//!   corrected from each response's `extensions.cost.throttleStatus`
//!   (`currentlyAvailable`, `maximumAvailable`, `restoreRate`);
//! - Amazon's per-operation token buckets (B.2, 5/s burst 10 for listings
//!   items; the feeds API's own), the rate corrected from
//!   `x-amzn-RateLimit-Limit`;
//! - Walmart's per-API token buckets (C.3), the level corrected from
//!   `x-current-token-count` and `x-next-replenish-time`;
//! - feeds per hour (Walmart's 10, C.2): capacity 10, 10 per 3,600 s.
//!
//! One small struct, not `governor`: governor's GCRA has no level to set
//! from a server's figure nor a rate to change in place, and Shopify's
//! bucket must follow the server's `currentlyAvailable`.
//!
//! The level may go below zero: a caller that must wait is charged at once
//! and told how long to sleep, so callers that arrive together queue one
//! behind the other instead of all waking at the same instant. A caller
//! whose wait would pass its `max_wait` is not charged and gets the wait
//! back, to hand to the worker as a `Retry`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The longest wait ever computed (a zero rate would otherwise wait forever).
const LONGEST_WAIT: Duration = Duration::from_secs(3600);

/// The arithmetic, with time passed in so that tests need no clock.
#[derive(Debug, Clone)]
pub struct Bucket {
    capacity: f64,
    rate: f64,
    level: f64,
    at: Instant,
    /// No call before this (a `Retry-After`, a throttle's reset time).
    blocked_until: Option<Instant>,
    /// Charged to calls not yet answered: a server figure does not include
    /// those that reach it later, so they come off it.
    in_flight: f64,
    /// Kept back below every charge, for the rounding of two clocks.
    reserve: f64,
}

impl Bucket {
    /// A full bucket of `capacity` refilling `rate` per second.
    pub fn new(capacity: f64, rate: f64, reserve: f64, now: Instant) -> Self {
        Bucket {
            capacity: capacity.max(0.0),
            rate: rate.max(0.0),
            level: capacity.max(0.0),
            at: now,
            blocked_until: None,
            in_flight: 0.0,
            reserve: reserve.max(0.0),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.rate).min(self.capacity);
        self.at = self.at.max(now);
    }

    /// The level now (negative while callers wait for it).
    pub fn level(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.level
    }

    pub fn capacity(&self) -> f64 {
        self.capacity
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// How long until `cost` could be taken.
    pub fn wait_for(&mut self, cost: f64, now: Instant) -> Duration {
        self.refill(now);
        let blocked = self
            .blocked_until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
        let missing = cost + self.reserve - self.level;
        let refill = if missing <= 0.0 {
            Duration::ZERO
        } else if self.rate <= 0.0 || cost + self.reserve > self.capacity {
            // Never enough: the adapters size their calls below capacity.
            LONGEST_WAIT
        } else {
            Duration::try_from_secs_f64(missing / self.rate)
                .unwrap_or(LONGEST_WAIT)
                .min(LONGEST_WAIT)
        };
        refill.max(blocked)
    }

    /// Charges `cost` if it can be taken within `max_wait`: `Ok(wait)`, the
    /// time to sleep before calling; otherwise `Err(wait)`, uncharged.
    pub fn take(
        &mut self,
        cost: f64,
        max_wait: Duration,
        now: Instant,
    ) -> Result<Duration, Duration> {
        let wait = self.wait_for(cost, now);
        if wait > max_wait {
            return Err(wait);
        }
        self.level -= cost;
        self.in_flight += cost;
        Ok(wait)
    }

    /// A call charged `cost` was answered (or given up).
    pub fn finish(&mut self, cost: f64) {
        self.in_flight = (self.in_flight - cost).max(0.0);
    }

    /// The server says the level is `level` after the call charged `cost`
    /// (already [`Self::finish`]ed or not: pass its cost either way). The
    /// calls still in flight come off it; the figure was computed before
    /// this instant, so the local refill from now on is, if anything, slow.
    pub fn correct_level(&mut self, level: f64, cost: f64, now: Instant) {
        self.refill(now);
        let others = (self.in_flight - cost).max(0.0);
        self.level = (level - others).min(self.capacity);
    }

    /// The server named its capacity or rate (Shopify's plan, Amazon's
    /// `x-amzn-RateLimit-Limit`).
    pub fn correct_shape(&mut self, capacity: Option<f64>, rate: Option<f64>, now: Instant) {
        self.refill(now);
        if let Some(capacity) = capacity.filter(|c| c.is_finite() && *c >= 0.0) {
            self.capacity = capacity;
            self.level = self.level.min(capacity);
        }
        if let Some(rate) = rate.filter(|r| r.is_finite() && *r >= 0.0) {
            self.rate = rate;
        }
    }

    /// The server refused for its rate: nothing is left, and nothing goes
    /// before `until` (its `Retry-After`, if it gave one).
    pub fn throttled(&mut self, until: Option<Instant>, now: Instant) {
        self.refill(now);
        self.level = self.level.min(0.0);
        if let Some(until) = until {
            self.blocked_until = Some(self.blocked_until.map_or(until, |b| b.max(until)));
        }
    }

    /// No call before `until` (Walmart's replenish time when its count is 0).
    pub fn block_until(&mut self, until: Instant) {
        self.blocked_until = Some(self.blocked_until.map_or(until, |b| b.max(until)));
    }
}

/// A shared bucket: one per channel account and budget.
#[derive(Debug, Clone)]
pub struct Limiter {
    name: &'static str,
    bucket: Arc<Mutex<Bucket>>,
}

/// A charge taken: sleep [`Permit::wait`], call, then report what the
/// channel said with [`Limiter::observe`] (or drop the permit).
#[derive(Debug)]
pub struct Permit {
    bucket: Arc<Mutex<Bucket>>,
    cost: f64,
    wait: Duration,
    finished: bool,
}

impl Permit {
    pub fn wait(&self) -> Duration {
        self.wait
    }

    pub fn cost(&self) -> f64 {
        self.cost
    }

    fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.bucket.lock().finish(self.cost);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.finish();
    }
}

/// What a response said about the budget.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Observation {
    /// The level left after this call (Shopify `currentlyAvailable`,
    /// Walmart `x-current-token-count`).
    pub level: Option<f64>,
    pub capacity: Option<f64>,
    /// Refill per second (Shopify `restoreRate`, Amazon `x-amzn-RateLimit-Limit`).
    pub rate: Option<f64>,
    /// The call was refused for its rate.
    pub throttled: bool,
    /// Nothing before this long from now (`Retry-After`, Walmart's replenish
    /// time when the count is 0).
    pub retry_after: Option<Duration>,
}

impl Limiter {
    pub fn new(name: &'static str, capacity: f64, rate: f64, reserve: f64) -> Self {
        Limiter {
            name,
            bucket: Arc::new(Mutex::new(Bucket::new(
                capacity,
                rate,
                reserve,
                Instant::now(),
            ))),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// How long a call of `cost` would wait now.
    pub fn ready_in(&self, cost: f64) -> Duration {
        self.bucket.lock().wait_for(cost, Instant::now())
    }

    /// Charges `cost` without sleeping: the permit says how long to wait.
    pub fn try_acquire(&self, cost: f64, max_wait: Duration) -> Result<Permit, Duration> {
        let wait = self.bucket.lock().take(cost, max_wait, Instant::now())?;
        Ok(Permit {
            bucket: self.bucket.clone(),
            cost,
            wait,
            finished: false,
        })
    }

    /// Charges `cost` and sleeps until it may be spent, or gives back the
    /// wait when it would pass `max_wait`.
    pub async fn acquire(&self, cost: f64, max_wait: Duration) -> Result<Permit, Duration> {
        let permit = self.try_acquire(cost, max_wait)?;
        if !permit.wait.is_zero() {
            tracing::debug!(
                limiter = self.name,
                wait_ms = permit.wait.as_millis() as u64,
                "pacing"
            );
            tokio::time::sleep(permit.wait).await;
        }
        Ok(permit)
    }

    /// Applies what the channel said after the call `permit` paid for.
    pub fn observe(&self, mut permit: Permit, observation: Observation) {
        let now = Instant::now();
        let mut bucket = self.bucket.lock();
        bucket.correct_shape(observation.capacity, observation.rate, now);
        if let Some(level) = observation.level.filter(|level| level.is_finite()) {
            bucket.correct_level(level, permit.cost, now);
        }
        if observation.throttled {
            bucket.throttled(observation.retry_after.map(|after| now + after), now);
        } else if let Some(after) = observation.retry_after {
            bucket.block_until(now + after);
        }
        bucket.finish(permit.cost);
        permit.finished = true;
    }

    /// The current figures (for tests and metrics).
    pub fn snapshot(&self) -> (f64, f64, f64) {
        let mut bucket = self.bucket.lock();
        let level = bucket.level(Instant::now());
        (level, bucket.capacity(), bucket.rate())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_serves_its_burst_then_paces_at_the_rate() {
        // Amazon listings items: 5/s, burst 10 (B.2).
        let t0 = Instant::now();
        let mut bucket = Bucket::new(10.0, 5.0, 0.0, t0);
        for _ in 0..10 {
            assert_eq!(bucket.take(1.0, Duration::ZERO, t0), Ok(Duration::ZERO));
        }
        assert_eq!(bucket.take(1.0, Duration::ZERO, t0), Err(ms(200)));
        // Callers that accept a wait queue: 200 ms, 400 ms, 600 ms.
        assert_eq!(bucket.take(1.0, Duration::from_secs(1), t0), Ok(ms(200)));
        assert_eq!(bucket.take(1.0, Duration::from_secs(1), t0), Ok(ms(400)));
        assert_eq!(bucket.take(1.0, Duration::from_secs(1), t0), Ok(ms(600)));
        // A second later three of the five refilled tokens are spoken for.
        let t1 = t0 + Duration::from_secs(1);
        let level = bucket.level(t1);
        assert!((level - 2.0).abs() < 1e-9, "{level}");
    }

    #[test]
    fn shopify_costs_follow_the_servers_level() {
        // Standard plan: 2,000 points, 100 restored per second (A.4).
        let t0 = Instant::now();
        let mut bucket = Bucket::new(2000.0, 100.0, 0.0, t0);
        assert!(bucket.take(10.0, Duration::ZERO, t0).is_ok());
        assert!(bucket.take(10.0, Duration::ZERO, t0).is_ok());
        // The server answers the first: another app ate most of the bucket.
        bucket.correct_level(95.0, 10.0, t0);
        bucket.finish(10.0);
        // 95 minus the 10 still in flight.
        assert!((bucket.level(t0) - 85.0).abs() < 1e-9);
        // A 100-point query now waits (100 - 85) / 100 s.
        assert_eq!(bucket.wait_for(100.0, t0), ms(150));
        // The plan changes (Shopify "may temporarily reduce limits").
        bucket.correct_shape(Some(50.0), Some(10.0), t0);
        assert_eq!(bucket.capacity(), 50.0);
        assert_eq!(bucket.wait_for(40.0, t0), Duration::ZERO);
        assert_eq!(bucket.wait_for(60.0, t0), LONGEST_WAIT);
    }

    #[test]
    fn a_throttle_empties_the_bucket_and_honours_retry_after() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(10.0, 5.0, 0.0, t0);
        bucket.throttled(Some(t0 + Duration::from_secs(3)), t0);
        assert_eq!(bucket.wait_for(1.0, t0), Duration::from_secs(3));
        assert_eq!(
            bucket.wait_for(1.0, t0 + Duration::from_secs(3)),
            Duration::ZERO
        );
        // Without a Retry-After, the rate alone: one token in 200 ms.
        let mut bucket = Bucket::new(10.0, 5.0, 0.0, t0);
        bucket.throttled(None, t0);
        assert_eq!(bucket.wait_for(1.0, t0), ms(200));
    }

    #[test]
    fn feeds_per_hour() {
        // Walmart: 10 inventory feeds per hour (C.2).
        let t0 = Instant::now();
        let mut bucket = Bucket::new(10.0, 10.0 / 3600.0, 0.0, t0);
        for _ in 0..10 {
            assert!(bucket.take(1.0, Duration::ZERO, t0).is_ok());
        }
        let wait = bucket.wait_for(1.0, t0);
        assert!(
            wait >= Duration::from_secs(359) && wait <= Duration::from_secs(361),
            "{wait:?}"
        );
    }

    #[test]
    fn the_reserve_is_kept_and_a_zero_rate_is_bounded() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(10.0, 1.0, 2.0, t0);
        assert!(bucket.take(8.0, Duration::ZERO, t0).is_ok());
        assert_eq!(
            bucket.take(1.0, Duration::ZERO, t0),
            Err(Duration::from_secs(1))
        );
        let mut stuck = Bucket::new(0.0, 0.0, 0.0, t0);
        assert_eq!(stuck.wait_for(1.0, t0), LONGEST_WAIT);
    }

    #[test]
    fn permits_release_their_in_flight_charge() {
        let limiter = Limiter::new("test", 10.0, 1.0, 0.0);
        let permit = limiter.try_acquire(4.0, Duration::ZERO);
        assert!(permit.is_ok());
        drop(permit);
        assert_eq!(limiter.bucket.lock().in_flight, 0.0);
        let permit = limiter.try_acquire(1.0, Duration::ZERO);
        if let Ok(permit) = permit {
            limiter.observe(
                permit,
                Observation {
                    level: Some(9.0),
                    ..Observation::default()
                },
            );
        }
        let (level, _, _) = limiter.snapshot();
        assert!((9.0..=9.1).contains(&level), "{level}");
    }
}
