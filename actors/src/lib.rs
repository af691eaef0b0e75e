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

pub use skuld_domain::{error, journal, key};
pub use skuld_domain::{Error, PositionKey, ReturnKey};

/// The answer to a request whose store failed: another node owns the shard
/// now (the retry is routed there), or the store could not do it.
pub fn store_error(error: skuld_cluster::StoreError) -> Error {
    match error {
        skuld_cluster::StoreError::Fenced { shard, .. } => Error::ShardMoving {
            shard,
            retry_after_ms: 100,
        },
        other => Error::Unavailable(other.to_string()),
    }
}
