//! The clock the embedded store stamps and purges idempotency records by.
//!
//! An idempotency record may be purged only once it is older than the
//! retention: a retry after that is applied again. The wall clock cannot be
//! trusted with that: an operator or NTP stepping it two days forward would
//! make every record look old, and a step back would stamp new records in
//! the past. So the store keeps a timeline of its own:
//!
//! - within a process, stamps follow the monotonic clock from an anchor;
//! - a store that holds records goes on from its newest stamp when it
//!   opens, whatever the wall clock says then; only an empty store starts
//!   from the wall clock.
//!
//! Along that timeline two stamps never differ by more than the time that
//! really passed between them (time while no process ran does not count),
//! so a record older than the retention by its stamp is older than that in
//! truth, and `stamp - retention` is a safe cut-off. The cost is that
//! records may outlive the retention by the time the node was down, never
//! that one is purged early. The wall clock's distance from this timeline
//! is reported when it changes by more than [`JUMP_THRESHOLD`] while the
//! store is open (a log line and `skuld_wall_clock_offset_ms`); it changes
//! nothing here.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

use crate::WallClock;

/// A wall clock this far from the store's clock is reported as a jump.
pub const JUMP_THRESHOLD: Duration = Duration::from_secs(60);

/// A wall clock's reading as a stamp (unix ms; 0 before 1970).
pub(crate) fn wall_ms(wall: &WallClock) -> u64 {
    u64::try_from(wall.now_ms()).unwrap_or(0)
}

#[derive(Debug)]
pub struct RetentionClock {
    anchor: Instant,
    /// Stamp at `anchor`, in unix ms.
    base_ms: u64,
    /// The wall clock's offset from this clock when last reported.
    reported_offset_ms: AtomicI64,
    /// The node's wall clock, read at open and to report its jumps.
    wall: WallClock,
}

impl RetentionClock {
    /// A clock for a store whose newest stamp is `newest_stored_ms` (0 when
    /// it holds no record), beside the node's wall clock `wall`.
    pub fn new(newest_stored_ms: u64, wall: WallClock) -> Self {
        let wall_ms = self::wall_ms(&wall);
        let base_ms = if newest_stored_ms > 0 {
            newest_stored_ms
        } else {
            wall_ms
        };
        if newest_stored_ms > wall_ms.saturating_add(millis(JUMP_THRESHOLD)) {
            tracing::warn!(
                newest_stored_ms,
                wall_ms,
                "the wall clock is behind the newest idempotency record: it was set back"
            );
        }
        Self {
            anchor: Instant::now(),
            base_ms,
            // The distance at open (downtime, mostly) is not a jump.
            reported_offset_ms: AtomicI64::new(offset(wall_ms, base_ms)),
            wall,
        }
    }

    /// The stamp of a record written now.
    pub fn stamp(&self) -> u64 {
        let stamp = self.base_ms.saturating_add(millis(self.anchor.elapsed()));
        self.check_wall(stamp, wall_ms(&self.wall));
        stamp
    }

    /// Records stamped before this are older than `retention` for sure.
    pub fn purge_before(&self, retention: Duration) -> u64 {
        self.stamp().saturating_sub(millis(retention))
    }

    /// Reports a wall clock that moved away from this clock.
    fn check_wall(&self, stamp: u64, wall: u64) {
        let offset = offset(wall, stamp);
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

fn offset(wall: u64, stamp: u64) -> i64 {
    i64::try_from(i128::from(wall) - i128::from(stamp)).unwrap_or(i64::MAX)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;
    const DAY: u64 = 24 * HOUR;

    /// A wall clock that stays at `ms`.
    fn wall_at(ms: u64) -> WallClock {
        let ms = i64::try_from(ms).unwrap_or(i64::MAX);
        WallClock::from_fn(move || ms)
    }

    #[test]
    fn a_clock_set_ahead_at_start_changes_neither_stamps_nor_purges() {
        // Records up to "now" by the true clock; the node starts with its
        // wall clock two days ahead.
        let true_now = 1_000 * DAY;
        let clock = RetentionClock::new(true_now, wall_at(true_now + 2 * DAY));
        assert!(clock.purge_before(Duration::from_millis(DAY)) <= true_now - DAY + 1_000);
        let stamp = clock.stamp();
        assert!((true_now..true_now + 1_000).contains(&stamp), "{stamp}");
    }

    #[test]
    fn restarts_under_a_wrong_clock_never_purge_early() {
        // P0 records r0 at T; P1 starts two days ahead and records r1; P2
        // starts a minute later with the true clock.
        let t = 1_000 * DAY;
        let r0 = t;
        let p1 = RetentionClock::new(r0, wall_at(t + 2 * DAY));
        let r1 = p1.stamp();
        let p2 = RetentionClock::new(r1, wall_at(t + 60_000));
        assert!(
            p2.purge_before(Duration::from_millis(DAY)) < r0,
            "r0 is a minute old"
        );
    }

    #[test]
    fn a_clock_set_back_does_not_stamp_records_in_the_past() {
        let stored = 1_000 * DAY;
        let clock = RetentionClock::new(stored, wall_at(stored - 3 * DAY));
        assert!(clock.stamp() >= stored);
        assert!(clock.purge_before(Duration::from_millis(DAY)) < stored);
    }

    #[test]
    fn a_fresh_store_starts_from_the_wall_clock() {
        let clock = RetentionClock::new(0, wall_at(500 * DAY));
        assert!(clock.stamp() >= 500 * DAY);
        assert!(clock.purge_before(Duration::from_millis(HOUR)) < 500 * DAY);
        // A zero retention purges everything stamped so far.
        assert!(clock.purge_before(Duration::ZERO) >= 500 * DAY);
    }

    #[test]
    fn a_wall_clock_jump_while_running_is_reported_and_changes_no_stamp() {
        let clock = RetentionClock::new(0, WallClock::system());
        let before = clock.stamp();
        clock.check_wall(before, before + 2 * DAY);
        assert_eq!(
            clock.reported_offset_ms.load(Ordering::Relaxed),
            i64::try_from(2 * DAY).unwrap_or(i64::MAX)
        );
        assert!(clock.stamp() < before + HOUR);
    }
}
