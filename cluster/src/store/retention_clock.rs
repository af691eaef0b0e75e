//! The clock the embedded store stamps and purges idempotency records by.
//!
//! An idempotency record may be purged only once it is older than the
//! retention: a retry after that is applied again. The wall clock cannot be
//! trusted with that: an operator or NTP stepping it two days forward would
//! make every record look old, and a step back would stamp new records in
//! the past. So the store's time follows the monotonic clock from an anchor
//! taken when the store opens:
//!
//! - stamps are `base + elapsed`, with `base` the later of the wall clock at
//!   open and the newest stamp already stored, so they never go backwards
//!   across restarts either;
//! - a record stored before this process started is known to be at least
//!   `newest_stored - stamp + elapsed` old (time passed for at least as long
//!   as this process has run), so until the process has run for a whole
//!   retention only those are purged; after that, everything older than
//!   `stamp - retention` is, since every older record's true age is past it.
//!
//! The cost is that records may outlive the retention by up to the time the
//! node was down, never that one is purged early. A wall clock that moves
//! away from this clock by more than [`JUMP_THRESHOLD`] is reported (a log
//! line and `skuld_wall_clock_offset_ms`); it changes nothing here.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// A wall clock this far from the store's clock is reported as a jump.
pub const JUMP_THRESHOLD: Duration = Duration::from_secs(60);

/// Milliseconds since the unix epoch by the wall clock.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

#[derive(Debug)]
pub struct RetentionClock {
    anchor: Instant,
    /// Stamp at `anchor`, in unix ms.
    base_ms: u64,
    /// The newest stamp stored when the store opened (0 if none).
    newest_stored_ms: u64,
    /// The wall clock's offset last reported, to report each jump once.
    reported_offset_ms: AtomicI64,
}

impl RetentionClock {
    /// A clock for a store whose newest stamp is `newest_stored_ms`, with
    /// the wall clock reading `wall_ms` now.
    pub fn new(newest_stored_ms: u64, wall_ms: u64) -> Self {
        if newest_stored_ms > wall_ms.saturating_add(millis(JUMP_THRESHOLD)) {
            tracing::warn!(
                newest_stored_ms,
                wall_ms,
                "the wall clock is behind the newest idempotency record: \
                 it was set back; stamping from the stored time on"
            );
        }
        Self {
            anchor: Instant::now(),
            base_ms: wall_ms.max(newest_stored_ms),
            newest_stored_ms,
            reported_offset_ms: AtomicI64::new(0),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        millis(self.anchor.elapsed())
    }

    /// The stamp of a record written now.
    pub fn stamp(&self) -> u64 {
        let stamp = self.base_ms.saturating_add(self.elapsed_ms());
        self.check_wall(stamp, wall_ms());
        stamp
    }

    /// Records stamped before this are older than `retention` for sure.
    pub fn purge_before(&self, retention: Duration) -> u64 {
        let elapsed = self.elapsed_ms();
        let retention = millis(retention);
        if elapsed >= retention {
            self.base_ms.saturating_add(elapsed) - retention
        } else {
            // Only records from before this process: their age is at least
            // the time since the newest of them plus this process's run.
            self.newest_stored_ms
                .saturating_add(elapsed)
                .saturating_sub(retention)
        }
    }

    /// Reports a wall clock that moved away from this clock.
    fn check_wall(&self, stamp: u64, wall: u64) {
        let offset = i64::try_from(i128::from(wall) - i128::from(stamp)).unwrap_or(i64::MAX);
        let reported = self.reported_offset_ms.load(Ordering::Relaxed);
        let threshold = i64::try_from(millis(JUMP_THRESHOLD)).unwrap_or(i64::MAX);
        if offset.saturating_sub(reported).saturating_abs() > threshold {
            self.reported_offset_ms.store(offset, Ordering::Relaxed);
            metrics::gauge!("skuld_wall_clock_offset_ms").set(offset as f64);
            tracing::warn!(
                offset_ms = offset,
                "the wall clock jumped away from the store's monotonic clock; \
                 idempotency records keep their retention by the monotonic clock"
            );
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;
    const DAY: u64 = 24 * HOUR;

    #[test]
    fn a_clock_set_ahead_at_start_purges_nothing_recorded_before() {
        // Records up to "now" by the true clock; the node starts with its
        // wall clock two days ahead.
        let true_now = 1_000 * DAY;
        let clock = RetentionClock::new(true_now, true_now + 2 * DAY);
        // By the wall clock every stored record is past a 24 h retention;
        // by this clock none is older than what can be proven.
        assert!(clock.purge_before(Duration::from_millis(DAY)) <= true_now - DAY + 1_000);
        // New records are stamped from the (ahead) wall clock, never below
        // the stored ones.
        assert!(clock.stamp() >= true_now + 2 * DAY);
    }

    #[test]
    fn a_clock_set_back_does_not_stamp_records_in_the_past() {
        let stored = 1_000 * DAY;
        let clock = RetentionClock::new(stored, stored - 3 * DAY);
        assert!(clock.stamp() >= stored);
        assert!(clock.purge_before(Duration::from_millis(DAY)) < stored);
    }

    #[test]
    fn a_fresh_store_purges_only_what_it_stamped_a_retention_ago() {
        let clock = RetentionClock::new(0, 500 * DAY);
        assert_eq!(clock.purge_before(Duration::from_millis(HOUR)), 0);
        // A zero retention purges everything stamped so far.
        assert!(clock.purge_before(Duration::ZERO) >= 500 * DAY);
    }

    #[test]
    fn a_wall_clock_jump_while_running_changes_no_stamp() {
        let now = wall_ms();
        let clock = RetentionClock::new(0, now);
        let before = clock.stamp();
        // What the wall clock says does not enter the stamp.
        clock.check_wall(before, before + 2 * DAY);
        assert_eq!(
            clock.reported_offset_ms.load(Ordering::Relaxed),
            i64::try_from(2 * DAY).unwrap_or(i64::MAX)
        );
        assert!(clock.stamp() < before + HOUR);
    }
}
