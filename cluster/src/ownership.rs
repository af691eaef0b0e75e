//! Ownership: claims and releases shards so that this node serves exactly
//! the shards placement gives it, with an epoch the store fences on.
//!
//! A claim is served only after (1) the owner key was created in etcd under
//! this node's lease (the epoch is its create_revision) and (2) the store's
//! fence for the shard was raised to that epoch, which waits out any write
//! of an older owner still in flight. A release stops admitting, waits for
//! the requests in flight, stops the shard's actors, and only then deletes
//! the claim. A node whose lease is about to run out stops serving every
//! shard on its own, before anyone else can claim them.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::membership::{ClusterView, LeaseStatus, MemberState, Membership};
use crate::placement::assign;
use crate::shards::{Peer, Route, ShardTable};
use crate::store::health::StoreHealth;
use crate::store::Store;

/// What the node does when a shard stops being served here: stop (and
/// forget) the actors of its keys, so a later claim reloads from the store.
pub trait ShardHost: Send + Sync + 'static {
    fn evict(&self, shard: u32) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Tuning of handoffs.
#[derive(Debug, Clone)]
pub struct OwnershipConfig {
    /// Shards being handed off by this node at once at most (not applied
    /// when draining for shutdown).
    pub max_concurrent_moves: usize,
    /// How long a release waits for requests in flight before it goes on.
    pub quiesce_timeout: Duration,
    /// Stop serving when the lease has not been confirmed for
    /// `lease_ttl - safety_margin`.
    pub safety_margin: Duration,
}

impl OwnershipConfig {
    pub fn for_ttl(lease_ttl: Duration) -> Self {
        Self {
            max_concurrent_moves: 64,
            quiesce_timeout: Duration::from_secs(5),
            safety_margin: (lease_ttl / 3).max(Duration::from_millis(500)),
        }
    }

