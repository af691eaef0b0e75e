//! The embedded store's outbox: events written in the commit of the change
//! that caused them, numbered per shard.
//!
//! Three keyspaces:
//! * `events`: shard(be 4) ++ seq(be 8) -> recorded_at(be 8) ++ lp(entity) ++ body
//! * `events_by_entity`: lp(entity) ++ seq(be 8) -> shard(be 4), for history
//!   (an entity's events all lie in its one shard)
//! * `event_bounds`: shard(be 4) -> floor(be 8) ++ head(be 8), rewritten by
//!   every commit that adds to the shard, so a shard whose events retention
//!   deleted keeps counting from where it was.
//!
//! Commits and purges are serialized by the store's write lock; the bounds
//! in memory change only after the batch that carries them is durable.

use std::collections::BTreeMap;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch as WriteBatch};
use parking_lot::Mutex;

use super::{be_u64, length_prefixed, with_suffix};
use crate::store::{ShardEvents, StoreError, StoredEvent};

pub(super) struct Outbox {
    events: Keyspace,
    by_entity: Keyspace,
    bounds_keyspace: Keyspace,
    bounds: Mutex<BTreeMap<u32, ShardEvents>>,
}

/// The history index's memtable size (fjall's default is 64 MiB).
const BY_ENTITY_MEMTABLE_BYTES: u64 = 4 * 1024 * 1024;

/// Bounds a commit moved, published once the commit is durable.
pub(super) type Staged = BTreeMap<u32, ShardEvents>;

