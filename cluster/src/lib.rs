//! Cluster-side parts of skuld: the storage trait and its backends, the
//! group-commit writer, and cluster mode's membership (etcd), placement,
//! ownership with epochs, and the routing table requests consult.

pub mod clock;
pub mod error;
mod etcd_tls;
pub mod ids;
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

pub use clock::WallClock;
pub use ids::Ids;

/// Milliseconds since the unix epoch by the system clock, for code that is
/// not given a [`WallClock`] (the domain gets the time passed in).
pub fn now_ms() -> i64 {
    clock::system_now_ms()
}
