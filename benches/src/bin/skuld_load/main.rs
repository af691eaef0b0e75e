//! `skuld-load`: a load generator for any skuld endpoint.
//!
//! Closed loop (`--concurrency N`: each caller sends its next request when
//! the previous one answered) or open loop (`--rate R`: requests leave on a
//! fixed timetable and latency counts from the intended send time, so a
//! stalled server cannot hide behind coordinated omission). Every scenario
//! checks at the end that the stored buckets equal what the acknowledged
//! operations imply, so a fast wrong answer fails the run (exit code 1).
//!
//! ```text
//! cargo run --release -p skuld-benches --bin skuld-load -- \
//!     --spawn-node --scenario hot --duration 10 --concurrency 64 --out benches/out
//! ```

/// The generator shares the cores with the node it measures; glibc malloc
/// took ~8 % of all CPU on its side in the spread profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod calls;
mod drive;
mod mixed;
mod orders;
mod readback;
mod report;
mod reservations;
mod returns_surge;
mod scenarios;
mod subscribers;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use skuld_benches::node::{peak_rss_mib, SpawnedNode};
use skuld_benches::pick::Picker;
use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
use skuld_proto::v1::order_service_client::OrderServiceClient;
use skuld_proto::v1::returns_service_client::ReturnsServiceClient;
use tonic::transport::Endpoint;

use calls::*;
use drive::*;
use mixed::*;
use orders::*;
use readback::*;
use report::*;
use reservations::*;
use returns_surge::*;
use scenarios::*;

/// std's Mutex, taking over a poisoned lock (nothing here panics while
/// holding one, and a benchmark should report rather than abort).
struct Mutex<T>(std::sync::Mutex<T>);

