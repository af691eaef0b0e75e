//! A multi-line order as a pure state machine and the saga that holds all
//! of its lines or none.
//!
//! [`decide`] checks a command against the order and returns events or a
//! refusal; [`apply`] folds an event in. The order does not touch positions
//! itself: each reservation, release, commit or undo is a [`Step`] recorded
//! (with its number) in the same write that decides it, then run by the
//! runtime against the position with the idempotency key
//! `ord:{order}:{line}:{step}` (which is also the reservation id), and its
//! result reported back with [`OrderCommand::CompleteStep`]. The saga moves
//! in rounds: [`plan`] gives, from the results recorded so far, one step per
//! line still to reserve (or per hold to commit or give back), all recorded
//! in one write and run concurrently; the next round is planned once every
//! step of this one is answered (answers that arrive together are recorded
//! in one write). A crash before a result is recorded leaves its step
//! pending, so it is run again and the position replays its answer: no step
//! is applied twice and none is lost.
//!
//! At rest (no step pending) an order is `Held` (every line's quantity held),
//! `Committed` (every hold committed) or `Released` (nothing held): a line
//! that cannot be held moves the order to `Releasing`, which gives back every
//! hold before it settles.
//!
//! A [`Transfer`] between two locations is the same saga with its own plan
//! (see `transfer`): out of one location's available, into the other's
//! incoming, received later.

mod decide;
mod state;
mod transfer;

pub use decide::{
    decide, plan, retry_delay_ms, transfer_status_name, validate_lines, Next, OrderCommand,
    RESERVE_ATTEMPTS,
};
pub use state::*;
pub use transfer::{validate_transfer, Transfer, TransferSpec, TRANSFER_LINE_ID};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod transfer_tests;
