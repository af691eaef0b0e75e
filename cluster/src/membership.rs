//! Membership in etcd: this node's lease-backed registration, the cluster
//! settings, and a live view of members, shard claims and drain requests.
//!
//! Layout under `/skuld/<cluster>/`:
//! - `settings`: `{"shard_count": N}`, created once by the first node.
//! - `members/<node>`: a [`Member`], attached to the node's lease.
//! - `owners/<shard>`: a [`ClaimRecord`], attached to the owner's lease; the
//!   key's `create_revision` is the claim's epoch.
//! - `drains/<node>`: present while an operator asks that node to drain.
//!
//! A node whose lease runs out loses its member key and every claim at once,
//! which is how the others learn that it died.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::ClusterError;
use crate::tls::ReloadingClientConfig;

/// How often a node whose id another process holds tries to register.
const NODE_ID_IN_USE_RETRY: Duration = Duration::from_secs(1);

/// How this node joins the cluster.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    pub etcd_endpoints: Vec<String>,
    /// Namespace of this cluster's keys, so clusters can share an etcd.
    pub cluster_name: String,
    pub node_id: String,
    /// The gRPC endpoint other nodes forward to.
    pub endpoint: String,
    /// Where clients reach this node's client API, for owner-aware
    /// clients (the shard map).
    pub client_endpoint: String,
    /// Shard count used only when this node creates the cluster.
    pub shard_count: u32,
    pub lease_ttl: Duration,
    /// TLS to etcd (https endpoints): the CA of etcd's server certificate
    /// and the client certificate for `--client-cert-auth`, read again at
    /// each reconnect when they changed. `None`: plaintext.
    pub etcd_tls: Option<Arc<ReloadingClientConfig>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Takes shards.
    Active,
    /// Handing its shards over (SIGTERM or an operator's drain); still
    /// forwards requests.
    Draining,
}

/// A node as registered in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node_id: String,
    pub endpoint: String,
    pub version: String,
    pub state: MemberState,
    /// Distinguishes restarts of the same node id.
    pub incarnation: String,
    pub started_at_ms: i64,
    /// The node's store answers (see `StoreHealth`); a node that cannot
    /// reach it is given no shards while others can.
    #[serde(default = "healthy")]
    pub store_healthy: bool,
    /// The node's client API endpoint; empty in a record of an older
    /// version, whose node clients then reach through any other.
    #[serde(default)]
    pub client_endpoint: String,
}

fn healthy() -> bool {
    true
}

/// The value of a shard's owner key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    pub node_id: String,
    pub incarnation: String,
}

/// A claim as seen in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub node_id: String,
    pub incarnation: String,
    /// The owner key's create_revision: unique per claim and larger than
    /// every earlier claim of the shard.
    pub epoch: u64,
}

/// What this node knows of the cluster, rebuilt from etcd and its watch.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// The etcd revision the view reflects; 0 until first loaded.
    pub revision: i64,
    pub members: BTreeMap<String, Member>,
    pub owners: BTreeMap<u32, Claim>,
    pub drains: BTreeSet<String>,
}

