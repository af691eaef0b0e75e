//! The store trait every backend implements.
//!
//! The store is byte-oriented: it knows entity keys, journal entries,
//! snapshots, idempotency records and timers, but not what they mean. The
//! actors crate encodes its domain types into these bytes. This keeps one
//! trait for the embedded (redb) and the cluster (PostgreSQL) backends.

pub mod embedded;
pub mod health;
pub mod memory;
pub mod postgres;
pub mod retention_clock;
pub mod writer;

use async_trait::async_trait;

/// Errors of the storage layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, corruption, connection). Nothing in the failed
    /// write was applied; callers may retry.
    #[error("store backend failed: {0}")]
    Backend(String),
    /// The store was written under other settings than this node's (a
    /// different shard count); serving would misplace every key.
    #[error("{0}")]
    Incompatible(String),
    /// The store's writer or reader is gone (node shutting down).
    #[error("store is closed")]
    Closed,
    /// The write carried an ownership epoch older than the shard's current
    /// one: another node owns the shard now. Nothing was applied.
    #[error("write fenced: shard {shard} epoch {epoch} is stale (current {current})")]
    Fenced {
        shard: u32,
        epoch: u64,
        current: u64,
    },
}

impl StoreError {
    /// A backend failure with its whole cause chain: tokio-postgres says
    /// only "db error" at the top and the server's message below it.
    pub(crate) fn backend(error: impl std::error::Error) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !message.contains(&cause_text) {
                message.push_str(": ");
                message.push_str(&cause_text);
            }
            source = cause.source();
        }
        StoreError::Backend(message)
    }
}

/// A stored reply to a command, kept so a retry with the same idempotency key
/// gets the first reply back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The idempotency key, scoped to the entity.
    pub key: String,
    /// A fingerprint of the whole request except the key; a retry whose
    /// fingerprint differs is a different request reusing the key.
    pub fingerprint: u128,
    /// The encoded reply.
    pub reply: Vec<u8>,
    /// When the record was committed (unix ms), by the store's clock: the
    /// value a writer passes is ignored and the store stamps the record
    /// itself, so no node's wall clock decides when a key is forgotten.
    pub recorded_at_ms: u64,
}

/// Everything one entity changes in one write.
#[derive(Debug, Clone, Default)]
pub struct EntityWrite {
    /// The encoded entity key.
    pub key: Vec<u8>,
    /// The shard the key hashes to (0 in single-node mode).
    pub shard: u32,
    /// The writer's ownership epoch of `shard`. A backend that fences
    /// (PostgreSQL) rejects the write when the shard's stored epoch is
    /// higher; 0 means unfenced (single-node mode).
    pub epoch: u64,
    /// Journal entries as (sequence, encoded entry); sequences increase.
    pub journal: Vec<(u64, Vec<u8>)>,
    /// A snapshot of the state at the given sequence, replacing the previous one.
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// Idempotency records of the commands in this write.
    pub idempotency: Vec<IdempotencyRecord>,
    /// `Some(Some(t))` sets the entity's wake-up timer to `t` (unix ms),
    /// `Some(None)` clears it, `None` leaves it unchanged.
    pub timer: Option<Option<u64>>,
    /// A listing summary `(scope, value)` replacing the entity's previous
    /// one in that scope (e.g. a tenant's returns), for paged listings.
    pub summary: Option<(Vec<u8>, Vec<u8>)>,
    /// The outbox: the encoded events of this write's journal entries, in
    /// order. The store gives each the shard's next sequence number in the
    /// same atomic commit, so an event exists exactly when its change does.
    pub events: Vec<Vec<u8>>,
}

impl EntityWrite {
    pub fn is_empty(&self) -> bool {
        self.journal.is_empty()
            && self.snapshot.is_none()
            && self.idempotency.is_empty()
            && self.timer.is_none()
            && self.summary.is_none()
            && self.events.is_empty()
    }
}

/// One listing summary with the scope it is listed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRow {
    pub scope: Vec<u8>,
    pub entity: Vec<u8>,
    pub value: Vec<u8>,
}

/// An outbox event as stored: where it sits in its shard's order and the
/// bytes the actors crate wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub shard: u32,
    /// The event's place in its shard: 1, 2, 3, ... with no gaps, across
    /// owners (the fence lets only one write a shard at a time).
    pub seq: u64,
    /// When the commit stored it, by the store's clock (unix ms).
    pub recorded_at_ms: u64,
    /// The encoded key of the entity whose change it records.
    pub entity: Vec<u8>,
    pub body: Vec<u8>,
}

/// What a shard's event stream holds: events `floor + 1 ..= head`; those
/// up to `floor` were deleted by retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShardEvents {
    pub shard: u32,
    pub floor: u64,
    pub head: u64,
}

/// Many entities' writes committed atomically and durably together.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub entities: Vec<EntityWrite>,
}

/// The result of a commit: the writes that were refused because their
/// shard's epoch was stale. Every other write of the batch is durable.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Committed {
    /// `(index in the batch, the shard's current epoch)` of each fenced write.
    pub fenced: Vec<(usize, u64)>,
}

/// What is needed to rebuild an entity: its latest snapshot and the journal
/// entries after it.
#[derive(Debug, Clone, Default)]
pub struct LoadedEntity {
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// Entries with a sequence greater than the snapshot's, in order.
    pub journal_tail: Vec<(u64, Vec<u8>)>,
}

