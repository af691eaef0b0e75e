//! Multi-node harness: a real etcd, a real PostgreSQL and several `skuld`
//! nodes in cluster mode on free loopback ports, plus a reservation workload
//! that keeps a client-side history and checks it against the store.
//!
//! The workload behaves like a well-written client: it retries UNAVAILABLE,
//! RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED and broken connections with the same
//! idempotency key on another node, for a bounded time. Operations that never
//! got an answer are "unknown"; the final check resolves them by sending them
//! again (a replay if they had been applied) and then demands that every
//! acknowledged reservation exists exactly once and that `reserved` equals the
//! reservations held.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use skuld_proto::v1 as pb;
use skuld_proto::v1::admin_service_client::AdminServiceClient;
use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
use tokio::sync::RwLock;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::requests::{key, receive, reserve};
use crate::services::{Etcd, Postgres};
use crate::{check_buckets, position_with_all_reservations, NodeOptions, TestDir, TestNode};

type Inventory = InventoryServiceClient<Channel>;

/// Shard count of test clusters: small, so that handoffs settle fast.
pub const TEST_SHARDS: u32 = 64;
/// Lease TTL of test nodes, in seconds.
pub const TEST_LEASE_TTL_SECS: u64 = 3;

/// etcd, PostgreSQL and the nodes of one test.
pub struct TestCluster {
    pub dir: TestDir,
    pub etcd: Etcd,
    pub postgres: Postgres,
    pub postgres_url: String,
    /// By index; `None` once a node was stopped for good.
    pub nodes: Vec<Option<TestNode>>,
}

pub fn node_id(index: usize) -> String {
    format!("node-{index}")
}