impl ClusterView {
    /// Ids of the members that should own shards, in id order: the active,
    /// undrained ones whose store answers, or, when no such member can
    /// reach the store, every active one (moving shards between nodes that
    /// all fail would only add handoffs to the outage).
    pub fn candidates(&self) -> Vec<&str> {
        let active: Vec<&Member> = self
            .members
            .values()
            .filter(|member| {
                member.state == MemberState::Active && !self.drains.contains(&member.node_id)
            })
            .collect();
        let healthy: Vec<&str> = active
            .iter()
            .filter(|member| member.store_healthy)
            .map(|member| member.node_id.as_str())
            .collect();
        if !healthy.is_empty() {
            return healthy;
        }
        active
            .iter()
            .map(|member| member.node_id.as_str())
            .collect()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Settings {
    shard_count: u32,
}

/// How healthy this node's lease is, for the ownership watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseStatus {
    /// The current lease; a new one after the old one expired.
    pub lease_id: i64,
    /// Send time of the last keep-alive etcd confirmed. etcd expires the
    /// lease no earlier than this plus the TTL.
    pub confirmed_at: Instant,
}

/// This node's connection to the cluster's etcd.
pub struct Membership {
    client: Client,
    config: MembershipConfig,
    prefix: String,
    incarnation: String,
    member: Mutex<Member>,
    member_puts: tokio::sync::Mutex<()>,
    lease_id: AtomicI64,
    lease: watch::Sender<LeaseStatus>,
    view: watch::Sender<Arc<ClusterView>>,
    /// Set when another process took this node id while this one had lost
    /// its lease (it was paused or cut off): this process must stop.
    displaced: watch::Sender<Option<String>>,
    shard_count: u32,
}

/// How production's etcd client connects and calls. A client built over
/// a channel (`Client::from_channel`) should be given these too: the
/// leader requirement is a header on every call. Their connect timeout
/// and keep-alive shape only endpoints etcd-client builds itself, so such
/// a channel's `Endpoint` sets them on its own.
pub fn etcd_connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .with_keep_alive_while_idle(true)
        // A member cut off from its leader answers watches and lease
        // calls with an error instead of going quiet, so a partitioned
        // etcd member cannot freeze this node's view of the cluster.
        .with_require_leader(true)
}

/// What each call of joining may take.
fn join_limit(config: &MembershipConfig) -> Duration {
    etcd_timeout(config.lease_ttl).max(Duration::from_secs(5))
}

fn etcd_timeout(ttl: Duration) -> Duration {
    (ttl / 2).max(Duration::from_millis(500))
}

async fn bounded<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(ClusterError::from),
        Err(_) => Err(ClusterError::Etcd(format!("no answer within {limit:?}"))),
    }
}

impl Membership {
    /// Connects, reads or creates the cluster settings, and registers this
    /// node under a new lease. Does not start the keep-alive and watch
    /// loops: see [`Membership::run`].
    pub async fn join(config: MembershipConfig, version: &str) -> Result<Arc<Self>, ClusterError> {
        let options = etcd_connect_options();
        let limit = join_limit(&config);
        let (client, tls_failure) = match &config.etcd_tls {
            // The node's own channel: its connector reads the certificate
            // files again at each reconnect (etcd-client's `with_tls` would
            // keep the ones read here for the life of the process).
            Some(tls) => {
                let (channel, failure) =
                    crate::etcd_tls::channel(&config.etcd_endpoints, Arc::clone(tls))?;
                let client = bounded(limit, Client::from_channel(channel, Some(options))).await?;
                (client, Some(failure))
            }
            None => {
                let client = bounded(
                    limit,
                    Client::connect(config.etcd_endpoints.clone(), Some(options)),
                )
                .await?;
                (client, None)
            }
        };
        Self::join_over(client, tls_failure, config, version).await
    }

    /// [`Membership::join`] over a client the caller built (the
    /// simulation's, over its own network): `etcd_endpoints` and `etcd_tls`
    /// are not used.
    pub async fn join_with_client(
        client: Client,
        config: MembershipConfig,
        version: &str,
    ) -> Result<Arc<Self>, ClusterError> {
        Self::join_over(client, None, config, version).await
    }

