//! A store in memory, for tests of the runtime and for the deterministic
//! simulation's shared store: the same contract as the other backends
//! (ordered journals, snapshots, idempotency records stamped and purged by
//! the store's own clock, timers, listings) and fencing like PostgreSQL's
//! (a write whose epoch is not its shard's is left out), with nothing on
//! disk. "Restarting" a runtime over the same `MemoryStore` is a restart of
//! the process with its data kept.
//!
//! Every map is ordered (`BTreeMap`), so what a read returns never depends
//! on a hasher's seed: the simulation replays a seed exactly. A commit
//! applies its whole batch under one lock with no await inside, so a
//! cancelled caller (a crashed simulated node) never leaves half a batch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    Committed, EntityWrite, IdempotencyRecord, LoadedEntity, ShardEvents, Store, StoreError,
    StoredEvent, SummaryRow, WriteBatch,
};
use crate::clock::WallClock;

#[derive(Default)]
struct Data {
    journal: BTreeMap<Vec<u8>, BTreeMap<u64, Vec<u8>>>,
    snapshots: BTreeMap<Vec<u8>, (u64, Vec<u8>)>,
    /// (entity, key) -> record, stamped at commit.
    idempotency: BTreeMap<(Vec<u8>, String), (IdempotencyRecord, u32)>,
    timers: BTreeMap<Vec<u8>, (u64, u32)>,
    timers_by_due: BTreeSet<(u64, Vec<u8>)>,
    summaries: BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>,
    fences: BTreeMap<u32, u64>,
    /// (shard, seq) -> event; the outbox.
    events: BTreeMap<(u32, u64), StoredEvent>,
    event_bounds: BTreeMap<u32, ShardEvents>,
    records: BTreeMap<(String, String), Vec<u8>>,
}

/// The store's own clock, like PostgreSQL's `now()`: records are stamped
/// and purged by it, never by a writer's. It never goes backwards, so a
/// clock stepped back cannot stamp a record before an older one.
struct StoreClock {
    wall: WallClock,
    newest_stamp_ms: AtomicU64,
}

impl StoreClock {
    fn stamp(&self) -> u64 {
        let now = u64::try_from(self.wall.now_ms()).unwrap_or(0);
        let previous = self.newest_stamp_ms.fetch_max(now, Ordering::Relaxed);
        previous.max(now)
    }

    /// Records stamped before this are older than `retention`.
    fn purge_before(&self, retention: Duration) -> u64 {
        let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
        self.stamp().saturating_sub(retention_ms)
    }
}

pub struct MemoryStore {
    data: Mutex<Data>,
    clock: StoreClock,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store whose clock is the system's.
    pub fn new() -> Self {
        Self::with_clock(WallClock::system())
    }

    /// A store whose own clock (the one idempotency records and events are
    /// stamped and purged by) is `clock`: the simulation passes simulated
    /// time, unskewed, as PostgreSQL's server clock would be.
    pub fn with_clock(clock: WallClock) -> Self {
        Self {
            data: Mutex::new(Data::default()),
            clock: StoreClock {
                wall: clock,
                newest_stamp_ms: AtomicU64::new(0),
            },
        }
    }

    /// Commits `batch` at once: the fence check and every write happen
    /// under one lock, without an await, so the batch is applied whole or
    /// not at all. A journal entry already stored (or given twice) fails
    /// the whole batch, as PostgreSQL's primary key does.
    pub fn commit_now(&self, batch: WriteBatch) -> Result<Committed, StoreError> {
        let stamp = self.clock.stamp();
        let mut data = self.data.lock();
        let mut fenced = Vec::new();
        let mut accepted = Vec::with_capacity(batch.entities.len());
        for (index, write) in batch.entities.into_iter().enumerate() {
            let current = data.fences.get(&write.shard).copied().unwrap_or(0);
            if write.epoch == current {
                accepted.push(write);
            } else {
                fenced.push((index, current));
            }
        }
        check_journal_entries_are_new(&data, &accepted)?;
        for write in accepted {
            apply(&mut data, write, stamp);
        }
        Ok(Committed { fenced })
    }

