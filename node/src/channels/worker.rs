//! The push worker: keeps every channel showing what it may sell.
//!
//! One task per node, over the push keys of the shards the node owns (all
//! of them in single-node mode). For each key it computes the desired
//! value of every target from the network's positions (read from their
//! owners) and the channel's definition, keeps a `PushState` per target
//! (the coalescing rule, skuld-domain `channel::push`), and sends what is
//! due through the channel's connector: one call in flight per channel
//! account, decreases first, the connector's own limiter pacing the calls.
//!
//! Durability: a key's dirty record (written by the projection before the
//! event cursor moved) stays until every target is acknowledged, so a
//! crash or a shard move leaves the work to whoever owns the shard next.
//! The acknowledged figures are not stored: a worker that starts on a key
//! reads the channel back first, then compares against what it read.
//!
//! Confirmation: an `Accepted` push (Amazon) stays in flight until a
//! read-back shows the value. Reconciliation: every `reconcile_interval`,
//! and when asked, each known target is read back; a difference is drift
//! (recorded, counted) and makes the target due again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use skuld_actors::channel::{
    available_to_sell, DriftDetected, Publication, Push, PushPolicy, PushState, Urgency,
};
use skuld_actors::position::PositionEntity;
use skuld_actors::runtime::{EntityRuntime, RequestMeta};
use skuld_actors::PositionKey;
use skuld_cluster::shards::ShardTable;
use skuld_cluster::{EntityWrite, Store, WriteBatch};
use skuld_connectors::{backoff, Connector, ConnectorError, ItemKey, PushItem, PushOutcome};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::catalog::Catalog;
use super::credentials::{connector_for, CredentialPolicy, LinkError};
use super::definitions::{self, StoredChannel};
use super::keys::{
    decode_key, decode_mark, encode_key, encode_mark, shard_of_record, DirtyMark, PushKey,
    DIRTY_KIND, KNOWN_KIND, REPLAY_KIND,
};
use super::ledger::{self, DeadLetter, Drift};
use super::marks::MarkFeed;

/// Record kind of reconciliation requests: id `<tenant>/<channel>`, value
/// the request's time (unix ms, decimal). Every worker reconciles its own
/// shards' keys of the channel once per newer request.
pub const RECONCILE_KIND: &str = "channel_reconcile";
/// Records read per store call.
const PAGE: usize = 1_000;
/// Keys computed per step at most, so pushes keep flowing during a flood of
/// marks.
const COMPUTES_PER_STEP: usize = 256;
/// Marks made on this node are taken this long after the first of them at
/// most, so a burst's windows are taken together.
const MARK_DEBOUNCE_MS: u64 = 20;
/// The worker's passes over its keys (settle, dispatch, the next wake-up)
/// each visit every target: they run at most once per this period, however
/// many calls end and marks arrive meanwhile.
const PASS_PERIOD: Duration = Duration::from_millis(10);
/// How often the pending and dead-letter gauges are set.
const DEPTHS_EVERY_MS: u64 = 1_000;
/// How long a channel waits after its connector failed a call as a whole.
const CALL_FAILED_PAUSE: Duration = Duration::from_secs(5);
/// How long a computation waits for a position's owner.
const COMPUTE_DEADLINE: Duration = Duration::from_secs(2);
/// Added to the push deadline for a shard just taken: the former owner's
/// last call began before it let go, so it ends within its deadline of
/// that; this covers the hand-over's own delays and a channel still
/// applying a request whose caller had just given up on it (a server
/// queueing writes longer than this can still apply one late:
/// reconciliation is what finds that).
const HANDOFF_MARGIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// How often the store's dirty records are listed (marks made on this
    /// node wake the worker at once).
    pub poll_interval: Duration,
    /// How often every known target is read back.
    pub reconcile_interval: Duration,
    /// How long after an `Accepted` push its first read-back is.
    pub confirm_after: Duration,
    /// How long an `Accepted` push may take to show before it is sent again.
    pub confirm_within: Duration,
    /// A push call (every HTTP call and limiter wait in it) is abandoned
    /// after this; its items are tried again. It bounds how long a node's
    /// write may still reach a channel after the node let go of the shard.
    pub push_deadline: Duration,
}

impl WorkerSettings {
    /// How long a worker leaves the keys of a shard it just took alone on
    /// channels that overwrite blindly: the former owner's calls have
    /// ended by then (see `HANDOFF_MARGIN`).
    fn handoff_quiet(&self) -> Duration {
        self.push_deadline + HANDOFF_MARGIN
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            poll_interval: Duration::from_millis(250),
            reconcile_interval: Duration::from_secs(15 * 60),
            confirm_after: Duration::from_secs(1),
            confirm_within: Duration::from_secs(60),
            push_deadline: Duration::from_secs(30),
        }
    }
}

pub struct WorkerContext {
    pub store: Arc<dyn Store>,
    pub positions: Arc<EntityRuntime<PositionEntity>>,
    pub catalog: Arc<Catalog>,
    /// Cluster mode: the shards this node owns; else every shard.
    pub shards: Option<Arc<ShardTable>>,
    pub shard_count: u32,
    pub marked: Arc<MarkFeed>,
    pub settings: WorkerSettings,
    /// Which secrets each tenant's channels may read.
    pub credentials: CredentialPolicy,
}

/// `(tenant, channel id)`.
type ChannelRef = (String, String);

/// One value a channel is shown: a location's, or the SKU's (`None`).
type Location = Option<String>;

/// What a read-back is for.
#[derive(Debug, Clone)]
enum Purpose {
    /// The worker does not know what the channel shows yet.
    FirstLook,
    /// An accepted push, to see whether it was applied.
    Confirm(Push),
    Reconcile,
}

/// A finished call of a channel's connector.
enum Done {
    Pushed {
        channel: ChannelRef,
        items: Vec<(String, Location, Push)>,
        outcomes: Vec<PushOutcome>,
    },
    Read {
        channel: ChannelRef,
        items: Vec<(String, Location, Purpose)>,
        result: Result<Vec<Option<i64>>, ConnectorError>,
    },
    Linked {
        channel: ChannelRef,
        revision: u64,
        result: Result<Arc<dyn Connector>, LinkError>,
    },
}

struct Confirm {
    push: Push,
    check_at_ms: u64,
    until_ms: u64,
}