    async fn join_over(
        mut client: Client,
        tls_failure: Option<crate::etcd_tls::LastFailure>,
        config: MembershipConfig,
        version: &str,
    ) -> Result<Arc<Self>, ClusterError> {
        let limit = join_limit(&config);
        let prefix = format!("/skuld/{}", config.cluster_name);
        // The first call: where a certificate etcd refuses shows up.
        let shard_count = ensure_settings(&mut client, &prefix, config.shard_count, limit)
            .await
            .map_err(|error| match &tls_failure {
                Some(failure) => failure.explain(error),
                None => error,
            })?;
        let incarnation = uuid::Uuid::new_v4().to_string();
        let member = Member {
            node_id: config.node_id.clone(),
            endpoint: config.endpoint.clone(),
            client_endpoint: config.client_endpoint.clone(),
            version: version.to_owned(),
            state: MemberState::Active,
            incarnation: incarnation.clone(),
            started_at_ms: crate::now_ms(),
            // Until the node has heard from its store (see StoreHealth):
            // no shards move to it before it knows it can serve them.
            store_healthy: false,
        };
        let (lease, _) = watch::channel(LeaseStatus {
            lease_id: 0,
            confirmed_at: Instant::now(),
        });
        let (view, _) = watch::channel(Arc::new(ClusterView::default()));
        let membership = Arc::new(Self {
            client,
            prefix,
            incarnation,
            member: Mutex::new(member),
            member_puts: tokio::sync::Mutex::new(()),
            lease_id: AtomicI64::new(0),
            lease,
            view,
            displaced: watch::channel(None).0,
            shard_count,
            config,
        });
        // A node id is one process at a time. Another one under this id
        // (two pods given one name, a zombie still holding its lease) keeps
        // this one waiting until its lease ends, at most the TTL after it
        // stopped; joining is raced against the stop, so this can be left.
        loop {
            match membership.register().await {
                Ok(()) => break,
                Err(error @ ClusterError::NodeIdInUse { .. }) => {
                    tracing::warn!(%error, "waiting for the other process's lease to end");
                    tokio::time::sleep(NODE_ID_IN_USE_RETRY).await;
                }
                Err(error) => return Err(error),
            }
        }
        // A fresh start takes shards again, whatever an operator asked of
        // the previous run (only once registered: a second process that
        // waited above must not cancel a drain of the first).
        let mut client = membership.client.clone();
        bounded(
            limit,
            client.delete(membership.drain_key(&membership.config.node_id), None),
        )
        .await?;
        Ok(membership)
    }

