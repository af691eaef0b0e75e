//! The embedded store: one crash-safe redb file under the data directory.
//!
//! redb was chosen over fjall by measurement (benches/RESULTS.md): with group
//! commit both reach the fsync bound, and redb gives atomic multi-table
//! transactions, so a batch's journal entries, snapshots, idempotency records
//! and timers of many entities become durable together or not at all.
//!
//! Every call runs on tokio's blocking pool: redb reads may touch the disk and
//! commits always fsync.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{IdempotencyRecord, LoadedEntity, Store, StoreError, WriteBatch};

/// (entity, sequence) -> encoded journal entry.
const JOURNAL: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("journal");
/// entity -> (sequence, encoded snapshot).
const SNAPSHOTS: TableDefinition<&[u8], (u64, &[u8])> = TableDefinition::new("snapshots");
/// (fingerprint, recorded_at_ms, encoded reply).
type StoredReply<'a> = (u128, u64, &'a [u8]);
/// (entity, idempotency key) -> the stored reply.
const IDEMPOTENCY: TableDefinition<(&[u8], &str), StoredReply> = TableDefinition::new("idempotency");
/// (recorded_at_ms, entity, idempotency key) -> (); the purge index.
const IDEMPOTENCY_BY_TIME: TableDefinition<(u64, &[u8], &str), ()> =
    TableDefinition::new("idempotency_by_time");
/// entity -> due_at_ms.
const TIMERS: TableDefinition<&[u8], u64> = TableDefinition::new("timers");
/// (due_at_ms, entity) -> (); the scan index of due timers.
const TIMERS_BY_DUE: TableDefinition<(u64, &[u8]), ()> = TableDefinition::new("timers_by_due");

/// The default, single-node store.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl EmbeddedStore {
    /// Opens (or creates) `skuld.redb` in `data_dir`, creating the directory.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(StoreError::backend)?;
        let db = Database::create(data_dir.join("skuld.redb")).map_err(StoreError::backend)?;
        // Create every table up front so read transactions never miss one.
        let txn = db.begin_write().map_err(StoreError::backend)?;
        {
            txn.open_table(JOURNAL).map_err(StoreError::backend)?;
            txn.open_table(SNAPSHOTS).map_err(StoreError::backend)?;
            txn.open_table(IDEMPOTENCY).map_err(StoreError::backend)?;
            txn.open_table(IDEMPOTENCY_BY_TIME)
                .map_err(StoreError::backend)?;
            txn.open_table(TIMERS).map_err(StoreError::backend)?;
            txn.open_table(TIMERS_BY_DUE).map_err(StoreError::backend)?;
        }
        txn.commit().map_err(StoreError::backend)?;
        Ok(Self { db: Arc::new(db) })
    }

    async fn blocking<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(StoreError::backend)?
    }
}

