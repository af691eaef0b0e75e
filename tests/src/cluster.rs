//! Multi-node harness: a real etcd, a real PostgreSQL and several `skuld`
//! nodes in cluster mode on free loopback ports. With
//! [`ClusterOptions::proxied`], every node reaches etcd and PostgreSQL through
//! proxies of its own ([`FaultProxy`]) that a test can cut, to partition one
//! node from one service. The contended workload that runs against it and
//! checks its history is in [`crate::workload`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use skuld_proto::v1 as pb;
use skuld_proto::v1::admin_service_client::AdminServiceClient;
use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
use tonic::transport::Channel;

use crate::certs::{Leaf, TestCa};
use crate::proxy::FaultProxy;
use crate::services::{Etcd, Postgres};
use crate::workload::channel;
use crate::{NodeOptions, TestDir, TestNode};

type Inventory = InventoryServiceClient<Channel>;

/// Shard count of test clusters: small, so that handoffs settle fast.
pub const TEST_SHARDS: u32 = 64;
/// Lease TTL of test nodes, in seconds.
pub const TEST_LEASE_TTL_SECS: u64 = 3;

/// How a test cluster is set up.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Every node reaches etcd and PostgreSQL through proxies of its own.
    pub proxied: bool,
    /// Options every node gets.
    pub node: NodeOptions,
}

/// One node's links to etcd and PostgreSQL, each of which can be cut.
pub struct NodeLinks {
    pub etcd: FaultProxy,
    pub postgres: FaultProxy,
}

/// etcd, PostgreSQL and the nodes of one test.
pub struct TestCluster {
    pub dir: TestDir,
    pub etcd: Etcd,
    pub postgres: Postgres,
    pub postgres_url: String,
    /// By index; `None` once a node was stopped for good.
    pub nodes: Vec<Option<TestNode>>,
    /// By index, when proxied.
    pub links: Vec<Option<NodeLinks>>,
    pub options: ClusterOptions,
    /// The cluster's own CA: it signs every node's peer certificate.
    pub peer_ca: TestCa,
}

pub fn node_id(index: usize) -> String {
    format!("node-{index}")
}

/// The shard of a position in a test cluster, as every node computes it.
pub fn shard_of(key: &pb::PositionKey) -> u32 {
    let encoded = skuld_actors::PositionKey::new(&key.tenant, &key.sku, &key.location)
        .map(|key| key.encode())
        .unwrap_or_default();
    skuld_cluster::placement::shard_of(&encoded, TEST_SHARDS)
}

/// The node a reply or a refusal names as the key's owner.
pub fn owner_in<T>(result: &Result<tonic::Response<T>, tonic::Status>) -> Option<String> {
    match result {
        Ok(response) => response.metadata().get("skuld-owner"),
        Err(status) => status.metadata().get("skuld-owner"),
    }
    .and_then(|value| value.to_str().ok())
    .map(str::to_owned)
}

