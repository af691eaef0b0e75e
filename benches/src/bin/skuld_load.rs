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

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;
use skuld_benches::check::{check_mixed, check_reserve_only, MixedExpectation, Observed};
use skuld_benches::node::{cpu_seconds, own_cpu_seconds, peak_rss_mib, SpawnedNode};
use skuld_benches::pick::Picker;
use skuld_benches::plot::write_svg;
use skuld_benches::stats::{
    combined, distribution, histogram, intended_offset, series, Percentiles, QuantilePoint,
    Recorder, SecondSample,
};
use skuld_proto::v1 as pb;
use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
use skuld_proto::v1::returns_service_client::ReturnsServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

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
    /// Tokio worker threads of the generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Write <scenario>.json and <scenario>.svg here.
    #[arg(long)]
    out: Option<PathBuf>,
}

// ---- calls -------------------------------------------------------------------

type Outcome = Result<(), tonic::Status>;
type Call<'a> = Pin<Box<dyn Future<Output = (&'static str, Outcome)> + Send + 'a>>;

/// What one request does; implementations record what the check needs.
trait Workload: Send + Sync + 'static {
    /// `caller` picks the channel and, in mixed, the caller's own state.
    fn call(&self, caller: usize) -> Call<'_>;
}

struct Clients {
    inventory: Vec<InventoryServiceClient<Channel>>,
    returns: Vec<ReturnsServiceClient<Channel>>,
    timeout: Duration,
}

impl Clients {
    fn inventory(&self, caller: usize) -> InventoryServiceClient<Channel> {
        self.inventory[caller % self.inventory.len()].clone()
    }

    fn returns(&self, caller: usize) -> ReturnsServiceClient<Channel> {
        self.returns[caller % self.returns.len()].clone()
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        request
    }
}

fn pkey(tenant: &str, sku: &str, location: &str) -> pb::PositionKey {
    pb::PositionKey {
        tenant: tenant.into(),
        sku: sku.into(),
        location: location.into(),
    }
}

fn header(key: &pb::PositionKey, idempotency_key: String) -> Option<pb::MutationHeader> {
    Some(pb::MutationHeader {
        key: Some(key.clone()),
        idempotency_key,
        expected_version: None,
    })
}

/// Reserve 1 unit; the reservation id is the idempotency key.
fn reserve_request(key: &pb::PositionKey, id: String) -> pb::ReserveRequest {
    pb::ReserveRequest {
        header: header(key, id),
        reservation_id: String::new(),
        quantity: 1,
        owner: Some(pb::ReservationOwner {
            r#type: pb::OwnerType::Cart.into(),
            id: "load".into(),
            line_id: String::new(),
        }),
        channel: "web".into(),
        // Long enough that nothing expires during a run.
        ttl_seconds: 3_600,
        allow_partial: false,
    }
}

// ---- reserve-only workloads: spread, hot, zipf, overload ------------------------

struct Reservations {
    clients: Arc<Clients>,
    run: String,
    positions: Vec<pb::PositionKey>,
    picker: Picker,
    /// Sum of granted quantities of OK replies, per position.
    acknowledged: Vec<AtomicI64>,
    /// Reservations with an unknown outcome, per position.
    unknown: Vec<AtomicI64>,
    /// Key numbers of the acknowledged reservations, per position, to name
    /// the missing ones when a check fails.
    acknowledged_keys: Vec<Mutex<Vec<u64>>>,
    /// OK replies marked `replayed`: impossible with unique keys.
    replayed: AtomicU64,
    /// Idempotency keys are numbered across every phase of a run.
    next_key: AtomicU64,
}

impl Reservations {
    fn new(clients: &Arc<Clients>, args: &Args, run: &str, picker: Picker) -> Self {
        let count = picker.positions();
        let positions: Vec<pb::PositionKey> = if count == 1 {
            vec![pkey(&args.tenant, &format!("{run}-hot"), "DC1")]
        } else {
            (0..count)
                .map(|i| pkey(&args.tenant, &format!("{run}-sku-{i}"), "DC1"))
                .collect()
        };
        Self {
            clients: Arc::clone(clients),
            run: run.to_owned(),
            positions,
            picker,
            acknowledged: (0..count).map(|_| AtomicI64::new(0)).collect(),
            unknown: (0..count).map(|_| AtomicI64::new(0)).collect(),
            acknowledged_keys: (0..count).map(|_| Mutex::new(Vec::new())).collect(),
            replayed: AtomicU64::new(0),
            next_key: AtomicU64::new(0),
        }
    }

    fn key(&self, number: u64) -> String {
        format!("{}-r{number}", self.run)
    }
}

impl Workload for Reservations {
    fn call(&self, caller: usize) -> Call<'_> {
        Box::pin(async move {
            let index = self.picker.pick(&mut rand::rng());
            let number = self.next_key.fetch_add(1, Ordering::Relaxed);
            let request = reserve_request(&self.positions[index], self.key(number));
            let result = self
                .clients
                .inventory(caller)
                .reserve(self.clients.request(request))
                .await;
            match result {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    if reply.replayed {
                        self.replayed.fetch_add(1, Ordering::Relaxed);
                    }
                    self.acknowledged[index].fetch_add(reply.granted_quantity, Ordering::Relaxed);
                    self.acknowledged_keys[index].lock().push(number);
                    ("reserve", Ok(()))
                }
                Err(status) => {
                    if skuld_proto::retry::outcome_open(status.code()) {
                        self.unknown[index].fetch_add(1, Ordering::Relaxed);
                    }
                    ("reserve", Err(status))
                }
            }
        })
    }
}

// ---- mixed ----------------------------------------------------------------------

/// Per-position expectations of the mixed scenario.
#[derive(Default)]
struct Expected {
    /// Any mutation was sent to this position.
    touched: AtomicBool,
    reserved: AtomicI64,
    committed: AtomicI64,
    on_hand_delta: AtomicI64,
    unknown_reserves: AtomicI64,
    unknown_commits: AtomicI64,
    unknown_releases: AtomicI64,
    unknown_fulfilled: AtomicI64,
    unknown_adjusted: AtomicI64,
}

impl Expected {
    fn snapshot(&self, stocked: i64) -> MixedExpectation {
        let get = |value: &AtomicI64| value.load(Ordering::Relaxed);
        MixedExpectation {
            stocked,
            on_hand_delta: get(&self.on_hand_delta),
            reserved: get(&self.reserved),
            committed: get(&self.committed),
            unknown_reserves: get(&self.unknown_reserves),
            unknown_commits: get(&self.unknown_commits),
            unknown_releases: get(&self.unknown_releases),
            unknown_fulfilled: get(&self.unknown_fulfilled),
            unknown_adjusted: get(&self.unknown_adjusted),
        }
    }
}

/// What one caller holds: its own reservations and commitments, oldest
/// first, so its commits, releases and fulfilments are always valid.
#[derive(Default)]
struct CallerState {
    /// (position, reservation id)
    active: VecDeque<(usize, String)>,
    /// (position, order ref, quantity)
    commitments: VecDeque<(usize, String, i64)>,
}

const ADJUST_UNITS: i64 = 10;

struct Mixed {
    clients: Arc<Clients>,
    run: String,
    positions: Vec<pb::PositionKey>,
    /// Index of the hot position (the last one) when a hot share is set.
    hot: Option<usize>,
    hot_share: f64,
    expected: Vec<Expected>,
    callers: Vec<Mutex<CallerState>>,
    replayed: AtomicU64,
    next_key: AtomicU64,
}

enum MixedOp {
    Reserve,
    Commit(usize, String),
    Release(usize, String),
    Fulfill(usize, String, i64),
    Adjust,
    Availability,
}