async fn channel(addr: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

impl TestCluster {
    /// Starts etcd, PostgreSQL and `nodes` nodes, and waits until every
    /// shard is served.
    pub async fn start(nodes: usize) -> anyhow::Result<Self> {
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
        };
        for _ in 0..nodes {
            cluster.add_node(NodeOptions::default()).await?;
        }
        cluster.wait_settled(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// The command line of node `index` in this cluster, plus `extra`.
    pub fn node_options(&self, index: usize, extra: &NodeOptions) -> NodeOptions {
        let mut options = NodeOptions::default()
            .arg("--etcd-endpoints", self.etcd.endpoint())
            .arg("--postgres-url", &self.postgres_url)
            .arg("--node-id", node_id(index))
            .arg("--shard-count", TEST_SHARDS)
            .arg("--lease-ttl-secs", TEST_LEASE_TTL_SECS)
            .arg("--drain-timeout-secs", 10)
            .arg("--postgres-pool-size", 8);
        options.args.extend(extra.args.iter().cloned());
        options.env.extend(extra.env.iter().cloned());
        options
    }

    /// Starts one more node; returns its index.
    pub async fn add_node(&mut self, extra: NodeOptions) -> anyhow::Result<usize> {
        let index = self.nodes.len();
        let options = self.node_options(index, &extra);
        let node = TestNode::start(&self.dir.node_dir(&node_id(index)), options).await?;
        self.nodes.push(Some(node));
        Ok(index)
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

// ---- workload ---------------------------------------------------------------

/// Positions the workload reserves on, each stocked with [`STOCK`].
pub const STOCK: i64 = 1_000_000;
const TTL_SECONDS: i64 = 3_600;
/// How long a client keeps retrying one operation before calling its
/// outcome unknown.
const RETRY_BUDGET: Duration = Duration::from_secs(8);

pub fn workload_key(index: usize) -> pb::PositionKey {
    key("cluster", &format!("sku-{index}"), "dc-1")
}

fn reservation(position: &pb::PositionKey, idempotency_key: &str) -> pb::ReserveRequest {
    pb::ReserveRequest {
        reservation_id: idempotency_key.to_owned(),
        ..reserve(position, idempotency_key, 1, TTL_SECONDS)
    }
}

/// One reservation as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Op {
    pub key_index: usize,
    pub idempotency_key: String,
}

/// What the clients saw.
#[derive(Debug, Default)]
pub struct History {
    pub acknowledged: Vec<Op>,
    /// No answer within the retry budget.
    pub unknown: Vec<Op>,
    /// Definitive refusals (none expected: the stock is ample).
    pub refused: Vec<(Op, String)>,
    /// Every failed attempt by status code, retried or not.
    pub attempt_errors: BTreeMap<String, u64>,
    /// Acknowledged operations that needed more than one attempt.
    pub retried: u64,
}

impl History {
    fn merge(&mut self, other: History) {
        self.acknowledged.extend(other.acknowledged);
        self.unknown.extend(other.unknown);
        self.refused.extend(other.refused);
        for (code, count) in other.attempt_errors {
            *self.attempt_errors.entry(code).or_default() += count;
        }
        self.retried += other.retried;
    }

    pub fn summary(&self) -> String {
        format!(
            "{} acknowledged ({} after retries), {} unknown, {} refused; failed attempts by code: {:?}",
            self.acknowledged.len(),
            self.retried,
            self.unknown.len(),
            self.refused.len(),
            self.attempt_errors
        )
    }
}

/// Callers reserving one unit at a time on random positions through random
/// nodes, until stopped.
pub struct Workload {
    stop: Arc<AtomicBool>,
    addresses: Arc<RwLock<Vec<String>>>,
    callers: Vec<JoinHandle<History>>,
    pub keys: usize,
}

/// Whether a failed attempt may be sent again with the same key.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Internal
    )
}

struct Clients {
    channels: BTreeMap<String, Inventory>,
}

impl Clients {
    async fn get(&mut self, addr: &str) -> Result<Inventory, tonic::Status> {
        if let Some(client) = self.channels.get(addr) {
            return Ok(client.clone());
        }
        let channel = channel(addr)
            .await
            .map_err(|error| tonic::Status::unavailable(format!("{error:#}")))?;
        let client = InventoryServiceClient::new(channel);
        self.channels.insert(addr.to_owned(), client.clone());
        Ok(client)
    }
}

/// Sends one reservation, retrying on other nodes within the budget.
/// Returns Ok(attempts) when acknowledged, Err(None) when unknown,
/// Err(Some(reason)) when refused.
async fn reserve_with_retries(
    clients: &mut Clients,
    addresses: &RwLock<Vec<String>>,
    op: &Op,
    seed: &mut u64,
    errors: &mut BTreeMap<String, u64>,
    budget: Duration,
) -> Result<u32, Option<String>> {
    let position = workload_key(op.key_index);
    let started = Instant::now();
    let mut attempts = 0;
    while started.elapsed() < budget {
        attempts += 1;
        let addr = {
            let addresses = addresses.read().await;
            if addresses.is_empty() {
                return Err(None);
            }
            addresses[next_random(seed) as usize % addresses.len()].clone()
        };
        let result = match clients.get(&addr).await {
            Ok(mut client) => {
                let mut request = tonic::Request::new(reservation(&position, &op.idempotency_key));
                request.set_timeout(Duration::from_secs(3));
                match tokio::time::timeout(Duration::from_secs(4), client.reserve(request)).await {
                    Ok(result) => result.map(|_| ()),
                    Err(_) => Err(tonic::Status::deadline_exceeded("client timeout")),
                }
            }
            Err(status) => Err(status),
        };
        match result {
            Ok(()) => return Ok(attempts),
            Err(status) => {
                *errors.entry(format!("{:?}", status.code())).or_default() += 1;
                if !retryable(status.code()) {
                    return Err(Some(format!("{:?}: {}", status.code(), status.message())));
                }
                if status.code() != Code::Unavailable {
                    // A broken channel stays broken: connect afresh next time.
                    clients.channels.remove(&addr);
                }
                tokio::time::sleep(Duration::from_millis(50 + next_random(seed) % 100)).await;
            }
        }
    }
    Err(None)
}

fn next_random(seed: &mut u64) -> u64 {
    // xorshift64*: enough to spread keys and nodes, no dependency.
    *seed ^= *seed >> 12;
    *seed ^= *seed << 25;
    *seed ^= *seed >> 27;
    seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

impl Workload {
    /// Stocks `keys` positions through the cluster and starts `callers`.
    pub async fn start(cluster: &TestCluster, keys: usize, callers: usize) -> anyhow::Result<Self> {
        let first = *cluster.live().first().context("no live node")?;
        let client = cluster.inventory(first).await?;
        for index in 0..keys {
            let request = receive(&workload_key(index), &format!("stock-{index}"), STOCK);
            retry_setup(|| {
                let mut client = client.clone();
                let request = request.clone();
                async move { client.adjust(request).await.map(|_| ()) }
            })
            .await?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let addresses = Arc::new(RwLock::new(cluster.addresses()));
        let callers = (0..callers)
            .map(|caller| {
                let stop = Arc::clone(&stop);
                let addresses = Arc::clone(&addresses);
                tokio::spawn(async move {
                    let mut history = History::default();
                    let mut clients = Clients {
                        channels: BTreeMap::new(),
                    };
                    let mut seed = 0x9e37_79b9_7f4a_7c15 ^ (caller as u64 + 1);
                    let mut sequence = 0u64;
                    while !stop.load(Ordering::Acquire) {
                        sequence += 1;
                        let op = Op {
                            key_index: next_random(&mut seed) as usize % keys,
                            idempotency_key: format!("c{caller}-{sequence}"),
                        };
                        match reserve_with_retries(
                            &mut clients,
                            &addresses,
                            &op,
                            &mut seed,
                            &mut history.attempt_errors,
                            RETRY_BUDGET,
                        )
                        .await
                        {
                            Ok(attempts) => {
                                if attempts > 1 {
                                    history.retried += 1;
                                }
                                history.acknowledged.push(op);
                            }
                            Err(None) => history.unknown.push(op),
                            Err(Some(reason)) => history.refused.push((op, reason)),
                        }
                    }
                    history
                })
            })
            .collect();
        Ok(Self {
            stop,
            addresses,
            callers,
            keys,
        })
    }

    /// Replaces the nodes the callers send to (what a load balancer does
    /// when a node is added or about to stop).
    pub async fn set_addresses(&self, addresses: Vec<String>) {
        *self.addresses.write().await = addresses;
    }

    /// Stops the callers, prints what they saw under `label`, checks the
    /// history against the store, and fails when fewer than
    /// `min_acknowledged` reservations succeeded. Returns the history.
    pub async fn finish(
        self,
        cluster: &TestCluster,
        label: &str,
        min_acknowledged: usize,
    ) -> anyhow::Result<History> {
        let keys = self.keys;
        let history = self.stop().await?;
        eprintln!("{label}: {}", history.summary());
        let (acknowledged, _) = verify(cluster, keys, &history).await?;
        if acknowledged < min_acknowledged {
            bail!("{label}: only {acknowledged} reservations succeeded (at least {min_acknowledged} expected)");
        }
        Ok(history)
    }

    /// Stops the callers and returns their merged history.
    pub async fn stop(self) -> anyhow::Result<History> {
        self.stop.store(true, Ordering::Release);
        let mut history = History::default();
        for caller in self.callers {
            history.merge(caller.await.context("a caller panicked")?);
        }
        Ok(history)
    }
}

async fn retry_setup<F, Fut>(mut call: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let started = Instant::now();
    loop {
        match call().await {
            Ok(()) => return Ok(()),
            Err(status)
                if retryable(status.code()) && started.elapsed() < Duration::from_secs(20) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => bail!("setup call failed: {status}"),
        }
    }
}

/// Resolves unknown operations by sending them again, then checks every
/// position against the history: each acknowledged (or resolved) reservation
/// held exactly once, nothing else held, `reserved` equal to the count, no
/// bucket negative. Returns (acknowledged, resolved unknowns).
pub async fn verify(
    cluster: &TestCluster,
    keys: usize,
    history: &History,
) -> anyhow::Result<(usize, usize)> {
    if !history.refused.is_empty() {
        bail!(
            "{} reservations were refused, e.g. {:?}",
            history.refused.len(),
            history.refused.first()
        );
    }
    let addresses = RwLock::new(cluster.addresses());
    let mut clients = Clients {
        channels: BTreeMap::new(),
    };
    let mut seed = 7;
    let mut errors = BTreeMap::new();
    for op in &history.unknown {
        if let Err(outcome) = reserve_with_retries(
            &mut clients,
            &addresses,
            op,
            &mut seed,
            &mut errors,
            Duration::from_secs(30),
        )
        .await
        {
            bail!("cannot resolve unknown operation {op:?}: {outcome:?}");
        }
    }
    let mut expected: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for op in history.acknowledged.iter().chain(&history.unknown) {
        if !expected
            .entry(op.key_index)
            .or_default()
            .insert(op.idempotency_key.clone())
        {
            bail!("the client used {op:?} twice");
        }
    }
    let first = *cluster.live().first().context("no live node")?;
    let mut client = cluster.inventory(first).await?;
    for index in 0..keys {
        let position = workload_key(index);
        let (state, reservations) = position_with_all_reservations(&mut client, &position)
            .await
            .with_context(|| format!("reading {position:?}"))?;
        let buckets = state.buckets.context("position without buckets")?;
        check_buckets(&buckets)?;
        let mut held = BTreeSet::new();
        for reservation in &reservations {
            if !held.insert(reservation.reservation_id.clone()) {
                bail!("reservation {} listed twice", reservation.reservation_id);
            }
            if reservation.quantity != 1 {
                bail!(
                    "reservation {} holds {}",
                    reservation.reservation_id,
                    reservation.quantity
                );
            }
        }
        let want = expected.remove(&index).unwrap_or_default();
        if held != want {
            let lost: Vec<_> = want.difference(&held).take(5).collect();
            let extra: Vec<_> = held.difference(&want).take(5).collect();
            bail!(
                "{position:?}: {} held, {} expected; lost e.g. {lost:?}, unexpected e.g. {extra:?}",
                held.len(),
                want.len()
            );
        }
        if buckets.reserved != i64::try_from(held.len())? || buckets.on_hand != STOCK {
            bail!(
                "{position:?}: buckets {buckets:?} with {} reservations",
                held.len()
            );
        }
    }
    Ok((history.acknowledged.len(), history.unknown.len()))
}