    /// Raises `shard`'s epoch at once (see [`Store::fence`]).
    pub fn fence_now(&self, shard: u32, epoch: u64) -> bool {
        let mut data = self.data.lock();
        let current = data.fences.entry(shard).or_insert(0);
        if *current > epoch {
            return false;
        }
        *current = epoch;
        true
    }

    /// The highest fence epoch stored, and its shard (as
    /// `PostgresStore::newest_fence`).
    pub fn newest_fence(&self) -> Option<(u32, u64)> {
        let data = self.data.lock();
        data.fences
            .iter()
            .filter(|(_, epoch)| **epoch > 0)
            .max_by_key(|(shard, epoch)| (**epoch, std::cmp::Reverse(**shard)))
            .map(|(shard, epoch)| (*shard, *epoch))
    }
}

/// Fails with a backend error, before anything is applied, when one of
/// the accepted writes carries a journal entry the entity already has or
/// that the batch gives twice.
fn check_journal_entries_are_new(data: &Data, accepted: &[EntityWrite]) -> Result<(), StoreError> {
    let mut in_batch: BTreeSet<(&[u8], u64)> = BTreeSet::new();
    for write in accepted {
        let stored = data.journal.get(&write.key);
        for (seq, _) in &write.journal {
            let already_stored = stored.is_some_and(|entries| entries.contains_key(seq));
            if already_stored || !in_batch.insert((write.key.as_slice(), *seq)) {
                return Err(StoreError::Backend(format!(
                    "duplicate journal entry {seq} of entity {:?}",
                    String::from_utf8_lossy(&write.key)
                )));
            }
        }
    }
    Ok(())
}