/// Operation names; the hot position's get their own, so the other keys'
/// latency can be reported without it.
fn op_name(base: &'static str, hot: bool) -> &'static str {
    match (base, hot) {
        ("reserve", true) => "reserve-hot",
        ("commit", true) => "commit-hot",
        ("release", true) => "release-hot",
        ("fulfill", true) => "fulfill-hot",
        ("adjust", true) => "adjust-hot",
        _ => base,
    }
}

impl Mixed {
    /// Mixed proportions: 40% reserve, 20% commit, 15% release, 10% fulfil,
    /// 5% adjust (receipt), 10% availability over 3 locations. A commit,
    /// release or fulfilment with nothing of its own to act on reserves.
    fn choose(&self, caller: usize) -> MixedOp {
        let roll: f64 = rand::rng().random_range(0.0..100.0);
        let mut state = self.callers[caller % self.callers.len()].lock();
        let op = if roll < 40.0 {
            None
        } else if roll < 60.0 {
            state
                .active
                .pop_front()
                .map(|(index, id)| MixedOp::Commit(index, id))
        } else if roll < 75.0 {
            state
                .active
                .pop_front()
                .map(|(index, id)| MixedOp::Release(index, id))
        } else if roll < 85.0 {
            state
                .commitments
                .pop_front()
                .map(|(index, order, quantity)| MixedOp::Fulfill(index, order, quantity))
        } else if roll < 90.0 {
            Some(MixedOp::Adjust)
        } else {
            Some(MixedOp::Availability)
        };
        op.unwrap_or(MixedOp::Reserve)
    }

    fn cold_index(&self) -> usize {
        rand::rng().random_range(0..self.hot.unwrap_or(self.positions.len()))
    }

    /// Records an answer: `ok` on OK, `unknown` when it may have applied.
    fn settle(
        &self,
        index: usize,
        result: &Result<tonic::Response<pb::MutationResponse>, tonic::Status>,
        ok: impl FnOnce(),
        unknown: impl FnOnce(),
    ) {
        self.expected[index].touched.store(true, Ordering::Relaxed);
        match result {
            Ok(reply) => {
                if reply.get_ref().replayed {
                    self.replayed.fetch_add(1, Ordering::Relaxed);
                }
                ok();
            }
            Err(status) if skuld_proto::retry::outcome_open(status.code()) => unknown(),
            Err(_) => {}
        }
    }
}

fn unit(
    result: Result<tonic::Response<pb::MutationResponse>, tonic::Status>,
) -> Result<(), tonic::Status> {
    result.map(drop)
}

impl Workload for Mixed {
    fn call(&self, caller: usize) -> Call<'_> {
        Box::pin(async move {
            let mut client = self.clients.inventory(caller);
            let id = format!(
                "{}-m{}",
                self.run,
                self.next_key.fetch_add(1, Ordering::Relaxed)
            );
            let is_hot = |index: usize| self.hot == Some(index);
            let add = |value: &AtomicI64, delta: i64| {
                value.fetch_add(delta, Ordering::Relaxed);
            };
            match self.choose(caller) {
                MixedOp::Commit(index, reservation_id) => {
                    let order_ref = format!("order-{id}");
                    let request = pb::CommitReservationRequest {
                        header: header(&self.positions[index], id),
                        reservation_id,
                        quantity: 0,
                        order_ref: order_ref.clone(),
                    };
                    let result = client
                        .commit_reservation(self.clients.request(request))
                        .await;
                    let e = &self.expected[index];
                    self.settle(
                        index,
                        &result,
                        || {
                            add(&e.reserved, -1);
                            add(&e.committed, 1);
                        },
                        || add(&e.unknown_commits, 1),
                    );
                    if result.is_ok() {
                        self.callers[caller % self.callers.len()]
                            .lock()
                            .commitments
                            .push_back((index, order_ref, 1));
                    }
                    (op_name("commit", is_hot(index)), unit(result))
                }
                MixedOp::Release(index, reservation_id) => {
                    let request = pb::ReleaseReservationRequest {
                        header: header(&self.positions[index], id),
                        reservation_id,
                    };
                    let result = client
                        .release_reservation(self.clients.request(request))
                        .await;
                    let e = &self.expected[index];
                    self.settle(
                        index,
                        &result,
                        || add(&e.reserved, -1),
                        || add(&e.unknown_releases, 1),
                    );
                    (op_name("release", is_hot(index)), unit(result))
                }
                MixedOp::Fulfill(index, order_ref, quantity) => {
                    let request = pb::FulfillRequest {
                        header: header(&self.positions[index], id),
                        order_ref,
                        quantity,
                    };
                    let result = client.fulfill(self.clients.request(request)).await;
                    let e = &self.expected[index];
                    self.settle(
                        index,
                        &result,
                        || {
                            add(&e.committed, -quantity);
                            add(&e.on_hand_delta, -quantity);
                        },
                        || add(&e.unknown_fulfilled, quantity),
                    );
                    (op_name("fulfill", is_hot(index)), unit(result))
                }
                MixedOp::Adjust => {
                    let index = self.cold_index();
                    let request = pb::AdjustRequest {
                        header: header(&self.positions[index], id),
                        bucket: pb::Bucket::Available.into(),
                        delta: ADJUST_UNITS,
                        reason: pb::AdjustmentReason::Receipt.into(),
                        change_from: None,
                        reference_document_uri: String::new(),
                    };
                    let result = client.adjust(self.clients.request(request)).await;
                    let e = &self.expected[index];
                    self.settle(
                        index,
                        &result,
                        || add(&e.on_hand_delta, ADJUST_UNITS),
                        || add(&e.unknown_adjusted, ADJUST_UNITS),
                    );
                    (op_name("adjust", is_hot(index)), unit(result))
                }
                MixedOp::Availability => {
                    let key = &self.positions[self.cold_index()];
                    let request = pb::GetAvailabilityRequest {
                        tenant: key.tenant.clone(),
                        sku: key.sku.clone(),
                        locations: vec![key.location.clone(), "DC2".into(), "DC3".into()],
                    };
                    let result = client
                        .get_availability(self.clients.request(request))
                        .await
                        .map(drop);
                    ("availability", result)
                }
                MixedOp::Reserve => {
                    let hot = self
                        .hot
                        .filter(|_| rand::rng().random_range(0.0..100.0) < self.hot_share);
                    let index = hot.unwrap_or_else(|| self.cold_index());
                    let request = reserve_request(&self.positions[index], id.clone());
                    let result = client.reserve(self.clients.request(request)).await;
                    let e = &self.expected[index];
                    self.settle(
                        index,
                        &result,
                        || add(&e.reserved, 1),
                        || add(&e.unknown_reserves, 1),
                    );
                    if result.is_ok() {
                        self.callers[caller % self.callers.len()]
                            .lock()
                            .active
                            .push_back((index, id));
                    }
                    (op_name("reserve", hot.is_some()), unit(result))
                }
            }
        })
    }
}

// ---- returns-surge ----------------------------------------------------------------

/// Return cases through create, receive, inspect, dispose (restock),
/// process, close; each caller drives one case at a time.
struct ReturnsSurge {
    clients: Arc<Clients>,
    run: String,
    tenant: String,
    /// Per caller: (case number, next step).
    callers: Vec<Mutex<(u64, u8)>>,
    closed: AtomicU64,
    /// Per caller: restocks acknowledged. Each caller's cases return its
    /// own SKU, so the surge spreads over as many positions as callers.
    restocked: Vec<AtomicI64>,
    uncertain: AtomicBool,
}