struct Target {
    state: PushState,
    /// The channel's figure was read back or acknowledged since this
    /// worker took the key.
    known: bool,
    /// A read-back is in flight.
    reading: bool,
    confirm: Option<Confirm>,
    reconcile: bool,
    /// No longer published (its location left the network, or the
    /// publication changed): shown 0 before it is dropped, so the channel
    /// does not go on selling its last figure.
    retiring: bool,
    /// The target may have a dead letter: a later acknowledged push
    /// removes it, as the channel took a value since. True for a target
    /// this worker just took (a letter may be an earlier owner's), so the
    /// first acknowledgement after a take costs one delete.
    lettered: bool,
}

impl Target {
    fn new(value: i64, version: u64, now: u64) -> Self {
        Target {
            state: PushState::new(value, version, now),
            known: false,
            reading: false,
            confirm: None,
            reconcile: false,
            retiring: false,
            lettered: true,
        }
    }

    fn busy(&self) -> bool {
        self.state.in_flight.is_some() || self.reading || self.confirm.is_some()
    }

    fn done(&self) -> bool {
        !self.busy() && (self.state.settled() || self.state.parked)
    }
}

struct KeyWork {
    key: PushKey,
    targets: BTreeMap<Location, Target>,
    /// A dirty record of the key exists in the store.
    dirty: bool,
    /// The dirty record's content when last computed.
    computed_mark: Option<Vec<u8>>,
    /// The key's known record was written.
    known_recorded: bool,
}

struct Link {
    /// The definition revision the connector was built from.
    revision: u64,
    /// The definition revision the worker last recomputed the keys for.
    seen_revision: u64,
    connector: Option<Arc<dyn Connector>>,
    building: bool,
    /// No build before this (after a failed one); the connector built
    /// before keeps working meanwhile.
    rebuild_after_ms: u64,
    busy: bool,
    /// No call before this (the connector's limiter, a failed read).
    paused_until_ms: u64,
    /// Last reconciliation request seen, and when the last one ran.
    reconcile_requested_ms: u64,
    reconciled_at_ms: u64,
}

pub struct Worker {
    context: WorkerContext,
    keys: HashMap<String, KeyWork>,
    links: HashMap<ChannelRef, Link>,
    owned: HashSet<u32>,
    to_compute: Vec<String>,
    /// What `to_compute` holds, to queue each key once.
    queued: HashSet<String>,
    /// Keys whose computation failed (a position's owner unreachable):
    /// tried again at the next scan, not in a loop.
    compute_later: Vec<String>,
    done_tx: mpsc::Sender<Done>,
    depths_reported_ms: u64,
    /// Cluster mode: shards taken less than `handoff_quiet` ago, and until
    /// when their keys wait on channels without a compare (a former
    /// owner's call may still land; a read-back now could be overwritten
    /// by it, a push now could be). Monotonic, so that a step of the wall
    /// clock does not end it early.
    quiet_until: HashMap<u32, tokio::time::Instant>,
}

