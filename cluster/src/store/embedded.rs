//! The embedded store: a crash-safe fjall (LSM) database under the data
//! directory.
//!
//! fjall was chosen over redb by measurement (benches/RESULTS.md, "Embedded
//! store choice"): with group commit it made 2 to 5.7 times more durable
//! writes per second at every batch size. One commit is one fjall write batch
//! across all keyspaces, persisted with `PersistMode::SyncAll` before it
//! returns, so a batch's journal entries, snapshots, idempotency records and
//! timers of many entities become durable together or not at all.
//!
//! Keys are byte strings ordered lexicographically. The entity key is
//! length-prefixed (`u16` big-endian) wherever something follows it, so no
//! entity's keys can run into another's whatever bytes the caller uses.
//!
//! Every call runs on tokio's blocking pool: reads may touch the disk and
//! commits always fsync.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use parking_lot::Mutex;

use super::retention_clock::RetentionClock;
use super::{
    Committed, IdempotencyRecord, LoadedEntity, ShardEvents, Store, StoreError, StoredEvent,
    SummaryRow, WriteBatch,
};
use crate::WallClock;

mod outbox;

struct Inner {
    db: Database,
    /// lp(entity) ++ sequence(be) -> journal entry.
    journal: Keyspace,
    /// entity -> sequence(be) ++ snapshot.
    snapshots: Keyspace,
    /// lp(entity) ++ idempotency key -> fingerprint(be 16) ++ recorded_at(be 8) ++ reply.
    idempotency: Keyspace,
    /// The purge index, one row per commit that recorded answers:
    /// recorded_at(be 8) ++ commit number(be 8) -> the record keys, each
    /// `u32` length-prefixed. One insert per commit instead of one per
    /// record (each a skiplist insert on the serial commit chain).
    idempotency_by_commit: Keyspace,
    /// The purge index as stores before `idempotency_by_commit` wrote it,
    /// one row per record: recorded_at(be) ++ lp(entity) ++ idempotency key
    /// -> (). Only read and drained by purges now; empty on a new store.
    idempotency_by_time: Keyspace,
    /// entity -> due_at(be).
    timers: Keyspace,
    /// due_at(be) ++ entity -> (); the scan index of due timers.
    timers_by_due: Keyspace,
    /// lp(scope) ++ entity -> summary; listings.
    summaries: Keyspace,
    /// lp(kind) ++ id -> value; records of no shard.
    records: Keyspace,
    /// Held by the writers that read before they write (commits and
    /// purges): a purge must not delete a record a concurrent commit
    /// rewrites. Holds the number of the next commit's purge index row.
    write_lock: Mutex<u64>,
    /// Stamps idempotency records and events, and decides which are old
    /// enough to go.
    clock: RetentionClock,
    outbox: outbox::Outbox,
}

/// The default, single-node store.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    lookups: std::sync::mpsc::SyncSender<LookupJob>,
}

type LookupReply = tokio::sync::oneshot::Sender<Result<Vec<Option<IdempotencyRecord>>, StoreError>>;

/// One actor's idempotency lookup, answered by the reader thread.
struct LookupJob {
    prefixed_entity: Vec<u8>,
    keys: Vec<String>,
    reply: LookupReply,
}

/// Idempotency lookups are the one read on every command's path. A
/// dedicated thread answers every lookup queued since it last woke, so a
/// burst of actors costs one thread wake-up instead of one blocking-pool
/// round trip each. It ends when the last store handle is dropped.
fn spawn_lookup_thread(
    idempotency: Keyspace,
) -> Result<std::sync::mpsc::SyncSender<LookupJob>, StoreError> {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<LookupJob>(16_384);
    std::thread::Builder::new()
        .name("skuld-idempotency-reader".into())
        .spawn(move || {
            while let Ok(first) = receiver.recv() {
                let mut jobs = vec![first];
                jobs.extend(receiver.try_iter());
                for job in jobs {
                    let result = job
                        .keys
                        .into_iter()
                        .map(|key| {
                            let found = idempotency
                                .get(with_suffix(&job.prefixed_entity, key.as_bytes()))
                                .map_err(StoreError::backend)?;
                            found
                                .map(|value| decode_idempotency(key, &value))
                                .transpose()
                        })
                        .collect();
                    // The asking actor may have stopped; nothing to do then.
                    let _ = job.reply.send(result);
                }
            }
        })
        .map_err(StoreError::backend)?;
    Ok(sender)
}