    /// How long after etcd last confirmed the lease this node still serves
    /// its shards (and reports itself ready).
    pub fn serving_window(&self, lease_ttl: Duration) -> Duration {
        lease_ttl.saturating_sub(self.safety_margin)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Claimed in etcd, store fence not yet raised: not served.
    Fencing,
    Serving,
    Releasing,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    epoch: u64,
    phase: Phase,
    /// When the claim (taking it) or the release (giving it up) began:
    /// `skuld_handoff_seconds` measures to serving or to released.
    since: Instant,
}

enum Done {
    /// `lease_id`: the lease the claim was made under.
    Claimed {
        shard: u32,
        epoch: Option<u64>,
        lease_id: i64,
        started: Instant,
    },
    Fenced {
        shard: u32,
        epoch: u64,
        ok: bool,
    },
    /// The store did not answer the fence; reconcile decides whether to
    /// try again or to give the claim up.
    FenceFailed {
        shard: u32,
        epoch: u64,
        lease_id: i64,
    },
    Released {
        shard: u32,
    },
    Evicted {
        shard: u32,
    },
}

/// The route of a shard this node does not serve: its claimed owner on
/// another node, or moving while nobody (else) holds it.
fn route_elsewhere(view: &ClusterView, shard: u32, me: &str) -> Route {
    view.owners
        .get(&shard)
        .filter(|claim| claim.node_id != me)
        .and_then(|claim| view.members.get(&claim.node_id))
        .map_or(Route::Moving, |member| {
            Route::Remote(Arc::new(Peer {
                node_id: member.node_id.clone(),
                endpoint: member.endpoint.clone(),
            }))
        })
}

/// After a node handed every shard over: keeps its routing table following
/// the new owners' claims until `stop`, so requests already waiting for one
/// of its shards are forwarded to the new owner instead of timing out.
pub async fn follow_routes(
    membership: Arc<Membership>,
    table: Arc<ShardTable>,
    stop: CancellationToken,
) {
    let mut view_rx = membership.view();
    let me = membership.node_id().to_owned();
    loop {
        {
            let view = view_rx.borrow_and_update();
            for shard in 0..membership.shard_count() {
                table.set(shard, route_elsewhere(&view, shard, &me));
            }
        }
        tokio::select! {
            changed = view_rx.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
    }
}

/// Deletes this node's claim of `shard` at `epoch`, retrying a few times;
/// if etcd cannot be reached, the lease's expiry frees the shard anyway.
async fn release_claim(membership: &Membership, shard: u32, epoch: u64) {
    for attempt in 0..5u32 {
        match membership.release(shard, epoch).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(shard, attempt, %error, "release failed; the lease bounds it");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Runs claims and releases for one node.
pub struct ShardManager {
    membership: Arc<Membership>,
    table: Arc<ShardTable>,
    store: Arc<dyn Store>,
    /// Whether this node's store answers; a node whose store fails gives
    /// its shards up at once (nothing it holds can be served anyway).
    store_health: Arc<StoreHealth>,
    host: Arc<dyn ShardHost>,
    config: OwnershipConfig,
    /// Ordered maps: reconcile walks shards in shard order, so the claims,
    /// releases and fences it starts go out in the same order on every run
    /// of a simulation seed (a HashMap's order follows its random seed).
    held: BTreeMap<u32, Held>,
    /// Background tasks (claim, fence, release, eviction) running per
    /// shard; a shard with any is left alone by reconcile. A count, since
    /// an eviction can overlap a release of the same shard.
    busy: BTreeMap<u32, usize>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    draining: bool,
    /// The lease the held claims were made under.
    lease_id: i64,
}

impl ShardManager {
    pub fn new(
        membership: Arc<Membership>,
        table: Arc<ShardTable>,
        store: Arc<dyn Store>,
        store_health: Arc<StoreHealth>,
        host: Arc<dyn ShardHost>,
        config: OwnershipConfig,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            membership,
            table,
            store,
            store_health,
            host,
            config,
            held: BTreeMap::new(),
            busy: BTreeMap::new(),
            done_tx,
            done_rx,
            draining: false,
            lease_id: 0,
        }
    }

    /// Serves shards until `drain` holds a deadline, then hands every shard
    /// over (by that deadline) and returns.
    pub async fn run(mut self, mut drain: watch::Receiver<Option<Instant>>) {
        let mut view_rx = self.membership.view();
        let mut lease_rx = self.membership.lease();
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain_deadline: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = view_rx.changed() => {}
                _ = lease_rx.changed() => {}
                Some(done) = self.done_rx.recv() => self.finish(done),
                _ = ticker.tick() => {}
                _ = drain.changed(), if drain_deadline.is_none() => {}
            }
            if drain_deadline.is_none() && drain.borrow().is_some() {
                drain_deadline = *drain.borrow();
                self.draining = true;
                tracing::info!(shards = self.held.len(), "handing every shard over");
                if let Err(error) = self.membership.set_state(MemberState::Draining).await {
                    tracing::warn!(%error, "cannot announce the drain; releasing anyway");
                }
            }
            let lease = *lease_rx.borrow();
            if lease.lease_id != self.lease_id {
                // A new lease: the old one expired or was revoked, and every
                // claim made under it went with it. Nothing held is served
                // again (the window below would otherwise reopen it).
                if !self.held.is_empty() {
                    tracing::error!(
                        shards = self.held.len(),
                        "the lease was replaced: no longer serving what was claimed under it"
                    );
                    self.stop_serving_all();
                }
                self.lease_id = lease.lease_id;
            }
            // Requests check this themselves on every admission, so a node
            // that was paused refuses before this loop runs again.
            self.table.serve_until(self.safe_until(lease));
            self.watchdog(lease);
            let view = Arc::clone(&view_rx.borrow());
            self.reconcile(&view, lease);
            if let Some(deadline) = drain_deadline {
                if self.held.is_empty() && self.busy.is_empty() {
                    tracing::info!("every shard handed over");
                    return;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(
                        left = self.held.len(),
                        "drain timed out; the lease revocation frees the rest"
                    );
                    for shard in self.held.keys().copied().collect::<Vec<_>>() {
                        self.table.set(shard, Route::Moving);
                    }
                    return;
                }
            }
        }
    }

    /// Stops serving everything when the lease may be about to expire:
    /// etcd could hand the shards to another node at any moment after.
    fn watchdog(&mut self, lease: LeaseStatus) {
        if self.lease_healthy(lease) || self.held.is_empty() {
            return;
        }
        tracing::error!(
            shards = self.held.len(),
            unconfirmed_ms = lease.confirmed_at.elapsed().as_millis() as u64,
            "lease not confirmed in time: no longer serving any shard"
        );
        metrics::counter!("skuld_self_fenced_total").increment(1);
        self.stop_serving_all();
    }

    /// Forgets every shard held and stops their actors (in the background).
    fn stop_serving_all(&mut self) {
        let shards: Vec<u32> = std::mem::take(&mut self.held).into_keys().collect();
        for shard in shards {
            self.table.set(shard, Route::Moving);
            self.spawn_evict(shard);
        }
    }

    /// Until when the lease is surely still ours: its last confirmation
    /// (counted from when the keep-alive was sent) plus the TTL, less the
    /// safety margin for clock drift and a slow etcd.
    fn safe_until(&self, lease: LeaseStatus) -> Instant {
        lease.confirmed_at + self.config.serving_window(self.membership.lease_ttl())
    }

    fn lease_healthy(&self, lease: LeaseStatus) -> bool {
        Instant::now() < self.safe_until(lease)
    }

    fn reconcile(&mut self, view: &ClusterView, lease: LeaseStatus) {
        if view.revision == 0 {
            return;
        }
        let me = self.membership.node_id().to_owned();
        let incarnation = self.membership.incarnation().to_owned();
        let shard_count = self.membership.shard_count();
        let candidates = view.candidates();
        let target = assign(shard_count, &candidates);
        let may_take =
            !self.draining && self.lease_healthy(lease) && candidates.contains(&me.as_str());
        let store_failing = !self.store_health.is_healthy();
        let mut releasing = self
            .held
            .values()
            .filter(|held| held.phase == Phase::Releasing)
            .count();
        let cap = if self.draining {
            usize::MAX
        } else {
            self.config.max_concurrent_moves.max(1)
        };

        for shard in 0..shard_count {
            let claim = view.owners.get(&shard);
            let ours =
                claim.is_some_and(|claim| claim.node_id == me && claim.incarnation == incarnation);
            let wanted =
                may_take && target.get(shard as usize).copied().flatten() == Some(me.as_str());
            let busy = self.busy.contains_key(&shard);
            match self.held.get(&shard).copied() {
                Some(held) => {
                    let still_claimed =
                        ours && claim.is_some_and(|claim| claim.epoch == held.epoch);
                    // A view older than the claim itself cannot show it yet.
                    let view_knows = u64::try_from(view.revision).unwrap_or(0) >= held.epoch;
                    if !still_claimed && view_knows && !busy {
                        // The claim vanished (lease expired) or was replaced:
                        // someone else may own the shard now.
                        tracing::warn!(shard, epoch = held.epoch, "claim lost; no longer serving");
                        self.held.remove(&shard);
                        self.table.set(shard, Route::Moving);
                        self.spawn_evict(shard);
                    } else if busy {
                        // Its claim, fence or release is under way.
                    } else if held.phase == Phase::Fencing {
                        // A fence the store did not answer: try again while
                        // the shard is still ours to take, else let it go.
                        if wanted {
                            self.start_fence(shard, held.epoch);
                        } else if releasing < cap {
                            releasing += 1;
                            self.start_abandon(shard, held.epoch);
                        }
                    } else if held.phase == Phase::Serving && !wanted && releasing < cap {
                        releasing += 1;
                        if store_failing {
                            self.start_abandon(shard, held.epoch);
                        } else {
                            self.start_release(shard, held.epoch);
                        }
                    }
                }
                None if busy => {}
                None => match claim {
                    None if wanted => self.start_claim(shard),
                    // A claim of an earlier run of this node, or one this
                    // node gave up serving: free the shard for a fresh claim.
                    Some(claim) if claim.node_id == me => {
                        self.start_drop_stale(shard, claim.epoch);
                    }
                    _ => {}
                },
            }
            if !matches!(self.held.get(&shard), Some(held) if held.phase == Phase::Serving) {
                self.table.set(shard, route_elsewhere(view, shard, &me));
            }
        }
        metrics::gauge!("skuld_shards_owned").set(
            self.held
                .values()
                .filter(|held| held.phase == Phase::Serving)
                .count() as f64,
        );
    }

    fn start_claim(&mut self, shard: u32) {
        self.mark_busy(shard);
        let membership = Arc::clone(&self.membership);
        let done = self.done_tx.clone();
        let lease_id = self.lease_id;
        let started = Instant::now();
        tokio::spawn(async move {
            let epoch = match membership.claim(shard, lease_id).await {
                Ok(epoch) => epoch,
                Err(error) => {
                    tracing::debug!(shard, %error, "claim failed");
                    None
                }
            };
            let _ = done.send(Done::Claimed {
                shard,
                epoch,
                lease_id,
                started,
            });
        });
    }

    fn start_fence(&mut self, shard: u32, epoch: u64) {
        self.mark_busy(shard);
        let lease_id = self.lease_id;
        let store = Arc::clone(&self.store);
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let ok = match store.fence(shard, epoch).await {
                Ok(ok) => ok,
                Err(error) => {
                    tracing::warn!(shard, epoch, %error, "cannot raise the store fence yet");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let _ = done.send(Done::FenceFailed {
                        shard,
                        epoch,
                        lease_id,
                    });
                    return;
                }
            };
            let _ = done.send(Done::Fenced { shard, epoch, ok });
        });
    }

    /// Marks `shard` as being released: busy, and admitting no new request.
    fn begin_release(&mut self, shard: u32, epoch: u64) {
        self.mark_busy(shard);
        self.held.insert(
            shard,
            Held {
                epoch,
                phase: Phase::Releasing,
                since: Instant::now(),
            },
        );
        self.table.set(shard, Route::Moving);
    }

    fn start_release(&mut self, shard: u32, epoch: u64) {
        self.begin_release(shard, epoch);
        metrics::counter!("skuld_handoffs_total", "direction" => "out").increment(1);
        let table = Arc::clone(&self.table);
        let host = Arc::clone(&self.host);
        let membership = Arc::clone(&self.membership);
        let quiesce = self.config.quiesce_timeout;
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            if !table.quiesce(shard, quiesce).await {
                tracing::warn!(
                    shard,
                    "requests still in flight after {quiesce:?}; releasing anyway"
                );
            }
            host.evict(shard).await;
            release_claim(&membership, shard, epoch).await;
            let _ = done.send(Done::Released { shard });
        });
    }

    /// Gives a shard up without waiting for its requests: this node's store
    /// has failed for the failover time, so they cannot finish anyway. The
    /// claim goes first, so a node that can reach the store takes over at
    /// once; the store's fence keeps anything this node still writes out,
    /// and waits for a commit of it that is in flight.
    fn start_abandon(&mut self, shard: u32, epoch: u64) {
        self.begin_release(shard, epoch);
        metrics::counter!("skuld_handoffs_total", "direction" => "abandoned").increment(1);
        let host = Arc::clone(&self.host);
        let membership = Arc::clone(&self.membership);
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            release_claim(&membership, shard, epoch).await;
            host.evict(shard).await;
            let _ = done.send(Done::Released { shard });
        });
    }

    fn start_drop_stale(&mut self, shard: u32, epoch: u64) {
        self.mark_busy(shard);
        let membership = Arc::clone(&self.membership);
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            if let Err(error) = membership.release(shard, epoch).await {
                tracing::debug!(shard, %error, "cannot drop a stale claim yet");
            }
            let _ = done.send(Done::Released { shard });
        });
    }

    fn mark_busy(&mut self, shard: u32) {
        *self.busy.entry(shard).or_default() += 1;
    }

    fn unmark_busy(&mut self, shard: u32) {
        if let Some(count) = self.busy.get_mut(&shard) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.busy.remove(&shard);
            }
        }
    }

    /// Stops the shard's actors in the background, once the requests
    /// admitted for it are done (bounded by the quiesce timeout): those
    /// finish under the epoch they were admitted with, and none of them can
    /// start a fresh actor behind the eviction. The shard counts as busy
    /// until then, so it is not claimed again meanwhile: a late eviction
    /// would stop the actors of the new claim.
    fn spawn_evict(&mut self, shard: u32) {
        self.mark_busy(shard);
        let host = Arc::clone(&self.host);
        let table = Arc::clone(&self.table);
        let quiesce = self.config.quiesce_timeout;
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            if !table.quiesce(shard, quiesce).await {
                tracing::warn!(
                    shard,
                    "requests still in flight after {quiesce:?}; evicting anyway"
                );
            }
            host.evict(shard).await;
            let _ = done.send(Done::Evicted { shard });
        });
    }

    fn finish(&mut self, done: Done) {
        match done {
            Done::Claimed {
                shard,
                epoch,
                lease_id,
                started,
            } => {
                self.unmark_busy(shard);
                if let Some(epoch) = epoch.filter(|_| lease_id != self.lease_id) {
                    // Made under a lease that is gone since: so is the claim.
                    self.start_drop_stale(shard, epoch);
                } else if let Some(epoch) = epoch {
                    self.held.insert(
                        shard,
                        Held {
                            epoch,
                            phase: Phase::Fencing,
                            since: started,
                        },
                    );
                    self.start_fence(shard, epoch);
                }
            }
            Done::FenceFailed {
                shard,
                epoch,
                lease_id,
            } => {
                self.unmark_busy(shard);
                if lease_id != self.lease_id {
                    // Made under a lease that is gone since: so is the claim.
                    if self
                        .held
                        .get(&shard)
                        .is_some_and(|held| held.epoch == epoch)
                    {
                        self.held.remove(&shard);
                    }
                    self.start_drop_stale(shard, epoch);
                }
                // Otherwise it stays held (fencing, not busy): the next
                // reconcile fences again, or gives the claim up.
            }
            Done::Fenced { shard, epoch, ok } => {
                self.unmark_busy(shard);
                match self.held.get_mut(&shard) {
                    Some(held) if held.epoch == epoch && ok => {
                        held.phase = Phase::Serving;
                        self.table.set(shard, Route::Local { epoch });
                        metrics::counter!("skuld_handoffs_total", "direction" => "in").increment(1);
                        metrics::histogram!("skuld_handoff_seconds", "direction" => "in")
                            .record(held.since.elapsed().as_secs_f64());
                        tracing::debug!(shard, epoch, "serving");
                    }
                    Some(held) if held.epoch == epoch => {
                        tracing::error!(
                            shard,
                            epoch,
                            "the store holds a newer epoch: claim dropped"
                        );
                        self.held.remove(&shard);
                        self.start_drop_stale(shard, epoch);
                    }
                    _ => {}
                }
            }
            Done::Released { shard } => {
                self.unmark_busy(shard);
                if self
                    .held
                    .get(&shard)
                    .is_some_and(|held| held.phase == Phase::Releasing)
                {
                    if let Some(held) = self.held.remove(&shard) {
                        metrics::histogram!("skuld_handoff_seconds", "direction" => "out")
                            .record(held.since.elapsed().as_secs_f64());
                    }
                }
            }
            Done::Evicted { shard } => {
                self.unmark_busy(shard);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{Claim, Member};

    fn member(node_id: &str) -> Member {
        Member {
            node_id: node_id.to_owned(),
            endpoint: format!("http://{node_id}:7070"),
            version: "0.1.0".to_owned(),
            state: MemberState::Active,
            incarnation: format!("{node_id}-1"),
            started_at_ms: 0,
            store_healthy: true,
            client_endpoint: String::new(),
        }
    }

    fn claim(node_id: &str, epoch: u64) -> Claim {
        Claim {
            node_id: node_id.to_owned(),
            incarnation: format!("{node_id}-1"),
            epoch,
        }
    }

    #[test]
    fn a_shard_served_elsewhere_routes_to_its_claimed_owner() {
        let mut view = ClusterView {
            revision: 10,
            ..ClusterView::default()
        };
        view.members.insert("a".into(), member("a"));
        view.members.insert("b".into(), member("b"));
        view.owners.insert(0, claim("b", 7));
        view.owners.insert(1, claim("a", 8));
        // A claim by a node that has left (its member key is gone).
        view.owners.insert(2, claim("gone", 9));

        match route_elsewhere(&view, 0, "a") {
            Route::Remote(peer) => {
                assert_eq!(peer.node_id, "b");
                assert_eq!(peer.endpoint, "http://b:7070");
            }
            other => panic!("expected a remote route, got {other:?}"),
        }
        // Its own claim is never a route elsewhere; nor is an unknown owner
        // or an unclaimed shard: requests wait for the handoff.
        assert_eq!(route_elsewhere(&view, 1, "a"), Route::Moving);
        assert_eq!(route_elsewhere(&view, 2, "a"), Route::Moving);
        assert_eq!(route_elsewhere(&view, 3, "a"), Route::Moving);
    }
}
