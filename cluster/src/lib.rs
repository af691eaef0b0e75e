//! Cluster-side parts of skuld: the storage trait and its backends, the
//! group-commit writer, and cluster mode's membership (etcd), placement,
//! ownership with epochs, and the routing table requests consult.

pub mod error;
mod etcd_tls;
pub mod membership;
pub mod ownership;
pub mod placement;
pub mod shards;
pub mod store;
pub mod tls;

pub use error::ClusterError;
pub use store::embedded::EmbeddedStore;
pub use store::postgres::PostgresStore;
pub use store::writer::{GroupCommitWriter, WriterConfig};
pub use store::{
    Committed, EntityWrite, IdempotencyRecord, LoadedEntity, ShardEvents, Store, StoreError,
    StoredEvent, SummaryRow, WriteBatch,
};

/// Milliseconds since the unix epoch by this node's wall clock: the one
/// place the node reads it (the domain gets the time passed in).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}