/// `u16` length prefix, then the bytes.
fn length_prefixed(entity: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + entity.len() + 8);
    let len = u16::try_from(entity.len()).unwrap_or(u16::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(entity);
    key
}

/// The parts of a `length_prefixed(first) ++ rest` key.
fn split_length_prefixed(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = usize::from(u16::from_be_bytes([*key.first()?, *key.get(1)?]));
    let rest = key.get(2..)?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

fn with_suffix(prefix: &[u8], suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + suffix.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(suffix);
    key
}

fn be_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes
        .get(..8)
        .and_then(|slice| slice.try_into().ok())
        .ok_or_else(|| StoreError::Backend("stored number is truncated".into()))?;
    Ok(u64::from_be_bytes(array))
}

fn decode_idempotency(key: String, value: &[u8]) -> Result<IdempotencyRecord, StoreError> {
    let fingerprint: [u8; 16] = value
        .get(..16)
        .and_then(|slice| slice.try_into().ok())
        .ok_or_else(|| StoreError::Backend("idempotency record is truncated".into()))?;
    let recorded_at_ms = be_u64(value.get(16..).unwrap_or_default())?;
    Ok(IdempotencyRecord {
        key,
        fingerprint: u128::from_be_bytes(fingerprint),
        reply: value.get(24..).unwrap_or_default().to_vec(),
        recorded_at_ms,
    })
}

impl EmbeddedStore {
    /// Opens (or creates) the database `skuld.fjall` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_clock(data_dir, WallClock::system())
    }

    /// [`EmbeddedStore::open`] beside the node's wall clock `wall` (the
    /// simulation's): an empty store starts its retention timeline there,
    /// and the wall clock's jumps away from it are reported.
    pub fn open_with_clock(data_dir: &Path, wall: WallClock) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(StoreError::backend)?;
        let db = Database::builder(data_dir.join("skuld.fjall"))
            .open()
            .map_err(StoreError::backend)?;
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(StoreError::backend)
        };
        let idempotency_by_time = keyspace("idempotency_by_time")?;
        let idempotency_by_commit = keyspace("idempotency_by_commit")?;
        let newest_key = |index: &Keyspace| match index.last_key_value() {
            Some(newest) => newest
                .key()
                .map(|key| key.to_vec())
                .map_err(StoreError::backend),
            None => Ok(Vec::new()),
        };
        let newest_commit = newest_key(&idempotency_by_commit)?;
        let newest_legacy = newest_key(&idempotency_by_time)?;
        let stamp_of = |key: &[u8]| if key.is_empty() { Ok(0) } else { be_u64(key) };
        let newest_stamp = stamp_of(&newest_commit)?.max(stamp_of(&newest_legacy)?);
        let next_commit = if newest_commit.is_empty() {
            0
        } else {
            be_u64(newest_commit.get(8..).unwrap_or_default())?.wrapping_add(1)
        };
        let inner = Inner {
            journal: keyspace("journal")?,
            snapshots: keyspace("snapshots")?,
            idempotency: keyspace("idempotency")?,
            idempotency_by_commit,
            idempotency_by_time,
            clock: RetentionClock::new(newest_stamp, wall),
            timers: keyspace("timers")?,
            timers_by_due: keyspace("timers_by_due")?,
            summaries: keyspace("summaries")?,
            records: keyspace("records")?,
            write_lock: Mutex::new(next_commit),
            outbox: outbox::Outbox::open(&db)?,
            db,
        };
        let lookups = spawn_lookup_thread(inner.idempotency.clone())?;
        Ok(Self {
            inner: Arc::new(inner),
            lookups,
        })
    }

    async fn blocking<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(StoreError::backend)?
    }
}

