//! The reservations a position remembers, in a compact in-memory form.
//!
//! A hot position holds hundreds of thousands of active reservations, so
//! their form in memory is what a node's memory grows with. Each active
//! reservation costs:
//!
//! - one allocation for all its fields (an `Arc`), shared by the id set and
//!   the expiry index, which hold one pointer each (the plain form kept the
//!   reservation in the map and its id three times: the map key, the
//!   reservation's own field and the expiry index);
//! - one allocation for its four strings (id, owner id, owner line id,
//!   channel), one after another, instead of one `String` each;
//! - an entry in the id set (a pointer) and one in the expiry index (the
//!   expiry and a pointer).
//!
//! A change (an extension, a partial commit, the end) takes the reservation
//! out of both sets, changes it in place (nothing else shares it then) and
//! puts it back.
//!
//! The stored form is not this one: `PositionState` encodes the reservations
//! exactly as the plain `BTreeMap<String, Reservation>` form did (see
//! `state.rs`), so snapshots written before and after decode alike.

use std::borrow::Borrow;
use std::collections::{BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use serde::Serialize;

use super::state::{Owner, OwnerType, Reservation, ReservationState};

/// A reservation as the position holds it, borrowed: the same fields as
/// [`Reservation`], with the strings borrowed from the compact form. It
/// serializes exactly as a [`Reservation`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename = "Reservation")]
pub struct ReservationRef<'a> {
    pub id: &'a str,
    pub owner: OwnerRef<'a>,
    pub channel: &'a str,
    /// Quantity still held in `reserved`.
    pub quantity: i64,
    pub requested_quantity: i64,
    pub committed_quantity: i64,
    pub state: ReservationState,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// A reservation's owner, borrowed; serializes exactly as an [`Owner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename = "Owner")]
pub struct OwnerRef<'a> {
    pub kind: OwnerType,
    pub id: &'a str,
    pub line_id: &'a str,
}

impl ReservationRef<'_> {
    /// The owned form, for a reply or an event.
    pub fn to_reservation(&self) -> Reservation {
        Reservation {
            id: self.id.to_owned(),
            owner: Owner {
                kind: self.owner.kind,
                id: self.owner.id.to_owned(),
                line_id: self.owner.line_id.to_owned(),
            },
            channel: self.channel.to_owned(),
            quantity: self.quantity,
            requested_quantity: self.requested_quantity,
            committed_quantity: self.committed_quantity,
            state: self.state,
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms,
        }
    }
}

impl PartialEq<Reservation> for ReservationRef<'_> {
    fn eq(&self, other: &Reservation) -> bool {
        self.id == other.id
            && self.owner.kind == other.owner.kind
            && self.owner.id == other.owner.id
            && self.owner.line_id == other.owner.line_id
            && self.channel == other.channel
            && self.quantity == other.quantity
            && self.requested_quantity == other.requested_quantity
            && self.committed_quantity == other.committed_quantity
            && self.state == other.state
            && self.created_at_ms == other.created_at_ms
            && self.expires_at_ms == other.expires_at_ms
    }
}

/// One reservation as a position holds it: every string in one allocation,
/// the numbers beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// The id, the owner id, the owner's line id and the channel, one after
    /// another (one allocation instead of four).
    text: Box<str>,
    /// Where the id, the owner id and the line id end in `text`. A field of
    /// 4 GiB cannot reach a state (commands allow 128 bytes, and a decoded
    /// record is bounded by its own length), so `u32` suffices; reading
    /// goes through `str::get`, so even a wrong bound cannot panic.
    id_end: u32,
    owner_id_end: u32,
    line_id_end: u32,
    owner_kind: OwnerType,
    state: ReservationState,
    quantity: i64,
    requested_quantity: i64,
    committed_quantity: i64,
    created_at_ms: i64,
    expires_at_ms: i64,
}

fn end_of(length: usize) -> u32 {
    u32::try_from(length).unwrap_or(u32::MAX)
}

impl Entry {
    fn new(id: &str, reservation: &Reservation) -> Self {
        let owner = &reservation.owner;
        let mut text = String::with_capacity(
            id.len() + owner.id.len() + owner.line_id.len() + reservation.channel.len(),
        );
        text.push_str(id);
        text.push_str(&owner.id);
        text.push_str(&owner.line_id);
        text.push_str(&reservation.channel);
        Self {
            text: text.into_boxed_str(),
            id_end: end_of(id.len()),
            owner_id_end: end_of(id.len() + owner.id.len()),
            line_id_end: end_of(id.len() + owner.id.len() + owner.line_id.len()),
            owner_kind: owner.kind,
            state: reservation.state,
            quantity: reservation.quantity,
            requested_quantity: reservation.requested_quantity,
            committed_quantity: reservation.committed_quantity,
            created_at_ms: reservation.created_at_ms,
            expires_at_ms: reservation.expires_at_ms,
        }
    }