fn commit_batch(db: &Database, batch: WriteBatch) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(StoreError::backend)?;
    {
        let mut journal = txn.open_table(JOURNAL).map_err(StoreError::backend)?;
        let mut snapshots = txn.open_table(SNAPSHOTS).map_err(StoreError::backend)?;
        let mut idempotency = txn.open_table(IDEMPOTENCY).map_err(StoreError::backend)?;
        let mut idempotency_by_time = txn
            .open_table(IDEMPOTENCY_BY_TIME)
            .map_err(StoreError::backend)?;
        let mut timers = txn.open_table(TIMERS).map_err(StoreError::backend)?;
        let mut timers_by_due = txn.open_table(TIMERS_BY_DUE).map_err(StoreError::backend)?;
        for entity in &batch.entities {
            let key = entity.key.as_slice();
            for (sequence, entry) in &entity.journal {
                journal
                    .insert((key, *sequence), entry.as_slice())
                    .map_err(StoreError::backend)?;
            }
            if let Some((sequence, snapshot)) = &entity.snapshot {
                snapshots
                    .insert(key, (*sequence, snapshot.as_slice()))
                    .map_err(StoreError::backend)?;
            }
            for record in &entity.idempotency {
                idempotency
                    .insert(
                        (key, record.key.as_str()),
                        (
                            record.fingerprint,
                            record.recorded_at_ms,
                            record.reply.as_slice(),
                        ),
                    )
                    .map_err(StoreError::backend)?;
                idempotency_by_time
                    .insert((record.recorded_at_ms, key, record.key.as_str()), ())
                    .map_err(StoreError::backend)?;
            }
            if let Some(timer) = entity.timer {
                let previous = timers
                    .get(key)
                    .map_err(StoreError::backend)?
                    .map(|due| due.value());
                if let Some(previous_due) = previous {
                    timers_by_due
                        .remove((previous_due, key))
                        .map_err(StoreError::backend)?;
                }
                match timer {
                    Some(due_at) => {
                        timers.insert(key, due_at).map_err(StoreError::backend)?;
                        timers_by_due
                            .insert((due_at, key), ())
                            .map_err(StoreError::backend)?;
                    }
                    None => {
                        timers.remove(key).map_err(StoreError::backend)?;
                    }
                }
            }
        }
    }
    txn.commit().map_err(StoreError::backend)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn load(&self, key: &[u8]) -> Result<LoadedEntity, StoreError> {
        let key = key.to_vec();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(StoreError::backend)?;
            let snapshots = txn.open_table(SNAPSHOTS).map_err(StoreError::backend)?;
            let snapshot = snapshots
                .get(key.as_slice())
                .map_err(StoreError::backend)?
                .map(|value| {
                    let (sequence, bytes) = value.value();
                    (sequence, bytes.to_vec())
                });
            let after = snapshot.as_ref().map_or(0, |(sequence, _)| *sequence);
            let journal = txn.open_table(JOURNAL).map_err(StoreError::backend)?;
            let mut journal_tail = Vec::new();
            if after < u64::MAX {
                let range = journal
                    .range((key.as_slice(), after + 1)..=(key.as_slice(), u64::MAX))
                    .map_err(StoreError::backend)?;
                for item in range {
                    let (k, v) = item.map_err(StoreError::backend)?;
                    journal_tail.push((k.value().1, v.value().to_vec()));
                }
            }
            Ok(LoadedEntity {
                snapshot,
                journal_tail,
            })
        })
        .await
    }

    async fn idempotency_lookup(
        &self,
        entity: &[u8],
        keys: Vec<String>,
    ) -> Result<Vec<Option<IdempotencyRecord>>, StoreError> {
        let entity = entity.to_vec();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(StoreError::backend)?;
            let table = txn.open_table(IDEMPOTENCY).map_err(StoreError::backend)?;
            keys.into_iter()
                .map(|key| {
                    let found = table
                        .get((entity.as_slice(), key.as_str()))
                        .map_err(StoreError::backend)?;
                    Ok(found.map(|value| {
                        let (fingerprint, recorded_at_ms, reply) = value.value();
                        IdempotencyRecord {
                            key: key.clone(),
                            fingerprint,
                            reply: reply.to_vec(),
                            recorded_at_ms,
                        }
                    }))
                })
                .collect()
        })
        .await
    }

    async fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.blocking(move |db| commit_batch(db, batch)).await
    }

    async fn due_timers(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(StoreError::backend)?;
            let table = txn.open_table(TIMERS_BY_DUE).map_err(StoreError::backend)?;
            let empty: &[u8] = &[];
            let mut due = Vec::new();
            // The upper bound (now_ms + 1, empty) includes every entity due at now_ms.
            for item in table
                .range((0u64, empty)..(now_ms.saturating_add(1), empty))
                .map_err(StoreError::backend)?
                .take(limit)
            {
                let (k, _) = item.map_err(StoreError::backend)?;
                let (due_at, key) = k.value();
                due.push((key.to_vec(), due_at));
            }
            Ok(due)
        })
        .await
    }

    async fn purge_idempotency(&self, before_ms: u64, limit: usize) -> Result<usize, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(StoreError::backend)?;
            let purged;
            {
                let mut by_time = txn
                    .open_table(IDEMPOTENCY_BY_TIME)
                    .map_err(StoreError::backend)?;
                let mut records = txn.open_table(IDEMPOTENCY).map_err(StoreError::backend)?;
                let empty: &[u8] = &[];
                let mut expired: Vec<(u64, Vec<u8>, String)> = Vec::new();
                for item in by_time
                    .range((0u64, empty, "")..(before_ms, empty, ""))
                    .map_err(StoreError::backend)?
                    .take(limit)
                {
                    let (k, _) = item.map_err(StoreError::backend)?;
                    let (at, entity, key) = k.value();
                    expired.push((at, entity.to_vec(), key.to_string()));
                }
                for (at, entity, key) in &expired {
                    by_time
                        .remove((*at, entity.as_slice(), key.as_str()))
                        .map_err(StoreError::backend)?;
                    // A record re-written later under the same key has a newer
                    // time; only delete the one this index entry points at.
                    let current = records
                        .get((entity.as_slice(), key.as_str()))
                        .map_err(StoreError::backend)?
                        .map(|value| value.value().1);
                    if current == Some(*at) {
                        records
                            .remove((entity.as_slice(), key.as_str()))
                            .map_err(StoreError::backend)?;
                    }
                }
                purged = expired.len();
            }
            txn.commit().map_err(StoreError::backend)?;
            Ok(purged)
        })
        .await
    }

    async fn journal(&self, key: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let key = key.to_vec();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(StoreError::backend)?;
            let journal = txn.open_table(JOURNAL).map_err(StoreError::backend)?;
            let mut entries = Vec::new();
            for item in journal
                .range((key.as_slice(), 0)..=(key.as_slice(), u64::MAX))
                .map_err(StoreError::backend)?
            {
                let (k, v) = item.map_err(StoreError::backend)?;
                entries.push((k.value().1, v.value().to_vec()));
            }
            Ok(entries)
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::EntityWrite;

    fn write(key: &[u8], sequence: u64) -> EntityWrite {
        EntityWrite {
            key: key.to_vec(),
            journal: vec![(sequence, vec![sequence as u8])],
            snapshot: None,
            idempotency: vec![IdempotencyRecord {
                key: format!("k{sequence}"),
                fingerprint: u128::from(sequence),
                reply: vec![1, 2, 3],
                recorded_at_ms: 1_000 + sequence,
            }],
            timer: Some(Some(5_000 + sequence)),
        }
    }

    #[tokio::test]
    async fn a_committed_batch_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let mut batch = WriteBatch::default();
            batch.entities.push(write(b"a", 1));
            batch.entities.push(write(b"b", 1));
            batch.entities.push(write(b"a", 2));
            store.commit(batch).await.unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let loaded = store.load(b"a").await.unwrap();
        assert_eq!(loaded.journal_tail, vec![(1, vec![1]), (2, vec![2])]);
        let found = store
            .idempotency_lookup(b"a", vec!["k2".into(), "missing".into()])
            .await
            .unwrap();
        assert_eq!(found[0].as_ref().unwrap().fingerprint, 2);
        assert!(found[1].is_none());
        // The second write of "a" moved its timer from 5001 to 5002.
        let due = store.due_timers(10_000, 10).await.unwrap();
        assert_eq!(due, vec![(b"b".to_vec(), 5_001), (b"a".to_vec(), 5_002)]);
        assert_eq!(store.due_timers(5_001, 10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn load_starts_after_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut first = WriteBatch::default();
        first.entities.push(write(b"a", 1));
        first.entities.push(write(b"a", 2));
        store.commit(first).await.unwrap();
        let mut second = WriteBatch::default();
        let mut with_snapshot = write(b"a", 3);
        with_snapshot.snapshot = Some((2, vec![9]));
        with_snapshot.timer = Some(None);
        second.entities.push(with_snapshot);
        store.commit(second).await.unwrap();
        let loaded = store.load(b"a").await.unwrap();
        assert_eq!(loaded.snapshot, Some((2, vec![9])));
        assert_eq!(loaded.journal_tail, vec![(3, vec![3])]);
        assert!(store.due_timers(u64::MAX - 1, 10).await.unwrap().is_empty());
        assert_eq!(store.journal(b"a").await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn purge_removes_only_old_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut batch = WriteBatch::default();
        batch.entities.push(write(b"a", 1));
        batch.entities.push(write(b"a", 5));
        store.commit(batch).await.unwrap();
        assert_eq!(store.purge_idempotency(1_003, 100).await.unwrap(), 1);
        let found = store
            .idempotency_lookup(b"a", vec!["k1".into(), "k5".into()])
            .await
            .unwrap();
        assert!(found[0].is_none());
        assert!(found[1].is_some());
    }
}
