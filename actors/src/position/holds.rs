//! The holds of each position that the census turns into two gauges:
//!
//! - `skuld_reservation_oldest_age_seconds{owner}`: the oldest active
//!   reservation by owner type (cart, checkout, return exchange, ...). A
//!   return's exchange hold normally lasts weeks and a cart's minutes, hence
//!   one figure per owner type.
//! - `skuld_reservation_expiry_overdue_seconds`: how long the earliest
//!   expiry of an active reservation is past; more than a few seconds means
//!   expiry is not running (an extended hold is old but not overdue).
//!
//! Kept from the positions' durable writes on this node (after each commit,
//! see [`OldestHolds::observe`]), so it knows the positions written here
//! since this node last took their shard: after a restart or a handoff, a
//! position nobody has touched since is not counted until its next write
//! (at the latest its expiry timer). The census drops positions of shards
//! this node no longer owns, or got back under a new epoch.

use std::time::Duration;
use tokio::time::Instant;

use dashmap::DashMap;

use super::{OwnerType, PositionState};
use crate::key::PositionKey;

/// A position with this many active reservations or fewer is scanned after
/// every write that changed it (a few microseconds); a larger (hot) one at
/// most every [`RESCAN_EVERY`], so drains on a position with thousands of
/// holds do not walk them all each time. A hot position's ages are then up
/// to that much behind, and stay so until its next write (at the latest its
/// next expiry); its earliest expiry is always current.
const SCAN_AT_ONCE_UP_TO: usize = 4_096;
const RESCAN_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct OldestOf {
    owner: OwnerType,
    created_at_ms: i64,
}

/// What is known of one position's active holds.
#[derive(Debug, Clone)]
struct Holds {
    /// The position's version when this was taken.
    version: u64,
    earliest_expiry_ms: Option<i64>,
    oldest_by_owner: Vec<OldestOf>,
    scanned_at: Instant,
}

fn oldest_by_owner(state: &PositionState) -> Vec<OldestOf> {
    let mut by_owner: Vec<OldestOf> = Vec::new();
    for reservation in state.active_reservations() {
        let owner = reservation.owner.kind;
        match by_owner.iter_mut().find(|oldest| oldest.owner == owner) {
            Some(oldest) => {
                oldest.created_at_ms = oldest.created_at_ms.min(reservation.created_at_ms);
            }
            None => by_owner.push(OldestOf {
                owner,
                created_at_ms: reservation.created_at_ms,
            }),
        }
    }
    by_owner
}

/// The census's view of the holds: the oldest per owner type and the
/// earliest expiry, both in unix ms.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HoldsCensus {
    pub oldest_by_owner: Vec<(OwnerType, i64)>,
    pub earliest_expiry_ms: Option<i64>,
}

/// The active holds per position (one entry per position with at least
/// one).
#[derive(Debug, Default)]
pub struct OldestHolds {
    by_position: DashMap<PositionKey, Holds>,
}

impl OldestHolds {
    /// Takes note of a position's state after a durable write (or a read:
    /// an unchanged version costs one map lookup).
    pub fn observe(&self, key: &PositionKey, state: &PositionState) {
        if state.active_reservation_count() == 0 {
            if self.by_position.contains_key(key) {
                self.by_position.remove(key);
            }
            return;
        }
        let hot = state.active_reservation_count() > SCAN_AT_ONCE_UP_TO;
        // Copied out, so that no lock of the map is held while scanning.
        let known = self.by_position.get(key).map(|known| {
            (
                known.version,
                known.scanned_at,
                known.oldest_by_owner.clone(),
            )
        });
        let (oldest_by_owner, scanned_at) = match known {
            Some((version, _, _)) if version == state.version => return,
            Some((_, scanned_at, oldest)) if hot && scanned_at.elapsed() < RESCAN_EVERY => {
                (oldest, scanned_at)
            }
            _ => (oldest_by_owner(state), Instant::now()),
        };
        self.by_position.insert(
            key.clone(),
            Holds {
                version: state.version,
                earliest_expiry_ms: state.next_expiry_ms(),
                oldest_by_owner,
                scanned_at,
            },
        );
    }