    /// `Some(why)` once another process has taken this node id: this
    /// process serves nothing from then on and must stop without handing
    /// shards over (the claims under its id are the other's now).
    pub fn displaced(&self) -> watch::Receiver<Option<String>> {
        self.displaced.subscribe()
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    pub fn lease_ttl(&self) -> Duration {
        self.config.lease_ttl
    }

    pub fn view(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.subscribe()
    }

    pub fn lease(&self) -> watch::Receiver<LeaseStatus> {
        self.lease.subscribe()
    }

    fn limit(&self) -> Duration {
        etcd_timeout(self.config.lease_ttl)
    }

    fn member_key(&self, node: &str) -> String {
        format!("{}/members/{node}", self.prefix)
    }

    fn owner_key(&self, shard: u32) -> String {
        format!("{}/owners/{shard:05}", self.prefix)
    }

    fn drain_key(&self, node: &str) -> String {
        format!("{}/drains/{node}", self.prefix)
    }

    /// Grants a new lease and puts this node's member key under it.
    async fn register(&self) -> Result<(), ClusterError> {
        let mut client = self.client.clone();
        let ttl = i64::try_from(self.config.lease_ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let sent = Instant::now();
        let granted = bounded(self.limit(), client.lease_grant(ttl, None)).await?;
        let lease_id = granted.id();
        if let Err(error) = self.put_member_first(lease_id).await {
            // The lease is of no use now: let it go rather than at its TTL.
            let _ = bounded(self.limit(), client.lease_revoke(lease_id)).await;
            return Err(error);
        }
        self.lease_id.store(lease_id, Ordering::Release);
        self.lease.send_replace(LeaseStatus {
            lease_id,
            confirmed_at: sent,
        });
        tracing::info!(node = %self.config.node_id, lease_id, "registered in etcd");
        Ok(())
    }

    /// Puts this node's member record under a new lease, unless another
    /// process holds the node id: the key exists and names another
    /// incarnation (an earlier lease of this process is overwritten).
    async fn put_member_first(&self, lease_id: i64) -> Result<(), ClusterError> {
        let _one_at_a_time = self.member_puts.lock().await;
        let key = self.member_key(&self.config.node_id);
        let value = serde_json::to_vec(&*self.member.lock())
            .map_err(|error| ClusterError::Etcd(error.to_string()))?;
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease_id)),
            )])
            .or_else(vec![TxnOp::get(key.clone(), None)]);
        let mut client = self.client.clone();
        let response = bounded(self.limit(), client.txn(txn)).await?;
        if response.succeeded() {
            return Ok(());
        }
        let existing = response.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(got) => got.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        // The transaction compares and reads atomically: the key is there.
        let Some(bytes) = existing else {
            return Err(ClusterError::Etcd(
                "member record neither absent nor readable".into(),
            ));
        };
        // Only who holds it is read, so a record a newer version wrote
        // (a state this one does not know) does not stop the node.
        #[derive(Deserialize)]
        struct Holder {
            incarnation: String,
            #[serde(default)]
            endpoint: String,
        }
        let holder =
            serde_json::from_slice::<Holder>(&bytes).map_err(|error| ClusterError::Malformed {
                key: key.clone(),
                reason: error.to_string(),
            })?;
        if holder.incarnation != self.incarnation {
            return Err(ClusterError::NodeIdInUse {
                node_id: self.config.node_id.clone(),
                incarnation: holder.incarnation,
                endpoint: holder.endpoint,
            });
        }
        // An earlier lease of this process, not expired yet.
        self.put_member_locked(lease_id).await
    }

    async fn put_member(&self, lease_id: i64) -> Result<(), ClusterError> {
        // One put at a time, each of the record as it is when sent: two
        // changes made at once (a drain and a store verdict) cannot land in
        // etcd in the wrong order and undo one another.
        let _one_at_a_time = self.member_puts.lock().await;
        self.put_member_locked(lease_id).await
    }

    async fn put_member_locked(&self, lease_id: i64) -> Result<(), ClusterError> {
        let value = serde_json::to_vec(&*self.member.lock())
            .map_err(|error| ClusterError::Etcd(error.to_string()))?;
        let mut client = self.client.clone();
        bounded(
            self.limit(),
            client.put(
                self.member_key(&self.config.node_id),
                value,
                Some(PutOptions::new().with_lease(lease_id)),
            ),
        )
        .await?;
        Ok(())
    }

    /// Announces that this node is handing its shards over.
    pub async fn set_state(&self, state: MemberState) -> Result<(), ClusterError> {
        self.member.lock().state = state;
        self.put_member(self.lease_id.load(Ordering::Acquire)).await
    }

    /// Announces whether this node's store answers; placement gives shards
    /// only to nodes whose store does (while there are any).
    pub async fn set_store_healthy(&self, healthy: bool) -> Result<(), ClusterError> {
        self.member.lock().store_healthy = healthy;
        self.put_member(self.lease_id.load(Ordering::Acquire)).await
    }

    /// etcd's current revision: every claim made from now on gets a higher
    /// epoch than this.
    pub async fn etcd_revision(&self) -> Result<i64, ClusterError> {
        let mut client = self.client.clone();
        let response = bounded(
            self.limit(),
            client.get(format!("{}/settings", self.prefix), None),
        )
        .await?;
        response
            .header()
            .map(|header| header.revision())
            .ok_or_else(|| ClusterError::Etcd("answer without a header".into()))
    }

    /// Asks `node` to hand its shards over (an operator's drain).
    pub async fn request_drain(&self, node: &str) -> Result<(), ClusterError> {
        let mut client = self.client.clone();
        bounded(
            self.limit(),
            client.put(self.drain_key(node), "requested", None),
        )
        .await?;
        Ok(())
    }

    /// Withdraws a drain request of `node`; true if there was one.
    pub async fn cancel_drain(&self, node: &str) -> Result<bool, ClusterError> {
        let mut client = self.client.clone();
        let deleted = bounded(self.limit(), client.delete(self.drain_key(node), None)).await?;
        Ok(deleted.deleted() > 0)
    }

    /// Claims `shard` under lease `lease_id` (this node's current one) if
    /// nobody holds it. Returns the claim's epoch, or `None` when another
    /// claim exists.
    pub async fn claim(&self, shard: u32, lease_id: i64) -> Result<Option<u64>, ClusterError> {
        let key = self.owner_key(shard);
        let record = ClaimRecord {
            node_id: self.config.node_id.clone(),
            incarnation: self.incarnation.clone(),
        };
        let value =
            serde_json::to_vec(&record).map_err(|error| ClusterError::Etcd(error.to_string()))?;
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease_id)),
            )]);
        let mut client = self.client.clone();
        let response = bounded(self.limit(), client.txn(txn)).await?;
        if !response.succeeded() {
            return Ok(None);
        }
        // The put is the transaction's only write, so the key's
        // create_revision is the revision the transaction produced.
        let revision = response
            .header()
            .map(|header| header.revision())
            .ok_or_else(|| ClusterError::Etcd("transaction answer without a header".into()))?;
        Ok(u64::try_from(revision).ok())
    }

    /// Deletes this node's claim of `shard` made at `epoch`, if it still
    /// exists; a newer claim is left alone.
    pub async fn release(&self, shard: u32, epoch: u64) -> Result<(), ClusterError> {
        let key = self.owner_key(shard);
        let revision = i64::try_from(epoch).unwrap_or(i64::MAX);
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then(vec![TxnOp::delete(key, None)]);
        let mut client = self.client.clone();
        bounded(self.limit(), client.txn(txn)).await?;
        Ok(())
    }

    /// Revokes the lease: the member key and every claim left vanish at once.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        let mut client = self.client.clone();
        let lease_id = self.lease_id.load(Ordering::Acquire);
        bounded(self.limit(), client.lease_revoke(lease_id)).await?;
        Ok(())
    }

    /// Keeps the lease alive and the view current until `shutdown`. Both
    /// loops reconnect on their own after etcd restarts or network faults.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let keep_alive = tokio::spawn(Arc::clone(&self).keep_alive_loop(shutdown.clone()));
        let watch = tokio::spawn(Arc::clone(&self).watch_loop(shutdown));
        let _ = keep_alive.await;
        let _ = watch.await;
    }

    async fn keep_alive_loop(self: Arc<Self>, shutdown: CancellationToken) {
        // Often enough that one keep-alive answered late (up to about half
        // the TTL) still leaves the lease confirmed before the ownership
        // watchdog's deadline (TTL - TTL/3) and the node keeps its shards.
        let interval = (self.config.lease_ttl / 8).max(Duration::from_millis(100));
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let lease_id = self.lease_id.load(Ordering::Acquire);
            let mut client = self.client.clone();
            let stream =
                tokio::time::timeout(self.limit(), client.lease_keep_alive(lease_id)).await;
            let (mut keeper, mut responses) = match stream {
                Ok(Ok(pair)) => pair,
                Ok(Err(error)) => {
                    // etcd-client refuses to keep alive a lease whose TTL is
                    // gone; so does etcd for one it does not know (it
                    // expired while this node was cut off or paused, was
                    // revoked, or etcd was restored from a backup).
                    if lease_gone(&error) || self.lease_expired(lease_id).await {
                        self.register_again(lease_id).await;
                    } else {
                        tracing::warn!(%error, "cannot open the lease keep-alive stream");
                    }
                    if sleep_or_shutdown(interval, &shutdown).await {
                        return;
                    }
                    continue;
                }
                Err(_) => {
                    tracing::warn!(lease_id, "no answer opening the lease keep-alive stream");
                    if sleep_or_shutdown(interval, &shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            loop {
                let sent = Instant::now();
                let answered = async {
                    keeper.keep_alive().await?;
                    responses.message().await
                };
                match tokio::time::timeout(self.limit(), answered).await {
                    Ok(Ok(Some(response))) if response.ttl() > 0 => {
                        metrics::counter!("skuld_lease_confirmations_total").increment(1);
                        metrics::histogram!("skuld_lease_confirm_seconds")
                            .record(sent.elapsed().as_secs_f64());
                        self.lease.send_modify(|status| {
                            if status.lease_id == lease_id {
                                status.confirmed_at = sent;
                            }
                        });
                    }
                    Ok(Ok(Some(_))) => {
                        self.register_again(lease_id).await;
                        break;
                    }
                    Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                        tracing::warn!(lease_id, "lease keep-alive failed; reconnecting");
                        break;
                    }
                }
                if sleep_or_shutdown(interval, &shutdown).await {
                    return;
                }
            }
            if sleep_or_shutdown(Duration::from_millis(200), &shutdown).await {
                return;
            }
        }
    }

    /// Whether etcd says `lease_id` no longer exists (expired or revoked).
    async fn lease_expired(&self, lease_id: i64) -> bool {
        let mut client = self.client.clone();
        match tokio::time::timeout(self.limit(), client.lease_time_to_live(lease_id, None)).await {
            Ok(Ok(answer)) => answer.ttl() <= 0,
            Ok(Err(error)) => lease_gone(&error),
            Err(_) => false,
        }
    }

    /// The lease is gone, and with it every claim this node held: take a
    /// new one and register again. The ownership manager sees the new lease
    /// id and stops serving what it held under the old one before it serves
    /// anything under the new one. Retried by the caller's loop on failure.
    async fn register_again(&self, lost: i64) {
        if self.displaced.borrow().is_some() {
            return;
        }
        tracing::error!(lease_id = lost, "lease expired: registering again");
        metrics::counter!("skuld_lease_lost_total").increment(1);
        match self.register().await {
            Ok(()) => tracing::info!("registered again under a new lease"),
            Err(error @ ClusterError::NodeIdInUse { .. }) => {
                tracing::error!(%error, "another process took this node id while this one had no lease: stopping");
                self.displaced.send_replace(Some(error.to_string()));
            }
            Err(error) => tracing::warn!(%error, "cannot register again yet"),
        }
    }

    async fn watch_loop(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            match self.load_and_follow(&shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, "cluster watch interrupted; reloading");
                    if sleep_or_shutdown(Duration::from_millis(300), &shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// Reads everything once, then applies watch events from the next
    /// revision on. Returns Ok only on shutdown.
    async fn load_and_follow(&self, shutdown: &CancellationToken) -> Result<(), ClusterError> {
        let mut client = self.client.clone();
        let prefix = format!("{}/", self.prefix);
        let all = bounded(
            self.limit(),
            client.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = all.header().map_or(0, |header| header.revision());
        let mut view = ClusterView {
            revision,
            ..ClusterView::default()
        };
        for kv in all.kvs() {
            self.apply(&mut view, kv.key(), Some(kv.value()), kv.create_revision());
        }
        self.view.send_replace(Arc::new(view.clone()));
        let mut stream = bounded(
            self.limit(),
            client.watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1)
                        .with_progress_notify(),
                ),
            ),
        )
        .await?;
        loop {
            let message = tokio::select! {
                message = stream.message() => message?,
                () = shutdown.cancelled() => return Ok(()),
            };
            let Some(response) = message else {
                return Err(ClusterError::Etcd("watch stream ended".into()));
            };
            if response.canceled() {
                return Err(ClusterError::Etcd(format!(
                    "watch cancelled: {}",
                    response.cancel_reason()
                )));
            }
            if response.events().is_empty() {
                continue;
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let value = match event.event_type() {
                    EventType::Put => Some(kv.value()),
                    EventType::Delete => None,
                };
                self.apply(&mut view, kv.key(), value, kv.create_revision());
                view.revision = view.revision.max(kv.mod_revision());
            }
            self.view.send_replace(Arc::new(view.clone()));
        }
    }

    /// Applies one key's new value (None: deleted) to the view.
    fn apply(&self, view: &mut ClusterView, key: &[u8], value: Option<&[u8]>, created: i64) {
        let Ok(key) = std::str::from_utf8(key) else {
            return;
        };
        let Some(rest) = key
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
        else {
            return;
        };
        if let Some(node) = rest.strip_prefix("members/") {
            match value.map(serde_json::from_slice::<Member>) {
                Some(Ok(member)) => {
                    view.members.insert(node.to_owned(), member);
                }
                Some(Err(error)) => tracing::warn!(key, %error, "malformed member record"),
                None => {
                    view.members.remove(node);
                }
            }
        } else if let Some(shard) = rest.strip_prefix("owners/") {
            let Ok(shard) = shard.parse::<u32>() else {
                return;
            };
            match value.map(serde_json::from_slice::<ClaimRecord>) {
                Some(Ok(record)) => {
                    view.owners.insert(
                        shard,
                        Claim {
                            node_id: record.node_id,
                            incarnation: record.incarnation,
                            epoch: u64::try_from(created).unwrap_or(0),
                        },
                    );
                }
                Some(Err(error)) => tracing::warn!(key, %error, "malformed claim record"),
                None => {
                    view.owners.remove(&shard);
                }
            }
        } else if let Some(node) = rest.strip_prefix("drains/") {
            if value.is_some() {
                view.drains.insert(node.to_owned());
            } else {
                view.drains.remove(node);
            }
        }
    }
}