/// Applies one accepted write; its events take the shard's next numbers.
fn apply(data: &mut Data, write: EntityWrite, stamp: u64) {
    let key = write.key;
    data.journal
        .entry(key.clone())
        .or_default()
        .extend(write.journal);
    if let Some(snapshot) = write.snapshot {
        data.snapshots.insert(key.clone(), snapshot);
    }
    for mut record in write.idempotency {
        record.recorded_at_ms = stamp;
        data.idempotency
            .insert((key.clone(), record.key.clone()), (record, write.shard));
    }
    if let Some(timer) = write.timer {
        if let Some((due, _)) = data.timers.remove(&key) {
            data.timers_by_due.remove(&(due, key.clone()));
        }
        if let Some(due) = timer {
            data.timers.insert(key.clone(), (due, write.shard));
            data.timers_by_due.insert((due, key.clone()));
        }
    }
    if let Some((scope, value)) = write.summary {
        data.summaries
            .entry(scope)
            .or_default()
            .insert(key.clone(), value);
    }
    for body in write.events {
        let bounds = data.event_bounds.entry(write.shard).or_insert(ShardEvents {
            shard: write.shard,
            ..ShardEvents::default()
        });
        bounds.head += 1;
        let seq = bounds.head;
        data.events.insert(
            (write.shard, seq),
            StoredEvent {
                shard: write.shard,
                seq,
                recorded_at_ms: stamp,
                entity: key.clone(),
                body,
            },
        );
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn load(&self, key: &[u8]) -> Result<LoadedEntity, StoreError> {
        let data = self.data.lock();
        let snapshot = data.snapshots.get(key).cloned();
        let after = snapshot.as_ref().map_or(0, |(seq, _)| *seq);
        let journal_tail = data
            .journal
            .get(key)
            .map(|entries| {
                entries
                    .range(after + 1..)
                    .map(|(seq, entry)| (*seq, entry.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(LoadedEntity {
            snapshot,
            journal_tail,
        })
    }

    async fn idempotency_lookup(
        &self,
        entity: &[u8],
        keys: Vec<String>,
    ) -> Result<Vec<Option<IdempotencyRecord>>, StoreError> {
        let data = self.data.lock();
        Ok(keys
            .into_iter()
            .map(|key| {
                data.idempotency
                    .get(&(entity.to_vec(), key))
                    .map(|(record, _)| record.clone())
            })
            .collect())
    }

    async fn idempotency_keys(
        &self,
        entity: &[u8],
        limit: usize,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let data = self.data.lock();
        let keys: Vec<String> = data
            .idempotency
            .range((entity.to_vec(), String::new())..)
            .take_while(|((owner, _), _)| owner == entity)
            .map(|((_, key), _)| key.clone())
            .take(limit.saturating_add(1))
            .collect();
        Ok((keys.len() <= limit).then_some(keys))
    }

    async fn commit(&self, batch: WriteBatch) -> Result<Committed, StoreError> {
        self.commit_now(batch)
    }

    async fn fence(&self, shard: u32, epoch: u64) -> Result<bool, StoreError> {
        Ok(self.fence_now(shard, epoch))
    }

    async fn due_timers(
        &self,
        now_ms: u64,
        limit: usize,
        shards: Option<Vec<u32>>,
    ) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        let data = self.data.lock();
        Ok(data
            .timers_by_due
            .iter()
            .take_while(|(due, _)| *due <= now_ms)
            .filter(|(_, key)| {
                shards.as_ref().is_none_or(|shards| {
                    data.timers
                        .get(key)
                        .is_some_and(|(_, shard)| shards.contains(shard))
                })
            })
            .take(limit)
            .map(|(due, key)| (key.clone(), *due))
            .collect())
    }

    async fn purge_idempotency(
        &self,
        retention: Duration,
        shards: Option<Vec<u32>>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let before = self.clock.purge_before(retention);
        let mut data = self.data.lock();
        let old: Vec<(Vec<u8>, String)> = data
            .idempotency
            .iter()
            .filter(|(_, (record, shard))| {
                record.recorded_at_ms < before
                    && shards.as_ref().is_none_or(|shards| shards.contains(shard))
            })
            .map(|(key, _)| key.clone())
            .take(limit)
            .collect();
        for key in &old {
            data.idempotency.remove(key);
        }
        Ok(old.len())
    }

    async fn ping(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    async fn scan_summaries(
        &self,
        scope_prefix: &[u8],
        after: Option<(Vec<u8>, Vec<u8>)>,
        limit: usize,
    ) -> Result<Vec<SummaryRow>, StoreError> {
        let data = self.data.lock();
        let mut found = Vec::new();
        for (scope, listing) in &data.summaries {
            if !scope.starts_with(scope_prefix) {
                continue;
            }
            for (entity, value) in listing {
                let past = after.as_ref().is_none_or(|(after_scope, after_entity)| {
                    (scope, entity) > (after_scope, after_entity)
                });
                if !past {
                    continue;
                }
                if found.len() >= limit {
                    return Ok(found);
                }
                found.push(SummaryRow {
                    scope: scope.clone(),
                    entity: entity.clone(),
                    value: value.clone(),
                });
            }
        }
        Ok(found)
    }

    async fn list_summaries(
        &self,
        scope: &[u8],
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let data = self.data.lock();
        let Some(listing) = data.summaries.get(scope) else {
            return Ok(Vec::new());
        };
        let range: Box<dyn Iterator<Item = (&Vec<u8>, &Vec<u8>)>> = match after {
            Some(after) => Box::new(
                listing
                    .range(after.clone()..)
                    .filter(move |(key, _)| **key != after),
            ),
            None => Box::new(listing.iter()),
        };
        Ok(range
            .take(limit)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }

    async fn journal(&self, key: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let data = self.data.lock();
        Ok(data
            .journal
            .get(key)
            .map(|entries| {
                entries
                    .iter()
                    .map(|(seq, entry)| (*seq, entry.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn read_events(
        &self,
        after: Vec<(u32, u64)>,
        per_shard: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let after: BTreeMap<u32, u64> = after.into_iter().collect();
        let data = self.data.lock();
        let mut found = Vec::new();
        for shard in data.event_bounds.keys() {
            let from = after.get(shard).copied().unwrap_or(0).saturating_add(1);
            found.extend(
                data.events
                    .range((*shard, from)..=(*shard, u64::MAX))
                    .take(per_shard)
                    .map(|(_, event)| event.clone()),
            );
        }
        Ok(found)
    }

    async fn shard_events(
        &self,
        shard: u32,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let data = self.data.lock();
        Ok(data
            .events
            .range((shard, after.saturating_add(1))..=(shard, u64::MAX))
            .take(limit)
            .map(|(_, event)| event.clone())
            .collect())
    }

    async fn event_bounds(&self) -> Result<Vec<ShardEvents>, StoreError> {
        Ok(self.data.lock().event_bounds.values().copied().collect())
    }

    async fn entity_events(
        &self,
        entity: &[u8],
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let data = self.data.lock();
        Ok(data
            .events
            .values()
            .filter(|event| event.entity == entity && event.seq > after)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn purge_events(
        &self,
        retention: Duration,
        shards: Option<Vec<u32>>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let before = self.clock.purge_before(retention);
        let mut data = self.data.lock();
        let Data {
            events,
            event_bounds,
            ..
        } = &mut *data;
        let mut purged = 0;
        for bounds in event_bounds.values_mut() {
            if shards
                .as_ref()
                .is_some_and(|shards| !shards.contains(&bounds.shard))
            {
                continue;
            }
            // A prefix only: stop at the first event young enough to keep.
            while purged < limit {
                let Some(entry) = first_in_shard(events, bounds.shard) else {
                    break;
                };
                if entry.recorded_at_ms >= before {
                    break;
                }
                let seq = entry.seq;
                events.remove(&(bounds.shard, seq));
                bounds.floor = seq;
                purged += 1;
            }
        }
        Ok(purged)
    }

    async fn put_record(&self, kind: &str, id: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.data
            .lock()
            .records
            .insert((kind.to_owned(), id.to_owned()), value);
        Ok(())
    }

    async fn put_records(
        &self,
        kind: &str,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let mut data = self.data.lock();
        for (id, value) in records {
            data.records.insert((kind.to_owned(), id), value);
        }
        Ok(())
    }

    async fn get_record(&self, kind: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .data
            .lock()
            .records
            .get(&(kind.to_owned(), id.to_owned()))
            .cloned())
    }

    async fn delete_record(&self, kind: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .data
            .lock()
            .records
            .remove(&(kind.to_owned(), id.to_owned()))
            .is_some())
    }

    async fn list_records(
        &self,
        kind: &str,
        prefix: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let data = self.data.lock();
        Ok(data
            .records
            .range((kind.to_owned(), prefix.to_owned())..)
            .take_while(|((owner, id), _)| owner == kind && id.starts_with(prefix))
            .filter(|((_, id), _)| after.as_ref().is_none_or(|after| id > after))
            .take(limit)
            .map(|((_, id), value)| (id.clone(), value.clone()))
            .collect())
    }
}

/// The oldest retained event of `shard`.
fn first_in_shard(events: &BTreeMap<(u32, u64), StoredEvent>, shard: u32) -> Option<&StoredEvent> {
    events
        .range((shard, 0)..=(shard, u64::MAX))
        .next()
        .map(|(_, event)| event)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::EntityWrite;

    fn write(key: &[u8], shard: u32, epoch: u64, seq: u64) -> EntityWrite {
        EntityWrite {
            key: key.to_vec(),
            shard,
            epoch,
            journal: vec![(seq, vec![seq as u8])],
            idempotency: vec![IdempotencyRecord {
                key: format!("k{seq}"),
                fingerprint: u128::from(seq),
                reply: vec![seq as u8],
                recorded_at_ms: 0,
            }],
            timer: Some(Some(1_000 + seq)),
            summary: Some((b"scope".to_vec(), key.to_vec())),
            ..EntityWrite::default()
        }
    }

    #[tokio::test]
    async fn summaries_scan_across_scopes_by_prefix() {
        let store = MemoryStore::new();
        let mut entities = Vec::new();
        for (scope, key) in [
            (&b"r/a"[..], &b"2"[..]),
            (b"r/b", b"1"),
            (b"x", b"3"),
            (b"r/a", b"1"),
        ] {
            entities.push(EntityWrite {
                key: key.to_vec(),
                summary: Some((scope.to_vec(), key.to_vec())),
                ..EntityWrite::default()
            });
        }
        store.commit(WriteBatch { entities }).await.unwrap();
        let first = store.scan_summaries(b"r/", None, 2).await.unwrap();
        let rest = store
            .scan_summaries(
                b"r/",
                first
                    .last()
                    .map(|row| (row.scope.clone(), row.entity.clone())),
                2,
            )
            .await
            .unwrap();
        let scanned: Vec<(Vec<u8>, Vec<u8>)> = first
            .into_iter()
            .chain(rest)
            .map(|row| (row.scope, row.entity))
            .collect();
        assert_eq!(
            scanned,
            vec![
                (b"r/a".to_vec(), b"1".to_vec()),
                (b"r/a".to_vec(), b"2".to_vec()),
                (b"r/b".to_vec(), b"1".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn it_keeps_the_store_contract_and_fences_like_postgres() {
        let store = MemoryStore::new();
        let committed = store
            .commit(WriteBatch {
                entities: vec![write(b"a", 0, 0, 1), write(b"b", 1, 0, 1)],
            })
            .await
            .unwrap();
        assert!(committed.fenced.is_empty());
        assert_eq!(
            store.load(b"a").await.unwrap().journal_tail,
            vec![(1, vec![1])]
        );
        assert_eq!(
            store.idempotency_keys(b"a", 5).await.unwrap(),
            Some(vec!["k1".to_owned()])
        );
        assert_eq!(
            store
                .due_timers(5_000, 10, Some(vec![1]))
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            store
                .list_summaries(b"scope", None, 10)
                .await
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            store
                .list_summaries(b"scope", Some(b"a".to_vec()), 10)
                .await
                .unwrap(),
            vec![(b"b".to_vec(), b"b".to_vec())]
        );
        // A newer owner raises shard 1's fence: the old owner's write is
        // left out, the rest of the batch goes through.
        assert!(store.fence(1, 7).await.unwrap());
        assert!(!store.fence(1, 6).await.unwrap());
        let committed = store
            .commit(WriteBatch {
                entities: vec![write(b"a", 0, 0, 2), write(b"b", 1, 0, 2)],
            })
            .await
            .unwrap();
        assert_eq!(committed.fenced, vec![(1, 7)]);
        assert_eq!(store.journal(b"b").await.unwrap().len(), 1);
        assert_eq!(store.journal(b"a").await.unwrap().len(), 2);
        assert_eq!(
            store
                .purge_idempotency(Duration::from_secs(3_600), None, 10)
                .await
                .unwrap(),
            0
        );
    }

    #[tokio::test]
    async fn records_are_stamped_and_purged_by_the_injected_clock_which_never_goes_back() {
        let now = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(10_000_000));
        let store = MemoryStore::with_clock(WallClock::from_fn({
            let now = std::sync::Arc::clone(&now);
            move || now.load(Ordering::Relaxed)
        }));
        store
            .commit(WriteBatch {
                entities: vec![write(b"a", 0, 0, 1)],
            })
            .await
            .unwrap();
        let stamped = |store: &MemoryStore, key: &str| {
            let data = store.data.lock();
            data.idempotency
                .get(&(b"a".to_vec(), key.to_owned()))
                .map(|(record, _)| record.recorded_at_ms)
        };
        assert_eq!(stamped(&store, "k1"), Some(10_000_000));
        // Stepped back an hour: the next record is not stamped before k1.
        now.store(10_000_000 - 3_600_000, Ordering::Relaxed);
        store
            .commit(WriteBatch {
                entities: vec![write(b"a", 0, 0, 2)],
            })
            .await
            .unwrap();
        assert_eq!(stamped(&store, "k2"), Some(10_000_000));
        let minute = Duration::from_secs(60);
        assert_eq!(store.purge_idempotency(minute, None, 10).await.unwrap(), 0);
        // Two minutes later by the injected clock, both are older than a minute.
        now.store(10_000_000 + 120_000, Ordering::Relaxed);
        assert_eq!(store.purge_idempotency(minute, None, 10).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_journal_entry_written_again_fails_the_whole_batch() {
        let store = MemoryStore::new();
        store
            .commit(WriteBatch {
                entities: vec![write(b"a", 0, 0, 1)],
            })
            .await
            .unwrap();
        for entities in [
            vec![write(b"d", 0, 0, 1), write(b"a", 0, 0, 1)],
            vec![write(b"d", 0, 0, 1), write(b"d", 0, 0, 1)],
        ] {
            let failed = store.commit(WriteBatch { entities }).await;
            assert!(matches!(failed, Err(StoreError::Backend(_))), "{failed:?}");
            assert!(store.journal(b"d").await.unwrap().is_empty());
            assert!(store.due_timers(u64::MAX, 10, None).await.unwrap().len() == 1);
        }
    }
}