impl Workload for ReturnsSurge {
    fn call(&self, caller: usize) -> Call<'_> {
        Box::pin(async move {
            let slot = caller % self.callers.len();
            let (case, step) = *self.callers[slot].lock();
            let return_id = format!("{}-{slot}-{case}", self.run);
            let header = |name: &str| {
                Some(pb::ReturnHeader {
                    key: Some(pb::ReturnKey {
                        tenant: self.tenant.clone(),
                        return_id: return_id.clone(),
                    }),
                    idempotency_key: format!("{return_id}-{name}"),
                    expected_version: None,
                })
            };
            let mut client = self.clients.returns(caller);
            let r = &self.clients;
            let (name, result) = match step {
                0 => {
                    let request = pb::OpenReturnRequest {
                        header: header("open"),
                        order_ref: format!("order-{return_id}"),
                        customer_ref: String::new(),
                        channel: String::new(),
                        order_lines: vec![pb::OrderLine {
                            line_id: "L1".into(),
                            sku: format!("{}-SHIRT-{slot}", self.run),
                            quantity: 1,
                            amount_paid_minor: 2_500,
                            fulfilled_at_unix_ms: 0,
                            delivered_at_unix_ms: 0,
                            location: "DC1".into(),
                        }],
                        lines: vec![pb::RequestedLine {
                            order_line_id: "L1".into(),
                            quantity: 1,
                            reason_code: "size".into(),
                            resolution: pb::Resolution::RefundOriginal.into(),
                            exchange_sku: String::new(),
                        }],
                        override_window: true,
                    };
                    (
                        "create",
                        client.create_return(r.request(request)).await.map(drop),
                    )
                }
                1 => {
                    let request = pb::ReceiveItemsRequest {
                        header: header("receive"),
                        lines: vec![pb::ReceivedLine {
                            line_id: "L1".into(),
                            quantity: 1,
                            location: String::new(),
                        }],
                        accept_surplus: false,
                    };
                    (
                        "receive",
                        client.receive_items(r.request(request)).await.map(drop),
                    )
                }
                2 => {
                    let request = pb::InspectItemsRequest {
                        header: header("inspect"),
                        lines: vec![pb::InspectedLine {
                            line_id: "L1".into(),
                            quantity: 1,
                            grade: pb::Grade::A.into(),
                        }],
                    };
                    (
                        "inspect",
                        client.inspect_items(r.request(request)).await.map(drop),
                    )
                }
                3 => {
                    let request = pb::DisposeItemsRequest {
                        header: header("dispose"),
                        line_id: "L1".into(),
                        quantity: 1,
                        disposition: pb::Disposition::Restock.into(),
                    };
                    let result = client.dispose_items(r.request(request)).await.map(drop);
                    if result.is_ok() {
                        self.restocked[slot].fetch_add(1, Ordering::Relaxed);
                    }
                    ("dispose", result)
                }
                4 => {
                    let request = pb::ProcessReturnRequest {
                        header: header("process"),
                        method: pb::RefundMethod::OriginalPayment.into(),
                    };
                    (
                        "process",
                        client.process_return(r.request(request)).await.map(drop),
                    )
                }
                _ => (
                    "close",
                    client
                        .close_return(r.request(pb::CloseReturnRequest {
                            header: header("close"),
                        }))
                        .await
                        .map(drop),
                ),
            };
            match &result {
                Ok(()) => {
                    let mut state = self.callers[slot].lock();
                    if step >= 5 {
                        self.closed.fetch_add(1, Ordering::Relaxed);
                        *state = (case + 1, 0);
                    } else {
                        state.1 = step + 1;
                    }
                }
                // Close waits for the case's inventory steps: retried.
                Err(status) if status.code() == Code::FailedPrecondition && step == 5 => {}
                Err(status) => {
                    if skuld_proto::retry::outcome_open(status.code()) {
                        self.uncertain.store(true, Ordering::Relaxed);
                    }
                    // A retry of the same step reuses its idempotency key.
                }
            }
            (name, result)
        })
    }
}

// ---- driving load ----------------------------------------------------------------

/// Live counters for the progress line.
struct Progress {
    label: String,
    ok: AtomicU64,
    errors: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

impl Progress {
    fn new(label: &str) -> Arc<Self> {
        Arc::new(Self {
            label: label.to_owned(),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: Mutex::new(histogram()),
        })
    }

    fn record(&self, result: &Outcome, latency: Duration) {
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                let _ = self.latency.lock().record(micros.clamp(1, 60_000_000));
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Prints the progress line: every second with '\r' on a terminal, else a
/// line every 5 s.
async fn report_progress(progress: Arc<Progress>, started: Instant, done: Arc<AtomicBool>) {
    let tty = std::io::stderr().is_terminal();
    let every = Duration::from_secs(if tty { 1 } else { 5 });
    let mut last_ok = 0;
    let mut last = Instant::now();
    let mut next = Instant::now() + every;
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if Instant::now() < next || done.load(Ordering::Relaxed) {
            continue;
        }
        next += every;
        let ok = progress.ok.load(Ordering::Relaxed);
        let rate = ok.saturating_sub(last_ok) as f64 / last.elapsed().as_secs_f64();
        last_ok = ok;
        last = Instant::now();
        let p99 = progress.latency.lock().value_at_quantile(0.99) as f64 / 1_000.0;
        let line = format!(
            "{} {:>6.1}s {:>9.0} ops/s  p99 {:>8.2} ms  ok {ok}  errors {}",
            progress.label,
            started.elapsed().as_secs_f64(),
            rate,
            p99,
            progress.errors.load(Ordering::Relaxed)
        );
        if tty {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    }
    if tty {
        eprintln!();
    }
}

fn start_progress(
    label: &str,
    quiet: bool,
) -> (
    Arc<Progress>,
    Arc<AtomicBool>,
    Option<tokio::task::JoinHandle<()>>,
) {
    let progress = Progress::new(label);
    let done = Arc::new(AtomicBool::new(false));
    let reporter = (!quiet).then(|| {
        tokio::spawn(report_progress(
            Arc::clone(&progress),
            Instant::now(),
            Arc::clone(&done),
        ))
    });
    (progress, done, reporter)
}

async fn stop_progress(done: Arc<AtomicBool>, reporter: Option<tokio::task::JoinHandle<()>>) {
    done.store(true, Ordering::Relaxed);
    if let Some(reporter) = reporter {
        let _ = reporter.await;
    }
}

fn record(
    recorder: &mut Recorder,
    operation: &'static str,
    second: usize,
    result: &Outcome,
    latency: Duration,
) {
    match result {
        Ok(()) => recorder.ok(operation, second, latency),
        Err(status) => {
            let code = skuld_proto::code_name(status.code()).to_owned();
            recorder.error(&code, second, latency);
            recorder.error_sample(&code, status.message());
        }
    }
}

/// Closed loop: `concurrency` callers for warmup + duration; only requests
/// sent after the warmup are measured (all are applied and checked).
async fn closed_loop(
    workload: Arc<dyn Workload>,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    label: &str,
) -> Recorder {
    let started = Instant::now();
    let measure_from = started + warmup;
    let end = measure_from + duration;
    let (progress, done, reporter) = start_progress(label, false);
    let mut callers = Vec::with_capacity(concurrency);
    for caller in 0..concurrency.max(1) {
        let workload = Arc::clone(&workload);
        let progress = Arc::clone(&progress);
        callers.push(tokio::spawn(async move {
            let mut recorder = Recorder::default();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let (operation, result) = workload.call(caller).await;
                let latency = sent.elapsed();
                progress.record(&result, latency);
                if sent >= measure_from {
                    let second = (sent - measure_from).as_secs() as usize;
                    record(&mut recorder, operation, second, &result, latency);
                }
            }
            recorder
        }));
    }
    let mut total = Recorder::default();
    for caller in callers {
        if let Ok(recorder) = caller.await {
            total.merge(&recorder);
        }
    }
    stop_progress(done, reporter).await;
    total
}

#[derive(Clone)]
struct OpenLoop {
    rate: f64,
    max_outstanding: usize,
    warmup: Duration,
    duration: Duration,
    /// Request k goes to caller k % callers (mixed: whose state it uses).
    callers: usize,
    label: String,
    quiet: bool,
    /// Per-second series are counted from here (default: end of warmup).
    origin: Option<Instant>,
}

struct OpenResult {
    recorder: Recorder,
    /// How late the generator sent requests against the timetable.
    dispatch_lag: Histogram<u64>,
    /// Latency from the actual send (not the intended time) of OK answers
    /// and of RESOURCE_EXHAUSTED answers: separates the generator's own
    /// lateness from the node's.
    accepted_from_send: Histogram<u64>,
    rejected_from_send: Histogram<u64>,
    /// CPU used during the measured window, when it could be read.
    cpu: Option<CpuUse>,
}

/// CPU seconds the node and the generator used in the measured window.
/// On shared cores this, per OK reply, is the steadier figure: it does not
/// move with what else the machine is doing the way throughput does.
#[derive(Debug, Clone, Copy, Serialize)]
struct CpuUse {
    node_cpu_s: Option<f64>,
    generator_cpu_s: f64,
    window_s: f64,
}

impl OpenResult {
    fn empty() -> Self {
        Self {
            recorder: Recorder::default(),
            dispatch_lag: histogram(),
            accepted_from_send: histogram(),
            rejected_from_send: histogram(),
            cpu: None,
        }
    }

