//! Cluster mode wiring: join etcd, open the shared PostgreSQL store, build
//! the routing table, and run membership and ownership beside the server.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use anyhow::Context as _;
use skuld_actors::order::OrderEntity;
use skuld_actors::position::PositionEntity;
use skuld_actors::returns::ReturnEntity;
use skuld_actors::runtime::routing::Routing;
use skuld_actors::runtime::EntityRuntime;
use skuld_cluster::membership::{Membership, MembershipConfig};
use skuld_cluster::ownership::{follow_routes, OwnershipConfig, ShardHost, ShardManager};
use skuld_cluster::shards::ShardTable;
use skuld_cluster::store::health::{HealthPolicy, MonitoredStore, StoreHealth, Verdict};
use skuld_cluster::tls::{ReloadingClientConfig, TlsFiles};
use skuld_cluster::{ClusterError, PostgresStore, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, SecretUrl};
use crate::node_io::EtcdSource;
use crate::peer::{GrpcForwarder, PeerChannels};
use crate::tls::Reloadable;

/// The parts of cluster mode that exist before the runtimes do.
pub struct Joined {
    pub membership: Arc<Membership>,
    pub table: Arc<ShardTable>,
    pub store: Arc<dyn Store>,
    /// Whether the store answers this node (ownership follows it).
    pub store_health: Arc<StoreHealth>,
    pub routing: Routing,
    /// The etcd and PostgreSQL clients' TLS files, when configured.
    pub client_tls: Vec<Arc<ReloadingClientConfig>>,
}

/// How a joining node reaches the rest of the cluster.
pub struct JoinIo {
    /// Where other nodes reach this one when no `advertise_endpoint` is
    /// configured.
    pub peer_addr: SocketAddr,
    pub peers: PeerChannels,
    pub etcd: EtcdSource,
    /// The cluster's store instead of PostgreSQL (neither connected to nor
    /// migrated).
    pub store: Option<Arc<dyn Store>>,
}

