//! The store contract (skuld_tests::store_contract) against the stores
//! that need no service: the embedded store (what every store does) and
//! the memory store, which fences like PostgreSQL and so keeps the cluster
//! stores' part too. PostgreSQL runs it in postgres_store.rs, the
//! simulation's shared store in sim/tests/store_contract.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use skuld_cluster::store::memory::MemoryStore;
use skuld_cluster::{EmbeddedStore, Store};
use skuld_tests::store_contract as contract;

/// An embedded store in a temporary directory (kept alive beside it).
fn embedded() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    (Arc::new(store), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_keeps_every_stores_contract() {
    let (store, _dir) = embedded();
    contract::a_committed_batch_reads_back(store.as_ref()).await;
    let (store, _dir) = embedded();
    contract::the_outbox_numbers_each_shard_without_gaps(store).await;
    let (store, _dir) = embedded();
    contract::records_are_put_one_or_many_listed_by_prefix_and_deleted(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_keeps_every_stores_contract() {
    contract::a_committed_batch_reads_back(&MemoryStore::new()).await;
    contract::the_outbox_numbers_each_shard_without_gaps(Arc::new(MemoryStore::new())).await;
    contract::records_are_put_one_or_many_listed_by_prefix_and_deleted(&MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_fences_like_postgres() {
    contract::stale_epochs_are_fenced_per_write(&MemoryStore::new()).await;
    contract::a_fenced_write_takes_no_event_number(&MemoryStore::new()).await;
    contract::due_timers_can_be_limited_to_shards(&MemoryStore::new()).await;
    contract::a_journal_entry_written_again_fails_the_whole_batch(&MemoryStore::new()).await;
}
