//! The position's state, events and ledger entries.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::reservations::{Held, ReservationRef, Reservations};

/// How many ended (committed, released, expired) reservations a position
/// remembers, so that a late release or a status query of a recently ended
/// reservation gets a precise answer instead of NOT_FOUND.
pub const ENDED_RESERVATIONS_KEPT: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Bucket {
    OnHand,
    Available,
    Reserved,
    Committed,
    Damaged,
    QualityControl,
    SafetyStock,
    Incoming,
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Bucket::OnHand => "on_hand",
            Bucket::Available => "available",
            Bucket::Reserved => "reserved",
            Bucket::Committed => "committed",
            Bucket::Damaged => "damaged",
            Bucket::QualityControl => "quality_control",
            Bucket::SafetyStock => "safety_stock",
            Bucket::Incoming => "incoming",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdjustmentReason {
    Receipt,
    Sale,
    CycleCount,
    Damage,
    ReturnRestock,
    Transfer,
    Correction,
    Shrinkage,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OwnerType {
    Cart,
    Checkout,
    Order,
    Fulfillment,
    ReturnExchange,
    Draft,
    Manual,
}

impl OwnerType {
    /// A short fixed name (`cart`, `return_exchange`), for metric labels.
    pub fn name(self) -> &'static str {
        match self {
            OwnerType::Cart => "cart",
            OwnerType::Checkout => "checkout",
            OwnerType::Order => "order",
            OwnerType::Fulfillment => "fulfillment",
            OwnerType::ReturnExchange => "return_exchange",
            OwnerType::Draft => "draft",
            OwnerType::Manual => "manual",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub kind: OwnerType,
    pub id: String,
    pub line_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReservationState {
    Active,
    Committed,
    Released,
    Expired,
}

impl std::fmt::Display for ReservationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReservationState::Active => "active",
            ReservationState::Committed => "committed",
            ReservationState::Released => "released",
            ReservationState::Expired => "expired",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: String,
    pub owner: Owner,
    pub channel: String,
    /// Quantity still held in `reserved`.
    pub quantity: i64,
    pub requested_quantity: i64,
    pub committed_quantity: i64,
    pub state: ReservationState,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// The stored quantities; `available` is derived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buckets {
    pub on_hand: i64,
    pub reserved: i64,
    pub committed: i64,
    pub damaged: i64,
    pub quality_control: i64,
    pub safety_stock: i64,
    pub incoming: i64,
}

impl Buckets {
    /// `on_hand - reserved - committed - damaged - quality_control - safety_stock`.
    pub fn available(&self) -> i64 {
        self.on_hand
            - self.reserved
            - self.committed
            - self.damaged
            - self.quality_control
            - self.safety_stock
    }

    /// The value of any bucket, derived or stored.
    pub fn get(&self, bucket: Bucket) -> i64 {
        match bucket {
            Bucket::OnHand => self.on_hand,
            Bucket::Available => self.available(),
            Bucket::Reserved => self.reserved,
            Bucket::Committed => self.committed,
            Bucket::Damaged => self.damaged,
            Bucket::QualityControl => self.quality_control,
            Bucket::SafetyStock => self.safety_stock,
            Bucket::Incoming => self.incoming,
        }
    }

    /// The stored field behind a bucket; `None` for the derived `available`.
    pub(crate) fn stored_mut(&mut self, bucket: Bucket) -> Option<&mut i64> {
        match bucket {
            Bucket::OnHand => Some(&mut self.on_hand),
            Bucket::Available => None,
            Bucket::Reserved => Some(&mut self.reserved),
            Bucket::Committed => Some(&mut self.committed),
            Bucket::Damaged => Some(&mut self.damaged),
            Bucket::QualityControl => Some(&mut self.quality_control),
            Bucket::SafetyStock => Some(&mut self.safety_stock),
            Bucket::Incoming => Some(&mut self.incoming),
        }
    }
}

/// Everything a position remembers.
///
/// The reservations are held in a compact form ([`super::reservations`]);
/// the state is stored (serialized) exactly as the plain form was: the
/// fields below in this order, with `reservations` and `ended` as maps from
/// id to [`Reservation`], `ended_order` as a list of ids and `expiries` as a
/// list of `(expires_at_ms, id)`; the fixture test
/// `tests/snapshot_fixture.rs` holds a snapshot of the plain form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PositionState {
    /// Accepted mutations so far; 0 means the position was never written.
    pub version: u64,
    pub buckets: Buckets,
    pub allow_backorder: bool,
    /// Active and recently ended reservations (the last
    /// [`ENDED_RESERVATIONS_KEPT`] to end), with the active ones' expiry
    /// index, so the next expiry is found without scanning a hot
    /// position's thousands of holds.
    pub(crate) reservations: Reservations,
    /// Committed quantity per order reference.
    pub commitments: BTreeMap<String, i64>,
    /// `counted_at` of the last physical count applied (unix ms).
    pub last_counted_at_ms: i64,
}

impl PositionState {
    /// When the earliest active reservation expires: the position's timer.
    pub fn next_expiry_ms(&self) -> Option<i64> {
        self.reservations.next_expiry_ms()
    }

    /// Active reservations expired at `now_ms`, earliest first.
    pub fn expired_at(&self, now_ms: i64) -> impl Iterator<Item = ReservationRef<'_>> {
        self.reservations.expired_at(now_ms)
    }

    /// An active or recently ended reservation.
    pub fn reservation(&self, id: &str) -> Option<ReservationRef<'_>> {
        self.reservations.get(id)
    }

    /// How many reservations are active.
    pub fn active_reservation_count(&self) -> usize {
        self.reservations.active_len()
    }

    /// How many ended reservations are remembered.
    pub fn ended_reservation_count(&self) -> usize {
        self.reservations.ended_len()
    }

    /// The active reservations in id order.
    pub fn active_reservations(&self) -> impl Iterator<Item = ReservationRef<'_>> {
        self.reservations.active_from(Bound::Unbounded)
    }

    /// The active reservations in id order, after the one with id `after`
    /// (a page token; the empty one is before every id, as no id is empty).
    pub fn active_reservations_after<'s>(
        &'s self,
        after: &'s str,
    ) -> impl Iterator<Item = ReservationRef<'s>> {
        self.reservations.active_from(Bound::Excluded(after))
    }

    /// The remembered ended reservations in id order.
    pub fn ended_reservations(&self) -> impl Iterator<Item = ReservationRef<'_>> {
        self.reservations.ended()
    }

    /// The ids of the remembered ended reservations, oldest first.
    pub fn ended_order(&self) -> impl Iterator<Item = &str> {
        self.reservations.ended_order()
    }

    /// The expiry index: `(expires_at_ms, id)` of every active reservation,
    /// earliest first.
    pub fn expiries(&self) -> impl Iterator<Item = (i64, &str)> {
        self.reservations.expiries()
    }
}