/// Joins the cluster: registers in etcd (which fixes the shard count) and
/// opens the PostgreSQL store, applying its migrations (or takes the
/// injected store).
pub async fn join(config: &Config, grpc_addr: SocketAddr, io: JoinIo) -> anyhow::Result<Joined> {
    let node_id = config.effective_node_id();
    let endpoint = if config.cluster.advertise_endpoint.is_empty() {
        let scheme = match io.peers {
            PeerChannels::Tls(_) => "https",
            PeerChannels::Plaintext(_) => "http",
        };
        format!("{scheme}://{}", io.peer_addr)
    } else {
        config.cluster.advertise_endpoint.clone()
    };
    let host = crate::tls::endpoint_host(&endpoint)
        .with_context(|| format!("the advertised endpoint {endpoint} has no host"))?;
    // Other nodes accept this one's calls only from a certificate that
    // names the host it advertises: better not to start than to be refused
    // by every peer. Plaintext peers present none.
    if let PeerChannels::Tls(peer_tls) = &io.peers {
        if !crate::tls::own_certificate_names(peer_tls.files(), &host)
            .context("cannot read the peer certificate")?
        {
            anyhow::bail!(
                "the peer certificate {} does not name {host}, the host this node advertises ({endpoint}): other nodes would refuse its calls; add it to the certificate's names or set advertise_endpoint",
                peer_tls.files().cert.display()
            );
        }
    }
    // Every file is read before the node registers anywhere: a missing or
    // broken one stops it here, named, with nothing left behind in etcd.
    let store_source = match io.store {
        Some(store) => StoreSource::Injected(store),
        None => {
            let url = config
                .postgres
                .resolved_url()
                .context("cannot read the PostgreSQL URL")?;
            let tls = client_tls(
                "postgres_client",
                config.postgres.postgres_tls(),
                b"postgresql",
            )
            .context("cannot use the PostgreSQL TLS files")?;
            StoreSource::Postgres { url, tls }
        }
    };
    let membership_config = MembershipConfig {
        etcd_endpoints: config.cluster.etcd_endpoints.clone(),
        cluster_name: config.cluster.cluster_name.clone(),
        node_id: node_id.clone(),
        client_endpoint: client_endpoint(config, grpc_addr, &endpoint),
        endpoint,
        shard_count: config.cluster.shard_count,
        lease_ttl: Duration::from_secs(config.cluster.lease_ttl_secs),
        etcd_tls: None,
    };
    let version = env!("CARGO_PKG_VERSION");
    let (membership, etcd_tls) = match io.etcd {
        EtcdSource::Endpoints => {
            let etcd_tls = client_tls("etcd_client", config.cluster.etcd_tls(), b"h2")
                .context("cannot use the etcd TLS files")?;
            let membership = Membership::join(
                MembershipConfig {
                    etcd_tls: etcd_tls.clone(),
                    ..membership_config
                },
                version,
            )
            .await;
            (membership, etcd_tls)
        }
        EtcdSource::Client(client) => (
            Membership::join_with_client(*client, membership_config, version).await,
            None,
        ),
    };
    let membership = membership.with_context(|| {
        format!(
            "cannot join the cluster through etcd {:?}",
            config.cluster.etcd_endpoints
        )
    })?;
    let (store, postgres_tls) = match store_source {
        StoreSource::Injected(store) => (store, None),
        StoreSource::Postgres { url, tls } => {
            match open_store(config, url.expose(), tls.clone(), &membership).await {
                Ok(store) => (Arc::new(store) as Arc<dyn Store>, tls),
                Err(error) => {
                    // Placement must not count on a member that will never serve.
                    let _ = membership.leave().await;
                    return Err(error);
                }
            }
        }
    };
    let client_tls: Vec<_> = etcd_tls.iter().chain(&postgres_tls).cloned().collect();
    let store_health = StoreHealth::new();
    let store: Arc<dyn Store> = Arc::new(MonitoredStore::new(store, Arc::clone(&store_health)));
    let table = ShardTable::new(membership.shard_count());
    let routing = Routing {
        table: Arc::clone(&table),
        forwarder: Arc::new(GrpcForwarder::new(
            config.server.max_message_bytes,
            io.peers,
        )),
        node_id: Arc::from(node_id.as_str()),
        handoff_wait: Duration::from_millis(config.cluster.handoff_wait_ms),
    };
    Ok(Joined {
        membership,
        table,
        store,
        store_health,
        routing,
        client_tls,
    })
}

/// The cluster's store before it is opened.
enum StoreSource {
    Injected(Arc<dyn Store>),
    Postgres {
        url: SecretUrl,
        tls: Option<Arc<ReloadingClientConfig>>,
    },
}

/// Where clients reach this node's client API, as the shard map tells
/// owner-aware clients: `advertise_client_endpoint`, else the bound
/// `grpc_addr` when it is one address, else the host other nodes reach
/// this one by (`peer_endpoint`) with the client port: a node listening on
/// every address is known by its peer name.
fn client_endpoint(config: &Config, grpc_addr: SocketAddr, peer_endpoint: &str) -> String {
    if !config.cluster.advertise_client_endpoint.is_empty() {
        return config.cluster.advertise_client_endpoint.clone();
    }
    let scheme = if config.server.tls_cert_file.as_os_str().is_empty() {
        "http"
    } else {
        "https"
    };
    if !grpc_addr.ip().is_unspecified() {
        return format!("{scheme}://{grpc_addr}");
    }
    match crate::tls::endpoint_host(peer_endpoint) {
        Some(host) if host.contains(':') => format!("{scheme}://[{host}]:{}", grpc_addr.port()),
        Some(host) => format!("{scheme}://{host}:{}", grpc_addr.port()),
        // Validated at start: the advertised peer endpoint has a host.
        None => String::new(),
    }
}