fn now_ms() -> u64 {
    u64::try_from(skuld_cluster::now_ms()).unwrap_or(0)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Worker {
    /// Runs until `stop`. Calls in flight when it stops are abandoned: each
    /// write is absolute and idempotent, and the dirty records stay.
    pub async fn run(context: WorkerContext, stop: CancellationToken) {
        let (done_tx, mut done_rx) = mpsc::channel(64);
        let marked = Arc::clone(&context.marked);
        let poll = context.settings.poll_interval;
        let mut worker = Worker {
            context,
            keys: HashMap::new(),
            links: HashMap::new(),
            owned: HashSet::new(),
            to_compute: Vec::new(),
            queued: HashSet::new(),
            compute_later: Vec::new(),
            done_tx,
            depths_reported_ms: 0,
            quiet_until: HashMap::new(),
        };
        let mut next_scan_ms = 0;
        let mut take_marks_ms = u64::MAX;
        let mut last_pass = tokio::time::Instant::now();
        loop {
            // Whatever ends or arrives meanwhile waits for the next pass.
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(last_pass + PASS_PERIOD) => {}
            }
            last_pass = tokio::time::Instant::now();
            let now = now_ms();
            if now >= take_marks_ms {
                take_marks_ms = u64::MAX;
                if worker.take_marks() {
                    next_scan_ms = now;
                }
            }
            if now >= next_scan_ms {
                worker.scan().await;
                next_scan_ms = now + millis(poll);
            }
            worker.compute_some().await;
            worker.settle().await;
            worker.dispatch();
            let wait = if worker.to_compute.is_empty() {
                let now = now_ms();
                let next_event = next_scan_ms.min(take_marks_ms).saturating_sub(now);
                worker
                    .next_due_in(now)
                    .min(Duration::from_millis(next_event))
            } else {
                Duration::ZERO
            };
            tokio::select! {
                () = stop.cancelled() => return,
                // A burst marks a window every few milliseconds: take them
                // at most every MARK_DEBOUNCE_MS, not once per window.
                () = marked.offered() => {
                    take_marks_ms = take_marks_ms.min(now_ms() + MARK_DEBOUNCE_MS);
                }
                done = done_rx.recv() => {
                    if let Some(done) = done {
                        worker.apply(done).await;
                        // Whatever else finished meanwhile, at once.
                        while let Ok(done) = done_rx.try_recv() {
                            worker.apply(done).await;
                        }
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn policy(stored: &StoredChannel) -> PushPolicy {
        PushPolicy {
            min_interval_ms: stored.channel.min_push_interval_ms,
            reassert_interval_ms: stored.channel.reassert_interval_ms,
        }
    }

    /// Looks at the store: owned shards, channels, dirty, replay, known and
    /// reconcile records.
    async fn scan(&mut self) {
        for id in std::mem::take(&mut self.compute_later) {
            self.queue_compute(&id);
        }
        if let Err(error) = self.context.catalog.refresh().await {
            tracing::warn!(%error, "cannot read the channel definitions");
        }
        let owned: HashSet<u32> = match &self.context.shards {
            Some(table) => table.local_shards().into_iter().collect(),
            None => (0..self.context.shard_count).collect(),
        };
        let gained: Vec<u32> = owned.difference(&self.owned).copied().collect();
        let now = tokio::time::Instant::now();
        if self.context.shards.is_some() {
            // Every shard a node starts with counts as taken: before this
            // process, another node (or this one's killed predecessor) may
            // have owned it.
            let until = now + self.context.settings.handoff_quiet();
            for shard in &gained {
                self.quiet_until.insert(*shard, until);
            }
        }
        self.quiet_until
            .retain(|shard, until| owned.contains(shard) && *until > now);
        let gained = !gained.is_empty();
        if owned != self.owned {
            self.keys
                .retain(|id, _| shard_of_record(id).is_some_and(|shard| owned.contains(&shard)));
            self.owned = owned;
        }
        self.refresh_links();
        if gained {
            if let Err(error) = self.load_known().await {
                tracing::warn!(%error, "cannot list the channels' known keys");
            }
        }
        if let Err(error) = self.scan_dirty().await {
            tracing::warn!(%error, "cannot list the channels' dirty keys");
        }
        if let Err(error) = self.scan_replays().await {
            tracing::warn!(%error, "cannot list the channels' replays");
        }
        if let Err(error) = self.scan_reconcile_requests().await {
            tracing::warn!(%error, "cannot list the channels' reconciliation requests");
        }
        self.start_due_reconciliations();
    }

    /// Builds a connector per channel (again when its definition changed),
    /// off the async threads (it reads the credentials file).
    fn refresh_links(&mut self) {
        let channels = self.context.catalog.all();
        let wanted: HashMap<ChannelRef, &StoredChannel> = channels
            .iter()
            .filter(|stored| stored.channel.kind != skuld_actors::channel::ChannelKind::Webhook)
            .map(|stored| {
                (
                    (stored.channel.tenant.clone(), stored.channel.id.clone()),
                    stored,
                )
            })
            .collect();
        self.links.retain(|channel, _| wanted.contains_key(channel));
        self.keys.retain(|_, work| {
            wanted.contains_key(&(work.key.tenant.clone(), work.key.channel.clone()))
        });
        let now = now_ms();
        // A changed definition (controls, network, a peer's share) changes
        // figures with no stock moving: its tenant's keys are computed
        // again, and a changed channel's are read back first (its account
        // or mapping may be another).
        let mut changed_tenants: HashSet<String> = HashSet::new();
        let mut changed_channels: HashSet<ChannelRef> = HashSet::new();
        for (channel, stored) in wanted {
            let link = self.links.entry(channel.clone()).or_insert_with(|| Link {
                revision: 0,
                seen_revision: stored.revision,
                connector: None,
                building: false,
                rebuild_after_ms: 0,
                busy: false,
                paused_until_ms: 0,
                reconcile_requested_ms: u64::MAX,
                reconciled_at_ms: now,
            });
            if link.seen_revision != stored.revision {
                link.seen_revision = stored.revision;
                changed_tenants.insert(channel.0.clone());
                changed_channels.insert(channel.clone());
            }
            let stale = link.revision != stored.revision || link.connector.is_none();
            if stale && !link.building && now >= link.rebuild_after_ms {
                link.building = true;
                let definition = stored.channel.clone();
                let policy = self.context.credentials.clone();
                let revision = stored.revision;
                let done = self.done_tx.clone();
                tokio::spawn(async move {
                    let result = tokio::task::spawn_blocking(move || {
                        connector_for(&definition, &policy).map(Arc::<dyn Connector>::from)
                    })
                    .await
                    .unwrap_or_else(|error| {
                        Err(LinkError {
                            channel: channel.1.clone(),
                            reason: format!("building the connector failed: {error}"),
                        })
                    });
                    let _ = done
                        .send(Done::Linked {
                            channel,
                            revision,
                            result,
                        })
                        .await;
                });
            }
        }
        if changed_tenants.is_empty() {
            return;
        }
        let mut recompute = Vec::new();
        for (id, work) in self.keys.iter_mut() {
            if !changed_tenants.contains(&work.key.tenant) {
                continue;
            }
            if changed_channels.contains(&(work.key.tenant.clone(), work.key.channel.clone())) {
                for target in work.targets.values_mut() {
                    if !target.busy() {
                        target.known = false;
                    }
                }
            }
            recompute.push(id.clone());
        }
        for id in recompute {
            self.queue_compute(&id);
        }
    }

    fn owns(&self, id: &str) -> bool {
        shard_of_record(id).is_some_and(|shard| self.owned.contains(&shard))
    }

    fn work_for(&mut self, id: &str, key: PushKey) -> &mut KeyWork {
        self.keys.entry(id.to_owned()).or_insert_with(|| KeyWork {
            key,
            targets: BTreeMap::new(),
            dirty: false,
            computed_mark: None,
            known_recorded: false,
        })
    }

    fn queue_compute(&mut self, id: &str) {
        if self.queued.insert(id.to_owned()) {
            self.to_compute.push(id.to_owned());
        }
    }

    /// Every record of `kind`, page by page.
    async fn list_all(
        &self,
        kind: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, skuld_cluster::StoreError> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .context
                .store
                .list_records(kind, "", after.clone(), PAGE)
                .await?;
            let Some((last, _)) = page.last() else {
                return Ok(all);
            };
            after = Some(last.clone());
            all.extend(page);
        }
    }

    async fn load_known(&mut self) -> Result<(), skuld_cluster::StoreError> {
        for (id, raw) in self.list_all(KNOWN_KIND).await? {
            if !self.owns(&id) || self.keys.contains_key(&id) {
                continue;
            }
            let Some(key) = decode_key(&raw) else {
                continue;
            };
            self.work_for(&id, key).known_recorded = true;
            self.queue_compute(&id);
        }
        Ok(())
    }

    async fn scan_dirty(&mut self) -> Result<(), skuld_cluster::StoreError> {
        for (id, raw) in self.list_all(DIRTY_KIND).await? {
            self.note_dirty(id, raw);
        }
        Ok(())
    }

    /// Takes the marks this node's projection made; true when some were
    /// dropped and the store must be listed.
    fn take_marks(&mut self) -> bool {
        let taken = self.context.marked.take();
        for (id, raw) in taken.marks {
            // `owned` is as of the last scan: a shard this node lost since
            // must not get new keys here (the new owner pushes them).
            if self.serves(&id) {
                self.note_dirty(id, raw);
            }
        }
        taken.overflowed
    }

    /// A dirty record, listed or handed over: its key is computed unless
    /// this very mark was computed already.
    fn note_dirty(&mut self, id: String, raw: Vec<u8>) {
        if !self.owns(&id) {
            return;
        }
        let Some(mark) = decode_mark(&raw) else {
            return;
        };
        let work = self.work_for(&id, mark.key);
        work.dirty = true;
        if work.computed_mark.as_deref() != Some(raw.as_slice()) {
            work.computed_mark = Some(raw);
            self.queue_compute(&id);
        }
    }

    async fn scan_replays(&mut self) -> Result<(), skuld_cluster::StoreError> {
        for (id, raw) in self.list_all(REPLAY_KIND).await? {
            if !self.owns(&id) {
                continue;
            }
            let Some(key) = decode_key(&raw) else {
                continue;
            };
            let work = self.work_for(&id, key.clone());
            for target in work.targets.values_mut() {
                target.state.replay();
            }
            // Durable until the push is acknowledged, as any change is.
            work.dirty = true;
            let mark = DirtyMark {
                key,
                at: format!("replay:{}", now_ms()),
            };
            self.context
                .store
                .put_record(DIRTY_KIND, &id, encode_mark(&mark))
                .await?;
            self.context.store.delete_record(REPLAY_KIND, &id).await?;
            self.queue_compute(&id);
        }
        Ok(())
    }

    async fn scan_reconcile_requests(&mut self) -> Result<(), skuld_cluster::StoreError> {
        for (id, raw) in self.list_all(RECONCILE_KIND).await? {
            let Some((tenant, channel)) = id.rsplit_once('/') else {
                continue;
            };
            let requested: u64 = String::from_utf8_lossy(&raw).parse().unwrap_or(0);
            if let Some(link) = self.links.get_mut(&(tenant.to_owned(), channel.to_owned())) {
                if link.reconcile_requested_ms == u64::MAX {
                    // A request from before this worker took the channel:
                    // its first reads of every key are the reconciliation.
                    link.reconcile_requested_ms = requested;
                } else if requested > link.reconcile_requested_ms {
                    link.reconcile_requested_ms = requested;
                    link.reconciled_at_ms = 0;
                }
            }
        }
        // A channel with no request yet: any later one is new.
        for link in self.links.values_mut() {
            if link.reconcile_requested_ms == u64::MAX {
                link.reconcile_requested_ms = 0;
            }
        }
        Ok(())
    }

    /// Marks every known target of each channel due for reconciliation.
    fn start_due_reconciliations(&mut self) {
        let now = now_ms();
        let every = millis(self.context.settings.reconcile_interval);
        let due: HashSet<ChannelRef> = self
            .links
            .iter_mut()
            .filter(|(_, link)| {
                now >= link.reconciled_at_ms.saturating_add(every) || link.reconciled_at_ms == 0
            })
            .map(|(channel, link)| {
                link.reconciled_at_ms = now;
                channel.clone()
            })
            .collect();
        if due.is_empty() {
            return;
        }
        for work in self.keys.values_mut() {
            if due.contains(&(work.key.tenant.clone(), work.key.channel.clone())) {
                for target in work.targets.values_mut() {
                    if target.known {
                        target.reconcile = true;
                    }
                }
            }
        }
    }

    async fn compute_some(&mut self) {
        let batch: Vec<String> = self
            .to_compute
            .drain(..self.to_compute.len().min(COMPUTES_PER_STEP))
            .collect();
        for id in &batch {
            self.queued.remove(id);
        }
        for id in batch {
            if let Err(reason) = self.compute(&id).await {
                tracing::debug!(key = %id, %reason, "channel key not computed; trying again");
                self.compute_later.push(id);
            }
        }
    }

    /// What each target of key `id` should show now.
    async fn compute(&mut self, id: &str) -> Result<(), String> {
        let Some(key) = self.keys.get(id).map(|work| work.key.clone()) else {
            return Ok(());
        };
        let Some(stored) = self.context.catalog.get(&key.tenant, &key.channel) else {
            // Gone from the catalog: deleted, or a record this node cannot
            // read (a newer version's). Only a confirmed deletion ends the
            // key's work; an unreadable one keeps its records.
            let deleted = matches!(
                definitions::load(self.context.store.as_ref(), &key.tenant, &key.channel).await,
                Ok(None)
            );
            self.keys.remove(id);
            if deleted {
                let _ = self.context.store.delete_record(DIRTY_KIND, id).await;
                let _ = self.context.store.delete_record(KNOWN_KIND, id).await;
            }
            return Ok(());
        };
        let channel = &stored.channel;
        let positions: Vec<PositionKey> = channel
            .network
            .iter()
            .map(|location| PositionKey {
                tenant: key.tenant.clone(),
                sku: key.sku.clone(),
                location: location.clone(),
            })
            .collect();
        let states = self
            .context
            .positions
            .read_many(
                &positions,
                RequestMeta {
                    deadline: Some(tokio::time::Instant::now() + COMPUTE_DEADLINE),
                    ..RequestMeta::default()
                },
            )
            .await
            .map_err(|error| error.to_string())?;
        let stock: BTreeMap<String, i64> = positions
            .iter()
            .zip(&states)
            .filter(|(_, state)| state.version > 0)
            .map(|(position, state)| (position.location.clone(), state.buckets.available()))
            .collect();
        let versions: BTreeMap<&str, u64> = positions
            .iter()
            .zip(&states)
            .map(|(position, state)| (position.location.as_str(), state.version))
            .collect();
        // Versions only grow: every position's and every definition's of
        // the tenant (peers' shares shape this channel's figures too).
        let peers = self.context.catalog.of_tenant(&key.tenant);
        let revisions: u64 = self
            .context
            .catalog
            .all()
            .iter()
            .filter(|peer| peer.channel.tenant == key.tenant)
            .map(|peer| peer.revision)
            .sum();
        let network_version: u64 = versions.values().sum();
        let availability = available_to_sell(channel, &peers, &key.sku, &stock);
        let now = now_ms();
        let published: Vec<(Location, i64, u64)> = availability
            .published(channel.publication)
            .into_iter()
            .map(|(location, value)| {
                let version = match (channel.publication, location) {
                    (Publication::PerLocation, Some(location)) => {
                        versions.get(location).copied().unwrap_or(0)
                    }
                    _ => network_version,
                };
                (location.map(str::to_owned), value, revisions + version)
            })
            .collect();
        let record_known = {
            let Some(work) = self.keys.get_mut(id) else {
                return Ok(());
            };
            let live: HashSet<&Location> =
                published.iter().map(|(location, ..)| location).collect();
            // A target no longer published is shown 0, then dropped once the
            // channel took the 0.
            work.targets.retain(|location, target| {
                live.contains(location) || !(target.retiring && target.done())
            });
            for (location, target) in work.targets.iter_mut() {
                if !live.contains(location) && !target.retiring {
                    target.retiring = true;
                    let version = target.state.desired.version + 1;
                    target.state.observe(0, version, now);
                }
            }
            for (location, value, version) in &published {
                match work.targets.get_mut(location) {
                    Some(target) => {
                        target.retiring = false;
                        let desired = target.state.desired;
                        // A figure can change with no version growing (a
                        // peer channel deleted): the worker's own order.
                        let version = if *value != desired.value && *version <= desired.version {
                            desired.version + 1
                        } else {
                            *version
                        };
                        target.state.observe(*value, version, now);
                    }
                    None => {
                        work.targets
                            .insert(location.clone(), Target::new(*value, *version, now));
                    }
                }
            }
            !std::mem::replace(&mut work.known_recorded, true)
        };
        if record_known {
            if let Err(error) = self
                .context
                .store
                .put_record(KNOWN_KIND, id, encode_key(&key))
                .await
            {
                tracing::warn!(%error, "cannot record a channel key");
                if let Some(work) = self.keys.get_mut(id) {
                    work.known_recorded = false;
                }
            }
        }
        Ok(())
    }

    /// Removes the dirty record of every key whose targets all show what
    /// is desired, then computes the key once more: a change that marked it
    /// meanwhile is seen (and marked again) instead of lost.
    async fn settle(&mut self) {
        let settled: Vec<String> = self
            .keys
            .iter()
            .filter(|(id, work)| {
                work.dirty
                    && !work.targets.is_empty()
                    && work.targets.values().all(Target::done)
                    && !self.queued.contains(*id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in settled {
            if let Err(error) = self.context.store.delete_record(DIRTY_KIND, &id).await {
                tracing::warn!(%error, "cannot clear a channel key's dirty mark");
                continue;
            }
            let Some(work) = self.keys.get_mut(&id) else {
                continue;
            };
            work.dirty = false;
            work.computed_mark = None;
            // Computed again after the delete: a change that marked the key
            // meanwhile is seen now. If it cannot be computed, the mark goes
            // back, so the change is not left in memory only.
            let computed = self.compute(&id).await.is_ok();
            if !computed {
                self.compute_later.push(id.clone());
            }
            let Some(work) = self.keys.get_mut(&id) else {
                continue;
            };
            if !computed || !work.targets.values().all(Target::done) {
                let mark = DirtyMark {
                    key: work.key.clone(),
                    at: format!("settle:{}", now_ms()),
                };
                let raw = encode_mark(&mark);
                work.dirty = true;
                work.computed_mark = Some(raw.clone());
                if let Err(error) = self.context.store.put_record(DIRTY_KIND, &id, raw).await {
                    tracing::warn!(%error, "cannot mark a channel key dirty again");
                }
            }
        }
        self.report_depths();
    }

    fn report_depths(&mut self) {
        let now = now_ms();
        if now < self.depths_reported_ms.saturating_add(DEPTHS_EVERY_MS) {
            return;
        }
        self.depths_reported_ms = now;
        let mut pending: HashMap<&str, (u64, u64)> = HashMap::new();
        for work in self.keys.values() {
            let entry = pending.entry(work.key.channel.as_str()).or_default();
            for target in work.targets.values() {
                if target.state.parked {
                    entry.1 += 1;
                } else if !target.done() {
                    entry.0 += 1;
                }
            }
        }
        for (channel, (unsettled, parked)) in pending {
            metrics::gauge!("skuld_channel_pending_targets", "channel" => channel.to_owned())
                .set(unsettled as f64);
            metrics::gauge!("skuld_channel_dead_letter_targets", "channel" => channel.to_owned())
                .set(parked as f64);
        }
    }

    /// Starts one call per idle channel: read-backs first (a push compares
    /// against what they find), then the due pushes, most urgent first.
    fn dispatch(&mut self) {
        let now = now_ms();
        let channels: Vec<ChannelRef> = self
            .links
            .iter()
            .filter(|(_, link)| {
                link.connector.is_some() && !link.busy && now >= link.paused_until_ms
            })
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in channels {
            let Some(stored) = self.context.catalog.get(&channel.0, &channel.1) else {
                continue;
            };
            let Some(link) = self.links.get_mut(&channel) else {
                continue;
            };
            let Some(connector) = link.connector.clone() else {
                continue;
            };
            let ready_in = millis(connector.ready_in());
            if ready_in > 0 {
                link.paused_until_ms = now + ready_in;
                continue;
            }
            let batch = connector.max_batch().max(1);
            // Reads go item by item on some channels: a small batch, so a
            // due push is not held behind thousands of read-backs.
            let reads = connector.small_batch().clamp(1, batch);
            let quiet = if connector.refuses_stale_writes() {
                HashSet::new()
            } else {
                self.quiet_shards()
            };
            if let Some(reads) = self.due_reads(&channel, reads, &quiet, now) {
                self.start_read(channel, connector, reads);
            } else if let Some(pushes) = self.due_pushes(
                &channel,
                &stored,
                (
                    batch,
                    connector.small_batch().max(1),
                    connector.bulk_threshold(),
                ),
                &quiet,
                now,
            ) {
                self.start_push(channel, connector, pushes);
            }
        }
    }

    /// The shards whose keys wait after a take (see `quiet_until`).
    fn quiet_shards(&self) -> HashSet<u32> {
        let now = tokio::time::Instant::now();
        self.quiet_until
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(shard, _)| *shard)
            .collect()
    }

    /// How long the keys of record `id`'s shard still wait after a take.
    fn quiet_left(&self, id: &str) -> Option<Duration> {
        let until = self.quiet_until.get(&shard_of_record(id)?)?;
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        (!left.is_zero()).then_some(left)
    }

    fn due_reads(
        &mut self,
        channel: &ChannelRef,
        batch: usize,
        quiet: &HashSet<u32>,
        now: u64,
    ) -> Option<Vec<(String, Location, Purpose)>> {
        let mut reads = Vec::new();
        'keys: for (id, work) in self.keys.iter_mut() {
            if work.key.tenant != channel.0 || work.key.channel != channel.1 {
                continue;
            }
            if in_quiet(quiet, id) {
                continue;
            }
            for (location, target) in work.targets.iter_mut() {
                if reads.len() >= batch {
                    break 'keys;
                }
                if target.reading {
                    continue;
                }
                let purpose = if let Some(confirm) = &target.confirm {
                    if now < confirm.check_at_ms {
                        continue;
                    }
                    Purpose::Confirm(confirm.push.clone())
                } else if target.state.in_flight.is_some() {
                    continue;
                } else if !target.known {
                    Purpose::FirstLook
                } else if target.reconcile {
                    Purpose::Reconcile
                } else {
                    continue;
                };
                target.reading = true;
                reads.push((id.clone(), location.clone(), purpose));
            }
        }
        (!reads.is_empty()).then_some(reads)
    }

    /// The most urgent due pushes of `channel`: `(batch, small_batch,
    /// bulk_threshold)` are its connector's sizes.
    fn due_pushes(
        &mut self,
        channel: &ChannelRef,
        stored: &StoredChannel,
        (batch, small_batch, bulk_threshold): (usize, usize, usize),
        quiet: &HashSet<u32>,
        now: u64,
    ) -> Option<Vec<(String, Location, Push)>> {
        let policy = Self::policy(stored);
        let mut due: Vec<(Urgency, u64, String, Location)> = Vec::new();
        for (id, work) in self.keys.iter_mut() {
            if work.key.tenant != channel.0 || work.key.channel != channel.1 {
                continue;
            }
            if in_quiet(quiet, id) {
                continue;
            }
            for (location, target) in work.targets.iter_mut() {
                // A newer value goes out without waiting for an accepted
                // older one to show (which would hold a decrease back).
                if let Some(confirm) = &target.confirm {
                    if target.state.desired.version > confirm.push.version && !target.reading {
                        let push = confirm.push.clone();
                        target.state.superseded(&push);
                        target.confirm = None;
                    }
                }
                if !target.known || target.busy() {
                    continue;
                }
                if let Some((at, urgency)) = target.state.next_due(&policy) {
                    if at <= now {
                        due.push((
                            urgency,
                            target.state.desired.since_ms,
                            id.clone(),
                            location.clone(),
                        ));
                    }
                }
            }
        }
        if due.is_empty() {
            return None;
        }
        due.sort();
        // A backlog as large as the bulk threshold goes the bulk way (a
        // feed, one long mutation); below it an adapter writing item by item
        // takes a small batch, so a decrease due next waits seconds, not
        // minutes.
        let take = if due.len() >= bulk_threshold {
            batch
        } else {
            small_batch.min(batch)
        };
        due.truncate(take.max(1));
        let mut pushes = Vec::with_capacity(due.len());
        let mut lost = HashSet::new();
        for (urgency, _, id, location) in due {
            // The scan's `owned` may be a poll interval old: a shard let go
            // since (a hand-over, the lease watchdog) gets no new write
            // from here; its new owner waits out the ones already sent.
            if !self.serves(&id) {
                lost.insert(id);
                continue;
            }
            let Some(target) = self
                .keys
                .get_mut(&id)
                .and_then(|work| work.targets.get_mut(&location))
            else {
                continue;
            };
            let push = target.state.start(urgency, now);
            pushes.push((id, location, push));
        }
        // The whole shard is let go of here, as a scan would: its keys
        // stop being read and settled, and if it comes back it is a take
        // (quiet, known keys loaded, first looks) like any other.
        for shard in lost.iter().filter_map(|id| shard_of_record(id)) {
            self.owned.remove(&shard);
            self.quiet_until.remove(&shard);
            self.keys
                .retain(|id, _| shard_of_record(id).is_some_and(|of| of != shard));
        }
        (!pushes.is_empty()).then_some(pushes)
    }

    /// Whether this node serves the shard of record `id` right now (the
    /// live shard table within the lease's safe window, not the last scan).
    fn serves(&self, id: &str) -> bool {
        match (&self.context.shards, shard_of_record(id)) {
            (Some(table), Some(shard)) => table.serving_epoch(shard).is_some(),
            (Some(_), None) => false,
            (None, _) => true,
        }
    }

    fn start_read(
        &mut self,
        channel: ChannelRef,
        connector: Arc<dyn Connector>,
        items: Vec<(String, Location, Purpose)>,
    ) {
        let keys: Vec<ItemKey> = items
            .iter()
            .filter_map(|(id, location, _)| {
                let work = self.keys.get(id)?;
                Some(ItemKey::new(work.key.sku.clone(), location.as_deref()))
            })
            .collect();
        if let Some(link) = self.links.get_mut(&channel) {
            link.busy = true;
        }
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            // A connector that panics must not leave the channel busy for
            // good: its call runs in a task of its own.
            let count = keys.len();
            let result = match tokio::spawn(async move { connector.read(&keys).await }).await {
                Ok(Ok(values)) if values.len() == count => Ok(values),
                Ok(Ok(values)) => Err(ConnectorError::retry(
                    CALL_FAILED_PAUSE,
                    format!("the connector answered {} of {count} reads", values.len()),
                )),
                Ok(Err(error)) => Err(error),
                Err(error) => Err(ConnectorError::retry(
                    CALL_FAILED_PAUSE,
                    format!("the connector failed: {error}"),
                )),
            };
            let _ = done
                .send(Done::Read {
                    channel,
                    items,
                    result,
                })
                .await;
        });
    }

    fn start_push(
        &mut self,
        channel: ChannelRef,
        connector: Arc<dyn Connector>,
        pushes: Vec<(String, Location, Push)>,
    ) {
        let items: Vec<PushItem> = pushes
            .iter()
            .filter_map(|(id, location, push)| {
                let work = self.keys.get(id)?;
                Some(PushItem::new(
                    &channel.1,
                    work.key.sku.clone(),
                    location.as_deref(),
                    push.value,
                    push.version,
                    push.change_from,
                ))
            })
            .collect();
        if let Some(link) = self.links.get_mut(&channel) {
            link.busy = true;
        }
        let done = self.done_tx.clone();
        let deadline = self.context.settings.push_deadline;
        tokio::spawn(async move {
            let count = items.len();
            let call = tokio::spawn(async move { connector.push(&items).await });
            let abort = call.abort_handle();
            let (mut outcomes, missing) = match tokio::time::timeout(deadline, call).await {
                Ok(Ok(outcomes)) => (outcomes, "no outcome from the connector"),
                Ok(Err(error)) => {
                    tracing::error!(%error, "a channel connector failed during a push");
                    (Vec::new(), "the connector failed")
                }
                Err(_) => {
                    // Dropped, so that nothing of it reaches the channel
                    // after the deadline a new owner of the shard waits out.
                    abort.abort();
                    tracing::warn!(channel = %channel.1, items = count, deadline_ms = millis(deadline), "a channel push did not end within its deadline");
                    (Vec::new(), "the push did not end within its deadline")
                }
            };
            // Every item gets an outcome: one the connector did not give
            // is tried again.
            outcomes.resize_with(count, || PushOutcome::retry(CALL_FAILED_PAUSE, missing));
            let _ = done
                .send(Done::Pushed {
                    channel,
                    items: pushes,
                    outcomes,
                })
                .await;
        });
    }

    /// How long the worker may sleep: until the next push or confirmation
    /// of an idle channel is due, or a paused channel may call again. A
    /// channel with a call in flight wakes the worker when the call ends.
    fn next_due_in(&self, now: u64) -> Duration {
        let mut next = u64::MAX;
        let channels = self.context.catalog.all();
        // Per idle channel: its policy, and whether it overwrites blindly
        // (then keys of a shard just taken wait until its quiet ends).
        let mut idle: HashMap<(&str, &str), (PushPolicy, bool)> = HashMap::new();
        for stored in channels.iter() {
            let channel = (stored.channel.tenant.clone(), stored.channel.id.clone());
            let Some(link) = self.links.get(&channel) else {
                continue;
            };
            if link.busy || link.connector.is_none() {
                continue;
            }
            if link.paused_until_ms > now {
                next = next.min(link.paused_until_ms);
                continue;
            }
            let blind = link
                .connector
                .as_ref()
                .is_some_and(|connector| !connector.refuses_stale_writes());
            idle.insert(
                (stored.channel.tenant.as_str(), stored.channel.id.as_str()),
                (Self::policy(stored), blind),
            );
        }
        for (id, work) in self.keys.iter() {
            let Some((policy, blind)) =
                idle.get(&(work.key.tenant.as_str(), work.key.channel.as_str()))
            else {
                continue;
            };
            if *blind && !work.targets.is_empty() {
                if let Some(left) = self.quiet_left(id) {
                    // Its first look and pushes wait for the quiet's end.
                    next = next.min(now.saturating_add(millis(left)));
                    continue;
                }
            }
            for target in work.targets.values() {
                if let Some(confirm) = &target.confirm {
                    next = next.min(confirm.check_at_ms);
                } else if target.known && !target.busy() {
                    if let Some((at, _)) = target.state.next_due(policy) {
                        next = next.min(at);
                    }
                }
            }
        }
        Duration::from_millis(next.saturating_sub(now).max(1))
    }

    async fn apply(&mut self, done: Done) {
        match done {
            Done::Linked {
                channel,
                revision,
                result,
            } => {
                let Some(link) = self.links.get_mut(&channel) else {
                    return;
                };
                link.building = false;
                match result {
                    Ok(connector) => {
                        link.connector = Some(connector);
                        link.revision = revision;
                    }
                    Err(error) => {
                        metrics::counter!("skuld_channel_link_failures_total", "channel" => channel.1.clone())
                            .increment(1);
                        tracing::warn!(%error, "channel connector not built; trying again in 30 s");
                        // The connector built before (if any) goes on.
                        link.rebuild_after_ms = now_ms() + 30_000;
                    }
                }
            }
            Done::Pushed {
                channel,
                items,
                outcomes,
            } => {
                if let Some(link) = self.links.get_mut(&channel) {
                    link.busy = false;
                }
                for ((id, location, push), outcome) in items.into_iter().zip(outcomes) {
                    self.pushed(&channel, &id, &location, push, outcome).await;
                }
            }
            Done::Read {
                channel,
                items,
                result,
            } => {
                if let Some(link) = self.links.get_mut(&channel) {
                    link.busy = false;
                }
                match result {
                    Ok(values) => {
                        for ((id, location, purpose), remote) in items.into_iter().zip(values) {
                            self.read_back(&channel, &id, &location, purpose, remote)
                                .await;
                        }
                    }
                    Err(error) => {
                        let pause = match &error {
                            ConnectorError::Retry { after, .. } => millis(*after).max(1_000),
                            _ => 30_000,
                        };
                        tracing::warn!(channel = %channel.1, %error, "channel read-back failed");
                        if let Some(link) = self.links.get_mut(&channel) {
                            link.paused_until_ms = now_ms() + pause;
                        }
                        for (id, location, _) in items {
                            if let Some(target) = self.target(&id, &location) {
                                target.reading = false;
                            }
                        }
                    }
                }
            }
        }
    }

    fn target(&mut self, id: &str, location: &Location) -> Option<&mut Target> {
        self.keys.get_mut(id)?.targets.get_mut(location)
    }

    async fn pushed(
        &mut self,
        channel: &ChannelRef,
        id: &str,
        location: &Location,
        push: Push,
        outcome: PushOutcome,
    ) {
        let now = now_ms();
        let settings = self.context.settings.clone();
        let name = channel.1.clone();
        let Some(key) = self.keys.get(id).map(|work| work.key.clone()) else {
            return;
        };
        let Some(target) = self.target(id, location) else {
            return;
        };
        let label = match &outcome {
            PushOutcome::Applied => "applied",
            PushOutcome::Accepted { .. } => "accepted",
            PushOutcome::Conflict { .. } => "conflict",
            PushOutcome::Retry { .. } => "retry",
            PushOutcome::Invalid { .. } => "invalid",
        };
        metrics::counter!("skuld_channel_pushes_total", "channel" => name.clone(), "outcome" => label)
            .increment(1);
        match outcome {
            PushOutcome::Applied => {
                acknowledged(&name, target, &push, now);
                if std::mem::take(&mut target.lettered) {
                    self.clear_dead_letter(&key, location).await;
                }
            }
            PushOutcome::Accepted { .. } => {
                target.confirm = Some(Confirm {
                    push,
                    check_at_ms: now + millis(settings.confirm_after),
                    until_ms: now + millis(settings.confirm_within),
                });
            }
            PushOutcome::Conflict { remote } => {
                metrics::counter!("skuld_channel_conflicts_total", "channel" => name).increment(1);
                target.state.conflicted(&push, remote, now);
            }
            PushOutcome::Retry { after, reason } => {
                let wait = millis(after).max(millis(backoff::backoff(target.state.attempts)));
                tracing::debug!(channel = %name, %reason, wait_ms = wait, "channel push to be retried");
                target.state.failed(&push, now + wait);
            }
            PushOutcome::Invalid { code, message } => {
                // This refusal is one more attempt of the value.
                let attempts = target.state.attempts.saturating_add(1);
                target.state.abandoned(&push);
                target.lettered = true;
                let previous =
                    ledger::dead_letter(self.context.store.as_ref(), &key, location.as_deref())
                        .await
                        .ok()
                        .flatten();
                let letter = DeadLetter {
                    key,
                    location: location.clone(),
                    code,
                    message,
                    value: push.value,
                    attempts: previous
                        .as_ref()
                        .map_or(1, |letter| letter.attempts + 1)
                        .max(attempts),
                    first_at_ms: previous.map_or(now, |letter| letter.first_at_ms),
                    last_at_ms: now,
                };
                tracing::warn!(channel = %name, sku = %letter.key.sku, code = %letter.code, "channel refused a push: dead letter");
                if let Err(error) =
                    ledger::put_dead_letter(self.context.store.as_ref(), &letter).await
                {
                    tracing::warn!(%error, "cannot record a dead letter");
                }
            }
        }
    }

    async fn read_back(
        &mut self,
        channel: &ChannelRef,
        id: &str,
        location: &Location,
        purpose: Purpose,
        remote: Option<i64>,
    ) {
        let now = now_ms();
        let confirm_after = millis(self.context.settings.confirm_after);
        let name = channel.1.clone();
        let Some(key) = self.keys.get(id).map(|work| work.key.clone()) else {
            return;
        };
        let Some(target) = self.target(id, location) else {
            return;
        };
        target.reading = false;
        match purpose {
            Purpose::FirstLook => {
                target.known = true;
                if let Some(remote) = remote {
                    target.state.reconciled(remote, now);
                }
            }
            Purpose::Confirm(push) => {
                let Some(confirm) = &mut target.confirm else {
                    return;
                };
                if remote == Some(push.value) {
                    target.confirm = None;
                    acknowledged(&name, target, &push, now);
                    if std::mem::take(&mut target.lettered) {
                        self.clear_dead_letter(&key, location).await;
                    }
                } else if now < confirm.until_ms {
                    confirm.check_at_ms = now + confirm_after;
                } else {
                    // Accepted and never applied: send it again.
                    metrics::counter!("skuld_channel_unapplied_total", "channel" => name)
                        .increment(1);
                    target.confirm = None;
                    target.state.failed(&push, now);
                }
            }
            Purpose::Reconcile => {
                target.reconcile = false;
                let believed = target.state.acked.map(|acked| acked.value);
                let drifted = match remote {
                    Some(remote) => target.state.reconciled(remote, now),
                    None => {
                        // The channel no longer knows the item: nothing
                        // it shows is acknowledged, so a push is due.
                        target.state.acked = None;
                        true
                    }
                };
                if !drifted {
                    return;
                }
                let desired_version = target.state.desired.version;
                let drift = Drift {
                    key,
                    location: location.clone(),
                    remote,
                    believed,
                    desired: target.state.desired.value,
                    found_at_ms: now,
                };
                metrics::counter!("skuld_channel_drift_total", "channel" => name).increment(1);
                let unsettled = !target.state.settled();
                tracing::info!(channel = %channel.1, sku = %drift.key.sku, remote = ?drift.remote, believed = ?drift.believed, desired = drift.desired, "channel drift");
                if let Err(error) = ledger::put_drift(self.context.store.as_ref(), &drift).await {
                    tracing::warn!(%error, "cannot record channel drift");
                }
                self.publish_drift(&drift, desired_version).await;
                if unsettled {
                    self.mark_dirty(id).await;
                }
            }
        }
    }

    /// Removes a target's dead letter once the channel took a later value
    /// (a new desired value un-parks a target without a replay).
    async fn clear_dead_letter(&self, key: &PushKey, location: &Location) {
        let id = ledger::target_id(key, location.as_deref());
        if let Err(error) = self
            .context
            .store
            .delete_record(ledger::DEAD_LETTER_KIND, &id)
            .await
        {
            tracing::warn!(%error, "cannot remove a dead letter the channel has since taken");
        }
    }

    /// Publishes `inventory.channel.drift_detected.v1` into the outbox of
    /// the key's shard, under this node's fence of it. Best effort: a
    /// worker that lost the shard writes nothing (the next owner reads the
    /// channel back and finds the drift itself), and a failed write is
    /// logged, as the drift record and the metric still tell.
    async fn publish_drift(&self, drift: &Drift, desired_version: u64) {
        let (shard, epoch) = match &self.context.shards {
            None => (0, 0),
            Some(table) => {
                let shard = drift.key.shard(self.context.shard_count);
                let Some(epoch) = table.local_epoch(shard) else {
                    return;
                };
                (shard, epoch)
            }
        };
        let event = DriftDetected {
            location: drift.location.clone(),
            remote: drift.remote,
            believed: drift.believed,
            desired: drift.desired,
            desired_version,
            detected_at_ms: i64::try_from(drift.found_at_ms).unwrap_or(i64::MAX),
        };
        let correlation = format!(
            "channel-reconcile:{}/{}",
            drift.key.tenant, drift.key.channel
        );
        let body = match skuld_actors::listing::drift_body(&event, &correlation) {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!(%error, "cannot encode a channel drift event");
                return;
            }
        };
        let batch = WriteBatch {
            entities: vec![EntityWrite {
                key: drift.key.listing().encode(),
                shard,
                epoch,
                events: vec![body],
                ..EntityWrite::default()
            }],
        };
        match self.context.store.commit(batch).await {
            Ok(committed) if committed.fenced.is_empty() => {}
            Ok(_) => tracing::info!(shard, "channel drift event not published: the shard moved"),
            Err(error) => tracing::warn!(%error, "cannot publish a channel drift event"),
        }
    }

    /// Makes a key's pending push durable (a dirty record) when the worker
    /// itself found it due (drift).
    async fn mark_dirty(&mut self, id: &str) {
        let Some(work) = self.keys.get_mut(id) else {
            return;
        };
        if work.dirty {
            return;
        }
        let raw = encode_mark(&DirtyMark {
            key: work.key.clone(),
            at: format!("drift:{}", now_ms()),
        });
        work.dirty = true;
        work.computed_mark = Some(raw.clone());
        if let Err(error) = self.context.store.put_record(DIRTY_KIND, id, raw).await {
            tracing::warn!(%error, "cannot mark a drifted channel key dirty");
        }
    }
}

/// Whether record `id` belongs to one of the `quiet` shards.
fn in_quiet(quiet: &HashSet<u32>, id: &str) -> bool {
    !quiet.is_empty() && shard_of_record(id).is_some_and(|shard| quiet.contains(&shard))
}

/// The channel shows `push`'s value: acknowledge it and count the lag.
fn acknowledged(channel: &str, target: &mut Target, push: &Push, now: u64) {
    target.state.succeeded(push, now);
    target.known = true;
    // From the oldest change the push carried (a re-assertion carries none).
    if push.coalesced > 0 {
        metrics::histogram!("skuld_channel_push_lag_seconds", "channel" => channel.to_owned())
            .record(now.saturating_sub(push.oldest_change_ms) as f64 / 1_000.0);
    }
    metrics::counter!("skuld_channel_coalesced_changes_total", "channel" => channel.to_owned())
        .increment(push.coalesced.saturating_sub(1));
}