impl Inner {
    fn commit_batch(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut next_commit = self.write_lock.lock();
        // Taken even if this commit fails: it may have reached fjall's
        // journal, so its number is never given to another.
        let commit_number = *next_commit;
        *next_commit = commit_number.wrapping_add(1);
        // Sized once: a batch of a few hundred entities otherwise grows
        // its item list a dozen times on the commit chain.
        let mut write = fjall::OwnedWriteBatch::with_capacity(self.db.clone(), batch_items(&batch))
            .durability(Some(PersistMode::SyncAll));
        // Timers changed earlier in this batch are not readable from the
        // database yet; remember them here.
        let mut timers_in_batch: HashMap<&[u8], Option<u64>> = HashMap::new();
        let stamp = self.clock.stamp();
        let recorded_at = stamp.to_be_bytes();
        let mut purge_index = Vec::new();
        let mut staged = outbox::Staged::new();
        for entity in &batch.entities {
            let key = entity.key.as_slice();
            let prefixed = length_prefixed(key);
            for (sequence, entry) in &entity.journal {
                write.insert(
                    &self.journal,
                    with_suffix(&prefixed, &sequence.to_be_bytes()),
                    entry.as_slice(),
                );
            }
            if let Some((sequence, snapshot)) = &entity.snapshot {
                write.insert(
                    &self.snapshots,
                    key,
                    with_suffix(&sequence.to_be_bytes(), snapshot),
                );
            }
            for record in &entity.idempotency {
                let mut value = Vec::with_capacity(24 + record.reply.len());
                value.extend_from_slice(&record.fingerprint.to_be_bytes());
                value.extend_from_slice(&recorded_at);
                value.extend_from_slice(&record.reply);
                let record_key = with_suffix(&prefixed, record.key.as_bytes());
                push_length_prefixed(&mut purge_index, &record_key);
                write.insert(&self.idempotency, record_key, value);
            }
            if let Some(timer) = entity.timer {
                let previous = match timers_in_batch.get(key) {
                    Some(previous) => *previous,
                    None => match self.timers.get(key).map_err(StoreError::backend)? {
                        Some(due) => Some(be_u64(&due)?),
                        None => None,
                    },
                };
                if let Some(previous_due) = previous {
                    write.remove(
                        &self.timers_by_due,
                        with_suffix(&previous_due.to_be_bytes(), key),
                    );
                }
                match timer {
                    Some(due_at) => {
                        write.insert(&self.timers, key, due_at.to_be_bytes());
                        write.insert(
                            &self.timers_by_due,
                            with_suffix(&due_at.to_be_bytes(), key),
                            [],
                        );
                    }
                    None => write.remove(&self.timers, key),
                }
                timers_in_batch.insert(key, timer);
            }
            if let Some((scope, summary)) = &entity.summary {
                write.insert(
                    &self.summaries,
                    with_suffix(&length_prefixed(scope), key),
                    summary.as_slice(),
                );
            }
            self.outbox.stage(
                &mut write,
                &mut staged,
                key,
                entity.shard,
                &entity.events,
                stamp,
            );
        }
        if !purge_index.is_empty() {
            write.insert(
                &self.idempotency_by_commit,
                with_suffix(&recorded_at, &commit_number.to_be_bytes()),
                purge_index,
            );
        }
        write.commit().map_err(StoreError::backend)?;
        self.outbox.publish(staged);
        Ok(())
    }

    /// Deletes up to `limit` records stamped before the retention's
    /// cut-off, oldest first: those of the per-record index an earlier
    /// version wrote, then those of the per-commit index. Returns how many
    /// index entries it consumed (a record rewritten since under the same
    /// key counts, but stays).
    fn purge_idempotency(&self, retention: Duration, limit: usize) -> Result<usize, StoreError> {
        let _serialized = self.write_lock.lock();
        let before_ms = self.clock.purge_before(retention);
        let cut_off = before_ms.to_be_bytes().to_vec();
        let mut write = self.db.batch().durability(Some(PersistMode::SyncAll));
        let mut purged = 0;
        for item in self
            .idempotency_by_time
            .range(..cut_off.clone())
            .take(limit)
        {
            let (index_key, _) = item.into_inner().map_err(StoreError::backend)?;
            let record_key = index_key.get(8..).unwrap_or_default();
            self.remove_if_stamped(&mut write, record_key, be_u64(&index_key)?)?;
            write.remove(&self.idempotency_by_time, index_key.to_vec());
            purged += 1;
        }
        for item in self.idempotency_by_commit.range(..cut_off) {
            if purged == limit {
                break;
            }
            let (index_key, record_keys) = item.into_inner().map_err(StoreError::backend)?;
            let recorded_at = be_u64(&index_key)?;
            let mut rest = &record_keys[..];
            while purged < limit {
                let Some((record_key, after)) = split_length_prefixed_u32(rest)? else {
                    break;
                };
                self.remove_if_stamped(&mut write, record_key, recorded_at)?;
                rest = after;
                purged += 1;
            }
            if rest.is_empty() {
                write.remove(&self.idempotency_by_commit, index_key.to_vec());
            } else {
                // The limit fell inside this commit: keep the rest for the
                // next purge.
                write.insert(
                    &self.idempotency_by_commit,
                    index_key.to_vec(),
                    rest.to_vec(),
                );
            }
        }
        if purged > 0 {
            write.commit().map_err(StoreError::backend)?;
        }
        Ok(purged)
    }