    /// The holds of the positions `keep` accepts; forgets the others.
    pub fn census(&self, keep: impl Fn(&PositionKey) -> bool) -> HoldsCensus {
        let dropped: Vec<PositionKey> = self
            .by_position
            .iter()
            .filter(|entry| !keep(entry.key()))
            .map(|entry| entry.key().clone())
            .collect();
        for key in dropped {
            self.by_position.remove(&key);
        }
        let mut census = HoldsCensus::default();
        for entry in self.by_position.iter() {
            for of in &entry.oldest_by_owner {
                match census
                    .oldest_by_owner
                    .iter_mut()
                    .find(|(owner, _)| *owner == of.owner)
                {
                    Some((_, at)) => *at = (*at).min(of.created_at_ms),
                    None => census.oldest_by_owner.push((of.owner, of.created_at_ms)),
                }
            }
            census.earliest_expiry_ms = match (census.earliest_expiry_ms, entry.earliest_expiry_ms)
            {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        census
    }

    /// Positions with an active reservation known here.
    pub fn len(&self) -> usize {
        self.by_position.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_position.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::journal::JournalEntry;
    use crate::position::{Event, Owner, OwnerType, Reservation, ReservationState};

    fn key(sku: &str) -> PositionKey {
        PositionKey {
            tenant: "t".into(),
            sku: sku.into(),
            location: "l".into(),
        }
    }

    /// Adds an active hold, as a write would (a new version).
    fn hold(state: &mut PositionState, id: &str, owner: OwnerType, created_at_ms: i64) {
        let reservation = Reservation {
            id: id.into(),
            owner: Owner {
                kind: owner,
                id: "owner".into(),
                line_id: String::new(),
            },
            channel: String::new(),
            quantity: 1,
            requested_quantity: 1,
            committed_quantity: 0,
            state: ReservationState::Active,
            created_at_ms,
            expires_at_ms: created_at_ms + 60_000,
        };
        apply_event(state, Event::ReservationCreated { reservation });
    }

    /// Ends a hold, as a write would.
    fn end(state: &mut PositionState, id: &str) {
        apply_event(
            state,
            Event::ReservationReleased {
                reservation_id: id.into(),
                quantity: 1,
            },
        );
    }

    fn apply_event(state: &mut PositionState, event: Event) {
        let entry = JournalEntry {
            version: state.version + 1,
            recorded_at_ms: 0,
            idempotency_key: None,
            correlation_id: String::new(),
            events: vec![event],
        };
        crate::position::apply_entry(state, &entry);
    }

    fn oldest_of(holds: &OldestHolds, owner: OwnerType) -> Option<i64> {
        holds
            .census(|_| true)
            .oldest_by_owner
            .into_iter()
            .find(|(of, _)| *of == owner)
            .map(|(_, at)| at)
    }

    #[test]
    fn the_oldest_active_hold_is_tracked_across_positions_and_forgotten_when_it_ends() {
        let holds = OldestHolds::default();
        let mut a = PositionState::default();
        hold(&mut a, "a1", OwnerType::Cart, 1_000);
        holds.observe(&key("a"), &a);
        let mut b = PositionState::default();
        hold(&mut b, "b1", OwnerType::Cart, 500);
        holds.observe(&key("b"), &b);
        assert_eq!(oldest_of(&holds, OwnerType::Cart), Some(500));

        // A newer hold on a position does not change its oldest.
        hold(&mut b, "b2", OwnerType::Cart, 2_000);
        holds.observe(&key("b"), &b);
        assert_eq!(oldest_of(&holds, OwnerType::Cart), Some(500));

        // The oldest ends: the next oldest counts.
        end(&mut b, "b1");
        holds.observe(&key("b"), &b);
        assert_eq!(oldest_of(&holds, OwnerType::Cart), Some(1_000));

        // A position with no hold left is forgotten.
        end(&mut a, "a1");
        holds.observe(&key("a"), &a);
        assert_eq!(oldest_of(&holds, OwnerType::Cart), Some(2_000));
        assert_eq!(holds.len(), 1);
    }

    #[test]
    fn each_owner_type_has_its_own_oldest() {
        let holds = OldestHolds::default();
        let mut a = PositionState::default();
        hold(&mut a, "cart", OwnerType::Cart, 5_000);
        holds.observe(&key("a"), &a);
        assert_eq!(oldest_of(&holds, OwnerType::ReturnExchange), None);
        // An exchange hold weeks old does not make the carts look stuck.
        hold(&mut a, "exchange", OwnerType::ReturnExchange, 100);
        holds.observe(&key("a"), &a);
        assert_eq!(oldest_of(&holds, OwnerType::Cart), Some(5_000));
        assert_eq!(oldest_of(&holds, OwnerType::ReturnExchange), Some(100));
    }

    #[test]
    fn positions_of_shards_given_away_are_forgotten() {
        let holds = OldestHolds::default();
        let mut a = PositionState::default();
        hold(&mut a, "a1", OwnerType::Cart, 1_000);
        holds.observe(&key("a"), &a);
        assert_eq!(holds.census(|key| key.sku != "a"), HoldsCensus::default());
        assert!(holds.is_empty());
    }

    #[test]
    fn the_earliest_expiry_is_known_and_an_unchanged_version_is_not_looked_at_again() {
        let holds = OldestHolds::default();
        let mut a = PositionState::default();
        hold(&mut a, "a1", OwnerType::Cart, 1_000);
        hold(&mut a, "a2", OwnerType::Checkout, 500);
        holds.observe(&key("a"), &a);
        assert_eq!(holds.census(|_| true).earliest_expiry_ms, Some(60_500));
        // The same version (a read after the write) changes nothing, even
        // if the state handed in differs.
        let mut read = PositionState::default();
        hold(&mut read, "other", OwnerType::Cart, 1);
        read.version = a.version;
        holds.observe(&key("a"), &read);
        assert_eq!(holds.census(|_| true).earliest_expiry_ms, Some(60_500));
        end(&mut a, "a2");
        holds.observe(&key("a"), &a);
        let census = holds.census(|_| true);
        assert_eq!(census.earliest_expiry_ms, Some(61_000));
        assert_eq!(census.oldest_by_owner, vec![(OwnerType::Cart, 1_000)]);
    }
}
