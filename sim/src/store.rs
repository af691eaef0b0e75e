//! The fenced store the simulated nodes share, with faults.
//!
//! One [`MemoryStore`] stands in for PostgreSQL: it lives in an `Arc` the
//! test holds, so it survives every node's crash and bounce. Each node
//! reaches it through its own view ([`SimStore::for_node`]), and the
//! nemesis sets that view's faults through a [`StoreFaults`] handle; what
//! to inject and when is drawn by the caller from the seed, so the store
//! itself draws nothing.
//!
//! Like PostgreSQL's commit statement, a commit takes its shards' fence
//! rows in share mode (a per-shard [`RwLock`] read guard, taken in shard
//! order) and holds them until it applies; `fence` takes the row in
//! exclusive mode, so a fence waits for the commits in flight on its
//! shard. That is what makes the stall fault mean something: a node's
//! commit paused after its locks are taken (the zombie owner) holds the
//! new owner's fence until the pause ends, applies or fails, and only then
//! is the shard's epoch raised.
//!
//! Every applied commit is logged per shard with its epoch, in the order
//! the store applied them, so the checker can tell whether two owners'
//! epochs ever committed interleaved on one shard
//! ([`interleaved_epochs`]). Only `tokio::time` and `tokio::sync`: no
//! threads, no blocking, and ordered maps only, so a seed replays exactly.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use skuld_cluster::store::memory::MemoryStore;
use skuld_cluster::store::{
    Committed, IdempotencyRecord, LoadedEntity, ShardEvents, Store, StoreError, StoredEvent,
    SummaryRow, WriteBatch,
};
use skuld_cluster::WallClock;
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

/// PostgreSQL ends a transaction left idle this long
/// (`idle_in_transaction_session_timeout` of the store's sessions): a
/// stall longer than this fails its commit at this point, whatever it was
/// configured to end with.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The store calls a failure can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StoreCall {
    Commit,
    Fence,
}

/// Where an injected failure strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The call fails and nothing of it is applied.
    BeforeApply,
    /// The call is applied, then its reply is lost: the caller sees an
    /// error for something the store did (an indeterminate outcome).
    AfterApply,
}

/// How a stalled commit ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallEnd {
    /// The commit applies (after its epoch check, under the locks it held).
    Apply,
    /// The transaction is aborted: nothing applied, the caller sees an error.
    Fail,
}

/// A pause of a node's commits after their fence locks are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    pub hold: Duration,
    pub end: StallEnd,
}

/// One applied commit's part in a shard: the store's commit number (its
/// apply order across shards), the node and the epoch its writes carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardCommit {
    pub commit: u64,
    pub node: String,
    pub epoch: u64,
}

/// A commit of an older epoch applied on a shard after a newer epoch had
/// committed there: two owners wrote the shard interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochInterleaving {
    pub shard: u32,
    /// The newer epoch's commit that came first.
    pub newer: ShardCommit,
    /// The older epoch's commit that applied after it.
    pub older: ShardCommit,
}

/// The faults of one node's view.
#[derive(Debug, Default)]
struct NodeFaults {
    unreachable: bool,
    /// Added to each direction of every call (a round trip is twice this).
    latency: Duration,
    failures: BTreeMap<StoreCall, VecDeque<Failure>>,
    stall: Option<Stall>,
}

struct Shared {
    store: MemoryStore,
    /// Each shard's fence row lock: share for commits, exclusive for fences.
    fence_locks: Mutex<BTreeMap<u32, Arc<RwLock<()>>>>,
    faults: Mutex<BTreeMap<String, NodeFaults>>,
    /// Per shard, the applied commits in apply order. Held across the
    /// apply, so the log's order is the store's.
    applied: Mutex<BTreeMap<u32, Vec<ShardCommit>>>,
    next_commit: AtomicU64,
    injected: AtomicU64,
}

/// The store the simulated nodes share. Cloning shares it.
#[derive(Clone)]
pub struct SimStore {
    shared: Arc<Shared>,
}

/// The nemesis's handle on the store's faults. Cloning shares it.
#[derive(Clone)]
pub struct StoreFaults {
    shared: Arc<Shared>,
}