    /// Deletes the record at `record_key` if it is the one stamped
    /// `recorded_at`: a record rewritten later under the same key has a
    /// newer stamp and an index entry of its own.
    fn remove_if_stamped(
        &self,
        write: &mut fjall::OwnedWriteBatch,
        record_key: &[u8],
        recorded_at: u64,
    ) -> Result<(), StoreError> {
        if let Some(value) = self
            .idempotency
            .get(record_key)
            .map_err(StoreError::backend)?
        {
            if be_u64(value.get(16..).unwrap_or_default())? == recorded_at {
                write.remove(&self.idempotency, record_key.to_vec());
            }
        }
        Ok(())
    }
}

/// How many items a commit of `batch` adds to fjall's write batch, at most
/// (a timer change is up to three, the outbox two per event and a bounds
/// row per shard, one purge index row).
fn batch_items(batch: &WriteBatch) -> usize {
    let per_entity: usize = batch
        .entities
        .iter()
        .map(|entity| {
            entity.journal.len()
                + usize::from(entity.snapshot.is_some())
                + entity.idempotency.len()
                + if entity.timer.is_some() { 3 } else { 0 }
                + usize::from(entity.summary.is_some())
                + 2 * entity.events.len()
                + usize::from(!entity.events.is_empty())
        })
        .sum();
    per_entity + 1
}

/// Appends `bytes` with a `u32` big-endian length before it.
fn push_length_prefixed(list: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    list.extend_from_slice(&len.to_be_bytes());
    list.extend_from_slice(bytes);
}

/// An entry of a length-prefixed list and the rest of the list after it.
type EntryAndRest<'a> = (&'a [u8], &'a [u8]);

