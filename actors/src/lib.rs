//! Entity state machines and the actors that serve them.
//!
//! * [`position`]: the inventory position (a SKU at a location) as a pure
//!   state machine: `decide(state, command) -> events | error` and
//!   `apply(state, event)`. No I/O, no clock: time comes in through
//!   [`position::Context`].
//! * [`runtime`]: one ractor actor per active position, started on demand
//!   from the store, passivated when idle, with bounded queues, group commit
//!   and durable reservation-expiry timers.

pub mod error;
pub mod journal;
pub mod key;
pub mod position;
pub mod returns;
pub mod runtime;

pub use error::Error;
pub use key::{PositionKey, ReturnKey};