/// Whether an etcd error says the lease does not exist (any more).
fn lease_gone(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => status.code() == tonic::Code::NotFound,
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("not found"),
        _ => false,
    }
}

/// Sleeps for `duration`; true if shutdown was signalled meanwhile.
async fn sleep_or_shutdown(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => shutdown.is_cancelled(),
        () = shutdown.cancelled() => true,
    }
}

/// Creates the settings key if absent (first node wins), then reads it.
async fn ensure_settings(
    client: &mut Client,
    prefix: &str,
    shard_count: u32,
    limit: Duration,
) -> Result<u32, ClusterError> {
    let key = format!("{prefix}/settings");
    let value = serde_json::to_vec(&Settings { shard_count })
        .map_err(|error| ClusterError::Etcd(error.to_string()))?;
    let txn = Txn::new()
        .when(vec![Compare::create_revision(
            key.clone(),
            CompareOp::Equal,
            0,
        )])
        .and_then(vec![TxnOp::put(key.clone(), value, None)]);
    bounded(limit, client.txn(txn)).await?;
    let stored = bounded(limit, client.get(key.clone(), None)).await?;
    let kv = stored
        .kvs()
        .first()
        .ok_or_else(|| ClusterError::Malformed {
            key: key.clone(),
            reason: "missing right after creation".into(),
        })?;
    let settings: Settings =
        serde_json::from_slice(kv.value()).map_err(|error| ClusterError::Malformed {
            key: key.clone(),
            reason: error.to_string(),
        })?;
    if settings.shard_count == 0 {
        return Err(ClusterError::Malformed {
            key,
            reason: "shard_count is 0".into(),
        });
    }
    if settings.shard_count != shard_count {
        tracing::info!(
            stored = settings.shard_count,
            configured = shard_count,
            "the cluster already exists: its shard count wins"
        );
    }
    Ok(settings.shard_count)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_member_record_of_an_older_version_still_decodes() {
        // Written before store health and client endpoints were recorded.
        let old = br#"{"node_id":"node-0","endpoint":"https://127.0.0.1:7071","version":"0.1.0",
            "state":"active","incarnation":"i-1","started_at_ms":1}"#;
        let member: Member = serde_json::from_slice(old).unwrap();
        assert!(member.store_healthy);
        assert_eq!(member.client_endpoint, "");
    }
}
