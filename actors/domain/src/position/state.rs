//! The position's state, events and ledger entries.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionState {
    /// Accepted mutations so far; 0 means the position was never written.
    pub version: u64,
    pub buckets: Buckets,
    pub allow_backorder: bool,
    /// Active reservations by id.
    pub reservations: BTreeMap<String, Reservation>,
    /// Recently ended reservations by id, oldest first in `ended_order`.
    pub ended: BTreeMap<String, Reservation>,
    pub ended_order: VecDeque<String>,
    /// Committed quantity per order reference.
    pub commitments: BTreeMap<String, i64>,
    /// `counted_at` of the last physical count applied (unix ms).
    pub last_counted_at_ms: i64,
    /// Active reservations by expiry, so the next expiry is found without
    /// scanning a hot position's thousands of holds.
    pub expiries: std::collections::BTreeSet<(i64, String)>,
}

impl PositionState {
    /// When the earliest active reservation expires: the position's timer.
    pub fn next_expiry_ms(&self) -> Option<i64> {
        self.expiries
            .first()
            .map(|(expires_at_ms, _)| *expires_at_ms)
    }

    /// Active reservations expired at `now_ms`, earliest first.
    pub fn expired_at(&self, now_ms: i64) -> impl Iterator<Item = &Reservation> {
        self.expiries
            .iter()
            .take_while(move |(expires_at_ms, _)| *expires_at_ms <= now_ms)
            .filter_map(|(_, id)| self.reservations.get(id))
    }

    /// An active or recently ended reservation.
    pub fn reservation(&self, id: &str) -> Option<&Reservation> {
        self.reservations.get(id).or_else(|| self.ended.get(id))
    }
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