/// Serializes a position in its stored form (see [`PositionState`]).
impl Serialize for PositionState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut stored = serializer.serialize_struct("PositionState", 9)?;
        stored.serialize_field("version", &self.version)?;
        stored.serialize_field("buckets", &self.buckets)?;
        stored.serialize_field("allow_backorder", &self.allow_backorder)?;
        stored.serialize_field(
            "reservations",
            &ById {
                len: self.reservations.active_len(),
                reservations: || self.reservations.active_from(Bound::Unbounded),
            },
        )?;
        stored.serialize_field(
            "ended",
            &ById {
                len: self.reservations.ended_len(),
                reservations: || self.reservations.ended(),
            },
        )?;
        stored.serialize_field(
            "ended_order",
            &Listed {
                len: self.reservations.ended_order_len(),
                items: || self.reservations.ended_order(),
            },
        )?;
        stored.serialize_field("commitments", &self.commitments)?;
        stored.serialize_field("last_counted_at_ms", &self.last_counted_at_ms)?;
        stored.serialize_field(
            "expiries",
            &Listed {
                len: self.reservations.expiries_len(),
                items: || self.reservations.expiries(),
            },
        )?;
        stored.end()
    }
}

/// Reservations serialized as a map from id to [`Reservation`].
struct ById<F> {
    len: usize,
    reservations: F,
}

impl<'a, F, I> Serialize for ById<F>
where
    F: Fn() -> I,
    I: Iterator<Item = ReservationRef<'a>>,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len))?;
        for reservation in (self.reservations)() {
            map.serialize_entry(reservation.id, &reservation)?;
        }
        map.end()
    }
}