impl<T> Mutex<T> {
    fn new(value: T) -> Self {
        Self(std::sync::Mutex::new(value))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Scenario {
    /// Reserve qty 1 uniformly over `--positions` positions.
    Spread,
    /// Every reservation on one position: a flash sale.
    Hot,
    /// Reservations over `--positions` positions with Zipf(s) skew.
    Zipf,
    /// Reserve, commit, release, fulfil, adjust and availability reads.
    Mixed,
    /// Capacity, then open loop at multiples of it, with recovery probes.
    Overload,
    /// Many return cases through their whole lifecycle.
    ReturnsSurge,
    /// Single-line reservations, then `--order-lines`-line orders
    /// (`ReserveOrder`), against the same node: their throughput ratio.
    Orders,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "skuld-load",
    about = "Load generator for skuld: closed/open loop, HDR latencies, correctness check"
)]
struct Args {
    #[arg(long, value_enum, default_value = "spread")]
    scenario: Scenario,
    /// gRPC endpoint; several, comma-separated (the nodes of a cluster),
    /// spread the connections over them.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    endpoint: String,
    /// PEM CA bundle the node's client API certificate chains to: the
    /// endpoints are https:// (with --spawn-node: pass the node its
    /// --tls-cert-file and --tls-key-file with --node-arg).
    #[arg(long)]
    tls_ca_file: Option<PathBuf>,
    /// Start `target/release/skuld serve` in a temp data dir, wait for
    /// /readyz, run, then SIGTERM it (reports its peak RSS).
    #[arg(long)]
    spawn_node: bool,
    /// The skuld binary for --spawn-node.
    #[arg(long)]
    node_binary: Option<PathBuf>,
    /// Extra arguments for the spawned `skuld serve` (repeatable).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// The node's pid, to report its peak RSS (VmHWM); set by --spawn-node.
    #[arg(long)]
    node_pid: Option<u32>,
    /// Closed loop: callers, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Open loop: target requests per second (replaces the closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: requests outstanding at most; a request due while this many
    /// are outstanding is not sent and counted as `ClientMaxOutstanding`.
    #[arg(long, default_value_t = 10_000)]
    max_outstanding: usize,
    /// Measured seconds (overload: seconds per multiplier phase).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// gRPC channels (HTTP/2 connections) the callers are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// owner: reservations (spread, hot, zipf, overload) go to the node
    /// that owns their position (skuld-client, the shard map from
    /// RoutingService), any node while it is not known; used only when
    /// the cluster's map names client endpoints. any: round robin over
    /// --endpoint, the nodes forward.
    #[arg(long, value_enum, default_value = "owner")]
    routing: RoutingArg,
    /// Per-request timeout (sent as the gRPC deadline).
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
    #[arg(long, default_value = "load")]
    tenant: String,
    /// Prefix of SKUs and idempotency keys, so runs never collide.
    /// Default: a timestamp.
    #[arg(long)]
    run_id: Option<String>,
    /// Positions of spread, zipf, mixed and overload.
    #[arg(long, default_value_t = 10_000)]
    positions: usize,
    /// zipf: the exponent s.
    #[arg(long, default_value_t = 1.1)]
    zipf_exponent: f64,
    /// mixed: share (%) of reservations sent to one extra hot position.
    #[arg(long, default_value_t = 0.0)]
    hot_sku_share: f64,
    /// orders: lines per order (distinct positions, one unit each).
    #[arg(long, default_value_t = 3)]
    order_lines: usize,
    /// overload: the capacity (ok/s); measured with a closed-loop spread run
    /// of --capacity-seconds when absent.
    #[arg(long)]
    capacity: Option<f64>,
    #[arg(long, default_value_t = 5.0)]
    capacity_seconds: f64,
    #[arg(long, value_delimiter = ',', default_value = "2,5,10")]
    multipliers: Vec<f64>,
    /// overload: rate of the baseline and recovery probes (default 5% of
    /// capacity, 50 to 2000/s).
    #[arg(long)]
    probe_rate: Option<f64>,
    /// overload: length of one recovery probe window.
    #[arg(long, default_value_t = 0.5)]
    probe_window: f64,
    /// overload: give up waiting for recovery after this many seconds.
    #[arg(long, default_value_t = 20.0)]
    recovery_timeout: f64,
    /// Event-stream subscribers (from now) opened before the load starts;
    /// the report adds the events each received in the measured window and
    /// their delivery lag (receipt minus the event's recorded_at_ms). Not
    /// with overload.
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
    /// Tokio worker threads of the generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Write <scenario>.json and <scenario>.svg here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RoutingArg {
    Owner,
    Any,
}

/// With `--routing owner`, a router whose map names where nodes take
/// client calls; `None` otherwise (a single node, a cluster too old for
/// GetShardMap): any-node routing, as before.
async fn owner_router(
    args: &Args,
    endpoints: &[&str],
) -> anyhow::Result<Option<skuld_client::Router>> {
    if args.routing == RoutingArg::Any {
        return Ok(None);
    }
    let mut options = skuld_client::RouterOptions::new(endpoints.iter().copied());
    options.channels_per_endpoint = args.connections.div_ceil(endpoints.len().max(1)).max(1);
    if let Some(ca) = &args.tls_ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        options.tls = Some(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        );
    }
    let router = skuld_client::Router::connect(options).await?;
    let map = router.map();
    if map.endpoints().next().is_none() {
        eprintln!("routing: any node (no shard map naming client endpoints)");
        return Ok(None);
    }
    eprintln!(
        "routing: to the owner ({} shards, {} nodes, map version {})",
        map.shard_count(),
        map.endpoints().count(),
        map.version()
    );
    Ok(Some(router))
}

/// One HTTP/2 connection to `endpoint`, over TLS when `tls_ca_file` is
/// given (the server's name is the endpoint's host).
pub(crate) async fn open_channel(
    endpoint: &str,
    tls_ca_file: Option<&std::path::Path>,
) -> anyhow::Result<tonic::transport::Channel> {
    let mut builder = Endpoint::from_shared(endpoint.to_string())
        .with_context(|| format!("bad endpoint {endpoint}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if let Some(ca) = tls_ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        builder = builder
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            )
            .context("bad TLS settings")?;
    }
    builder
        .connect()
        .await
        .with_context(|| format!("cannot reach skuld at {endpoint}"))
}