    fn id(&self) -> &str {
        self.text.get(..self.id_end as usize).unwrap_or_default()
    }

    fn view(&self) -> ReservationRef<'_> {
        let (id_end, owner_id_end, line_id_end) = (
            self.id_end as usize,
            self.owner_id_end as usize,
            self.line_id_end as usize,
        );
        ReservationRef {
            id: self.id(),
            owner: OwnerRef {
                kind: self.owner_kind,
                id: self.text.get(id_end..owner_id_end).unwrap_or_default(),
                line_id: self.text.get(owner_id_end..line_id_end).unwrap_or_default(),
            },
            channel: self.text.get(line_id_end..).unwrap_or_default(),
            quantity: self.quantity,
            requested_quantity: self.requested_quantity,
            committed_quantity: self.committed_quantity,
            state: self.state,
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms,
        }
    }
}

/// A reservation shared by the id set and the expiry index (one pointer
/// in each), ordered and looked up by its id.
#[derive(Debug, Clone)]
pub(crate) struct Held(Arc<Entry>);

impl Held {
    /// A reservation read from the stored form, under the id its map gave.
    pub(crate) fn new(id: &str, reservation: &Reservation) -> Self {
        Self(Arc::new(Entry::new(id, reservation)))
    }

    fn id(&self) -> &str {
        self.0.id()
    }

    fn expires_at_ms(&self) -> i64 {
        self.0.expires_at_ms
    }

    /// The entry to change; it is not shared once taken out of every set
    /// that held it, so this copies nothing then.
    fn entry_mut(&mut self) -> &mut Entry {
        Arc::make_mut(&mut self.0)
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Held {}

/// Sets of reservations are ordered by id alone (the sets never hold two
/// with one id); `PartialEq` compares the whole reservation, which agrees
/// with this order wherever the sets use both.
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.id().cmp(other.id())
    }
}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Borrow<str> for Held {
    fn borrow(&self) -> &str {
        self.id()
    }
}

/// The active and the recently ended reservations of a position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Reservations {
    /// Active reservations by id.
    active: BTreeSet<Held>,
    /// Active reservations by expiry, so the next expiry is found without
    /// scanning a hot position's holds; the entries are those of `active`.
    expiries: BTreeSet<(i64, Held)>,
    /// Recently ended reservations by id, oldest first in `ended_order`
    /// (which shares their entries).
    ended: BTreeSet<Held>,
    ended_order: VecDeque<Held>,
}

impl Reservations {
    pub(crate) fn active_len(&self) -> usize {
        self.active.len()
    }

    pub(crate) fn ended_len(&self) -> usize {
        self.ended.len()
    }

    pub(crate) fn ended_order_len(&self) -> usize {
        self.ended_order.len()
    }

    pub(crate) fn expiries_len(&self) -> usize {
        self.expiries.len()
    }

