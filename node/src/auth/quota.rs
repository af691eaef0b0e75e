//! The per-tenant request quota of one node: a GCRA bucket per tenant
//! (`tenant_requests_per_sec`, `tenant_burst`), so one tenant's burst
//! cannot take the node's capacity from the others.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// How many charges pass between sweeps of buckets that are full again:
/// the map holds only tenants seen recently, whatever names callers send.
const SWEEP_EVERY: u64 = 4_096;
/// Most tenants tracked at once. Past it the map is swept at once; if it
/// is still past it (that many tenants charged within a bucket's refill
/// time), a charge by a caller that may name any tenant is refused until a
/// sweep brings it under, so names a caller makes up cannot grow it further.
/// Callers held to listed tenants are still charged: their names come from
/// credentials, which the issuer and the configuration bound.
pub const MAX_TRACKED: usize = 100_000;
/// How many charges pass between looks at the map's size.
const MEASURE_EVERY: u64 = 64;

/// Why a charge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The tenant's bucket is empty; it has room again after this long.
    Wait(Duration),
    /// Too many tenants are tracked for a name of the caller's choosing.
    Full,
}

/// The retry hint of a [`Refused::Full`] charge.
pub const FULL_RETRY: Duration = Duration::from_secs(1);

impl Refused {
    /// How long to wait before trying again.
    pub fn wait(self) -> Duration {
        match self {
            Self::Wait(wait) => wait,
            Self::Full => FULL_RETRY,
        }
    }
}

pub struct TenantQuota {
    limiter: DefaultKeyedRateLimiter<String>,
    charges: AtomicU64,
    max_tracked: usize,
    /// Still past `max_tracked` after the last sweep.
    full: AtomicBool,
}

impl TenantQuota {
    /// `None` when `requests_per_sec` is 0 (no quota). A `burst` of 0 is one
    /// second's worth.
    pub fn new(requests_per_sec: u32, burst: u32) -> Option<Self> {
        Self::with_max_tracked(requests_per_sec, burst, MAX_TRACKED)
    }

    fn with_max_tracked(requests_per_sec: u32, burst: u32, max_tracked: usize) -> Option<Self> {
        let rate = NonZeroU32::new(requests_per_sec)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Some(Self {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            charges: AtomicU64::new(0),
            max_tracked,
            full: AtomicBool::new(false),
        })
    }

    /// Takes one request from `tenant`'s bucket, or says how long until one
    /// is there again. `any_name`: the caller may name any tenant (it holds
    /// `"*"`, or authentication is off), so the name may be new and made up.
    pub fn charge(&self, tenant: &str, any_name: bool) -> Result<(), Refused> {
        let charges = self.charges.fetch_add(1, Ordering::Relaxed);
        if charges % SWEEP_EVERY == SWEEP_EVERY - 1
            || (charges.is_multiple_of(MEASURE_EVERY) && self.limiter.len() >= self.max_tracked)
        {
            self.limiter.retain_recent();
            self.full
                .store(self.limiter.len() >= self.max_tracked, Ordering::Relaxed);
        }
        if any_name && self.full.load(Ordering::Relaxed) {
            return Err(Refused::Full);
        }
        self.limiter
            .check_key(&tenant.to_owned())
            .map_err(|not_until| {
                Refused::Wait(not_until.wait_time_from(self.limiter.clock().now()))
            })
    }

    /// Tenants whose buckets are not full (for tests and the sweep).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
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
            quota.charge("acme", false).unwrap();
        }
        let Refused::Wait(wait) = quota.charge("acme", false).unwrap_err() else {
            panic!("not a wait");
        };
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(retry_after_ms(wait) >= 1);
        quota.charge("globex", false).unwrap();
        assert_eq!(quota.tracked(), 2);
    }

    #[test]
    fn no_rate_is_no_quota_and_no_burst_is_a_second() {
        assert!(TenantQuota::new(0, 10).is_none());
        let quota = TenantQuota::new(5, 0).unwrap();
        for _ in 0..5 {
            quota.charge("acme", false).unwrap();
        }
        assert!(quota.charge("acme", false).is_err());
    }

    #[test]
    fn made_up_names_cannot_grow_the_map_past_its_bound() {
        // Buckets that take a minute to refill: nothing is swept away.
        let quota = TenantQuota::with_max_tracked(1, 60, 100).unwrap();
        let mut refused = 0;
        for n in 0..1_000 {
            match quota.charge(&format!("tenant-{n}"), true) {
                Ok(()) => {}
                Err(Refused::Full) => refused += 1,
                Err(other) => panic!("{other:?}"),
            }
        }
        assert!(refused > 800, "{refused}");
        assert!(
            quota.tracked() < 100 + MEASURE_EVERY as usize,
            "{}",
            quota.tracked()
        );
        assert_eq!(Refused::Full.wait(), FULL_RETRY);
        // Names from credentials are still charged.
        quota.charge("acme", false).unwrap();

        // Buckets full again are swept away when the map reaches its bound.
        let quota = TenantQuota::with_max_tracked(1_000_000, 1, 100).unwrap();
        for n in 0..1_000 {
            if n % 100 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
            quota.charge(&format!("tenant-{n}"), true).unwrap();
        }
        assert!(quota.tracked() < 100 + 2 * MEASURE_EVERY as usize);
    }

    #[test]
    fn retry_hints_round_up() {
        assert_eq!(retry_after_ms(Duration::from_micros(1)), 1);
        assert_eq!(retry_after_ms(Duration::from_micros(1_001)), 2);
        assert_eq!(retry_after_ms(Duration::ZERO), 1);
    }
}
