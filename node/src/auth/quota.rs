//! The per-tenant request quota of one node: a GCRA bucket per tenant
//! (`tenant_requests_per_sec`, `tenant_burst`), so one tenant's burst
//! cannot take the node's capacity from the others.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// How many charges pass between sweeps of buckets that are full again:
/// the map holds only tenants seen recently, whatever names callers send.
const SWEEP_EVERY: u64 = 4_096;

pub struct TenantQuota {
    limiter: DefaultKeyedRateLimiter<String>,
    charges: AtomicU64,
}

impl TenantQuota {
    /// `None` when `requests_per_sec` is 0 (no quota). A `burst` of 0 is one
    /// second's worth.
    pub fn new(requests_per_sec: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(requests_per_sec)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Some(Self {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            charges: AtomicU64::new(0),
        })
    }

    /// Takes one request from `tenant`'s bucket, or says how long until one
    /// is there again.
    pub fn charge(&self, tenant: &str) -> Result<(), Duration> {
        if self.charges.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&tenant.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Tenants whose buckets are not full (for tests and the sweep).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

/// The retry hint of a refused charge, in whole milliseconds, at least 1.
pub fn retry_after_ms(wait: Duration) -> u64 {
    u64::try_from(wait.as_micros().div_ceil(1_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_tenant_over_its_rate_does_not_touch_another() {
        let quota = TenantQuota::new(2, 3).unwrap();
        for _ in 0..3 {
            quota.charge("acme").unwrap();
        }
        let wait = quota.charge("acme").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(retry_after_ms(wait) >= 1);
        quota.charge("globex").unwrap();
        assert_eq!(quota.tracked(), 2);
    }

    #[test]
    fn no_rate_is_no_quota_and_no_burst_is_a_second() {
        assert!(TenantQuota::new(0, 10).is_none());
        let quota = TenantQuota::new(5, 0).unwrap();
        for _ in 0..5 {
            quota.charge("acme").unwrap();
        }
        assert!(quota.charge("acme").is_err());
    }

    #[test]
    fn retry_hints_round_up() {
        assert_eq!(retry_after_ms(Duration::from_micros(1)), 1);
        assert_eq!(retry_after_ms(Duration::from_micros(1_001)), 2);
        assert_eq!(retry_after_ms(Duration::ZERO), 1);
    }
}