    /// An active or recently ended reservation.
    pub(crate) fn get(&self, id: &str) -> Option<ReservationRef<'_>> {
        self.active
            .get(id)
            .or_else(|| self.ended.get(id))
            .map(|held| held.0.view())
    }

    /// Active reservations in id order, from `after` on.
    pub(crate) fn active_from(
        &self,
        after: Bound<&str>,
    ) -> impl Iterator<Item = ReservationRef<'_>> {
        self.active
            .range::<str, _>((after, Bound::Unbounded))
            .map(|held| held.0.view())
    }

    /// Recently ended reservations in id order.
    pub(crate) fn ended(&self) -> impl Iterator<Item = ReservationRef<'_>> {
        self.ended.iter().map(|held| held.0.view())
    }

    /// The ids of the recently ended reservations, oldest first.
    pub(crate) fn ended_order(&self) -> impl Iterator<Item = &str> {
        self.ended_order.iter().map(Held::id)
    }

    /// The expiry index: `(expires_at_ms, id)` of every active reservation.
    pub(crate) fn expiries(&self) -> impl Iterator<Item = (i64, &str)> {
        self.expiries
            .iter()
            .map(|(expires_at_ms, held)| (*expires_at_ms, held.id()))
    }

    pub(crate) fn next_expiry_ms(&self) -> Option<i64> {
        self.expiries
            .first()
            .map(|(expires_at_ms, _)| *expires_at_ms)
    }

    /// Active reservations expired at `now_ms`, earliest first.
    pub(crate) fn expired_at(&self, now_ms: i64) -> impl Iterator<Item = ReservationRef<'_>> {
        self.expiries
            .iter()
            .take_while(move |(expires_at_ms, _)| *expires_at_ms <= now_ms)
            .map(|(_, held)| held.0.view())
    }

    /// A new active reservation (one with the id of an active one replaces
    /// it; `decide` never creates such).
    pub(crate) fn create(&mut self, reservation: &Reservation) {
        let held = Held::new(&reservation.id, reservation);
        if let Some(replaced) = self.active.replace(held.clone()) {
            self.expiries.remove(&(replaced.expires_at_ms(), replaced));
        }
        self.expiries.insert((held.expires_at_ms(), held));
    }

    /// Takes an active reservation out of both sets, to change or end it.
    fn take_active(&mut self, id: &str) -> Option<Held> {
        let held = self.active.take(id)?;
        self.expiries.remove(&(held.expires_at_ms(), held.clone()));
        Some(held)
    }

    /// Puts a changed active reservation back into both sets.
    fn put_active(&mut self, held: Held) {
        self.expiries.insert((held.expires_at_ms(), held.clone()));
        self.active.insert(held);
    }

    /// Moves an active reservation's expiry.
    pub(crate) fn extend(&mut self, id: &str, expires_at_ms: i64) {
        if let Some(mut held) = self.take_active(id) {
            held.entry_mut().expires_at_ms = expires_at_ms;
            self.put_active(held);
        }
    }

    /// Commits `quantity` of an active reservation; ends it as committed
    /// when nothing is left held.
    pub(crate) fn commit(&mut self, id: &str, quantity: i64, keep_ended: usize) {
        let Some(mut held) = self.take_active(id) else {
            return;
        };
        let entry = held.entry_mut();
        entry.quantity -= quantity;
        entry.committed_quantity += quantity;
        if entry.quantity == 0 {
            self.put_ended(held, ReservationState::Committed, keep_ended);
        } else {
            self.put_active(held);
        }
    }

    /// Ends an active reservation, remembering at most `keep_ended` ended ones.
    pub(crate) fn end(&mut self, id: &str, end: ReservationState, keep_ended: usize) {
        if let Some(held) = self.take_active(id) {
            self.put_ended(held, end, keep_ended);
        }
    }

    fn put_ended(&mut self, mut held: Held, end: ReservationState, keep_ended: usize) {
        held.entry_mut().state = end;
        self.ended.replace(held.clone());
        self.ended_order.push_back(held);
        while self.ended_order.len() > keep_ended {
            if let Some(oldest) = self.ended_order.pop_front() {
                self.ended.remove(oldest.id());
            }
        }
    }

    /// Rebuilds the reservations from their stored form: the active ones,
    /// the ended ones and the order they ended in. The expiry index is
    /// derived from the active ones (the stored copy always equals it).
    pub(crate) fn from_stored(
        active: BTreeSet<Held>,
        ended: BTreeSet<Held>,
        ended_order: Vec<String>,
    ) -> Self {
        let expiries = active
            .iter()
            .map(|held| (held.expires_at_ms(), held.clone()))
            .collect();
        let ended_order = ended_order
            .into_iter()
            .filter_map(|id| {
                // The order names the ended ones: share their entries. (It
                // names no other: a reservation is forgotten from both at
                // once.)
                ended.get(id.as_str()).cloned()
            })
            .collect();
        Self {
            active,
            expiries,
            ended,
            ended_order,
        }
    }

    /// Whether the expiry index holds exactly the active reservations.
    #[cfg(test)]
    pub(crate) fn expiry_index_is_exact(&self) -> bool {
        let derived: BTreeSet<(i64, &str)> = self
            .active
            .iter()
            .map(|held| (held.expires_at_ms(), held.id()))
            .collect();
        let indexed: BTreeSet<(i64, &str)> = self.expiries().collect();
        derived == indexed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn reservation(
        id: &str,
        owner: &str,
        line: &str,
        channel: &str,
        expires_at_ms: i64,
    ) -> Reservation {
        Reservation {
            id: id.into(),
            owner: Owner {
                kind: OwnerType::Checkout,
                id: owner.into(),
                line_id: line.into(),
            },
            channel: channel.into(),
            quantity: 3,
            requested_quantity: 4,
            committed_quantity: 0,
            state: ReservationState::Active,
            created_at_ms: 10,
            expires_at_ms,
        }
    }

    #[test]
    fn a_held_reservation_reads_back_every_field() {
        let mut reservations = Reservations::default();
        for (owner, line, channel) in [
            ("cart-1", "line-1", "web"),
            ("cart-2", "", "store-123"),
            ("cart-3", "l", ""),
            ("cart-é", "ligne-ü", "magasin-ß"),
            ("", "", ""),
        ] {
            let created = reservation(&format!("r-{owner}"), owner, line, channel, 100);
            reservations.create(&created);
            let held = reservations.get(&created.id).unwrap();
            assert_eq!(held, created);
            assert_eq!(held.to_reservation(), created);
        }
        assert_eq!(reservations.active_len(), 5);
        assert!(reservations.expiry_index_is_exact());
    }

    #[test]
    fn one_entry_is_shared_by_the_id_set_and_the_expiry_index() {
        let mut reservations = Reservations::default();
        reservations.create(&reservation("r-1", "o", "", "web", 100));
        let held = reservations.active.first().unwrap();
        assert_eq!(Arc::strong_count(&held.0), 2, "the id set and the index");
        reservations.extend("r-1", 200);
        let held = reservations.active.first().unwrap();
        assert_eq!(
            Arc::strong_count(&held.0),
            2,
            "changed in place, still shared"
        );
        reservations.end("r-1", ReservationState::Released, 10);
        let held = reservations.ended.first().unwrap();
        assert_eq!(Arc::strong_count(&held.0), 2, "the ended set and the order");
        assert!(reservations.expiries.is_empty());
    }

    #[test]
    fn extending_commits_and_ending_keep_the_index_exact() {
        let mut reservations = Reservations::default();
        for index in 0..20 {
            reservations.create(&reservation(
                &format!("r-{index}"),
                "o",
                "",
                "web",
                100 + index,
            ));
        }
        reservations.extend("r-3", 1_000);
        reservations.extend("missing", 1_000);
        assert_eq!(reservations.get("r-3").unwrap().expires_at_ms, 1_000);
        reservations.commit("r-4", 1, 5);
        assert_eq!(reservations.get("r-4").unwrap().quantity, 2);
        assert_eq!(reservations.get("r-4").unwrap().committed_quantity, 1);
        reservations.commit("r-4", 2, 5);
        assert_eq!(
            reservations.get("r-4").unwrap().state,
            ReservationState::Committed
        );
        assert!(reservations.expiry_index_is_exact());
        let expired: Vec<&str> = reservations.expired_at(105).map(|r| r.id).collect();
        assert_eq!(expired, ["r-0", "r-1", "r-2", "r-5"]);
        for index in 5..15 {
            reservations.end(&format!("r-{index}"), ReservationState::Expired, 5);
        }
        assert_eq!(
            reservations.ended_len(),
            5,
            "at most keep_ended are remembered"
        );
        assert_eq!(
            reservations.ended_order().collect::<Vec<_>>(),
            ["r-10", "r-11", "r-12", "r-13", "r-14"]
        );
        assert!(
            reservations.get("r-4").is_none(),
            "forgotten once older than the kept"
        );
        assert_eq!(reservations.active_len(), 20 - 11);
        assert!(reservations.expiry_index_is_exact());
        assert_eq!(reservations.next_expiry_ms(), Some(100));
    }

    #[test]
    fn replacing_an_active_reservation_keeps_one_index_entry() {
        let mut reservations = Reservations::default();
        reservations.create(&reservation("r-1", "o", "", "web", 100));
        reservations.create(&reservation("r-1", "o", "", "web", 200));
        assert!(reservations.expiry_index_is_exact());
        assert_eq!(reservations.expiries().count(), 1);
    }

    #[test]
    fn paging_starts_after_the_given_id() {
        let mut reservations = Reservations::default();
        for id in ["a", "b", "c", "d"] {
            reservations.create(&reservation(id, "o", "", "", 1));
        }
        let after: Vec<&str> = reservations
            .active_from(Bound::Excluded("b"))
            .map(|r| r.id)
            .collect();
        assert_eq!(after, ["c", "d"]);
        assert_eq!(reservations.active_from(Bound::Unbounded).count(), 4);
    }
}