/// Opens the PostgreSQL store (applying its migrations and checking its
/// shard count against etcd's) and refuses an etcd that is behind the
/// store's fences: every claim it made would be refused, silently leaving
/// shards unservable.
async fn open_store(
    config: &Config,
    url: &str,
    tls: Option<Arc<ReloadingClientConfig>>,
    membership: &Membership,
) -> anyhow::Result<PostgresStore> {
    let store = PostgresStore::connect_with_tls(
        url,
        membership.shard_count(),
        config.postgres.postgres_pool_size,
        tls,
    )
    .await
    .context("cannot open the PostgreSQL store")?
    .pause_commits_after_lock(Config::failpoint_ms("COMMIT_PAUSE_AFTER_LOCK_MS"));
    let newest_fence = store
        .newest_fence()
        .await
        .context("cannot read the store's fences")?;
    let revision = membership
        .etcd_revision()
        .await
        .context("cannot read etcd's revision")?;
    if let Some((shard, epoch)) = newest_fence {
        if u64::try_from(revision).unwrap_or(0) < epoch {
            anyhow::bail!(
                "etcd is at revision {revision}, behind the epoch {epoch} PostgreSQL fences \
                 shard {shard} at: this etcd is older than the store (restored from a backup or \
                 rebuilt), and the store would refuse every claim it makes. Restore a newer \
                 etcd, or restore this one with `etcdutl snapshot restore --bump-revision` past \
                 {epoch}"
            );
        }
    }
    Ok(store)
}

/// The TLS client configuration of `files` offering `alpn`, or `None`
/// (plaintext) when no CA file is configured (the configuration's checks
/// refused a certificate without one).
fn client_tls(
    what: &'static str,
    files: TlsFiles,
    alpn: &[u8],
) -> Result<Option<Arc<ReloadingClientConfig>>, ClusterError> {
    if !files.has_ca() {
        return Ok(None);
    }
    ReloadingClientConfig::load(what, files, vec![alpn.to_vec()]).map(Some)
}

impl Reloadable for ReloadingClientConfig {
    fn reload_if_changed(&self) {
        ReloadingClientConfig::reload_if_changed(self);
    }
}

/// Stops the actors of a shard this node no longer serves.
struct RuntimeHost {
    positions: Arc<EntityRuntime<PositionEntity>>,
    returns: Arc<EntityRuntime<ReturnEntity>>,
    orders: Arc<EntityRuntime<OrderEntity>>,
}

impl ShardHost for RuntimeHost {
    fn evict(&self, shard: u32) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            self.orders.evict_shard(shard).await;
            self.returns.evict_shard(shard).await;
            self.positions.evict_shard(shard).await;
        })
    }
}

/// Membership and ownership loops of a running node.
pub struct Running {
    membership: Arc<Membership>,
    table: Arc<ShardTable>,
    /// Stops the etcd loops, the health tasks and the route follower.
    stop: CancellationToken,
    tasks: TaskTracker,
    /// Asks the ownership manager to hand every shard over by a deadline.
    drain: watch::Sender<Option<Instant>>,
    manager_task: JoinHandle<()>,
}

/// Starts keeping the lease, watching etcd, and claiming shards.
pub fn start(
    config: &Config,
    joined: &Joined,
    positions: Arc<EntityRuntime<PositionEntity>>,
    returns: Arc<EntityRuntime<ReturnEntity>>,
    orders: Arc<EntityRuntime<OrderEntity>>,
) -> Running {
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(Arc::clone(&joined.membership).run(stop.clone()));
    // Each new etcd or PostgreSQL connection reads changed files anyway;
    // looking on a timer as well says at once (log, skuld_tls_reloads_total)
    // when a rotation cannot be used, not at the next reconnect.
    if !joined.client_tls.is_empty() {
        let reloadables = joined
            .client_tls
            .iter()
            .map(|tls| Arc::clone(tls) as Arc<dyn Reloadable>)
            .collect();
        tasks.spawn(crate::tls::watch(
            reloadables,
            Duration::from_secs(config.server.tls_reload_interval_secs),
            stop.clone(),
        ));
    }
    let failover = Duration::from_secs(config.cluster.store_failover_secs);
    let policy = HealthPolicy {
        failover,
        interval: (failover / 10).clamp(Duration::from_millis(200), Duration::from_secs(1)),
        max_clock_offset: (config.cluster.max_clock_offset_ms > 0)
            .then(|| Duration::from_millis(config.cluster.max_clock_offset_ms)),
    };
    tasks.spawn(Arc::clone(&joined.store_health).watch(
        Arc::clone(&joined.store),
        policy,
        stop.clone(),
    ));
    tasks.spawn(announce_store_health(
        Arc::clone(&joined.membership),
        joined.store_health.subscribe(),
        stop.clone(),
    ));
    let mut ownership = OwnershipConfig::for_ttl(joined.membership.lease_ttl());
    ownership.max_concurrent_moves = config.cluster.max_concurrent_moves;
    let manager = ShardManager::new(
        Arc::clone(&joined.membership),
        Arc::clone(&joined.table),
        Arc::clone(&joined.store),
        Arc::clone(&joined.store_health),
        Arc::new(RuntimeHost {
            positions,
            returns,
            orders,
        }),
        ownership,
    );
    let (drain, drain_rx) = watch::channel(None);
    let manager_task = tokio::spawn(manager.run(drain_rx));
    Running {
        membership: Arc::clone(&joined.membership),
        table: Arc::clone(&joined.table),
        stop,
        tasks,
        drain,
        manager_task,
    }
}