/// The storage contract. Every method may block on I/O internally; backends
/// run blocking work off the async threads.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Loads an entity's snapshot and journal tail.
    async fn load(&self, key: &[u8]) -> Result<LoadedEntity, StoreError>;

    /// Looks up idempotency records for `keys` of one entity, in order.
    async fn idempotency_lookup(
        &self,
        entity: &[u8],
        keys: Vec<String>,
    ) -> Result<Vec<Option<IdempotencyRecord>>, StoreError>;

    /// The keys of every idempotency record stored for `entity`, or `None`
    /// when there are more than `limit`. An actor loads them once per
    /// activation so that a command with a key not among them (almost every
    /// command) needs no lookup: only that entity's actor adds records.
    async fn idempotency_keys(
        &self,
        entity: &[u8],
        limit: usize,
    ) -> Result<Option<Vec<String>>, StoreError>;

    /// Commits a batch atomically; returns only once it is durable. Writes
    /// whose epoch is stale are left out and reported in [`Committed`]; the
    /// check and the writes happen in one transaction, so a stale owner can
    /// never commit after a newer owner raised the shard's epoch.
    async fn commit(&self, batch: WriteBatch) -> Result<Committed, StoreError>;

    /// Raises `shard`'s epoch to `epoch`, waiting for writes in flight under
    /// the old epoch to finish. Returns false when the stored epoch is
    /// higher (the claim is stale and must not be served); raising to the
    /// stored epoch again (a retry after an unknown outcome) returns true,
    /// since epochs are unique per claim. Stores that do not fence return true.
    async fn fence(&self, shard: u32, epoch: u64) -> Result<bool, StoreError>;

    /// Entities whose timer is due at `now_ms` or earlier, earliest first;
    /// only those of `shards` when given (a node scans the shards it owns).
    async fn due_timers(
        &self,
        now_ms: u64,
        limit: usize,
        shards: Option<Vec<u32>>,
    ) -> Result<Vec<(Vec<u8>, u64)>, StoreError>;

    /// Deletes up to `limit` idempotency records older than `retention` by
    /// the store's own clock (PostgreSQL's `now()`, the embedded store's
    /// monotonic clock), of the entities of `shards` only when given (a
    /// node purges the shards it owns); returns how many.
    async fn purge_idempotency(
        &self,
        retention: std::time::Duration,
        shards: Option<Vec<u32>>,
        limit: usize,
    ) -> Result<usize, StoreError>;

    /// A cheap round trip to the backend: Ok when it answers and takes
    /// writes, with the backend's clock (unix ms) when it has one of its
    /// own (PostgreSQL).
    async fn ping(&self) -> Result<Option<u64>, StoreError>;

    /// Summaries in `scope` after the entity key `after`, in key order.
    async fn list_summaries(
        &self,
        scope: &[u8],
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError>;

    /// Every summary whose scope starts with `scope_prefix`, after `after`
    /// (the `(scope, entity)` of the previous page's last row), up to
    /// `limit`, in the store's own order: for figures over all tenants
    /// (the node's census of return cases), read page by page.
    async fn scan_summaries(
        &self,
        scope_prefix: &[u8],
        after: Option<(Vec<u8>, Vec<u8>)>,
        limit: usize,
    ) -> Result<Vec<SummaryRow>, StoreError>;

    /// Reads a whole entity journal (for audits, tests and tooling).
    async fn journal(&self, key: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;

    /// Events after the given positions, in sequence order within each
    /// shard, up to `per_shard` of each shard. A shard not in `after` is
    /// read from its start. Shards are independent: no order across them.
    async fn read_events(
        &self,
        after: Vec<(u32, u64)>,
        per_shard: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Up to `limit` of one shard's events after `after`, in order.
    async fn shard_events(
        &self,
        shard: u32,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// The floor and head of every shard that has written an event.
    async fn event_bounds(&self) -> Result<Vec<ShardEvents>, StoreError>;

    /// Up to `limit` of one entity's retained events after shard sequence
    /// `after`, oldest first (an entity's events all lie in its shard).
    async fn entity_events(
        &self,
        entity: &[u8],
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Deletes up to `limit` of the oldest events recorded longer than
    /// `retention` ago by the store's clock, of `shards` only when given,
    /// and raises each shard's floor past them; returns how many. Only a
    /// prefix of a shard is ever deleted, so a reader never finds a hole.
    async fn purge_events(
        &self,
        retention: std::time::Duration,
        shards: Option<Vec<u32>>,
        limit: usize,
    ) -> Result<usize, StoreError>;

    /// Small records of no shard that every node reads (webhook endpoints,
    /// sink cursors, dead letters), by `(kind, id)`. Written alone, durably.
    async fn put_record(&self, kind: &str, id: &str, value: Vec<u8>) -> Result<(), StoreError>;
    /// Several records of `kind` in one durable write (all or none); of
    /// ids given twice the last value counts.
    async fn put_records(
        &self,
        kind: &str,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StoreError>;
    async fn get_record(&self, kind: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// True when there was one to delete.
    async fn delete_record(&self, kind: &str, id: &str) -> Result<bool, StoreError>;
    /// Records of `kind` whose id starts with `prefix`, in id order, after `after`.
    async fn list_records(
        &self,
        kind: &str,
        prefix: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
}
