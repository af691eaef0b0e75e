//! The end-of-run correctness check, as plain arithmetic.
//!
//! The generator records every operation the node ACKNOWLEDGED (OK) and
//! every operation whose outcome it cannot know (deadline, transport error:
//! the node may or may not have applied it). At the end it reads every
//! touched position back and compares. Known refusals change nothing and are
//! not counted. Unknown outcomes widen the accepted range of the affected
//! position only, by exactly what those operations could have changed.

use serde::Serialize;

/// The buckets read back from the node (only those the generator touches).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Observed {
    pub on_hand: i64,
    pub available: i64,
    pub reserved: i64,
    pub committed: i64,
    /// damaged + quality_control + safety_stock (never touched here; part
    /// of the available identity).
    pub held: i64,
}

fn identity(observed: &Observed) -> Result<(), String> {
    let want = observed.on_hand - observed.reserved - observed.committed - observed.held;
    if observed.available != want {
        return Err(format!(
            "available {} != on_hand - reserved - committed - held = {want}",
            observed.available
        ));
    }
    if observed.available < 0 {
        return Err(format!("available {} < 0 (oversold)", observed.available));
    }
    Ok(())
}

fn within(name: &str, value: i64, low: i64, high: i64) -> Result<(), String> {
    if value < low || value > high {
        if low == high {
            return Err(format!("{name} {value}, expected {low}"));
        }
        return Err(format!("{name} {value}, expected {low}..={high}"));
    }
    Ok(())
}

/// Reserve-only scenarios (spread, hot, zipf, overload): every position was
/// stocked with `stocked`, then only reservations of quantity 1 were sent.
/// `acknowledged` is the sum of the granted quantities of OK replies,
/// `unknown` the number of reservations with an unknown outcome.
pub fn check_reserve_only(
    stocked: i64,
    acknowledged: i64,
    unknown: i64,
    observed: &Observed,
) -> Result<(), String> {
    identity(observed)?;
    within("on_hand", observed.on_hand, stocked, stocked)?;
    within(
        "reserved",
        observed.reserved,
        acknowledged,
        acknowledged + unknown,
    )?;
    within("committed", observed.committed, 0, 0)?;
    Ok(())
}

/// What the mixed scenario expects of one position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MixedExpectation {
    pub stocked: i64,
    /// Acknowledged adjusts minus acknowledged fulfilments.
    pub on_hand_delta: i64,
    /// Acknowledged reserves - commits - releases (quantity 1 each).
    pub reserved: i64,
    /// Acknowledged commits - fulfilled quantities.
    pub committed: i64,
    /// Operations with unknown outcomes on this position.
    pub unknown_reserves: i64,
    pub unknown_commits: i64,
    pub unknown_releases: i64,
    /// Quantity of fulfilments with unknown outcome.
    pub unknown_fulfilled: i64,
    /// Quantity of adjusts (receipts) with unknown outcome.
    pub unknown_adjusted: i64,
}

impl MixedExpectation {
    pub fn uncertain(&self) -> bool {
        self.unknown_reserves
            + self.unknown_commits
            + self.unknown_releases
            + self.unknown_fulfilled
            + self.unknown_adjusted
            > 0
    }
}

/// The mixed scenario: on_hand == stocked + adjusts - fulfilled,
/// reserved == acknowledged active reservations, committed == acknowledged
/// commits - fulfilled, each widened only by this position's unknowns.
pub fn check_mixed(expected: &MixedExpectation, observed: &Observed) -> Result<(), String> {
    identity(observed)?;
    let on_hand = expected.stocked + expected.on_hand_delta;
    within(
        "on_hand",
        observed.on_hand,
        on_hand - expected.unknown_fulfilled,
        on_hand + expected.unknown_adjusted,
    )?;
    within(
        "reserved",
        observed.reserved,
        expected.reserved - expected.unknown_commits - expected.unknown_releases,
        expected.reserved + expected.unknown_reserves,
    )?;
    within(
        "committed",
        observed.committed,
        expected.committed - expected.unknown_fulfilled,
        expected.committed + expected.unknown_commits,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(on_hand: i64, reserved: i64, committed: i64) -> Observed {
        Observed {
            on_hand,
            available: on_hand - reserved - committed,
            reserved,
            committed,
            held: 0,
        }
    }

    #[test]
    fn reserve_only_must_match_exactly_without_unknowns() {
        assert_eq!(check_reserve_only(100, 7, 0, &observed(100, 7, 0)), Ok(()));
        // One acknowledged reservation missing: a lost write.
        assert!(check_reserve_only(100, 7, 0, &observed(100, 6, 0)).is_err());
        // One more than acknowledged: applied without being acknowledged.
        assert!(check_reserve_only(100, 7, 0, &observed(100, 8, 0)).is_err());
        // on_hand must not move.
        assert!(check_reserve_only(100, 7, 0, &observed(99, 7, 0)).is_err());
    }

    #[test]
    fn unknowns_widen_only_upwards_and_only_by_their_number() {
        assert_eq!(check_reserve_only(100, 7, 2, &observed(100, 7, 0)), Ok(()));
        assert_eq!(check_reserve_only(100, 7, 2, &observed(100, 9, 0)), Ok(()));
        assert!(check_reserve_only(100, 7, 2, &observed(100, 10, 0)).is_err());
        assert!(check_reserve_only(100, 7, 2, &observed(100, 6, 0)).is_err());
    }

    #[test]
    fn the_available_identity_and_no_oversell_are_checked() {
        let mut wrong = observed(100, 7, 0);
        wrong.available = 94;
        assert!(check_reserve_only(100, 7, 0, &wrong).is_err());
        let oversold = observed(5, 7, 0);
        assert!(check_reserve_only(5, 7, 0, &oversold).is_err());
    }

    #[test]
    fn mixed_arithmetic() {
        // Stocked 1000; 10 reserves, 4 commits, 3 releases, 2 fulfilled (qty 1
        // each), 1 receipt of 10.
        let expected = MixedExpectation {
            stocked: 1_000,
            on_hand_delta: 10 - 2,
            reserved: 10 - 4 - 3,
            committed: 4 - 2,
            ..MixedExpectation::default()
        };
        assert!(!expected.uncertain());
        assert_eq!(check_mixed(&expected, &observed(1_008, 3, 2)), Ok(()));
        assert!(check_mixed(&expected, &observed(1_008, 4, 2)).is_err());
        assert!(check_mixed(&expected, &observed(1_008, 3, 3)).is_err());
        assert!(check_mixed(&expected, &observed(1_009, 3, 2)).is_err());
    }

    #[test]
    fn mixed_unknowns_bound_each_bucket() {
        let expected = MixedExpectation {
            stocked: 1_000,
            reserved: 3,
            committed: 2,
            unknown_commits: 1,
            unknown_fulfilled: 1,
            unknown_adjusted: 10,
            ..MixedExpectation::default()
        };
        assert!(expected.uncertain());
        // The unknown commit applied and the unknown fulfilment too.
        assert_eq!(check_mixed(&expected, &observed(999, 2, 2)), Ok(()));
        // The unknown receipt applied.
        assert_eq!(check_mixed(&expected, &observed(1_010, 3, 2)), Ok(()));
        // Reserved cannot go up: no reserve had an unknown outcome.
        assert!(check_mixed(&expected, &observed(1_000, 4, 2)).is_err());
        // on_hand beyond every unknown.
        assert!(check_mixed(&expected, &observed(1_011, 3, 2)).is_err());
    }
}
