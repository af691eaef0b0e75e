//! The oldest active reservation of each position by owner type (cart,
//! checkout, return exchange, ...), for the
//! `skuld_reservation_oldest_age_seconds{owner}` gauge: a cart hold that
//! stays active far past its TTL means expiry is not running, while a
//! return's exchange hold normally lasts weeks, hence one figure per owner
//! type.
//!
//! Kept from the positions' durable writes on this node (after each commit,
//! see [`OldestHolds::observe`]), so it knows the positions written here
//! since this node last took their shard: after a restart or a handoff, a
//! position nobody has touched since is not counted until its next write
//! (at the latest its expiry timer). The census prunes positions of shards
//! this node no longer owns.

use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::{OwnerType, PositionState};
use crate::key::PositionKey;

/// A position with this many active reservations or fewer is scanned after
/// every write (a few microseconds); a larger (hot) one at most every
/// [`RESCAN_EVERY`], so drains on a position with thousands of holds do not
/// walk them all each time. A hot position's figure is then up to that much
/// behind, and stays so until its next write (at the latest its next expiry).
const SCAN_AT_ONCE_UP_TO: usize = 4_096;
const RESCAN_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct OldestOf {
    owner: OwnerType,
    created_at_ms: i64,
}

/// A position's oldest active reservation of each owner type it has.
#[derive(Debug)]
struct Oldest {
    by_owner: Vec<OldestOf>,
    scanned_at: Instant,
}

impl Oldest {
    fn scan(state: &PositionState) -> Self {
        let mut by_owner: Vec<OldestOf> = Vec::new();
        for reservation in state.reservations.values() {
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
        Self {
            by_owner,
            scanned_at: Instant::now(),
        }
    }
}

/// The oldest active reservations per position (one entry per position with
/// at least one).
#[derive(Debug, Default)]
pub struct OldestHolds {
    by_position: DashMap<PositionKey, Oldest>,
}

impl OldestHolds {
    /// Takes note of a position's state after a durable write.
    pub fn observe(&self, key: &PositionKey, state: &PositionState) {
        if state.reservations.is_empty() {
            self.by_position.remove(key);
            return;
        }
        let hot = state.reservations.len() > SCAN_AT_ONCE_UP_TO;
        match self.by_position.get_mut(key) {
            Some(mut known) => {
                if hot && known.scanned_at.elapsed() < RESCAN_EVERY {
                    return;
                }
                *known = Oldest::scan(state);
            }
            None => {
                self.by_position.insert(key.clone(), Oldest::scan(state));
            }
        }
    }

    /// When the oldest active reservation of each owner type among the
    /// positions `owned` accepts was made (unix ms); forgets the positions
    /// it refuses.
    pub fn oldest_created_at_ms(
        &self,
        owned: impl Fn(&PositionKey) -> bool,
    ) -> Vec<(OwnerType, i64)> {
        self.by_position.retain(|key, _| owned(key));
        let mut oldest: Vec<(OwnerType, i64)> = Vec::new();
        for entry in self.by_position.iter() {
            for of in &entry.by_owner {
                match oldest.iter_mut().find(|(owner, _)| *owner == of.owner) {
                    Some((_, at)) => *at = (*at).min(of.created_at_ms),
                    None => oldest.push((of.owner, of.created_at_ms)),
                }
            }
        }
        oldest
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
mod tests {
    use super::*;
    use crate::position::{Owner, OwnerType, Reservation, ReservationState};

    fn key(sku: &str) -> PositionKey {
        PositionKey {
            tenant: "t".into(),
            sku: sku.into(),
            location: "l".into(),
        }
    }

    fn hold(state: &mut PositionState, id: &str, owner: OwnerType, created_at_ms: i64) {
        state.reservations.insert(
            id.into(),
            Reservation {
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
            },
        );
    }

    fn oldest_of(holds: &OldestHolds, owner: OwnerType) -> Option<i64> {
        holds
            .oldest_created_at_ms(|_| true)
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
        b.reservations.remove("b1");
        holds.observe(&key("b"), &b);
        assert_eq!(oldest_of(&holds, OwnerType::Cart), Some(1_000));

        // A position with no hold left is forgotten.
        a.reservations.clear();
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
        assert!(holds.oldest_created_at_ms(|key| key.sku != "a").is_empty());
        assert!(holds.is_empty());
    }
}