async fn connect(args: &Args) -> anyhow::Result<Arc<Clients>> {
    let mut inventory = Vec::new();
    let mut returns = Vec::new();
    let mut orders = Vec::new();
    let endpoints: Vec<&str> = args
        .endpoint
        .split(',')
        .map(str::trim)
        .filter(|endpoint| !endpoint.is_empty())
        .collect();
    for index in 0..args.connections.max(endpoints.len()).max(1) {
        let endpoint = endpoints
            .get(index % endpoints.len().max(1))
            .with_context(|| format!("no endpoint in {:?}", args.endpoint))?;
        // One HTTP/2 connection per channel.
        let channel = open_channel(endpoint, args.tls_ca_file.as_deref()).await?;
        inventory.push(InventoryServiceClient::new(channel.clone()));
        returns.push(ReturnsServiceClient::new(channel.clone()));
        orders.push(OrderServiceClient::new(channel));
    }
    Ok(Arc::new(Clients {
        inventory,
        returns,
        orders,
        timeout: Duration::from_millis(args.timeout_ms),
        router: owner_router(args, &endpoints).await?,
    }))
}

async fn run(mut args: Args) -> anyhow::Result<bool> {
    if args.subscribers > 0 && args.scenario == Scenario::Overload {
        // Its phases are open loops of their own, with no one measured
        // window for the lag to belong to.
        bail!("--subscribers is not supported with --scenario overload");
    }
    let mut node = if args.spawn_node {
        let binary = args
            .node_binary
            .clone()
            .unwrap_or_else(skuld_benches::node::default_binary);
        let node = SpawnedNode::start(&binary, &args.node_args).await?;
        let scheme = if args.tls_ca_file.is_some() {
            "https"
        } else {
            "http"
        };
        args.endpoint = format!("{scheme}://{}", node.grpc);
        args.node_pid = Some(node.pid());
        Some(node)
    } else {
        None
    };
    let run = args.run_id.clone().unwrap_or_else(|| {
        format!(
            "r{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        )
    });
    let clients = connect(&args).await?;
    let outcome = match args.scenario {
        Scenario::Spread => {
            reservation_scenario(
                &clients,
                &args,
                &run,
                Picker::uniform(args.positions),
                "spread",
            )
            .await
        }
        Scenario::Hot => reservation_scenario(&clients, &args, &run, Picker::One, "hot").await,
        Scenario::Zipf => {
            let picker = Picker::zipf(args.positions, args.zipf_exponent)?;
            reservation_scenario(&clients, &args, &run, picker, "zipf").await
        }
        Scenario::Mixed => mixed(&clients, &args, &run).await,
        Scenario::Overload => overload(&clients, &args, &run).await,
        Scenario::ReturnsSurge => returns_surge(&clients, &args, &run).await,
        Scenario::Orders => orders(&clients, &args, &run).await,
    };
    if let Some(router) = &clients.router {
        let stats = router.stats();
        eprintln!(
            "routing: {} to the owner, {} to any node, {} missed, {} sent again, {} map fetches",
            stats.to_owner, stats.to_any, stats.misses, stats.retried, stats.refreshes
        );
    }
    if let Some(node) = node.as_mut() {
        if let Some(status) = node.exited() {
            eprintln!(
                "the spawned node exited during the run ({status}); its log:\n{}",
                node.log_tail(40)
            );
            bail!("the node under test exited during the run ({status})");
        }
        if let Some(rss) = peak_rss_mib(node.pid()) {
            eprintln!("node peak RSS (VmHWM): {rss:.0} MiB");
        }
        let stopping = Instant::now();
        let status = node.stop(Duration::from_secs(30));
        eprintln!(
            "node stopped with SIGTERM in {:.1}s: {}",
            stopping.elapsed().as_secs_f64(),
            status.map_or_else(|| "unknown status".to_owned(), |s| s.to_string())
        );
    }
    outcome
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let passed = runtime.block_on(run(args))?;
    if !passed {
        eprintln!("correctness check FAILED");
        std::process::exit(1);
    }
    Ok(())
}
