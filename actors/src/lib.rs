//! The actor runtime that serves skuld's entities, and the entities it
//! serves.
//!
//! * [`position`], [`returns`]: inventory positions and return cases as
//!   entities of the runtime; their rules are the pure state machines of
//!   `skuld-domain`, re-exported here with the rest of the domain.
//! * [`runtime`]: one ractor actor per active entity, started on demand
//!   from the store, passivated when idle, with bounded queues, group commit,
//!   durable timers and, in cluster mode, routing to the key's owner.

pub mod position;
pub mod returns;
pub mod runtime;

pub mod error;
pub use error::{store_error, Error};
pub use skuld_domain::{journal, key, refusal};
pub use skuld_domain::{PositionKey, Refusal, ReturnKey};