/// Items serialized as a sequence of known length.
struct Listed<F> {
    len: usize,
    items: F,
}

impl<F, I> Serialize for Listed<F>
where
    F: Fn() -> I,
    I: Iterator,
    I::Item: Serialize,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len))?;
        for item in (self.items)() {
            seq.serialize_element(&item)?;
        }
        seq.end()
    }
}

/// The stored form of a position, read field by field into the compact
/// form: each reservation is converted as it is read, so a hot position's
/// snapshot never exists in memory in the plain form as a whole.
#[derive(Deserialize)]
#[serde(rename = "PositionState")]
struct StoredPositionState {
    version: u64,
    buckets: Buckets,
    allow_backorder: bool,
    #[serde(deserialize_with = "held_by_id")]
    reservations: BTreeSet<Held>,
    #[serde(deserialize_with = "held_by_id")]
    ended: BTreeSet<Held>,
    ended_order: Vec<String>,
    commitments: BTreeMap<String, i64>,
    last_counted_at_ms: i64,
    /// Always the index of `reservations`, which is rebuilt from them.
    #[serde(deserialize_with = "skip_expiries", rename = "expiries")]
    _expiries: (),
}

impl<'de> Deserialize<'de> for PositionState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let stored = StoredPositionState::deserialize(deserializer)?;
        Ok(Self {
            version: stored.version,
            buckets: stored.buckets,
            allow_backorder: stored.allow_backorder,
            reservations: Reservations::from_stored(
                stored.reservations,
                stored.ended,
                stored.ended_order,
            ),
            commitments: stored.commitments,
            last_counted_at_ms: stored.last_counted_at_ms,
        })
    }
}

/// Reads a stored map from id to [`Reservation`] into held reservations.
fn held_by_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeSet<Held>, D::Error> {
    struct HeldById;
    impl<'de> Visitor<'de> for HeldById {
        type Value = BTreeSet<Held>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a map from reservation id to reservation")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut held = BTreeSet::new();
            while let Some((id, reservation)) = map.next_entry::<String, Reservation>()? {
                // Under the map's id, which every lookup used.
                held.replace(Held::new(&id, &reservation));
            }
            Ok(held)
        }
    }
    deserializer.deserialize_map(HeldById)
}

/// Reads the stored expiry index and keeps nothing of it.
fn skip_expiries<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
    struct SkipExpiries;
    impl<'de> Visitor<'de> for SkipExpiries {
        type Value = ();

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a list of (expires_at_ms, reservation id)")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element::<(i64, String)>()?.is_some() {}
            Ok(())
        }
    }
    deserializer.deserialize_seq(SkipExpiries)
}

/// A change to a position. Events carry what `apply` needs and what a
/// downstream consumer wants to know; they never fail to apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Adjusted {
        bucket: Bucket,
        delta: i64,
        reason: AdjustmentReason,
        reference: String,
    },
    OnHandCounted {
        on_hand: i64,
        previous_on_hand: i64,
        counted_at_ms: i64,
        reason: AdjustmentReason,
        reference: String,
    },
    Moved {
        from: Bucket,
        to: Bucket,
        quantity: i64,
        reason: AdjustmentReason,
        reference: String,
    },
    ReservationCreated {
        reservation: Reservation,
    },
    ReservationExtended {
        reservation_id: String,
        expires_at_ms: i64,
    },
    ReservationReleased {
        reservation_id: String,
        quantity: i64,
    },
    ReservationExpired {
        reservation_id: String,
        quantity: i64,
    },
    ReservationCommitted {
        reservation_id: String,
        order_ref: String,
        quantity: i64,
    },
    CommitmentFulfilled {
        order_ref: String,
        quantity: i64,
    },
    CommitmentCanceled {
        order_ref: String,
        quantity: i64,
        restock: bool,
    },
}

/// One accepted mutation in the position's journal (the movement ledger).
pub type LedgerEntry = crate::journal::JournalEntry<Event>;

/// What a mutation answers; stored with the idempotency key so a retry gets
/// the same answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MutationReply {
    pub version: u64,
    pub buckets: Buckets,
    pub reservation: Option<Reservation>,
    pub granted_quantity: i64,
}