impl SimStore {
    /// An empty store whose own clock (stamping idempotency records and
    /// events, as PostgreSQL's `now()`) is `clock`.
    pub fn new(clock: WallClock) -> Self {
        Self {
            shared: Arc::new(Shared {
                store: MemoryStore::with_clock(clock),
                fence_locks: Mutex::new(BTreeMap::new()),
                faults: Mutex::new(BTreeMap::new()),
                applied: Mutex::new(BTreeMap::new()),
                next_commit: AtomicU64::new(1),
                injected: AtomicU64::new(0),
            }),
        }
    }

    /// The store as node `node` reaches it, subject to that node's faults.
    pub fn for_node(&self, node: &str) -> Arc<dyn Store> {
        Arc::new(NodeView {
            shared: Arc::clone(&self.shared),
            node: node.to_owned(),
        })
    }

    pub fn faults(&self) -> StoreFaults {
        StoreFaults {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The data itself, past every fault: for the checker's reads
    /// (`load`, `journal`) after the run.
    pub fn data(&self) -> &MemoryStore {
        &self.shared.store
    }

    /// Every shard's applied commits, in the order the store applied them.
    pub fn applied_commits(&self) -> BTreeMap<u32, Vec<ShardCommit>> {
        self.shared.applied.lock().clone()
    }
}

impl StoreFaults {
    /// Node `node` can reach the store (`false`: every call of its view
    /// fails as on a lost connection) or not.
    pub fn set_reachable(&self, node: &str, reachable: bool) {
        self.with_node(node, |faults| faults.unreachable = !reachable);
    }

    /// Each direction of every call of `node` takes `latency` (zero: none).
    pub fn set_latency(&self, node: &str, latency: Duration) {
        self.with_node(node, |faults| faults.latency = latency);
    }

    /// The next `count` calls `call` of `node` fail at `failure`.
    pub fn fail_next(&self, node: &str, call: StoreCall, failure: Failure, count: usize) {
        self.with_node(node, |faults| {
            faults
                .failures
                .entry(call)
                .or_default()
                .extend(std::iter::repeat_n(failure, count));
        });
    }

    /// Every commit of `node` that takes its locks from now on stalls as
    /// `stall` says, until [`StoreFaults::end_stall`]; a commit already
    /// stalled keeps its stall.
    pub fn stall_commits(&self, node: &str, stall: Stall) {
        self.with_node(node, |faults| faults.stall = Some(stall));
    }

    pub fn end_stall(&self, node: &str) {
        self.with_node(node, |faults| faults.stall = None);
    }

    /// Every node reaches the store again, without latency, failures or
    /// stalls (stalls already running end on their own).
    pub fn heal_all(&self) {
        self.shared.faults.lock().clear();
    }

    /// How many faults struck a call so far (failures, stalls, refused
    /// calls of an unreachable node).
    pub fn injected(&self) -> u64 {
        self.shared.injected.load(Ordering::Relaxed)
    }

    fn with_node(&self, node: &str, change: impl FnOnce(&mut NodeFaults)) {
        change(
            self.shared
                .faults
                .lock()
                .entry(node.to_owned())
                .or_default(),
        );
    }
}

/// Every place in `applied` where a shard took a commit of an older epoch
/// after a newer one (after epoch e+1 commits, no commit of epoch <= e may).
pub fn interleaved_epochs(applied: &BTreeMap<u32, Vec<ShardCommit>>) -> Vec<EpochInterleaving> {
    let mut found = Vec::new();
    for (shard, commits) in applied {
        let mut newest: Option<&ShardCommit> = None;
        for commit in commits {
            match newest {
                Some(newer) if commit.epoch < newer.epoch => found.push(EpochInterleaving {
                    shard: *shard,
                    newer: newer.clone(),
                    older: commit.clone(),
                }),
                Some(newer) if commit.epoch == newer.epoch => {}
                _ => newest = Some(commit),
            }
        }
    }
    found
}

/// One node's way to the shared store.
struct NodeView {
    shared: Arc<Shared>,
    node: String,
}

impl NodeView {
    fn lost_connection(&self) -> StoreError {
        StoreError::Backend(format!(
            "connection to the store lost (simulated: {} cannot reach it)",
            self.node
        ))
    }

    fn injected_error(&self, what: &str) -> StoreError {
        self.shared.injected.fetch_add(1, Ordering::Relaxed);
        tracing::info!(node = %self.node, what, "store fault");
        StoreError::Backend(format!("simulated store fault at {}: {what}", self.node))
    }

    fn latency(&self) -> Duration {
        self.shared
            .faults
            .lock()
            .get(&self.node)
            .map_or(Duration::ZERO, |faults| faults.latency)
    }

    fn reachable(&self) -> Result<(), StoreError> {
        let unreachable = self
            .shared
            .faults
            .lock()
            .get(&self.node)
            .is_some_and(|faults| faults.unreachable);
        if unreachable {
            self.shared.injected.fetch_add(1, Ordering::Relaxed);
            return Err(self.lost_connection());
        }
        Ok(())
    }

    fn next_failure(&self, call: StoreCall) -> Option<Failure> {
        self.shared
            .faults
            .lock()
            .get_mut(&self.node)
            .and_then(|faults| faults.failures.get_mut(&call))
            .and_then(VecDeque::pop_front)
    }

    fn stall(&self) -> Option<Stall> {
        self.shared
            .faults
            .lock()
            .get(&self.node)
            .and_then(|faults| faults.stall)
    }

    /// One direction of the network: the latency, then the connection must
    /// still be there.
    async fn travel(&self) -> Result<(), StoreError> {
        let latency = self.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        self.reachable()
    }

    /// A call with no fault of its own: there, the work, back. A reply
    /// lost on the way back loses nothing but the reply.
    async fn round_trip<T>(
        &self,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.travel().await?;
        let result = work.await;
        self.travel().await?;
        result
    }

    fn fence_lock(&self, shard: u32) -> Arc<RwLock<()>> {
        Arc::clone(self.shared.fence_locks.lock().entry(shard).or_default())
    }

    /// Share locks on `shards`' fence rows, taken in shard order so two
    /// commits never wait for each other.
    async fn lock_for_commit(&self, shards: BTreeSet<u32>) -> Vec<OwnedRwLockReadGuard<()>> {
        let mut held = Vec::with_capacity(shards.len());
        for shard in shards {
            held.push(self.fence_lock(shard).read_owned().await);
        }
        held
    }

    /// Applies `batch` and logs, per shard, the epoch of its applied
    /// writes, in one step.
    fn apply_and_log(&self, batch: WriteBatch) -> Result<Committed, StoreError> {
        let writes: Vec<(u32, u64)> = batch
            .entities
            .iter()
            .map(|write| (write.shard, write.epoch))
            .collect();
        let mut applied = self.shared.applied.lock();
        let committed = self.shared.store.commit_now(batch)?;
        let fenced: BTreeSet<usize> = committed.fenced.iter().map(|(index, _)| *index).collect();
        let shard_epochs: BTreeSet<(u32, u64)> = writes
            .into_iter()
            .enumerate()
            .filter(|(index, _)| !fenced.contains(index))
            .map(|(_, write)| write)
            .collect();
        if !shard_epochs.is_empty() {
            let commit = self.shared.next_commit.fetch_add(1, Ordering::Relaxed);
            for (shard, epoch) in shard_epochs {
                applied.entry(shard).or_default().push(ShardCommit {
                    commit,
                    node: self.node.clone(),
                    epoch,
                });
            }
        }
        Ok(committed)
    }
}

#[async_trait]
impl Store for NodeView {
    async fn load(&self, key: &[u8]) -> Result<LoadedEntity, StoreError> {
        self.round_trip(self.shared.store.load(key)).await
    }

    async fn idempotency_lookup(
        &self,
        entity: &[u8],
        keys: Vec<String>,
    ) -> Result<Vec<Option<IdempotencyRecord>>, StoreError> {
        self.round_trip(self.shared.store.idempotency_lookup(entity, keys))
            .await
    }

    async fn idempotency_keys(
        &self,
        entity: &[u8],
        limit: usize,
    ) -> Result<Option<Vec<String>>, StoreError> {
        self.round_trip(self.shared.store.idempotency_keys(entity, limit))
            .await
    }

    async fn commit(&self, batch: WriteBatch) -> Result<Committed, StoreError> {
        self.travel().await?;
        let failure = self.next_failure(StoreCall::Commit);
        if failure == Some(Failure::BeforeApply) {
            return Err(self.injected_error("commit failed before apply"));
        }
        let shards = batch.entities.iter().map(|write| write.shard).collect();
        let locks = self.lock_for_commit(shards).await;
        if let Some(stall) = self.stall() {
            self.shared.injected.fetch_add(1, Ordering::Relaxed);
            tracing::info!(node = %self.node, hold_ms = stall.hold.as_millis(), "store commit stalled holding its fences");
            tokio::time::sleep(stall.hold.min(IDLE_IN_TRANSACTION_TIMEOUT)).await;
            if stall.end == StallEnd::Fail || stall.hold > IDLE_IN_TRANSACTION_TIMEOUT {
                return Err(StoreError::Backend(format!(
                    "simulated store fault at {}: the stalled commit's transaction was aborted",
                    self.node
                )));
            }
            // Cut while stalled: the transaction dies with its connection.
            self.reachable()?;
        }
        let committed = self.apply_and_log(batch)?;
        drop(locks);
        if failure == Some(Failure::AfterApply) {
            return Err(self.injected_error("commit applied, reply lost"));
        }
        self.travel().await?;
        Ok(committed)
    }

    async fn fence(&self, shard: u32, epoch: u64) -> Result<bool, StoreError> {
        self.travel().await?;
        let failure = self.next_failure(StoreCall::Fence);
        if failure == Some(Failure::BeforeApply) {
            return Err(self.injected_error("fence failed before apply"));
        }
        let row = self.fence_lock(shard).write_owned().await;
        let raised = self.shared.store.fence_now(shard, epoch);
        drop(row);
        if failure == Some(Failure::AfterApply) {
            return Err(self.injected_error("fence applied, reply lost"));
        }
        self.travel().await?;
        Ok(raised)
    }

    async fn due_timers(
        &self,
        now_ms: u64,
        limit: usize,
        shards: Option<Vec<u32>>,
    ) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        self.round_trip(self.shared.store.due_timers(now_ms, limit, shards))
            .await
    }

    async fn purge_idempotency(
        &self,
        retention: Duration,
        shards: Option<Vec<u32>>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        self.round_trip(
            self.shared
                .store
                .purge_idempotency(retention, shards, limit),
        )
        .await
    }

    async fn ping(&self) -> Result<Option<u64>, StoreError> {
        self.round_trip(self.shared.store.ping()).await
    }

    async fn list_summaries(
        &self,
        scope: &[u8],
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.round_trip(self.shared.store.list_summaries(scope, after, limit))
            .await
    }

    async fn scan_summaries(
        &self,
        scope_prefix: &[u8],
        after: Option<(Vec<u8>, Vec<u8>)>,
        limit: usize,
    ) -> Result<Vec<SummaryRow>, StoreError> {
        self.round_trip(self.shared.store.scan_summaries(scope_prefix, after, limit))
            .await
    }

    async fn journal(&self, key: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.round_trip(self.shared.store.journal(key)).await
    }

    async fn read_events(
        &self,
        after: Vec<(u32, u64)>,
        per_shard: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.round_trip(self.shared.store.read_events(after, per_shard))
            .await
    }

    async fn shard_events(
        &self,
        shard: u32,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.round_trip(self.shared.store.shard_events(shard, after, limit))
            .await
    }

    async fn event_bounds(&self) -> Result<Vec<ShardEvents>, StoreError> {
        self.round_trip(self.shared.store.event_bounds()).await
    }

    async fn entity_events(
        &self,
        entity: &[u8],
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.round_trip(self.shared.store.entity_events(entity, after, limit))
            .await
    }

    async fn purge_events(
        &self,
        retention: Duration,
        shards: Option<Vec<u32>>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        self.round_trip(self.shared.store.purge_events(retention, shards, limit))
            .await
    }

    async fn put_record(&self, kind: &str, id: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.round_trip(self.shared.store.put_record(kind, id, value))
            .await
    }

    async fn put_records(
        &self,
        kind: &str,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        self.round_trip(self.shared.store.put_records(kind, records))
            .await
    }

    async fn get_record(&self, kind: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.round_trip(self.shared.store.get_record(kind, id))
            .await
    }

    async fn delete_record(&self, kind: &str, id: &str) -> Result<bool, StoreError> {
        self.round_trip(self.shared.store.delete_record(kind, id))
            .await
    }

    async fn list_records(
        &self,
        kind: &str,
        prefix: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.round_trip(self.shared.store.list_records(kind, prefix, after, limit))
            .await
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