/// The peer listener flags of a cluster node: a free loopback port and a
/// certificate of `ca` for the loopback address it advertises.
pub fn peer_tls_options(
    ca: &TestCa,
    dir: &std::path::Path,
    node: &str,
) -> anyhow::Result<NodeOptions> {
    let files = ca.issue(
        &Leaf::new(node, &["127.0.0.1", "localhost"]),
        &dir.join("certs"),
        node,
    )?;
    Ok(NodeOptions::default()
        .arg("--peer-addr", "127.0.0.1:0")
        .arg("--peer-tls-cert-file", files.cert.display())
        .arg("--peer-tls-key-file", files.key.display())
        .arg("--peer-tls-ca-file", files.ca.display()))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl TestCluster {
    /// Starts etcd, PostgreSQL and `nodes` nodes, and waits until every
    /// shard is served.
    pub async fn start(nodes: usize) -> anyhow::Result<Self> {
        Self::start_with(nodes, ClusterOptions::default()).await
    }

    pub async fn start_with(nodes: usize, options: ClusterOptions) -> anyhow::Result<Self> {
        let dir = TestDir::new()?;
        let etcd = Etcd::start(dir.path())?;
        let postgres = Postgres::start()?;
        let postgres_url = postgres.create_database("skuld").await?;
        let mut cluster = Self {
            dir,
            etcd,
            postgres,
            postgres_url,
            nodes: Vec::new(),
            links: Vec::new(),
            options,
            peer_ca: TestCa::new("skuld test cluster CA")?,
        };
        for _ in 0..nodes {
            cluster.add_node(NodeOptions::default()).await?;
        }
        cluster.wait_settled(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Node `index`'s links, when the cluster is proxied.
    pub fn links(&self, index: usize) -> &NodeLinks {
        match self.links.get(index) {
            Some(Some(links)) => links,
            _ => panic!("node {index} has no proxied links"),
        }
    }

    /// The command line of node `index` in this cluster, plus `extra`.
    pub fn node_options(&self, index: usize, extra: &NodeOptions) -> NodeOptions {
        let (etcd, postgres_url) = match self.links.get(index) {
            Some(Some(links)) => (
                format!("http://{}", links.etcd.addr()),
                self.postgres_url.replace(
                    &format!("127.0.0.1:{}", self.postgres.port()),
                    &links.postgres.addr().to_string(),
                ),
            ),
            _ => (self.etcd.endpoint(), self.postgres_url.clone()),
        };
        let mut options = peer_tls_options(&self.peer_ca, self.dir.path(), &node_id(index))
            .unwrap_or_else(|error| {
                panic!("cannot issue node {index}'s peer certificate: {error:#}")
            });
        // A node that brings its own peer address keeps it.
        if self
            .options
            .node
            .args
            .iter()
            .chain(&extra.args)
            .any(|arg| arg == "--peer-addr")
        {
            if let Some(at) = options.args.iter().position(|arg| arg == "--peer-addr") {
                options.args.drain(at..at + 2);
            }
        }
        let mut options = options
            .arg("--etcd-endpoints", etcd)
            .arg("--postgres-url", postgres_url)
            .arg("--node-id", node_id(index))
            .arg("--shard-count", TEST_SHARDS)
            .arg("--lease-ttl-secs", TEST_LEASE_TTL_SECS)
            .arg("--drain-timeout-secs", 10)
            .arg("--postgres-pool-size", 8);
        for more in [&self.options.node, extra] {
            options.args.extend(more.args.iter().cloned());
            options.env.extend(more.env.iter().cloned());
            options.unready |= more.unready;
        }
        options
    }

    /// Starts one more node; returns its index.
    pub async fn add_node(&mut self, extra: NodeOptions) -> anyhow::Result<usize> {
        self.add_node_with_postgres_query(extra, None).await
    }

    /// Starts one more node whose PostgreSQL URL ends in `?query` (session
    /// options, say); returns its index.
    pub async fn add_node_with_postgres_query(
        &mut self,
        extra: NodeOptions,
        query: Option<&str>,
    ) -> anyhow::Result<usize> {
        let index = self.nodes.len();
        let etcd_port = self
            .etcd
            .endpoint()
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .context("etcd endpoint without a port")?;
        self.links.push(if self.options.proxied {
            Some(NodeLinks {
                etcd: FaultProxy::start(loopback(etcd_port))?,
                postgres: FaultProxy::start(loopback(self.postgres.port()))?,
            })
        } else {
            None
        });
        let mut options = self.node_options(index, &extra);
        if let Some(query) = query {
            let url = options
                .args
                .iter_mut()
                .skip_while(|arg| *arg != "--postgres-url")
                .nth(1)
                .context("no --postgres-url")?;
            url.push('?');
            url.push_str(query);
        }
        let node = TestNode::start(&self.dir.node_dir(&node_id(index)), options).await?;
        self.nodes.push(Some(node));
        Ok(index)
    }

    /// An mTLS connection to node `index`'s peer API with a certificate of
    /// the cluster CA that names the loopback host the nodes advertise: what
    /// another node would open.
    pub async fn peer_channel(&self, index: usize) -> anyhow::Result<Channel> {
        let files = self.peer_ca.issue(
            &Leaf::new("test-peer", &["127.0.0.1"]),
            &self.dir.path().join("certs"),
            "test-peer",
        )?;
        crate::certs::tls_channel(
            &self.node(index).peer_addr,
            self.peer_ca.pem(),
            Some(&files),
        )
        .await
    }

    pub fn node(&self, index: usize) -> &TestNode {
        match self.nodes.get(index) {
            Some(Some(node)) => node,
            _ => panic!("node {index} is not running"),
        }
    }

    pub fn node_mut(&mut self, index: usize) -> &mut TestNode {
        match self.nodes.get_mut(index) {
            Some(Some(node)) => node,
            _ => panic!("node {index} is not running"),
        }
    }

    /// Indexes of the nodes still in the cluster.
    pub fn live(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(index, node)| node.as_ref().map(|_| index))
            .collect()
    }

    /// gRPC addresses of the nodes still in the cluster.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flatten()
            .map(|node| node.grpc_addr.clone())
            .collect()
    }

    /// SIGTERM (graceful drain); the node leaves the cluster for good.
    pub async fn terminate(&mut self, index: usize) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let status = self.node_mut(index).terminate().await?;
        if !status.success() {
            bail!("node {index} exited with {status} after SIGTERM");
        }
        self.nodes[index] = None;
        Ok(started.elapsed())
    }

    /// SIGKILL; the node leaves the cluster for good.
    pub fn kill9(&mut self, index: usize) -> anyhow::Result<()> {
        self.node_mut(index).kill9()?;
        self.nodes[index] = None;
        Ok(())
    }

    /// SIGSTOP (`pause`) or SIGCONT the node's process.
    pub fn signal(&self, index: usize, pause: bool) -> anyhow::Result<()> {
        let pid = self.node(index).pid().context("the node is not running")?;
        let status = std::process::Command::new("kill")
            .arg(if pause { "-STOP" } else { "-CONT" })
            .arg(pid.to_string())
            .status()
            .context("cannot run `kill`")?;
        if !status.success() {
            bail!("kill of {pid} failed");
        }
        Ok(())
    }

    pub async fn admin(&self, index: usize) -> anyhow::Result<AdminServiceClient<Channel>> {
        Ok(AdminServiceClient::new(
            channel(&self.node(index).grpc_addr).await?,
        ))
    }

    pub async fn inventory(&self, index: usize) -> anyhow::Result<Inventory> {
        Ok(InventoryServiceClient::new(
            channel(&self.node(index).grpc_addr).await?,
        ))
    }

    pub async fn returns(
        &self,
        index: usize,
    ) -> anyhow::Result<skuld_proto::v1::returns_service_client::ReturnsServiceClient<Channel>>
    {
        Ok(
            skuld_proto::v1::returns_service_client::ReturnsServiceClient::new(
                channel(&self.node(index).grpc_addr).await?,
            ),
        )
    }

    /// Node `node` as the member list of node `via` shows it.
    pub async fn member(&self, via: usize, node: usize) -> anyhow::Result<pb::Member> {
        self.admin(via)
            .await?
            .list_members(pb::ListMembersRequest {})
            .await?
            .into_inner()
            .members
            .into_iter()
            .find(|member| member.node_id == node_id(node))
            .with_context(|| format!("{} is not a member", node_id(node)))
    }

    /// Owner of every shard as node `index` sees etcd.
    pub async fn shard_owners(&self, index: usize) -> anyhow::Result<Vec<String>> {
        let shards = self
            .admin(index)
            .await?
            .list_shards(pb::ListShardsRequest {})
            .await?
            .into_inner()
            .shards;
        Ok(shards.into_iter().map(|shard| shard.owner).collect())
    }

    /// Waits until the live nodes are exactly the members, every shard is
    /// owned by a live node, and each node serves what etcd says it owns.
    pub async fn wait_settled(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let live: BTreeSet<String> = self.live().into_iter().map(node_id).collect();
        loop {
            let last = match self.settled(&live).await {
                Ok(()) => return Ok(started.elapsed()),
                Err(error) => format!("{error:#}"),
            };
            if started.elapsed() > timeout {
                bail!("cluster not settled after {timeout:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn settled(&self, live: &BTreeSet<String>) -> anyhow::Result<()> {
        let first = *self.live().first().context("no live node")?;
        let mut admin = self.admin(first).await?;
        let members: BTreeSet<String> = admin
            .list_members(pb::ListMembersRequest {})
            .await?
            .into_inner()
            .members
            .into_iter()
            .map(|member| member.node_id)
            .collect();
        if &members != live {
            bail!("members {members:?}, expected {live:?}");
        }
        let owners = self.shard_owners(first).await?;
        let mut owned: BTreeMap<String, u32> = BTreeMap::new();
        for (shard, owner) in owners.iter().enumerate() {
            if !live.contains(owner) {
                bail!("shard {shard} owned by {owner:?}, not a live node");
            }
            *owned.entry(owner.clone()).or_default() += 1;
        }
        for index in self.live() {
            let status = self
                .admin(index)
                .await?
                .node_status(pb::NodeStatusRequest {})
                .await?
                .into_inner();
            let expected = owned.get(&node_id(index)).copied().unwrap_or(0);
            if status.shards_served != expected {
                bail!(
                    "{} serves {} shards, etcd says it owns {expected}",
                    node_id(index),
                    status.shards_served
                );
            }
        }
        Ok(())
    }
}

// ---- return cases -------------------------------------------------------------

pub fn return_header(return_id: &str, step: &str) -> Option<pb::ReturnHeader> {
    Some(pb::ReturnHeader {
        key: Some(pb::ReturnKey {
            tenant: "returns".into(),
            return_id: return_id.into(),
        }),
        idempotency_key: format!("{return_id}-{step}"),
        expected_version: None,
    })
}

/// Opens pre-approved return cases (tenant `returns`, three of four SHIRTs
/// from DC1) through `returns` until one lands on a node other than
/// `avoid`; returns its id.
pub async fn open_return_not_on(
    returns: &mut skuld_proto::v1::returns_service_client::ReturnsServiceClient<Channel>,
    avoid: &str,
) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    for attempt in 0..40 {
        let return_id = format!("R-{attempt}");
        let opened = returns
            .create_return(pb::OpenReturnRequest {
                header: return_header(&return_id, "open"),
                order_ref: format!("O-{attempt}"),
                customer_ref: "C1".into(),
                channel: "web".into(),
                order_lines: vec![pb::OrderLine {
                    line_id: "L1".into(),
                    sku: "SHIRT".into(),
                    quantity: 4,
                    amount_paid_minor: 12_000,
                    fulfilled_at_unix_ms: now,
                    delivered_at_unix_ms: now,
                    location: "DC1".into(),
                }],
                lines: vec![pb::RequestedLine {
                    order_line_id: "L1".into(),
                    quantity: 3,
                    reason_code: "too_small".into(),
                    resolution: pb::Resolution::RefundOriginal.into(),
                    exchange_sku: String::new(),
                }],
                override_window: false,
            })
            .await;
        let owner = owner_in(&opened);
        opened?;
        if owner.is_some_and(|owner| owner != avoid) {
            return Ok(return_id);
        }
    }
    bail!("40 cases all landed on {avoid}")
}
