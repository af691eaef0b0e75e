//! Cluster mode wiring: join etcd, open the shared PostgreSQL store, build
//! the routing table, and run membership and ownership beside the server.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use skuld_actors::position::PositionEntity;
use skuld_actors::returns::ReturnEntity;
use skuld_actors::runtime::routing::Routing;
use skuld_actors::runtime::EntityRuntime;
use skuld_cluster::membership::{Membership, MembershipConfig};
use skuld_cluster::ownership::{follow_routes, OwnershipConfig, ShardHost, ShardManager};
use skuld_cluster::shards::ShardTable;
use skuld_cluster::{PostgresStore, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::peer::GrpcForwarder;

/// The parts of cluster mode that exist before the runtimes do.
pub struct Joined {
    pub membership: Arc<Membership>,
    pub table: Arc<ShardTable>,
    pub store: Arc<dyn Store>,
    pub routing: Routing,
}

/// Joins the cluster: registers in etcd (which fixes the shard count) and
/// opens the PostgreSQL store, applying its migrations.
pub async fn join(config: &Config, grpc_addr: SocketAddr) -> anyhow::Result<Joined> {
    let node_id = config.effective_node_id();
    let endpoint = if config.advertise_endpoint.is_empty() {
        format!("http://{grpc_addr}")
    } else {
        config.advertise_endpoint.clone()
    };
    let membership = Membership::join(
        MembershipConfig {
            etcd_endpoints: config.etcd_endpoints.clone(),
            cluster_name: config.cluster_name.clone(),
            node_id: node_id.clone(),
            endpoint,
            shard_count: config.shard_count,
            lease_ttl: Duration::from_secs(config.lease_ttl_secs),
        },
        env!("CARGO_PKG_VERSION"),
    )
    .await
    .with_context(|| {
        format!(
            "cannot join the cluster through etcd {:?}",
            config.etcd_endpoints
        )
    })?;
    let url = config
        .postgres_url
        .as_deref()
        .context("cluster mode needs postgres_url")?;
    let store = match PostgresStore::connect(
        url,
        membership.shard_count(),
        config.postgres_pool_size,
    )
    .await
    {
        Ok(store) => store,
        Err(error) => {
            // Placement must not count on a member that will never serve.
            let _ = membership.leave().await;
            return Err(error).context("cannot open the PostgreSQL store");
        }
    };
    let table = ShardTable::new(membership.shard_count());
    let routing = Routing {
        table: Arc::clone(&table),
        forwarder: Arc::new(GrpcForwarder::new(config.max_message_bytes)),
        node_id: Arc::from(node_id.as_str()),
        handoff_wait: Duration::from_millis(config.handoff_wait_ms),
    };
    Ok(Joined {
        membership,
        table,
        store: Arc::new(store),
        routing,
    })
}

/// Stops the actors of a shard this node no longer serves.
struct RuntimeHost {
    positions: Arc<EntityRuntime<PositionEntity>>,
    returns: Arc<EntityRuntime<ReturnEntity>>,
}

impl ShardHost for RuntimeHost {
    fn evict(&self, shard: u32) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            self.returns.evict_shard(shard).await;
            self.positions.evict_shard(shard).await;
        })
    }
}

/// Membership and ownership loops of a running node.
pub struct Running {
    membership: Arc<Membership>,
    stop_membership: watch::Sender<bool>,
    membership_task: JoinHandle<()>,
    drain: watch::Sender<bool>,
    manager_task: JoinHandle<()>,
    table: Arc<ShardTable>,
    /// Follows the new owners after `hand_over`.
    routes_task: Option<JoinHandle<()>>,
}

/// Starts keeping the lease, watching etcd, and claiming shards.
pub fn start(
    config: &Config,
    joined: &Joined,
    positions: Arc<EntityRuntime<PositionEntity>>,
    returns: Arc<EntityRuntime<ReturnEntity>>,
) -> Running {
    let (stop_membership, stop_rx) = watch::channel(false);
    let membership_task = tokio::spawn(Arc::clone(&joined.membership).run(stop_rx));
    let mut ownership = OwnershipConfig::for_ttl(joined.membership.lease_ttl());
    ownership.max_concurrent_moves = config.max_concurrent_moves;
    let manager = ShardManager::new(
        Arc::clone(&joined.membership),
        Arc::clone(&joined.table),
        Arc::clone(&joined.store),
        Arc::new(RuntimeHost { positions, returns }),
        ownership,
    );
    let (drain, drain_rx) = watch::channel(false);
    let manager_task =
        tokio::spawn(manager.run(drain_rx, Duration::from_secs(config.drain_timeout_secs)));
    Running {
        membership: Arc::clone(&joined.membership),
        stop_membership,
        membership_task,
        drain,
        manager_task,
        table: Arc::clone(&joined.table),
        routes_task: None,
    }
}

impl Running {
    /// Hands every shard over to the other nodes (bounded by the drain
    /// timeout); the node keeps forwarding meanwhile.
    pub async fn hand_over(&mut self) {
        let _ = self.drain.send(true);
        if let Err(error) = (&mut self.manager_task).await {
            tracing::warn!(%error, "ownership manager failed");
        }
        // Requests already admitted and waiting for a shard of this node
        // (in `destination`) are then forwarded to its new owner instead of
        // timing out; new ones are refused as the node drains.
        self.routes_task = Some(tokio::spawn(follow_routes(
            Arc::clone(&self.membership),
            Arc::clone(&self.table),
            self.stop_membership.subscribe(),
        )));
    }

    /// Leaves the cluster: revokes the lease (dropping any claim left) and
    /// stops the etcd loops.
    pub async fn leave(self) {
        if let Err(error) = self.membership.leave().await {
            tracing::warn!(%error, "cannot revoke the lease; it expires on its own");
        }
        let _ = self.stop_membership.send(true);
        let _ = self.membership_task.await;
        if let Some(routes) = self.routes_task {
            let _ = routes.await;
        }
    }
}