    fn merge(&mut self, other: &OpenResult) {
        self.recorder.merge(&other.recorder);
        let _ = self.dispatch_lag.add(&other.dispatch_lag);
        let _ = self.accepted_from_send.add(&other.accepted_from_send);
        let _ = self.rejected_from_send.add(&other.rejected_from_send);
    }
}

fn record_micros(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    let _ = histogram.record(micros.clamp(1, 60_000_000));
}

/// The error name of requests the generator did not send because
/// `--max-outstanding` were in flight.
const NOT_SENT: &str = "ClientMaxOutstanding";

/// (measured, second, operation, result, latency from intended time,
/// latency from actual send when sent)
type Answer = (
    bool,
    usize,
    &'static str,
    Outcome,
    Duration,
    Option<Duration>,
);

/// Open loop: request k is due at start + k / rate, whatever the answers;
/// its latency counts from that intended time (coordinated omission
/// corrected). At most `max_outstanding` are in flight; a request due
/// beyond that is not sent and counted as `ClientMaxOutstanding`.
async fn open_loop(workload: Arc<dyn Workload>, plan: OpenLoop) -> OpenResult {
    let started = Instant::now();
    let measure_from = started + plan.warmup;
    let origin = plan.origin.unwrap_or(measure_from);
    let total = plan.warmup + plan.duration;
    let (answers, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Answer>();
    let max_outstanding = plan.max_outstanding.clamp(1, 1 << 20);
    let permits = Arc::new(tokio::sync::Semaphore::new(max_outstanding));
    let (progress, done, reporter) = start_progress(&plan.label, plan.quiet);
    let collector = tokio::spawn({
        let progress = Arc::clone(&progress);
        async move {
            let mut result = OpenResult::empty();
            while let Some((measured, second, operation, outcome, latency, from_send)) =
                receiver.recv().await
            {
                progress.record(&outcome, latency);
                if !measured {
                    continue;
                }
                if operation == NOT_SENT {
                    // The generator's own limit, not an answer of the node.
                    result.recorder.error(NOT_SENT, second, Duration::ZERO);
                    result
                        .recorder
                        .error_sample(NOT_SENT, "not sent: --max-outstanding requests in flight");
                    continue;
                }
                record(&mut result.recorder, operation, second, &outcome, latency);
                match (&outcome, from_send) {
                    (Ok(()), Some(from_send)) => {
                        record_micros(&mut result.accepted_from_send, from_send);
                    }
                    (Err(status), Some(from_send)) if status.code() == Code::ResourceExhausted => {
                        record_micros(&mut result.rejected_from_send, from_send);
                    }
                    _ => {}
                }
            }
            result
        }
    });
    let mut dispatch_lag = histogram();
    let mut index = 0u64;
    'schedule: loop {
        let next = intended_offset(index, plan.rate);
        if next >= total || plan.rate <= 0.0 {
            break;
        }
        tokio::time::sleep_until((started + next).into()).await;
        // Send everything that is due by now (timer granularity is ~1 ms).
        let now = Instant::now();
        loop {
            let offset = intended_offset(index, plan.rate);
            if offset >= total {
                break 'schedule;
            }
            let intended = started + offset;
            if intended > now {
                break;
            }
            let measured = intended >= measure_from;
            let second = intended.saturating_duration_since(origin).as_secs() as usize;
            if measured {
                let lag = u64::try_from(now.duration_since(intended).as_micros()).unwrap_or(0);
                let _ = dispatch_lag.record(lag.clamp(1, 60_000_000));
            }
            let caller = (index % plan.callers.max(1) as u64) as usize;
            match Arc::clone(&permits).try_acquire_owned() {
                Ok(permit) => {
                    let workload = Arc::clone(&workload);
                    let answers = answers.clone();
                    tokio::spawn(async move {
                        let sent = Instant::now();
                        let (operation, result) = workload.call(caller).await;
                        let _ = answers.send((
                            measured,
                            second,
                            operation,
                            result,
                            intended.elapsed(),
                            Some(sent.elapsed()),
                        ));
                        drop(permit);
                    });
                }
                Err(_) => {
                    let _ = answers.send((
                        measured,
                        second,
                        NOT_SENT,
                        Err(tonic::Status::new(
                            Code::Aborted,
                            "not sent: --max-outstanding requests in flight",
                        )),
                        Duration::ZERO,
                        None,
                    ));
                }
            }
            index += 1;
        }
    }
    drop(answers);
    let _ = permits.acquire_many(max_outstanding as u32).await;
    let mut result = collector.await.unwrap_or_else(|_| OpenResult::empty());
    result.dispatch_lag = dispatch_lag;
    stop_progress(done, reporter).await;
    result
}

async fn drive(args: &Args, workload: Arc<dyn Workload>, label: &str) -> OpenResult {
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    let cpu = tokio::spawn(measure_cpu(args.node_pid, warmup, duration));
    let mut result = match args.rate {
        Some(rate) => {
            open_loop(
                workload,
                OpenLoop {
                    rate,
                    max_outstanding: args.max_outstanding,
                    warmup,
                    duration,
                    callers: args.concurrency.max(1),
                    label: label.to_owned(),
                    quiet: false,
                    origin: None,
                },
            )
            .await
        }
        None => OpenResult {
            recorder: closed_loop(workload, args.concurrency, warmup, duration, label).await,
            ..OpenResult::empty()
        },
    };
    result.cpu = cpu.await.ok().flatten();
    result
}

/// CPU used by the node (when its pid is known) and by this process from
/// the end of the warmup to the end of the measured window.
async fn measure_cpu(
    node_pid: Option<u32>,
    warmup: Duration,
    duration: Duration,
) -> Option<CpuUse> {
    let node = || node_pid.and_then(cpu_seconds);
    tokio::time::sleep(warmup).await;
    let (node_before, own_before, started) = (node(), own_cpu_seconds()?, Instant::now());
    tokio::time::sleep(duration).await;
    let (node_after, own_after) = (node(), own_cpu_seconds()?);
    Some(CpuUse {
        node_cpu_s: node_before
            .zip(node_after)
            .map(|(before, after)| after - before),
        generator_cpu_s: own_after - own_before,
        window_s: started.elapsed().as_secs_f64(),
    })
}

// ---- setup and read-back ------------------------------------------------------------

/// Stocks every position with `quantity` (a receipt), 64 requests at a
/// time, retrying refusals for overload or unknown outcomes with the same
/// idempotency key (a retry is safe).
async fn stock(
    clients: &Arc<Clients>,
    run: &str,
    positions: &[pb::PositionKey],
    quantity: i64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let total = positions.len();
    let done = AtomicU64::new(0);
    let tty = std::io::stderr().is_terminal();
    let mut last_print = Instant::now();
    let mut stream = futures::stream::iter(positions.iter().enumerate())
        .map(|(index, key)| {
            let clients = Arc::clone(clients);
            let request = pb::AdjustRequest {
                header: header(key, format!("{run}-stock-{index}")),
                bucket: pb::Bucket::Available.into(),
                delta: quantity,
                reason: pb::AdjustmentReason::Receipt.into(),
                change_from: None,
                reference_document_uri: String::new(),
            };
            async move {
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let result = clients
                        .inventory(index)
                        .adjust(clients.request(request.clone()))
                        .await;
                    match result {
                        Ok(_) => return Ok(()),
                        Err(status)
                            if attempt < 20
                                && (status.code() == Code::ResourceExhausted
                                    || skuld_proto::retry::outcome_open(status.code())) =>
                        {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(status) => {
                            return Err(anyhow::anyhow!(
                                "stocking {}: {:?} {}",
                                request
                                    .header
                                    .as_ref()
                                    .and_then(|h| h.key.as_ref())
                                    .map_or("?", |k| k.sku.as_str()),
                                status.code(),
                                status.message()
                            ))
                        }
                    }
                }
            }
        })
        .buffer_unordered(64);
    while let Some(result) = stream.next().await {
        result?;
        let count = done.fetch_add(1, Ordering::Relaxed) + 1;
        if last_print.elapsed() >= Duration::from_secs(1) || count as usize == total {
            last_print = Instant::now();
            let line = format!(
                "setup: stocked {count} of {total} positions ({:.1}s)",
                started.elapsed().as_secs_f64()
            );
            if tty {
                eprint!("\r{line}   ");
            } else {
                eprintln!("{line}");
            }
        }
    }
    if tty {
        eprintln!();
    }
    Ok(())
}

async fn read_position(clients: &Clients, key: &pb::PositionKey) -> anyhow::Result<Observed> {
    let mut attempt = 0;
    let reply = loop {
        attempt += 1;
        let result = clients
            .inventory(attempt)
            .get_position(clients.request(pb::GetPositionRequest {
                key: Some(key.clone()),
                reservations_page_size: 1,
                ..pb::GetPositionRequest::default()
            }))
            .await;
        match result {
            Ok(reply) => break reply,
            // Never written: every bucket is 0 (the check then says what
            // was expected instead).
            Err(status) if status.code() == Code::NotFound => return Ok(Observed::default()),
            Err(status)
                if attempt < 20
                    && (status.code() == Code::ResourceExhausted
                        || status.code() == Code::Unavailable) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => {
                bail!(
                    "cannot read back {}/{}: {:?} {}",
                    key.sku,
                    key.location,
                    status.code(),
                    status.message()
                )
            }
        }
    };
    let buckets = reply
        .into_inner()
        .position
        .and_then(|p| p.buckets)
        .unwrap_or_default();
    Ok(Observed {
        on_hand: buckets.on_hand,
        available: buckets.available,
        reserved: buckets.reserved,
        committed: buckets.committed,
        held: buckets.damaged + buckets.quality_control + buckets.safety_stock,
    })
}

/// Every active reservation id of a position (paged; for diagnosis).
async fn reservation_ids(
    clients: &Clients,
    key: &pb::PositionKey,
) -> anyhow::Result<std::collections::HashSet<String>> {
    let mut ids = std::collections::HashSet::new();
    let mut token = String::new();
    for _ in 0..10_000 {
        let reply = clients
            .inventory(0)
            .get_position(clients.request(pb::GetPositionRequest {
                key: Some(key.clone()),
                reservations_page_size: 1_000,
                reservations_page_token: token.clone(),
            }))
            .await
            .context("cannot page reservations")?
            .into_inner();
        let Some(position) = reply.position else {
            break;
        };
        ids.extend(position.reservations.into_iter().map(|r| r.reservation_id));
        if position.next_reservations_page_token.is_empty() {
            break;
        }
        token = position.next_reservations_page_token;
    }
    Ok(ids)
}

#[derive(Debug, Serialize)]
struct Check {
    passed: bool,
    positions_checked: usize,
    positions_with_unknown_outcomes: usize,
    /// Requests whose outcome the generator cannot know (deadline or
    /// transport error); they widen the check of their position only.
    unknown_outcomes: i64,
    /// OK replies marked `replayed` although every key was new.
    replayed_replies: u64,
    failures: Vec<String>,
}

/// Reads back the positions in `indexes` (32 at a time) and checks each.
async fn read_back<F>(
    clients: &Arc<Clients>,
    positions: &[pb::PositionKey],
    indexes: Vec<usize>,
    verdict: F,
) -> anyhow::Result<Vec<(usize, Observed, Result<(), String>)>>
where
    F: Fn(usize, &Observed) -> Result<(), String>,
{
    let reads = futures::stream::iter(indexes)
        .map(|index| {
            let clients = Arc::clone(clients);
            let key = positions[index].clone();
            async move { (index, read_position(&clients, &key).await) }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let mut results = Vec::with_capacity(reads.len());
    for (index, observed) in reads {
        let observed = observed?;
        let verdict = verdict(index, &observed);
        results.push((index, observed, verdict));
    }
    results.sort_by_key(|(index, _, _)| *index);
    Ok(results)
}

async fn check_reservations(
    clients: &Arc<Clients>,
    workload: &Reservations,
    stocked: i64,
) -> anyhow::Result<Check> {
    eprintln!("check: reading back every touched position");
    let touched: Vec<usize> = (0..workload.positions.len())
        .filter(|&i| {
            workload.acknowledged[i].load(Ordering::Relaxed) != 0
                || workload.unknown[i].load(Ordering::Relaxed) != 0
        })
        .collect();
    let results = read_back(clients, &workload.positions, touched, |index, observed| {
        check_reserve_only(
            stocked,
            workload.acknowledged[index].load(Ordering::Relaxed),
            workload.unknown[index].load(Ordering::Relaxed),
            observed,
        )
    })
    .await?;
    let mut check = Check {
        passed: true,
        positions_checked: results.len(),
        positions_with_unknown_outcomes: workload
            .unknown
            .iter()
            .filter(|u| u.load(Ordering::Relaxed) > 0)
            .count(),
        unknown_outcomes: workload
            .unknown
            .iter()
            .map(|u| u.load(Ordering::Relaxed))
            .sum(),
        replayed_replies: workload.replayed.load(Ordering::Relaxed),
        failures: Vec::new(),
    };
    for (index, observed, verdict) in results {
        let Err(reason) = verdict else { continue };
        check.passed = false;
        let key = &workload.positions[index];
        let mut failure = format!(
            "{}/{}: {reason} (acknowledged {}, unknown {}; read {:?})",
            key.sku,
            key.location,
            workload.acknowledged[index].load(Ordering::Relaxed),
            workload.unknown[index].load(Ordering::Relaxed),
            observed
        );
        // Name the acknowledged reservations the node does not hold.
        if check.failures.len() < 5 {
            if let Ok(held) = reservation_ids(clients, key).await {
                let acknowledged = workload.acknowledged_keys[index].lock().clone();
                let missing: Vec<String> = acknowledged
                    .iter()
                    .map(|&n| workload.key(n))
                    .filter(|id| !held.contains(id))
                    .collect();
                failure.push_str(&format!(
                    "; acknowledged but not active: {} {:?}",
                    missing.len(),
                    &missing[..missing.len().min(5)]
                ));
            }
        }
        check.failures.push(failure);
    }
    if check.replayed_replies > 0 {
        check.passed = false;
        check.failures.push(format!(
            "{} OK replies were marked replayed although every idempotency key was new",
            check.replayed_replies
        ));
    }
    Ok(check)
}

async fn check_mixed_positions(
    clients: &Arc<Clients>,
    workload: &Mixed,
    stocked: i64,
) -> anyhow::Result<Check> {
    eprintln!("check: reading back every touched position");
    let expectations: Vec<MixedExpectation> = workload
        .expected
        .iter()
        .map(|e| e.snapshot(stocked))
        .collect();
    // Every position a mutation was sent to, plus every 50th untouched one
    // (which must still be exactly as stocked).
    let indexes: Vec<usize> = (0..workload.positions.len())
        .filter(|&index| {
            index % 50 == 0 || workload.expected[index].touched.load(Ordering::Relaxed)
        })
        .collect();
    let results = read_back(clients, &workload.positions, indexes, |index, observed| {
        check_mixed(&expectations[index], observed)
    })
    .await?;
    let mut check = Check {
        passed: true,
        positions_checked: results.len(),
        positions_with_unknown_outcomes: expectations.iter().filter(|e| e.uncertain()).count(),
        unknown_outcomes: expectations
            .iter()
            .map(|e| {
                e.unknown_reserves
                    + e.unknown_commits
                    + e.unknown_releases
                    + e.unknown_fulfilled
                    + e.unknown_adjusted / ADJUST_UNITS
            })
            .sum(),
        replayed_replies: workload.replayed.load(Ordering::Relaxed),
        failures: Vec::new(),
    };
    for (index, observed, verdict) in results {
        if let Err(reason) = verdict {
            check.passed = false;
            let key = &workload.positions[index];
            check.failures.push(format!(
                "{}/{}: {reason} (expected {:?}; read {:?})",
                key.sku, key.location, expectations[index], observed
            ));
        }
    }
    if check.replayed_replies > 0 {
        check.passed = false;
        check.failures.push(format!(
            "{} OK replies were marked replayed although every idempotency key was new",
            check.replayed_replies
        ));
    }
    Ok(check)
}

// ---- reporting ----------------------------------------------------------------------

#[derive(Serialize)]
struct Report {
    scenario: String,
    command: String,
    endpoint: String,
    run_id: String,
    mode: String,
    connections: usize,
    warmup_s: f64,
    duration_s: f64,
    ok: u64,
    ok_per_second: f64,
    errors_total: u64,
    latency: Percentiles,
    /// The OK latency at every quarter "nine" (p0 to p99.99).
    latency_distribution: Vec<QuantilePoint>,
    by_operation: BTreeMap<String, Percentiles>,
    /// mixed with a hot SKU: every operation on the other positions.
    non_hot_latency: Option<Percentiles>,
    errors: BTreeMap<String, u64>,
    error_samples: BTreeMap<String, String>,
    rejection_latency: Option<Percentiles>,
    /// Open loop: how late the generator itself sent requests.
    dispatch_lag: Option<Percentiles>,
    /// Open loop: latency of OK / RESOURCE_EXHAUSTED answers counted from
    /// the actual send instead of the intended time.
    accepted_from_actual_send: Option<Percentiles>,
    rejections_from_actual_send: Option<Percentiles>,
    check: Option<Check>,
    node_peak_rss_mib: Option<f64>,
    cpu: Option<CpuUse>,
    /// CPU microseconds per OK reply in the measured window: node, generator.
    node_cpu_us_per_ok: Option<f64>,
    generator_cpu_us_per_ok: Option<f64>,
    extra: serde_json::Value,
    series: Vec<SecondSample>,
}

fn mode(args: &Args) -> String {
    match args.rate {
        Some(rate) => format!(
            "open loop {rate:.0}/s, max {} outstanding",
            args.max_outstanding
        ),
        None => format!("closed loop, {} callers", args.concurrency),
    }
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    args: &Args,
    run: &str,
    name: &str,
    mode: String,
    result: &OpenResult,
    series: Vec<SecondSample>,
    check: Option<Check>,
    extra: serde_json::Value,
) -> Report {
    let recorder = &result.recorder;
    let duration = args.duration.max(f64::MIN_POSITIVE);
    let has_hot = recorder
        .by_operation
        .keys()
        .any(|name| name.ends_with("-hot"));
    Report {
        scenario: name.to_owned(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        endpoint: args.endpoint.clone(),
        run_id: run.to_owned(),
        mode,
        connections: args.connections,
        warmup_s: args.warmup,
        duration_s: duration,
        ok: recorder.ok_count(),
        ok_per_second: recorder.ok_count() as f64 / duration,
        errors_total: recorder.error_count(),
        latency: Percentiles::of(&recorder.latency),
        latency_distribution: distribution(&recorder.latency),
        by_operation: recorder
            .by_operation
            .iter()
            .map(|(name, h)| ((*name).to_owned(), Percentiles::of(h)))
            .collect(),
        non_hot_latency: has_hot
            .then(|| Percentiles::of(&combined(recorder, |name| !name.ends_with("-hot")))),
        errors: recorder.errors.clone(),
        error_samples: recorder.error_samples.clone(),
        rejection_latency: (!recorder.rejections.is_empty())
            .then(|| Percentiles::of(&recorder.rejections)),
        dispatch_lag: (!result.dispatch_lag.is_empty())
            .then(|| Percentiles::of(&result.dispatch_lag)),
        accepted_from_actual_send: (!result.accepted_from_send.is_empty())
            .then(|| Percentiles::of(&result.accepted_from_send)),
        rejections_from_actual_send: (!result.rejected_from_send.is_empty())
            .then(|| Percentiles::of(&result.rejected_from_send)),
        check,
        node_peak_rss_mib: args.node_pid.and_then(peak_rss_mib),
        cpu: result.cpu,
        node_cpu_us_per_ok: result
            .cpu
            .and_then(|cpu| cpu.node_cpu_s)
            .and_then(|seconds| per_ok_us(seconds, recorder.ok_count())),
        generator_cpu_us_per_ok: result
            .cpu
            .and_then(|cpu| per_ok_us(cpu.generator_cpu_s, recorder.ok_count())),
        extra,
        series,
    }
}

fn per_ok_us(cpu_seconds: f64, ok: u64) -> Option<f64> {
    (ok > 0).then(|| cpu_seconds * 1e6 / ok as f64)
}

fn print_row(name: &str, p: &Percentiles) {
    println!(
        "  {name:<20} {:>10} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
    );
}

fn print_report(report: &Report) {
    println!();
    println!(
        "scenario {}: {}, {} connections, {:.0} s measured after {:.0} s warmup, run id {}",
        report.scenario,
        report.mode,
        report.connections,
        report.duration_s,
        report.warmup_s,
        report.run_id
    );
    println!(
        "  {:<20} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "ok", "p50", "p90", "p99", "p99.9", "max"
    );
    print_row("all", &report.latency);
    for (name, p) in &report.by_operation {
        print_row(name, p);
    }
    if let Some(p) = &report.non_hot_latency {
        print_row("all but hot position", p);
    }
    println!("  throughput           {:.0} ok/s", report.ok_per_second);
    if report.errors.is_empty() {
        println!("  errors               none");
    } else {
        for (code, count) in &report.errors {
            println!(
                "  errors {code:<13} {count:>10}   e.g. {:?}",
                report.error_samples.get(code).map_or("", String::as_str)
            );
        }
    }
    if let Some(p) = &report.rejection_latency {
        println!(
            "  RESOURCE_EXHAUSTED   p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            p.p50_ms, p.p99_ms, p.max_ms
        );
    }
    if let Some(p) = &report.dispatch_lag {
        println!(
            "  generator send lag   p99 {:.2} ms, max {:.2} ms (behind the timetable)",
            p.p99_ms, p.max_ms
        );
    }
    if let Some(p) = &report.accepted_from_actual_send {
        println!(
            "  OK from actual send  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            p.p50_ms, p.p99_ms, p.max_ms
        );
    }
    if let Some(p) = &report.rejections_from_actual_send {
        println!(
            "  RESOURCE_EXHAUSTED from actual send  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            p.p50_ms, p.p99_ms, p.max_ms
        );
    }
    if let Some(cpu) = &report.cpu {
        let per_ok =
            |value: Option<f64>| value.map_or("-".to_owned(), |us| format!("{us:.1} us/ok"));
        println!(
            "  CPU                  node {} ({}), generator {:.2} cores ({}), over {:.1} s",
            cpu.node_cpu_s
                .map_or("-".to_owned(), |s| format!("{:.2} cores", s / cpu.window_s)),
            per_ok(report.node_cpu_us_per_ok),
            cpu.generator_cpu_s / cpu.window_s,
            per_ok(report.generator_cpu_us_per_ok),
            cpu.window_s
        );
    }
    if let Some(rss) = report.node_peak_rss_mib {
        println!("  node peak RSS        {rss:.0} MiB (VmHWM)");
    }
    if let Some(check) = &report.check {
        println!(
            "  correctness          {}: {} positions read back, {} requests with unknown outcome on {} positions, {} replayed replies",
            if check.passed { "PASS" } else { "FAIL" },
            check.positions_checked,
            check.unknown_outcomes,
            check.positions_with_unknown_outcomes,
            check.replayed_replies
        );
        for failure in check.failures.iter().take(10) {
            println!("    {failure}");
        }
        if check.failures.len() > 10 {
            println!("    ... {} more", check.failures.len() - 10);
        }
    }
}

fn save(args: &Args, report: &Report, result: &OpenResult) -> anyhow::Result<()> {
    print_report(report);
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let json = out.join(format!("{}.json", report.scenario));
        std::fs::write(&json, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("cannot write {}", json.display()))?;
        let svg = out.join(format!("{}.svg", report.scenario));
        write_svg(
            &svg,
            &format!("skuld-load {} ({})", report.scenario, report.mode),
            &report.series,
            &result.recorder.latency,
        )?;
        eprintln!("wrote {} and {}", json.display(), svg.display());
    }
    Ok(())
}

// ---- scenarios ------------------------------------------------------------------------

async fn reservation_scenario(
    clients: &Arc<Clients>,
    args: &Args,
    run: &str,
    picker: Picker,
    name: &str,
) -> anyhow::Result<bool> {
    let stocked = if picker.positions() == 1 {
        100_000_000
    } else {
        1_000_000
    };
    let workload = Arc::new(Reservations::new(clients, args, run, picker));
    stock(clients, run, &workload.positions, stocked).await?;
    let result = drive(args, Arc::clone(&workload) as Arc<dyn Workload>, name).await;
    let check = check_reservations(clients, &workload, stocked).await?;
    let passed = check.passed;
    let report = build_report(
        args,
        run,
        name,
        mode(args),
        &result,
        series(&result.recorder),
        Some(check),
        serde_json::Value::Null,
    );
    save(args, &report, &result)?;
    Ok(passed)
}

async fn mixed(clients: &Arc<Clients>, args: &Args, run: &str) -> anyhow::Result<bool> {
    let count = args.positions.max(1);
    let mut positions: Vec<pb::PositionKey> = (0..count)
        .map(|i| pkey(&args.tenant, &format!("{run}-sku-{i}"), "DC1"))
        .collect();
    let hot = (args.hot_sku_share > 0.0).then(|| {
        positions.push(pkey(&args.tenant, &format!("{run}-hot"), "DC1"));
        count
    });
    let stocked = if hot.is_some() {
        100_000_000
    } else {
        1_000_000
    };
    stock(clients, run, &positions, stocked).await?;
    let workload = Arc::new(Mixed {
        clients: Arc::clone(clients),
        run: run.to_owned(),
        expected: (0..positions.len()).map(|_| Expected::default()).collect(),
        positions,
        hot,
        hot_share: args.hot_sku_share,
        callers: (0..args.concurrency.max(1))
            .map(|_| Mutex::new(CallerState::default()))
            .collect(),
        replayed: AtomicU64::new(0),
        next_key: AtomicU64::new(0),
    });
    let name = if hot.is_some() { "mixed-hot" } else { "mixed" };
    let result = drive(args, Arc::clone(&workload) as Arc<dyn Workload>, name).await;
    let check = check_mixed_positions(clients, &workload, stocked).await?;
    let passed = check.passed;
    let extra = serde_json::json!({ "hot_sku_share_percent": args.hot_sku_share });
    let report = build_report(
        args,
        run,
        name,
        mode(args),
        &result,
        series(&result.recorder),
        Some(check),
        extra,
    );
    save(args, &report, &result)?;
    Ok(passed)
}

async fn overload(clients: &Arc<Clients>, args: &Args, run: &str) -> anyhow::Result<bool> {
    let stocked = 100_000_000;
    let workload = Arc::new(Reservations::new(
        clients,
        args,
        run,
        Picker::uniform(args.positions),
    ));
    stock(clients, run, &workload.positions, stocked).await?;
    let as_workload = || Arc::clone(&workload) as Arc<dyn Workload>;
    let capacity = match args.capacity {
        Some(capacity) => capacity,
        None => {
            eprintln!(
                "capacity: closed loop spread, {} callers, {:.0} s",
                args.concurrency, args.capacity_seconds
            );
            let recorder = closed_loop(
                as_workload(),
                args.concurrency,
                Duration::from_secs(1),
                Duration::from_secs_f64(args.capacity_seconds),
                "capacity",
            )
            .await;
            recorder.ok_count() as f64 / args.capacity_seconds
        }
    };
    if capacity <= 0.0 {
        bail!("capacity is 0: the node answered nothing");
    }
    let probe_rate = args
        .probe_rate
        .unwrap_or_else(|| (capacity * 0.05).clamp(50.0, 2_000.0));
    let origin = Instant::now();
    let plan = |rate: f64, seconds: f64, label: &str, quiet: bool| OpenLoop {
        rate,
        max_outstanding: args.max_outstanding,
        warmup: Duration::ZERO,
        duration: Duration::from_secs_f64(seconds),
        callers: args.concurrency.max(1),
        label: label.to_owned(),
        quiet,
        origin: Some(origin),
    };
    eprintln!("baseline: open loop {probe_rate:.0}/s for 3 s");
    let baseline = open_loop(as_workload(), plan(probe_rate, 3.0, "baseline", false)).await;
    let baseline_p99 = Percentiles::of(&baseline.recorder.latency).p99_ms;
    let threshold = 2.0 * baseline_p99.max(0.5);
    let mut timeline = Recorder::default();
    timeline.merge(&baseline.recorder);
    let mut phases_total = OpenResult::empty();
    let mut phases = Vec::new();
    for &multiplier in &args.multipliers {
        let rate = capacity * multiplier;
        eprintln!(
            "overload {multiplier}x: open loop {rate:.0}/s for {:.0} s",
            args.duration
        );
        let phase_start = Instant::now();
        let label = format!("{multiplier}x");
        let phase = tokio::spawn(open_loop(
            as_workload(),
            plan(rate, args.duration, &label, false),
        ));
        tokio::time::sleep_until((phase_start + Duration::from_secs_f64(args.duration)).into())
            .await;
        // Recovery: probe windows at the probe rate from the moment the
        // overload stops (while the excess still drains) until one window
        // has no error and p99 within 2x the baseline p99.
        let stopped = Instant::now();
        let mut recovered_after = None;
        let mut probes = Vec::new();
        while stopped.elapsed() < Duration::from_secs_f64(args.recovery_timeout) {
            let window = open_loop(
                as_workload(),
                plan(probe_rate, args.probe_window, "probe", true),
            )
            .await;
            timeline.merge(&window.recorder);
            let p99 = Percentiles::of(&window.recorder.latency).p99_ms;
            let errors = window.recorder.error_count();
            probes.push(serde_json::json!({
                "at_s": stopped.elapsed().as_secs_f64(),
                "ok": window.recorder.ok_count(),
                "errors": errors,
                "p99_ms": p99,
            }));
            if errors == 0 && window.recorder.ok_count() > 0 && p99 <= threshold {
                recovered_after = Some(stopped.elapsed().as_secs_f64());
                break;
            }
        }
        let result = phase.await.context("overload phase failed")?;
        let drained_after = stopped.elapsed().as_secs_f64();
        timeline.merge(&result.recorder);
        let recorder = &result.recorder;
        let accepted = Percentiles::of(&recorder.latency);
        let rejected = Percentiles::of(&recorder.rejections);
        let rejections = recorder
            .errors
            .get("RESOURCE_EXHAUSTED")
            .copied()
            .unwrap_or(0);
        let skipped = recorder
            .errors
            .get("ClientMaxOutstanding")
            .copied()
            .unwrap_or(0);
        let sent = recorder.ok_count() + recorder.error_count() - skipped;
        let goodput = recorder.ok_count() as f64 / args.duration;
        let lag = Percentiles::of(&result.dispatch_lag);
        let accepted_from_send = Percentiles::of(&result.accepted_from_send);
        let rejected_from_send = Percentiles::of(&result.rejected_from_send);
        phases.push(serde_json::json!({
            "multiplier": multiplier,
            "offered_per_s": rate,
            "sent": sent,
            "not_sent_max_outstanding": skipped,
            "goodput_per_s": goodput,
            "goodput_share_of_capacity": goodput / capacity,
            "accepted": accepted,
            "rejections": rejections,
            "rejection_share_of_sent": rejections as f64 / (sent.max(1)) as f64,
            "rejection_latency": rejected,
            "errors": recorder.errors,
            "error_samples": recorder.error_samples,
            "generator_send_lag": lag,
            "accepted_from_actual_send": accepted_from_send,
            "rejection_latency_from_actual_send": rejected_from_send,
            "recovered_after_s": recovered_after,
            "recovery_threshold_p99_ms": threshold,
            "drained_after_s": drained_after,
            "probes": probes,
        }));
        phases_total.merge(&result);
    }
    let check = check_reservations(clients, &workload, stocked).await?;
    let passed = check.passed;
    let extra = serde_json::json!({
        "capacity_per_s": capacity,
        "capacity_measured": args.capacity.is_none(),
        "probe_rate_per_s": probe_rate,
        "baseline_p99_ms": baseline_p99,
        "phases": phases,
    });
    let timeline_series = series(&timeline);
    let phase_args = Args {
        duration: args.duration * args.multipliers.len() as f64,
        warmup: 0.0,
        ..args.clone()
    };
    let report = build_report(
        &phase_args,
        run,
        "overload",
        format!(
            "open loop at {:?} x capacity {capacity:.0}/s, max {} outstanding",
            args.multipliers, args.max_outstanding
        ),
        &phases_total,
        timeline_series,
        Some(check),
        extra,
    );
    save(args, &report, &phases_total)?;
    print_phases(&report.extra);
    Ok(passed)
}

fn print_phases(extra: &serde_json::Value) {
    let number = |value: &serde_json::Value, path: &[&str]| {
        let mut value = value;
        for key in path {
            value = &value[*key];
        }
        value.as_f64().unwrap_or(f64::NAN)
    };
    println!(
        "  capacity {:.0}/s, baseline p99 {:.2} ms",
        number(extra, &["capacity_per_s"]),
        number(extra, &["baseline_p99_ms"])
    );
    println!(
        "  {:>5} {:>10} {:>10} {:>7} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "x",
        "offered/s",
        "goodput/s",
        "share",
        "rejected",
        "rej %",
        "rej p99",
        "acc p99",
        "not sent",
        "recovery"
    );
    for phase in extra["phases"].as_array().into_iter().flatten() {
        let recovered = phase["recovered_after_s"]
            .as_f64()
            .map_or_else(|| "none".to_owned(), |s| format!("{s:.2} s"));
        println!(
            "  {:>5} {:>10.0} {:>10.0} {:>6.0}% {:>10} {:>6.1}% {:>6.2} ms {:>6.2} ms {:>9} {:>9}",
            number(phase, &["multiplier"]),
            number(phase, &["offered_per_s"]),
            number(phase, &["goodput_per_s"]),
            100.0 * number(phase, &["goodput_share_of_capacity"]),
            number(phase, &["rejections"]),
            100.0 * number(phase, &["rejection_share_of_sent"]),
            number(phase, &["rejection_latency", "p99_ms"]),
            number(phase, &["accepted", "p99_ms"]),
            number(phase, &["not_sent_max_outstanding"]),
            recovered
        );
    }
}

async fn returns_surge(clients: &Arc<Clients>, args: &Args, run: &str) -> anyhow::Result<bool> {
    let workload = Arc::new(ReturnsSurge {
        clients: Arc::clone(clients),
        run: run.to_owned(),
        tenant: args.tenant.clone(),
        callers: (0..args.concurrency.max(1))
            .map(|_| Mutex::new((0, 0)))
            .collect(),
        closed: AtomicU64::new(0),
        restocked: (0..args.concurrency.max(1))
            .map(|_| AtomicI64::new(0))
            .collect(),
        uncertain: AtomicBool::new(false),
    });
    // One case per caller at a time: always a closed loop.
    let closed = Args {
        rate: None,
        ..args.clone()
    };
    let result = drive(
        &closed,
        Arc::clone(&workload) as Arc<dyn Workload>,
        "returns-surge",
    )
    .await;
    // Restocks run after the dispose answer; give them a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every acknowledged restock reaches its SKU's position exactly once.
    let uncertain = workload.uncertain.load(Ordering::Relaxed);
    let mut failures = Vec::new();
    let mut quality_control_left = 0;
    let mut positions_checked = 0;
    for (slot, restocked) in workload.restocked.iter().enumerate() {
        let restocked = restocked.load(Ordering::Relaxed);
        if restocked == 0 && !uncertain {
            continue;
        }
        let sku = format!("{run}-SHIRT-{slot}");
        let observed = read_position(clients, &pkey(&args.tenant, &sku, "DC1")).await?;
        positions_checked += 1;
        // Only quality_control is held by returns here.
        quality_control_left += observed.held;
        let fits = if uncertain {
            observed.available >= restocked
        } else {
            observed.available == restocked
        };
        if !fits || observed.available < 0 {
            failures.push(format!(
                "{sku}: restocked {restocked} acknowledged, available {}",
                observed.available
            ));
        }
    }
    let check = Check {
        passed: failures.is_empty(),
        positions_checked,
        positions_with_unknown_outcomes: usize::from(uncertain),
        unknown_outcomes: i64::from(uncertain),
        replayed_replies: 0,
        failures,
    };
    let extra = serde_json::json!({
        "cases_closed": workload.closed.load(Ordering::Relaxed),
        "transitions_per_s": result.recorder.ok_count() as f64 / args.duration,
        "quality_control_left": quality_control_left,
    });
    let passed = check.passed;
    let report = build_report(
        &closed,
        run,
        "returns-surge",
        mode(&closed),
        &result,
        series(&result.recorder),
        Some(check),
        extra,
    );
    save(args, &report, &result)?;
    Ok(passed)
}

async fn connect(args: &Args) -> anyhow::Result<Arc<Clients>> {
    let mut inventory = Vec::new();
    let mut returns = Vec::new();
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
        let channel = Endpoint::from_shared(endpoint.to_string())
            .with_context(|| format!("bad endpoint {endpoint}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot reach skuld at {endpoint}"))?;
        inventory.push(InventoryServiceClient::new(channel.clone()));
        returns.push(ReturnsServiceClient::new(channel));
    }
    Ok(Arc::new(Clients {
        inventory,
        returns,
        timeout: Duration::from_millis(args.timeout_ms),
    }))
}

async fn run(mut args: Args) -> anyhow::Result<bool> {
    let mut node = if args.spawn_node {
        let binary = args
            .node_binary
            .clone()
            .unwrap_or_else(skuld_benches::node::default_binary);
        let node = SpawnedNode::start(&binary, &args.node_args).await?;
        args.endpoint = format!("http://{}", node.grpc);
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
    };
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