/// The first entry of a list [`push_length_prefixed`] wrote, and the rest;
/// `None` at the end.
fn split_length_prefixed_u32(list: &[u8]) -> Result<Option<EntryAndRest<'_>>, StoreError> {
    if list.is_empty() {
        return Ok(None);
    }
    let truncated = || StoreError::Backend("idempotency purge index is truncated".into());
    let len: [u8; 4] = list
        .get(..4)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(truncated)?;
    let len = usize::try_from(u32::from_be_bytes(len)).map_err(|_| truncated())?;
    let rest = list.get(4..).ok_or_else(truncated)?;
    if rest.len() < len {
        return Err(truncated());
    }
    Ok(Some(rest.split_at(len)))
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn load(&self, key: &[u8]) -> Result<LoadedEntity, StoreError> {
        let key = key.to_vec();
        self.blocking(move |inner| {
            let snapshot = match inner.snapshots.get(&key).map_err(StoreError::backend)? {
                Some(value) => Some((be_u64(&value)?, value.get(8..).unwrap_or_default().to_vec())),
                None => None,
            };
            let after = snapshot.as_ref().map_or(0, |(sequence, _)| *sequence);
            let prefixed = length_prefixed(&key);
            let mut journal_tail = Vec::new();
            if let Some(first) = after.checked_add(1) {
                let start = with_suffix(&prefixed, &first.to_be_bytes());
                let end = with_suffix(&prefixed, &u64::MAX.to_be_bytes());
                for item in inner.journal.range(start..=end) {
                    let (k, v) = item.into_inner().map_err(StoreError::backend)?;
                    journal_tail.push((
                        be_u64(k.get(prefixed.len()..).unwrap_or_default())?,
                        v.to_vec(),
                    ));
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
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = LookupJob {
            prefixed_entity: length_prefixed(entity),
            keys,
            reply,
        };
        let lookups = self.lookups.clone();
        // A full queue means the reader is far behind: wait off the async
        // threads rather than refuse.
        if let Err(std::sync::mpsc::TrySendError::Full(job)) = lookups.try_send(job) {
            tokio::task::spawn_blocking(move || lookups.send(job))
                .await
                .map_err(StoreError::backend)?
                .map_err(|_| StoreError::Closed)?;
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn idempotency_keys(
        &self,
        entity: &[u8],
        limit: usize,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let prefixed = length_prefixed(entity);
        self.blocking(move |inner| {
            let mut keys = Vec::new();
            for item in inner.idempotency.prefix(&prefixed) {
                if keys.len() == limit {
                    return Ok(None);
                }
                let key = item.key().map_err(StoreError::backend)?;
                let key = key.get(prefixed.len()..).unwrap_or_default();
                keys.push(String::from_utf8_lossy(key).into_owned());
            }
            Ok(Some(keys))
        })
        .await
    }

    async fn commit(&self, batch: WriteBatch) -> Result<Committed, StoreError> {
        // One node owns every key of an embedded store: nothing to fence.
        self.blocking(move |inner| inner.commit_batch(batch))
            .await?;
        Ok(Committed::default())
    }

    async fn fence(&self, _shard: u32, _epoch: u64) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn due_timers(
        &self,
        now_ms: u64,
        limit: usize,
        // Single-node: the node owns every shard.
        _shards: Option<Vec<u32>>,
    ) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        self.blocking(move |inner| {
            let mut due = Vec::new();
            let end = now_ms.saturating_add(1).to_be_bytes().to_vec();
            for item in inner.timers_by_due.range(..end).take(limit) {
                let (k, _) = item.into_inner().map_err(StoreError::backend)?;
                due.push((k.get(8..).unwrap_or_default().to_vec(), be_u64(&k)?));
            }
            Ok(due)
        })
        .await
    }

    async fn purge_idempotency(
        &self,
        retention: Duration,
        _shards: Option<Vec<u32>>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        self.blocking(move |inner| inner.purge_idempotency(retention, limit))
            .await
    }

    async fn list_summaries(
        &self,
        scope: &[u8],
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let prefix = length_prefixed(scope);
        self.blocking(move |inner| {
            let mut found = Vec::new();
            let items: Box<dyn Iterator<Item = fjall::Guard>> = match after {
                Some(after) => {
                    // Everything in the scope strictly after `after`.
                    let mut start = with_suffix(&prefix, &after);
                    start.push(0);
                    Box::new(inner.summaries.range(start..))
                }
                None => Box::new(inner.summaries.prefix(&prefix)),
            };
            for item in items {
                let (k, v) = item.into_inner().map_err(StoreError::backend)?;
                if !k.starts_with(&prefix) {
                    break;
                }
                found.push((
                    k.get(prefix.len()..).unwrap_or_default().to_vec(),
                    v.to_vec(),
                ));
                if found.len() >= limit {
                    break;
                }
            }
            Ok(found)
        })
        .await
    }

    async fn scan_summaries(
        &self,
        scope_prefix: &[u8],
        after: Option<(Vec<u8>, Vec<u8>)>,
        limit: usize,
    ) -> Result<Vec<SummaryRow>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let scope_prefix = scope_prefix.to_vec();
        self.blocking(move |inner| {
            // Keys are lp(scope) ++ entity: scopes sort by length first, so
            // those with the prefix are not contiguous; the whole keyspace
            // is walked (only return cases keep summaries).
            let items: Box<dyn Iterator<Item = fjall::Guard>> = match after {
                Some((scope, entity)) => {
                    let mut start = with_suffix(&length_prefixed(&scope), &entity);
                    start.push(0);
                    Box::new(inner.summaries.range(start..))
                }
                None => Box::new(inner.summaries.iter()),
            };
            let mut found = Vec::new();
            for item in items {
                let (k, v) = item.into_inner().map_err(StoreError::backend)?;
                let Some((scope, entity)) = split_length_prefixed(&k) else {
                    continue;
                };
                if !scope.starts_with(&scope_prefix) {
                    continue;
                }
                found.push(SummaryRow {
                    scope: scope.to_vec(),
                    entity: entity.to_vec(),
                    value: v.to_vec(),
                });
                if found.len() >= limit {
                    break;
                }
            }
            Ok(found)
        })
        .await
    }

    async fn ping(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    async fn journal(&self, key: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let prefixed = length_prefixed(key);
        self.blocking(move |inner| {
            let mut entries = Vec::new();
            for item in inner.journal.prefix(&prefixed) {
                let (k, v) = item.into_inner().map_err(StoreError::backend)?;
                entries.push((
                    be_u64(k.get(prefixed.len()..).unwrap_or_default())?,
                    v.to_vec(),
                ));
            }
            Ok(entries)
        })
        .await
    }

    async fn read_events(
        &self,
        after: Vec<(u32, u64)>,
        per_shard: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let after = after.into_iter().collect();
        self.blocking(move |inner| inner.outbox.read(&after, per_shard))
            .await
    }

    async fn shard_events(
        &self,
        shard: u32,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.blocking(move |inner| inner.outbox.read_shard(shard, after, limit))
            .await
    }

    async fn event_bounds(&self) -> Result<Vec<ShardEvents>, StoreError> {
        Ok(self.inner.outbox.bounds())
    }

    async fn entity_events(
        &self,
        entity: &[u8],
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let entity = entity.to_vec();
        self.blocking(move |inner| inner.outbox.of_entity(&entity, after, limit))
            .await
    }

    async fn purge_events(
        &self,
        retention: Duration,
        // Single-node: the node owns every shard.
        _shards: Option<Vec<u32>>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        self.blocking(move |inner| {
            let _serialized = inner.write_lock.lock();
            let before_ms = inner.clock.purge_before(retention);
            inner.outbox.purge(&inner.db, before_ms, limit)
        })
        .await
    }

    async fn put_record(&self, kind: &str, id: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let key = with_suffix(&length_prefixed(kind.as_bytes()), id.as_bytes());
        self.blocking(move |inner| {
            let mut write = inner.db.batch().durability(Some(PersistMode::SyncAll));
            write.insert(&inner.records, key, value);
            write.commit().map_err(StoreError::backend)
        })
        .await
    }

    async fn put_records(
        &self,
        kind: &str,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let prefix = length_prefixed(kind.as_bytes());
        self.blocking(move |inner| {
            let mut write = inner.db.batch().durability(Some(PersistMode::SyncAll));
            for (id, value) in records {
                write.insert(&inner.records, with_suffix(&prefix, id.as_bytes()), value);
            }
            write.commit().map_err(StoreError::backend)
        })
        .await
    }

    async fn get_record(&self, kind: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = with_suffix(&length_prefixed(kind.as_bytes()), id.as_bytes());
        self.blocking(move |inner| {
            Ok(inner
                .records
                .get(&key)
                .map_err(StoreError::backend)?
                .map(|value| value.to_vec()))
        })
        .await
    }

    async fn delete_record(&self, kind: &str, id: &str) -> Result<bool, StoreError> {
        let key = with_suffix(&length_prefixed(kind.as_bytes()), id.as_bytes());
        self.blocking(move |inner| {
            // Serialized with other writers so "was there one" stays true.
            let _serialized = inner.write_lock.lock();
            let existed = inner
                .records
                .get(&key)
                .map_err(StoreError::backend)?
                .is_some();
            if existed {
                let mut write = inner.db.batch().durability(Some(PersistMode::SyncAll));
                write.remove(&inner.records, key);
                write.commit().map_err(StoreError::backend)?;
            }
            Ok(existed)
        })
        .await
    }

    async fn list_records(
        &self,
        kind: &str,
        prefix: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let kind_prefix = length_prefixed(kind.as_bytes());
        let start = with_suffix(&kind_prefix, prefix.as_bytes());
        self.blocking(move |inner| {
            let mut found = Vec::new();
            for item in inner.records.prefix(&start) {
                let (key, value) = item.into_inner().map_err(StoreError::backend)?;
                let id = String::from_utf8_lossy(key.get(kind_prefix.len()..).unwrap_or_default())
                    .into_owned();
                if after.as_ref().is_some_and(|after| &id <= after) {
                    continue;
                }
                found.push((id, value.to_vec()));
                if found.len() >= limit {
                    break;
                }
            }
            Ok(found)
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
            summary: None,
            ..EntityWrite::default()
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
        assert_eq!(
            store.idempotency_keys(b"a", 10).await.unwrap(),
            Some(vec!["k1".to_owned(), "k2".to_owned()])
        );
        assert_eq!(
            store
                .idempotency_keys(b"a", 2)
                .await
                .unwrap()
                .map(|keys| keys.len()),
            Some(2)
        );
        assert_eq!(store.idempotency_keys(b"a", 1).await.unwrap(), None);
        assert_eq!(
            store.idempotency_keys(b"b", 1).await.unwrap(),
            Some(vec!["k1".to_owned()])
        );
        assert_eq!(store.idempotency_keys(b"", 10).await.unwrap(), Some(vec![]));
        // The second write of "a" moved its timer from 5001 to 5002.
        let due = store.due_timers(10_000, 10, None).await.unwrap();
        assert_eq!(due, vec![(b"b".to_vec(), 5_001), (b"a".to_vec(), 5_002)]);
        assert_eq!(store.due_timers(5_001, 10, None).await.unwrap().len(), 1);
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
        assert!(store
            .due_timers(u64::MAX - 1, 10, None)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(store.journal(b"a").await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn summaries_page_in_key_order_within_their_scope() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut batch = WriteBatch::default();
        for (scope, key) in [(b"t1", b"c"), (b"t1", b"a"), (b"t2", b"b"), (b"t1", b"b")] {
            batch.entities.push(EntityWrite {
                key: key.to_vec(),
                summary: Some((scope.to_vec(), key.to_vec())),
                ..EntityWrite::default()
            });
        }
        store.commit(batch).await.unwrap();
        let first = store.list_summaries(b"t1", None, 2).await.unwrap();
        assert_eq!(
            first.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        let rest = store
            .list_summaries(b"t1", Some(b"b".to_vec()), 2)
            .await
            .unwrap();
        assert_eq!(rest, vec![(b"c".to_vec(), b"c".to_vec())]);
        assert_eq!(
            store.list_summaries(b"t2", None, 10).await.unwrap().len(),
            1
        );
    }

    #[tokio::test]
    async fn summaries_scan_across_scopes_by_prefix_a_page_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut batch = WriteBatch::default();
        // Scopes of different lengths: fjall orders them by length first.
        for (scope, key) in [
            (&b"returns/t1"[..], &b"c"[..]),
            (b"returns/tenant2", b"a"),
            (b"other", b"z"),
            (b"returns/t1", b"a"),
        ] {
            batch.entities.push(EntityWrite {
                key: key.to_vec(),
                summary: Some((scope.to_vec(), key.to_vec())),
                ..EntityWrite::default()
            });
        }
        store.commit(batch).await.unwrap();
        let mut scanned = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .scan_summaries(b"returns/", after.take(), 1)
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = Some((last.scope.clone(), last.entity.clone()));
            scanned.extend(page.into_iter().map(|row| (row.scope, row.entity)));
        }
        scanned.sort();
        assert_eq!(
            scanned,
            vec![
                (b"returns/t1".to_vec(), b"a".to_vec()),
                (b"returns/t1".to_vec(), b"c".to_vec()),
                (b"returns/tenant2".to_vec(), b"a".to_vec()),
            ]
        );
        assert!(store
            .scan_summaries(b"returns/", None, 0)
            .await
            .unwrap()
            .is_empty());
    }

    /// One commit of `keys` answers for entity `a`.
    async fn commit_answers(store: &EmbeddedStore, keys: &[&str]) {
        let mut batch = WriteBatch::default();
        for key in keys {
            batch.entities.push(EntityWrite {
                key: b"a".to_vec(),
                idempotency: vec![IdempotencyRecord {
                    key: (*key).to_owned(),
                    fingerprint: 7,
                    reply: vec![1],
                    recorded_at_ms: 0,
                }],
                ..EntityWrite::default()
            });
        }
        store.commit(batch).await.unwrap();
    }

    async fn stored_keys(store: &EmbeddedStore) -> Vec<String> {
        store.idempotency_keys(b"a", 100).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn purge_stops_at_its_limit_inside_a_commit_and_goes_on_from_there() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        commit_answers(&store, &["k1", "k2", "k3"]).await;
        commit_answers(&store, &["k4", "k5"]).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let purge = |limit| store.purge_idempotency(Duration::ZERO, None, limit);
        assert_eq!(purge(2).await.unwrap(), 2);
        assert_eq!(stored_keys(&store).await, ["k3", "k4", "k5"]);
        assert_eq!(purge(2).await.unwrap(), 2);
        assert_eq!(stored_keys(&store).await, ["k5"]);
        assert_eq!(purge(10).await.unwrap(), 1);
        assert!(stored_keys(&store).await.is_empty());
        assert_eq!(purge(10).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn purge_keeps_a_record_rewritten_after_the_one_it_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        commit_answers(&store, &["k1"]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        commit_answers(&store, &["k1"]).await;
        // Only the first commit is older than the retention.
        let purged = store
            .purge_idempotency(Duration::from_millis(25), None, 10)
            .await
            .unwrap();
        assert_eq!(purged, 1);
        assert_eq!(stored_keys(&store).await, ["k1"]);
    }

    #[tokio::test]
    async fn purge_drains_the_per_record_index_of_earlier_versions_first() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            commit_answers(&store, &["new"]).await;
            // A record and its index entry as the per-record index wrote
            // them, older than the commit above.
            let inner = &store.inner;
            let record_key = with_suffix(&length_prefixed(b"a"), b"old");
            let mut value = 7u128.to_be_bytes().to_vec();
            value.extend_from_slice(&1_000u64.to_be_bytes());
            value.push(1);
            let mut write = inner.db.batch().durability(Some(PersistMode::SyncAll));
            write.insert(&inner.idempotency, record_key.clone(), value);
            write.insert(
                &inner.idempotency_by_time,
                with_suffix(&1_000u64.to_be_bytes(), &record_key),
                [],
            );
            write.commit().unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(stored_keys(&store).await, ["new", "old"]);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let purge = |limit| store.purge_idempotency(Duration::ZERO, None, limit);
        assert_eq!(purge(1).await.unwrap(), 1);
        assert_eq!(stored_keys(&store).await, ["new"]);
        assert_eq!(purge(10).await.unwrap(), 1);
        assert!(stored_keys(&store).await.is_empty());
    }

    #[tokio::test]
    async fn commit_numbers_go_on_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            commit_answers(&store, &["k1"]).await;
        }
        // A reused number under the same stamp (the first commit after
        // opening may share the newest stored stamp) would overwrite the
        // first commit's index row and leave k1 unpurgeable.
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(*store.inner.write_lock.lock(), 1);
        commit_answers(&store, &["k2"]).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            store
                .purge_idempotency(Duration::ZERO, None, 10)
                .await
                .unwrap(),
            2
        );
        assert!(stored_keys(&store).await.is_empty());
    }

    #[tokio::test]
    async fn purge_removes_only_records_older_than_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let mut batch = WriteBatch::default();
            batch.entities.push(write(b"a", 1));
            store.commit(batch).await.unwrap();
        }
        // Reopened: the record predates this process, and nothing proves it
        // is older than an hour, whatever the wall clock says.
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut batch = WriteBatch::default();
        batch.entities.push(write(b"a", 5));
        store.commit(batch).await.unwrap();
        let stamped = store
            .idempotency_lookup(b"a", vec!["k1".into(), "k5".into()])
            .await
            .unwrap();
        let (k1, k5) = (stamped[0].clone().unwrap(), stamped[1].clone().unwrap());
        // The writer's value is ignored: the store stamps records itself.
        assert_ne!(k1.recorded_at_ms, 1_001);
        assert!(k5.recorded_at_ms >= k1.recorded_at_ms);
        let hour = Duration::from_secs(3_600);
        assert_eq!(store.purge_idempotency(hour, None, 100).await.unwrap(), 0);
        // Past the newest stamp (stamps have millisecond resolution).
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            store
                .purge_idempotency(Duration::ZERO, None, 100)
                .await
                .unwrap(),
            2
        );
        let found = store
            .idempotency_lookup(b"a", vec!["k1".into(), "k5".into()])
            .await
            .unwrap();
        assert!(found.iter().all(Option::is_none));
    }
}