fn event_key(shard: u32, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(12);
    key.extend_from_slice(&shard.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn be_u32(bytes: &[u8]) -> Result<u32, StoreError> {
    let array: [u8; 4] = bytes
        .get(..4)
        .and_then(|slice| slice.try_into().ok())
        .ok_or_else(|| StoreError::Backend("stored shard number is truncated".into()))?;
    Ok(u32::from_be_bytes(array))
}

/// An `events` row back as a [`StoredEvent`].
fn decode_event(key: &[u8], value: &[u8]) -> Result<StoredEvent, StoreError> {
    let shard = be_u32(key)?;
    let seq = be_u64(key.get(4..).unwrap_or_default())?;
    let recorded_at_ms = be_u64(value)?;
    let rest = value.get(8..).unwrap_or_default();
    let length = rest
        .get(..2)
        .map(|bytes| usize::from(u16::from_be_bytes([bytes[0], bytes[1]])))
        .ok_or_else(|| StoreError::Backend("stored event is truncated".into()))?;
    let entity = rest
        .get(2..2 + length)
        .ok_or_else(|| StoreError::Backend("stored event is truncated".into()))?
        .to_vec();
    let body = rest.get(2 + length..).unwrap_or_default().to_vec();
    Ok(StoredEvent {
        shard,
        seq,
        recorded_at_ms,
        entity,
        body,
    })
}

impl Outbox {
    pub(super) fn open(db: &Database) -> Result<Self, StoreError> {
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(StoreError::backend)
        };
        let bounds_keyspace = keyspace("event_bounds")?;
        let events = keyspace("events")?;
        let mut bounds = BTreeMap::new();
        for item in bounds_keyspace.iter() {
            let (key, value) = item.into_inner().map_err(StoreError::backend)?;
            let shard = be_u32(&key)?;
            bounds.insert(
                shard,
                ShardEvents {
                    shard,
                    floor: be_u64(&value)?,
                    head: be_u64(value.get(8..).unwrap_or_default())?,
                },
            );
        }
        Ok(Self {
            events,
            // Its keys land at random places (entity order), and a commit
            // inserts them into the memtable's skiplist while it holds
            // fjall's journal lock, so every insert is on the serial commit
            // chain. In a 64 MiB memtable each insert misses the cache level
            // after level; a small one stays cached (benches/RESULTS.md,
            // "Lean outbox"). fjall reads these options only when it
            // creates the keyspace: a data directory made by an earlier
            // version keeps the 64 MiB it was created with.
            by_entity: db
                .keyspace("events_by_entity", || {
                    KeyspaceCreateOptions::default().max_memtable_size(BY_ENTITY_MEMTABLE_BYTES)
                })
                .map_err(StoreError::backend)?,
            bounds_keyspace,
            bounds: Mutex::new(bounds),
        })
    }

    fn stage_bounds(&self, batch: &mut WriteBatch, bounds: &ShardEvents) {
        let mut value = Vec::with_capacity(16);
        value.extend_from_slice(&bounds.floor.to_be_bytes());
        value.extend_from_slice(&bounds.head.to_be_bytes());
        batch.insert(&self.bounds_keyspace, bounds.shard.to_be_bytes(), value);
    }

    /// Adds one entity's events to `batch`, numbered after what `staged`
    /// (this commit so far) or the durable bounds say.
    pub(super) fn stage(
        &self,
        batch: &mut WriteBatch,
        staged: &mut Staged,
        entity: &[u8],
        shard: u32,
        bodies: &[Vec<u8>],
        recorded_at_ms: u64,
    ) {
        if bodies.is_empty() {
            return;
        }
        let bounds = staged.entry(shard).or_insert_with(|| {
            self.bounds
                .lock()
                .get(&shard)
                .copied()
                .unwrap_or(ShardEvents {
                    shard,
                    ..ShardEvents::default()
                })
        });
        let prefixed = length_prefixed(entity);
        for body in bodies {
            bounds.head += 1;
            let key = event_key(shard, bounds.head);
            let mut value = Vec::with_capacity(8 + prefixed.len() + body.len());
            value.extend_from_slice(&recorded_at_ms.to_be_bytes());
            value.extend_from_slice(&prefixed);
            value.extend_from_slice(body);
            batch.insert(
                &self.by_entity,
                with_suffix(&prefixed, &bounds.head.to_be_bytes()),
                shard.to_be_bytes(),
            );
            batch.insert(&self.events, key, value);
        }
        let bounds = *bounds;
        self.stage_bounds(batch, &bounds);
    }

    /// Makes a durable commit's bounds the ones readers and the next commit see.
    pub(super) fn publish(&self, staged: Staged) {
        self.bounds.lock().extend(staged);
    }

    pub(super) fn bounds(&self) -> Vec<ShardEvents> {
        self.bounds.lock().values().copied().collect()
    }

    pub(super) fn read(
        &self,
        after: &BTreeMap<u32, u64>,
        per_shard: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let shards: Vec<u32> = self.bounds.lock().keys().copied().collect();
        let mut found = Vec::new();
        for shard in shards {
            let from = after.get(&shard).copied().unwrap_or(0).saturating_add(1);
            let range = event_key(shard, from)..=event_key(shard, u64::MAX);
            for item in self.events.range(range).take(per_shard) {
                let (key, value) = item.into_inner().map_err(StoreError::backend)?;
                found.push(decode_event(&key, &value)?);
            }
        }
        Ok(found)
    }

    pub(super) fn read_shard(
        &self,
        shard: u32,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let range = event_key(shard, first)..=event_key(shard, u64::MAX);
        let mut found = Vec::new();
        for item in self.events.range(range).take(limit) {
            let (key, value) = item.into_inner().map_err(StoreError::backend)?;
            found.push(decode_event(&key, &value)?);
        }
        Ok(found)
    }

    pub(super) fn of_entity(
        &self,
        entity: &[u8],
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let prefixed = length_prefixed(entity);
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let range = with_suffix(&prefixed, &first.to_be_bytes())
            ..=with_suffix(&prefixed, &u64::MAX.to_be_bytes());
        let mut found = Vec::new();
        for item in self.by_entity.range(range).take(limit) {
            let (index, shard) = item.into_inner().map_err(StoreError::backend)?;
            let seq = be_u64(index.get(prefixed.len()..).unwrap_or_default())?;
            let key = event_key(be_u32(&shard)?, seq);
            // Retention deletes the event and its index entry together.
            if let Some(value) = self.events.get(&key).map_err(StoreError::backend)? {
                found.push(decode_event(&key, &value)?);
            }
        }
        Ok(found)
    }

    /// Deletes up to `limit` events recorded before `before_ms`, oldest
    /// first per shard, and raises the floors; the caller holds the write lock.
    pub(super) fn purge(
        &self,
        db: &Database,
        before_ms: u64,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let mut batch = db.batch().durability(Some(fjall::PersistMode::SyncAll));
        let mut staged = Staged::new();
        let mut purged = 0;
        for mut bounds in self.bounds() {
            let floor_before = bounds.floor;
            let range = event_key(bounds.shard, 0)..=event_key(bounds.shard, u64::MAX);
            for item in self.events.range(range) {
                if purged >= limit {
                    break;
                }
                let (key, value) = item.into_inner().map_err(StoreError::backend)?;
                let event = decode_event(&key, &value)?;
                // A prefix only: stop at the first event young enough to keep.
                if event.recorded_at_ms >= before_ms {
                    break;
                }
                batch.remove(&self.events, key.to_vec());
                batch.remove(
                    &self.by_entity,
                    with_suffix(&length_prefixed(&event.entity), &event.seq.to_be_bytes()),
                );
                bounds.floor = event.seq;
                purged += 1;
            }
            if bounds.floor != floor_before {
                self.stage_bounds(&mut batch, &bounds);
                staged.insert(bounds.shard, bounds);
            }
        }
        if purged == 0 {
            return Ok(0);
        }
        batch.commit().map_err(StoreError::backend)?;
        self.publish(staged);
        Ok(purged)
    }
}
