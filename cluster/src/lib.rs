//! Cluster-side parts of skuld: the storage trait and its backends, and the
//! group-commit writer that batches many actors' changes into one durable write.
//!
//! Membership, placement, ownership and routing (cluster mode) will live here
//! too; the single-node embedded mode needs only the store.

pub mod store;

pub use store::embedded::EmbeddedStore;
pub use store::writer::{GroupCommitWriter, WriterConfig};
pub use store::{EntityWrite, IdempotencyRecord, LoadedEntity, Store, StoreError, WriteBatch};