/// Puts the store's health into this node's member record whenever it
/// changes (retrying until etcd takes it), so placement can act on it.
async fn announce_store_health(
    membership: Arc<Membership>,
    mut health: watch::Receiver<Verdict>,
    stop: CancellationToken,
) {
    // A member registers as not yet healthy.
    let mut announced = false;
    loop {
        let healthy = *health.borrow_and_update() == Verdict::Healthy;
        if announced != healthy {
            if let Err(error) = membership.set_store_healthy(healthy).await {
                tracing::warn!(%error, healthy, "cannot announce the store's health yet");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    () = stop.cancelled() => return,
                }
            }
            announced = healthy;
            tracing::info!(healthy, "announced the store's health in etcd");
        }
        tokio::select! {
            changed = health.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
    }
}

impl Running {
    /// Hands every shard over to the other nodes by `deadline`; the node
    /// keeps forwarding meanwhile.
    pub async fn hand_over(&mut self, deadline: Instant) {
        self.drain.send_replace(Some(deadline));
        if let Err(error) = (&mut self.manager_task).await {
            tracing::warn!(%error, "ownership manager failed");
        }
        // Requests already admitted and waiting for a shard of this node
        // (in `destination`) are then forwarded to its new owner instead of
        // timing out; new ones are refused as the node drains.
        self.tasks.spawn(follow_routes(
            Arc::clone(&self.membership),
            Arc::clone(&self.table),
            self.stop.clone(),
        ));
    }

    /// Leaves the cluster within `limit`: stops the etcd loops and health
    /// tasks, then revokes the lease (dropping any claim left). In that
    /// order, so that no keep-alive in flight re-registers the member (with
    /// a new lease) after the revoke.
    pub async fn leave(self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("cluster loops still stopping; revoking the lease anyway");
        }
        match tokio::time::timeout_at(deadline, self.membership.leave()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot revoke the lease; it expires on its own");
            }
            Err(_) => tracing::warn!("revoking the lease timed out; it expires on its own"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_client_endpoint_is_the_advertised_one_else_one_address_else_the_peer_host() {
        let mut config = Config::default();
        let peer = "https://skuld-0.skuld-peers:7071";
        let any = "0.0.0.0:7070".parse().unwrap();
        let one = "10.1.2.3:7070".parse().unwrap();
        assert_eq!(
            client_endpoint(&config, any, peer),
            "http://skuld-0.skuld-peers:7070"
        );
        assert_eq!(client_endpoint(&config, one, peer), "http://10.1.2.3:7070");
        assert_eq!(
            client_endpoint(&config, any, "https://[fd00::1]:7071"),
            "http://[fd00::1]:7070"
        );
        config.server.tls_cert_file = "/tls/tls.crt".into();
        assert_eq!(client_endpoint(&config, one, peer), "https://10.1.2.3:7070");
        config.cluster.advertise_client_endpoint = "https://skuld-0.example:443".into();
        assert_eq!(
            client_endpoint(&config, one, peer),
            "https://skuld-0.example:443"
        );
    }
}
