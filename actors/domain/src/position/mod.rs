//! The inventory position: quantity buckets, reservations and commitments of
//! one SKU at one location, as a pure state machine.
//!
//! [`decide`] checks a command against the state and returns the events it
//! causes (or why it is refused); [`apply`] folds an event into the state.
//! Replaying the journal through [`apply_entry`] rebuilds the same state.
//!
//! Invariants after every accepted command (docs/domain.md 1.2):
//! * every bucket is >= 0, except `available` when backorders are allowed;
//! * `reserved` equals the sum of the active reservations' held quantities;
//! * `committed` equals the sum of the per-order commitments;
//! * `version` grows by one per accepted mutation.

mod command;
mod decide;
mod published;
mod reservations;
mod state;

pub use command::{Command, Context, MAX_QUANTITY, MAX_REFERENCE_BYTES};
pub use decide::{apply, apply_entry, decide, Decision};
pub use published::stock_status_crossing;
pub use reservations::{OwnerRef, ReservationRef};
pub use state::{
    AdjustmentReason, Bucket, Buckets, Event, LedgerEntry, MutationReply, Owner, OwnerType,
    PositionState, Reservation, ReservationState, ENDED_RESERVATIONS_KEPT,
};

#[cfg(test)]
mod tests;
