//! `skuld-load`: a load generator for any skuld endpoint.
//!
//! Closed loop (`--concurrency N`: each caller sends its next request when
//! the previous one answered) or open loop (`--rate R`: requests leave on a
//! fixed timetable and latency counts from the intended send time, so a
//! stalled server cannot hide behind coordinated omission). Every scenario
//! checks at the end that the stored buckets equal what the acknowledged
//! operations imply, so a fast wrong answer fails the run.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use parking_lot_free::Mutex;
use rand::Rng;
use rand_distr::Distribution;
use serde::Serialize;
use skuld_benches::plot::write_svg;
use skuld_benches::stats::{intended_offset, series, Percentiles, Recorder};
use skuld_proto::v1 as pb;
use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
use skuld_proto::v1::returns_service_client::ReturnsServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// std's Mutex under a short name; poisoning cannot happen here (no panics
/// while held), so a poisoned lock is simply taken over.
mod parking_lot_free {
    pub struct Mutex<T>(std::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub fn new(value: T) -> Self {
            Self(std::sync::Mutex::new(value))
        }

        pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Scenario {
    /// Reservations spread uniformly over `--positions` positions.
    Spread,
    /// Every reservation on one position: a flash sale.
    Hot,
    /// Reservations over `--positions` positions with Zipf(1.1) skew.
    Zipf,
    /// Reserve, commit, release, fulfil, adjust and availability reads.
    Mixed,
    /// Open loop at multiples of the measured capacity.
    Overload,
    /// Many return cases through their whole lifecycle.
    ReturnsSurge,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "skuld-load", about = "Load generator for skuld")]
struct Args {
    #[arg(long, value_enum, default_value = "spread")]
    scenario: Scenario,
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    endpoint: String,
    /// Start `target/release/skuld serve` in a temp dir, and stop it after.
    #[arg(long)]
    spawn_node: bool,
    /// The node's pid, to report its peak RSS (set by --spawn-node).
    #[arg(long)]
    node_pid: Option<u32>,
    /// Closed loop: callers in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Open loop: requests per second (instead of the closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: requests outstanding at most.
    #[arg(long, default_value_t = 20_000)]
    max_outstanding: usize,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// gRPC channels the callers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
    #[arg(long, default_value = "load")]
    tenant: String,
    /// Prefix of SKUs and keys; runs never collide. Default: a timestamp.
    #[arg(long)]
    run_id: Option<String>,
    #[arg(long, default_value_t = 10_000)]
    positions: usize,
    /// mixed: share (%) of reservations sent to one hot position.
    #[arg(long, default_value_t = 0.0)]
    hot_sku_share: f64,
    /// overload: the capacity (ok/s); measured first when absent.
    #[arg(long)]
    capacity: Option<f64>,
    #[arg(long, value_delimiter = ',', default_value = "2,5,10")]
    multipliers: Vec<f64>,
    /// Where to write <scenario>.json and <scenario>.svg.
    #[arg(long)]
    out: Option<PathBuf>,
}

// ---- the node under test -----------------------------------------------------

struct SpawnedNode {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for SpawnedNode {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

async fn spawn_node() -> anyhow::Result<(SpawnedNode, String)> {
    let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/skuld");
    if !binary.exists() {
        bail!(
            "{} is missing; run `cargo build --release -p skuld-node`",
            binary.display()
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("skuld-load")
        .tempdir_in(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))?;
    let ports = dir.path().join("ports.json");
    let log = std::fs::File::create(dir.path().join("node.log"))?;
    let child = std::process::Command::new(&binary)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--log-filter",
            "warn",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--ports-file")
        .arg(&ports)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start skuld")?;
    let node = SpawnedNode { child, _dir: dir };
    for _ in 0..300 {
        if let Ok(text) = std::fs::read_to_string(&ports) {
            let value: serde_json::Value = serde_json::from_str(&text)?;
            let grpc = value["grpc"].as_str().unwrap_or_default().to_owned();
            return Ok((node, format!("http://{grpc}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("skuld did not start within 30 s")
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

// ---- workloads ---------------------------------------------------------------

type Call<'a> =
    Pin<Box<dyn std::future::Future<Output = (&'static str, Result<(), Code>)> + Send + 'a>>;

/// What one request does; implementations keep what the check needs.
trait Workload: Send + Sync {
    fn call(&self, caller: usize, sequence: u64) -> Call<'_>;
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

/// Whether a failed call may still have been applied.
fn outcome_unknown(code: Code) -> bool {
    matches!(
        code,
        Code::DeadlineExceeded
            | Code::Unknown
            | Code::Unavailable
            | Code::Cancelled
            | Code::Internal
    )
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
        ttl_seconds: 3_600,
        allow_partial: false,
    }
}

#[derive(Clone, Copy)]
enum Picker {
    Uniform,
    One,
    Zipf,
}

/// Reserve-only scenarios: spread, hot, zipf.
struct Reservations {
    clients: Arc<Clients>,
    run: String,
    positions: Vec<pb::PositionKey>,
    picker: Picker,
    zipf: rand_distr::Zipf<f64>,
    acknowledged: Vec<AtomicI64>,
    unknown: Vec<AtomicI64>,
    /// Idempotency keys are numbered across every phase of a run, so no two
    /// requests of a run share a key (a replayed reply would count twice).
    next_key: AtomicU64,
}

impl Reservations {
    fn pick(&self) -> usize {
        let mut rng = rand::rng();
        match self.picker {
            Picker::One => 0,
            Picker::Uniform => rng.random_range(0..self.positions.len()),
            Picker::Zipf => (self.zipf.sample(&mut rng) as usize)
                .saturating_sub(1)
                .min(self.positions.len() - 1),
        }
    }
}

impl Workload for Reservations {
    fn call(&self, caller: usize, _sequence: u64) -> Call<'_> {
        Box::pin(async move {
            let index = self.pick();
            let mut client = self.clients.inventory(caller);
            let id = format!(
                "{}-{}",
                self.run,
                self.next_key.fetch_add(1, Ordering::Relaxed)
            );
            let result = client
                .reserve(
                    self.clients
                        .request(reserve_request(&self.positions[index], id)),
                )
                .await;
            match result {
                Ok(reply) => {
                    self.acknowledged[index]
                        .fetch_add(reply.get_ref().granted_quantity, Ordering::Relaxed);
                    ("reserve", Ok(()))
                }
                Err(status) => {
                    if outcome_unknown(status.code()) {
                        self.unknown[index].fetch_add(1, Ordering::Relaxed);
                    }
                    ("reserve", Err(status.code()))
                }
            }
        })
    }
}

/// Per-position expectations of the mixed scenario.
#[derive(Default)]
struct Expected {
    reserved: AtomicI64,
    committed: AtomicI64,
    on_hand_delta: AtomicI64,
    uncertain: AtomicBool,
}

#[derive(Default)]
struct CallerState {
    /// (position, reservation id)
    active: Vec<(usize, String)>,
    /// (position, order ref, quantity)
    commitments: Vec<(usize, String, i64)>,
}

struct Mixed {
    clients: Arc<Clients>,
    run: String,
    positions: Vec<pb::PositionKey>,
    /// Index of the hot position in `positions` when a hot share is set.
    hot: Option<usize>,
    hot_share: f64,
    expected: Vec<Expected>,
    callers: Vec<Mutex<CallerState>>,
}

impl Mixed {
    fn settle(&self, index: usize, result: &Result<(), Code>, apply: impl FnOnce(&Expected)) {
        match result {
            Ok(()) => apply(&self.expected[index]),
            Err(code) if outcome_unknown(*code) => self.expected[index]
                .uncertain
                .store(true, Ordering::Relaxed),
            Err(_) => {}
        }
    }
}

impl Workload for Mixed {
    fn call(&self, caller: usize, sequence: u64) -> Call<'_> {
        Box::pin(async move {
            let mut client = self.clients.inventory(caller);
            let id = format!("{}-{caller}-{sequence}", self.run);
            let roll: f64 = rand::rng().random_range(0.0..100.0);
            let (commitment, reservation) = {
                let mut state = self.callers[caller].lock();
                let reservation = if (40.0..75.0).contains(&roll) {
                    state.active.pop()
                } else {
                    None
                };
                let commitment = if (75.0..85.0).contains(&roll) {
                    state.commitments.pop()
                } else {
                    None
                };
                (commitment, reservation)
            };
            if let Some((index, reservation_id)) = reservation {
                let key = &self.positions[index];
                if roll < 60.0 {
                    let order_ref = format!("order-{id}");
                    let request = pb::CommitReservationRequest {
                        header: header(key, id),
                        reservation_id,
                        quantity: 0,
                        order_ref: order_ref.clone(),
                    };
                    let result = client
                        .commit_reservation(self.clients.request(request))
                        .await
                        .map(drop)
                        .map_err(|s| s.code());
                    self.settle(index, &result, |e| {
                        e.reserved.fetch_sub(1, Ordering::Relaxed);
                        e.committed.fetch_add(1, Ordering::Relaxed);
                    });
                    if result.is_ok() {
                        self.callers[caller]
                            .lock()
                            .commitments
                            .push((index, order_ref, 1));
                    }
                    return ("commit", result);
                }
                let request = pb::ReleaseReservationRequest {
                    header: header(key, id),
                    reservation_id,
                };
                let result = client
                    .release_reservation(self.clients.request(request))
                    .await
                    .map(drop)
                    .map_err(|s| s.code());
                self.settle(index, &result, |e| {
                    e.reserved.fetch_sub(1, Ordering::Relaxed);
                });
                return ("release", result);
            }
            if let Some((index, order_ref, quantity)) = commitment {
                let request = pb::FulfillRequest {
                    header: header(&self.positions[index], id),
                    order_ref,
                    quantity,
                };
                let result = client
                    .fulfill(self.clients.request(request))
                    .await
                    .map(drop)
                    .map_err(|s| s.code());
                self.settle(index, &result, |e| {
                    e.committed.fetch_sub(quantity, Ordering::Relaxed);
                    e.on_hand_delta.fetch_sub(quantity, Ordering::Relaxed);
                });
                return ("fulfill", result);
            }
            if (85.0..90.0).contains(&roll) {
                let index = rand::rng().random_range(0..self.positions.len());
                let request = pb::AdjustRequest {
                    header: header(&self.positions[index], id),
                    bucket: pb::Bucket::Available.into(),
                    delta: 10,
                    reason: pb::AdjustmentReason::Receipt.into(),
                    change_from: None,
                    reference_document_uri: String::new(),
                };
                let result = client
                    .adjust(self.clients.request(request))
                    .await
                    .map(drop)
                    .map_err(|s| s.code());
                self.settle(index, &result, |e| {
                    e.on_hand_delta.fetch_add(10, Ordering::Relaxed);
                });
                return ("adjust", result);
            }
            if roll >= 90.0 {
                let index = rand::rng().random_range(0..self.positions.len());
                let key = &self.positions[index];
                let request = pb::GetAvailabilityRequest {
                    tenant: key.tenant.clone(),
                    sku: key.sku.clone(),
                    locations: vec![key.location.clone(), "DC2".into(), "DC3".into()],
                };
                let result = client
                    .get_availability(self.clients.request(request))
                    .await
                    .map(drop)
                    .map_err(|s| s.code());
                return ("availability", result);
            }
            // A reservation (also when there was nothing to commit or release).
            let hot = self
                .hot
                .filter(|_| rand::rng().random_range(0.0..100.0) < self.hot_share);
            let index = hot.unwrap_or_else(|| {
                rand::rng().random_range(0..self.hot.map_or(self.positions.len(), |h| h))
            });
            let result = client
                .reserve(
                    self.clients
                        .request(reserve_request(&self.positions[index], id.clone())),
                )
                .await
                .map(drop)
                .map_err(|s| s.code());
            self.settle(index, &result, |e| {
                e.reserved.fetch_add(1, Ordering::Relaxed);
            });
            if result.is_ok() {
                self.callers[caller].lock().active.push((index, id));
            }
            (
                if hot.is_some() {
                    "reserve-hot"
                } else {
                    "reserve"
                },
                result,
            )
        })
    }
}

/// Return cases through create, receive, inspect, dispose, process, close.
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
    fn call(&self, caller: usize, _sequence: u64) -> Call<'_> {
        Box::pin(async move {
            let (case, step) = *self.callers[caller].lock();
            let return_id = format!("{}-{caller}-{case}", self.run);
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
                            sku: format!("{}-SHIRT-{caller}", self.run),
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
                        self.restocked[caller].fetch_add(1, Ordering::Relaxed);
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
            let result = result.map_err(|status| status.code());
            match &result {
                Ok(()) => {
                    let mut state = self.callers[caller].lock();
                    if step >= 5 {
                        self.closed.fetch_add(1, Ordering::Relaxed);
                        *state = (case + 1, 0);
                    } else {
                        state.1 = step + 1;
                    }
                }
                // Close waits for the case's inventory steps: retry it.
                Err(Code::FailedPrecondition) if step == 5 => {}
                Err(code) => {
                    if outcome_unknown(*code) {
                        self.uncertain.store(true, Ordering::Relaxed);
                    }
                    // Retries of the same step reuse its idempotency key.
                }
            }
            (name, result)
        })
    }
}

// ---- driving load ------------------------------------------------------------

struct Progress {
    ok: AtomicU64,
    errors: AtomicU64,
}

fn code_name(code: Code) -> String {
    format!("{code:?}")
}

async fn report_progress(progress: Arc<Progress>, started: Instant, done: Arc<AtomicBool>) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let mut last_ok = 0;
    let mut last = Instant::now();
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(every).await;
        let ok = progress.ok.load(Ordering::Relaxed);
        let rate = (ok - last_ok) as f64 / last.elapsed().as_secs_f64();
        last_ok = ok;
        last = Instant::now();
        let line = format!(
            "{:>5.1}s  {:>9.0} ok/s  ok {ok}  errors {}",
            started.elapsed().as_secs_f64(),
            rate,
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

/// Closed loop: `concurrency` callers for warmup + duration.
async fn closed_loop(
    workload: Arc<dyn Workload>,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> Recorder {
    let started = Instant::now();
    let measure_from = started + warmup;
    let end = measure_from + duration;
    let progress = Arc::new(Progress {
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let done = Arc::new(AtomicBool::new(false));
    let reporter = tokio::spawn(report_progress(
        Arc::clone(&progress),
        started,
        Arc::clone(&done),
    ));
    let mut callers = Vec::with_capacity(concurrency);
    for caller in 0..concurrency {
        let workload = Arc::clone(&workload);
        let progress = Arc::clone(&progress);
        callers.push(tokio::spawn(async move {
            let mut recorder = Recorder::default();
            let mut sequence = 0;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                sequence += 1;
                let (operation, result) = workload.call(caller, sequence).await;
                if sent < measure_from {
                    continue;
                }
                let second = (sent - measure_from).as_secs() as usize;
                match result {
                    Ok(()) => {
                        progress.ok.fetch_add(1, Ordering::Relaxed);
                        recorder.ok(operation, second, sent.elapsed());
                    }
                    Err(code) => {
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                        recorder.error(&code_name(code), second, sent.elapsed());
                    }
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
    done.store(true, Ordering::Relaxed);
    let _ = reporter.await;
    total
}

/// Open loop at `rate` requests/s for `duration`; latency from intended send.
async fn open_loop(
    workload: Arc<dyn Workload>,
    rate: f64,
    max_outstanding: usize,
    duration: Duration,
) -> Recorder {
    let started = Instant::now();
    let (results, mut receiver) =
        tokio::sync::mpsc::unbounded_channel::<(usize, &'static str, Result<(), Code>, Duration)>();
    let permits = Arc::new(tokio::sync::Semaphore::new(max_outstanding));
    let progress = Arc::new(Progress {
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let done = Arc::new(AtomicBool::new(false));
    let reporter = tokio::spawn(report_progress(
        Arc::clone(&progress),
        started,
        Arc::clone(&done),
    ));
    let collector = tokio::spawn({
        let progress = Arc::clone(&progress);
        async move {
            let mut recorder = Recorder::default();
            while let Some((second, operation, result, latency)) = receiver.recv().await {
                match result {
                    Ok(()) => {
                        progress.ok.fetch_add(1, Ordering::Relaxed);
                        recorder.ok(operation, second, latency);
                    }
                    Err(code) => {
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                        recorder.error(&code_name(code), second, latency);
                    }
                }
            }
            recorder
        }
    });
    let mut index = 0u64;
    loop {
        let offset = intended_offset(index, rate);
        if offset >= duration {
            break;
        }
        let intended = started + offset;
        tokio::time::sleep_until(intended.into()).await;
        let second = offset.as_secs() as usize;
        match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                let workload = Arc::clone(&workload);
                let results = results.clone();
                let caller = index as usize;
                tokio::spawn(async move {
                    let (operation, result) = workload.call(caller, index).await;
                    let _ = results.send((second, operation, result, intended.elapsed()));
                    drop(permit);
                });
            }
            // The generator itself is saturated: count it, do not wait.
            Err(_) => {
                let _ = results.send((second, "send", Err(Code::Aborted), Duration::ZERO));
            }
        }
        index += 1;
    }
    drop(results);
    let _ = permits.acquire_many(max_outstanding as u32).await;
    let recorder = collector.await.unwrap_or_default();
    done.store(true, Ordering::Relaxed);
    let _ = reporter.await;
    recorder
}

async fn drive(args: &Args, workload: Arc<dyn Workload>, duration: Duration) -> Recorder {
    match args.rate {
        Some(rate) => open_loop(workload, rate, args.max_outstanding, duration).await,
        None => {
            closed_loop(
                workload,
                args.concurrency,
                Duration::from_secs_f64(args.warmup),
                duration,
            )
            .await
        }
    }
}

// ---- setup and checks --------------------------------------------------------

/// Stocks `positions` with `quantity` each, 64 at a time.
async fn stock(
    clients: &Clients,
    run: &str,
    positions: &[pb::PositionKey],
    quantity: i64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut pending = futures::stream::FuturesUnordered::new();
    use futures::StreamExt;
    for (index, key) in positions.iter().enumerate() {
        let mut client = clients.inventory(index);
        let request = pb::AdjustRequest {
            header: header(key, format!("{run}-stock-{index}")),
            bucket: pb::Bucket::Available.into(),
            delta: quantity,
            reason: pb::AdjustmentReason::Receipt.into(),
            change_from: None,
            reference_document_uri: String::new(),
        };
        pending.push(async move { client.adjust(request).await });
        if pending.len() >= 64 {
            if let Some(result) = pending.next().await {
                result.context("stocking failed")?;
            }
        }
        if index % 1_000 == 999 {
            eprintln!("stocked {} of {} positions", index + 1, positions.len());
        }
    }
    while let Some(result) = pending.next().await {
        result.context("stocking failed")?;
    }
    eprintln!(
        "stocked {} positions in {:.1}s",
        positions.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn read_position(clients: &Clients, key: &pb::PositionKey) -> anyhow::Result<pb::Buckets> {
    let mut client = clients.inventory(0);
    let reply = client
        .get_position(pb::GetPositionRequest {
            key: Some(key.clone()),
            reservations_page_size: 1,
            ..pb::GetPositionRequest::default()
        })
        .await
        .context("cannot read back a position")?;
    Ok(reply
        .into_inner()
        .position
        .and_then(|p| p.buckets)
        .unwrap_or_default())
}

#[derive(Debug, Serialize)]
struct Check {
    passed: bool,
    positions_checked: usize,
    positions_with_unknown_outcomes: usize,
    failures: Vec<String>,
}

async fn check_reservations(
    clients: &Clients,
    workload: &Reservations,
    stocked: i64,
) -> anyhow::Result<Check> {
    let mut check = Check {
        passed: true,
        positions_checked: 0,
        positions_with_unknown_outcomes: 0,
        failures: Vec::new(),
    };
    for (index, key) in workload.positions.iter().enumerate() {
        let acknowledged = workload.acknowledged[index].load(Ordering::Relaxed);
        let unknown = workload.unknown[index].load(Ordering::Relaxed);
        if acknowledged == 0 && unknown == 0 {
            continue;
        }
        check.positions_checked += 1;
        if unknown > 0 {
            check.positions_with_unknown_outcomes += 1;
        }
        let buckets = read_position(clients, key).await?;
        let fits = buckets.reserved >= acknowledged && buckets.reserved <= acknowledged + unknown;
        if !fits
            || buckets.on_hand != stocked
            || buckets.available != stocked - buckets.reserved
            || buckets.available < 0
        {
            check.passed = false;
            check.failures.push(format!(
                "{}: reserved {} (acknowledged {acknowledged}, unknown {unknown}), on_hand {}, available {}",
                key.sku, buckets.reserved, buckets.on_hand, buckets.available
            ));
        }
    }
    Ok(check)
}

async fn check_mixed(clients: &Clients, workload: &Mixed, stocked: i64) -> anyhow::Result<Check> {
    let mut check = Check {
        passed: true,
        positions_checked: 0,
        positions_with_unknown_outcomes: 0,
        failures: Vec::new(),
    };
    for (index, key) in workload.positions.iter().enumerate() {
        let expected = &workload.expected[index];
        if expected.uncertain.load(Ordering::Relaxed) {
            check.positions_with_unknown_outcomes += 1;
            continue;
        }
        let (reserved, committed, delta) = (
            expected.reserved.load(Ordering::Relaxed),
            expected.committed.load(Ordering::Relaxed),
            expected.on_hand_delta.load(Ordering::Relaxed),
        );
        if reserved == 0 && committed == 0 && delta == 0 && index % 50 != 0 {
            continue;
        }
        check.positions_checked += 1;
        let buckets = read_position(clients, key).await?;
        if buckets.reserved != reserved
            || buckets.committed != committed
            || buckets.on_hand != stocked + delta
            || buckets.available < 0
        {
            check.passed = false;
            check.failures.push(format!(
                "{}: reserved {} want {reserved}, committed {} want {committed}, on_hand {} want {}",
                key.sku,
                buckets.reserved,
                buckets.committed,
                buckets.on_hand,
                stocked + delta
            ));
        }
    }
    Ok(check)
}

// ---- reporting ---------------------------------------------------------------

#[derive(Serialize)]
struct Report {
    scenario: String,
    command: String,
    mode: String,
    duration_s: f64,
    ok: u64,
    ok_per_second: f64,
    latency: Percentiles,
    by_operation: BTreeMap<String, Percentiles>,
    errors: BTreeMap<String, u64>,
    rejection_latency: Option<Percentiles>,
    check: Option<Check>,
    peak_rss_mib: Option<f64>,
    extra: serde_json::Value,
    series: Vec<skuld_benches::stats::SecondSample>,
}

fn print_report(report: &Report) {
    println!(
        "\nscenario {}  ({}, {:.0} s)",
        report.scenario, report.mode, report.duration_s
    );
    println!(
        "{:<16} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "OPERATION", "COUNT", "P50 ms", "P90 ms", "P99 ms", "P999 ms", "MAX ms"
    );
    let mut rows: Vec<(&str, &Percentiles)> = vec![("all", &report.latency)];
    rows.extend(
        report
            .by_operation
            .iter()
            .map(|(name, p)| (name.as_str(), p)),
    );
    for (name, p) in rows {
        println!(
            "{name:<16} {:>10} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
        );
    }
    println!("throughput       {:.0} ok/s", report.ok_per_second);
    if !report.errors.is_empty() {
        println!("errors           {:?}", report.errors);
    }
    if let Some(rejections) = &report.rejection_latency {
        println!(
            "rejections       p99 {:.2} ms, max {:.2} ms",
            rejections.p99_ms, rejections.max_ms
        );
    }
    if let Some(rss) = report.peak_rss_mib {
        println!("node peak RSS    {rss:.0} MiB");
    }
    if !report.extra.is_null() {
        println!("extra            {}", report.extra);
    }
    if let Some(check) = &report.check {
        println!(
            "correctness      {} ({} positions checked, {} with unknown outcomes skipped or bounded)",
            if check.passed { "PASS" } else { "FAIL" },
            check.positions_checked,
            check.positions_with_unknown_outcomes
        );
        for failure in check.failures.iter().take(10) {
            println!("  {failure}");
        }
    }
}

fn build_report(
    args: &Args,
    name: &str,
    recorder: &Recorder,
    duration: Duration,
    check: Option<Check>,
    extra: serde_json::Value,
) -> Report {
    Report {
        scenario: name.to_owned(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        mode: match args.rate {
            Some(rate) => format!("open loop {rate:.0}/s"),
            None => format!("closed loop, {} callers", args.concurrency),
        },
        duration_s: duration.as_secs_f64(),
        ok: recorder.ok_count(),
        ok_per_second: recorder.ok_count() as f64 / duration.as_secs_f64(),
        latency: Percentiles::of(&recorder.latency),
        by_operation: recorder
            .by_operation
            .iter()
            .map(|(name, h)| ((*name).to_owned(), Percentiles::of(h)))
            .collect(),
        errors: recorder.errors.clone(),
        rejection_latency: (!recorder.rejections.is_empty())
            .then(|| Percentiles::of(&recorder.rejections)),
        check,
        peak_rss_mib: args.node_pid.and_then(peak_rss_mib),
        extra,
        series: series(recorder),
    }
}

fn save(args: &Args, report: &Report, recorder: &Recorder) -> anyhow::Result<()> {
    print_report(report);
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        let json = out.join(format!("{}.json", report.scenario));
        std::fs::write(&json, serde_json::to_string_pretty(report)?)?;
        let svg = out.join(format!("{}.svg", report.scenario));
        write_svg(
            &svg,
            &format!("skuld-load {} ({})", report.scenario, report.mode),
            &report.series,
            &recorder.latency,
        )?;
        eprintln!("wrote {} and {}", json.display(), svg.display());
    }
    Ok(())
}

// ---- scenarios ---------------------------------------------------------------

fn reservations(
    clients: &Arc<Clients>,
    args: &Args,
    run: &str,
    picker: Picker,
) -> anyhow::Result<Reservations> {
    let count = match picker {
        Picker::One => 1,
        _ => args.positions.max(1),
    };
    Ok(Reservations {
        clients: Arc::clone(clients),
        run: run.to_owned(),
        positions: (0..count)
            .map(|i| pkey(&args.tenant, &format!("{run}-sku-{i}"), "DC1"))
            .collect(),
        picker,
        zipf: rand_distr::Zipf::new(count as f64, 1.1).map_err(|e| anyhow::anyhow!("zipf: {e}"))?,
        acknowledged: (0..count).map(|_| AtomicI64::new(0)).collect(),
        unknown: (0..count).map(|_| AtomicI64::new(0)).collect(),
        next_key: AtomicU64::new(0),
    })
}

async fn reservation_scenario(
    clients: &Arc<Clients>,
    args: &Args,
    run: &str,
    picker: Picker,
    name: &str,
) -> anyhow::Result<bool> {
    let workload = Arc::new(reservations(clients, args, run, picker)?);
    let stocked = match picker {
        Picker::One => 100_000_000,
        _ => 1_000_000,
    };
    stock(clients, run, &workload.positions, stocked).await?;
    let duration = Duration::from_secs_f64(args.duration);
    let recorder = drive(args, Arc::clone(&workload) as Arc<dyn Workload>, duration).await;
    let check = check_reservations(clients, &workload, stocked).await?;
    let passed = check.passed;
    let report = build_report(
        args,
        name,
        &recorder,
        duration,
        Some(check),
        serde_json::Value::Null,
    );
    save(args, &report, &recorder)?;
    Ok(passed)
}

async fn overload(clients: &Arc<Clients>, args: &Args, run: &str) -> anyhow::Result<bool> {
    let workload = Arc::new(reservations(clients, args, run, Picker::Uniform)?);
    stock(clients, run, &workload.positions, 100_000_000).await?;
    let closed = Args {
        rate: None,
        ..args.clone()
    };
    let capacity = match args.capacity {
        Some(capacity) => capacity,
        None => {
            eprintln!(
                "measuring capacity: closed loop, {} callers, 5 s",
                args.concurrency
            );
            let recorder = drive(
                &closed,
                Arc::clone(&workload) as Arc<dyn Workload>,
                Duration::from_secs(5),
            )
            .await;
            recorder.ok_count() as f64 / 5.0
        }
    };
    let probe_rate = (capacity * 0.1).max(100.0);
    let baseline = open_loop(
        Arc::clone(&workload) as Arc<dyn Workload>,
        probe_rate,
        args.max_outstanding,
        Duration::from_secs(3),
    )
    .await;
    let baseline_p99 = Percentiles::of(&baseline.latency).p99_ms;
    let mut phases = Vec::new();
    let mut total = Recorder::default();
    let duration = Duration::from_secs_f64(args.duration);
    for multiplier in &args.multipliers {
        let rate = capacity * multiplier;
        eprintln!(
            "overload {multiplier}x: open loop at {rate:.0}/s for {:.0} s",
            duration.as_secs_f64()
        );
        let recorder = open_loop(
            Arc::clone(&workload) as Arc<dyn Workload>,
            rate,
            args.max_outstanding,
            duration,
        )
        .await;
        let accepted = Percentiles::of(&recorder.latency);
        let rejected = Percentiles::of(&recorder.rejections);
        // Recovery: a probe at 10% capacity until a 200 ms window has p99
        // within 2x the baseline and no errors.
        let stopped = Instant::now();
        let mut recovered_after = None;
        while stopped.elapsed() < Duration::from_secs(30) {
            let window = open_loop(
                Arc::clone(&workload) as Arc<dyn Workload>,
                probe_rate,
                args.max_outstanding,
                Duration::from_millis(200),
            )
            .await;
            if window.error_count() == 0
                && Percentiles::of(&window.latency).p99_ms <= 2.0 * baseline_p99.max(1.0)
            {
                recovered_after = Some(stopped.elapsed().as_secs_f64());
                break;
            }
        }
        phases.push(serde_json::json!({
            "multiplier": multiplier,
            "offered_per_s": rate,
            "goodput_per_s": recorder.ok_count() as f64 / duration.as_secs_f64(),
            "goodput_share_of_capacity": recorder.ok_count() as f64 / duration.as_secs_f64() / capacity,
            "accepted_p99_ms": accepted.p99_ms,
            "rejections": recorder.errors.get("ResourceExhausted").copied().unwrap_or(0),
            "rejection_p99_ms": rejected.p99_ms,
            "rejection_max_ms": rejected.max_ms,
            "errors": recorder.errors,
            "recovered_after_s": recovered_after,
        }));
        total.merge(&recorder);
    }
    let check = check_reservations(clients, &workload, 100_000_000).await?;
    let passed = check.passed;
    let extra = serde_json::json!({ "capacity_per_s": capacity, "baseline_p99_ms": baseline_p99, "phases": phases });
    let report = build_report(
        args,
        "overload",
        &total,
        duration * args.multipliers.len() as u32,
        Some(check),
        extra,
    );
    save(args, &report, &total)?;
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
    let stocked = 1_000_000;
    stock(clients, run, &positions, stocked).await?;
    let callers = args.concurrency.max(args.max_outstanding.min(100_000));
    let workload = Arc::new(Mixed {
        clients: Arc::clone(clients),
        run: run.to_owned(),
        expected: (0..positions.len()).map(|_| Expected::default()).collect(),
        positions,
        hot,
        hot_share: args.hot_sku_share,
        callers: (0..callers)
            .map(|_| Mutex::new(CallerState::default()))
            .collect(),
    });
    let duration = Duration::from_secs_f64(args.duration);
    let recorder = drive(args, Arc::clone(&workload) as Arc<dyn Workload>, duration).await;
    let check = check_mixed(clients, &workload, stocked).await?;
    let passed = check.passed;
    let name = if hot.is_some() { "mixed-hot" } else { "mixed" };
    let report = build_report(
        args,
        name,
        &recorder,
        duration,
        Some(check),
        serde_json::Value::Null,
    );
    save(args, &report, &recorder)?;
    Ok(passed)
}

async fn returns_surge(clients: &Arc<Clients>, args: &Args, run: &str) -> anyhow::Result<bool> {
    let callers = args.concurrency.max(1);
    let workload = Arc::new(ReturnsSurge {
        clients: Arc::clone(clients),
        run: run.to_owned(),
        tenant: args.tenant.clone(),
        callers: (0..callers).map(|_| Mutex::new((0, 0))).collect(),
        closed: AtomicU64::new(0),
        restocked: (0..callers).map(|_| AtomicI64::new(0)).collect(),
        uncertain: AtomicBool::new(false),
    });
    let closed = Args {
        rate: None,
        ..args.clone()
    };
    let duration = Duration::from_secs_f64(args.duration);
    let recorder = drive(
        &closed,
        Arc::clone(&workload) as Arc<dyn Workload>,
        duration,
    )
    .await;
    // Every acknowledged restock reaches its SKU's position exactly once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let uncertain = workload.uncertain.load(Ordering::Relaxed);
    let mut failures = Vec::new();
    let mut quality_control_left = 0;
    for (caller, restocked) in workload.restocked.iter().enumerate() {
        let restocked = restocked.load(Ordering::Relaxed);
        let sku = format!("{run}-SHIRT-{caller}");
        let buckets = if restocked == 0 && !uncertain {
            pb::Buckets::default()
        } else {
            read_position(clients, &pkey(&args.tenant, &sku, "DC1")).await?
        };
        quality_control_left += buckets.quality_control;
        let fits = if uncertain {
            buckets.available >= restocked
        } else {
            buckets.available == restocked
        };
        if !fits || buckets.available < 0 {
            failures.push(format!(
                "{sku}: restocked {restocked} acknowledged, available {}",
                buckets.available
            ));
        }
    }
    let check = Check {
        passed: failures.is_empty(),
        positions_checked: workload.restocked.len(),
        positions_with_unknown_outcomes: usize::from(uncertain),
        failures,
    };
    let extra = serde_json::json!({
        "cases_closed": workload.closed.load(Ordering::Relaxed),
        "transitions_per_s": recorder.ok_count() as f64 / duration.as_secs_f64(),
        "quality_control_left": quality_control_left,
    });
    let ok = check.passed;
    let report = build_report(
        args,
        "returns-surge",
        &recorder,
        duration,
        Some(check),
        extra,
    );
    save(args, &report, &recorder)?;
    Ok(ok)
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let _node = if args.spawn_node {
            let (node, endpoint) = spawn_node().await?;
            args.endpoint = endpoint;
            args.node_pid = Some(node.child.id());
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
        let mut inventory = Vec::new();
        let mut returns = Vec::new();
        for _ in 0..args.connections.max(1) {
            let channel = Endpoint::from_shared(args.endpoint.clone())?
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
                .with_context(|| format!("cannot reach skuld at {}", args.endpoint))?;
            inventory.push(InventoryServiceClient::new(channel.clone()));
            returns.push(ReturnsServiceClient::new(channel));
        }
        let clients = Arc::new(Clients {
            inventory,
            returns,
            timeout: Duration::from_millis(args.timeout_ms),
        });
        let passed = match args.scenario {
            Scenario::Spread => {
                reservation_scenario(&clients, &args, &run, Picker::Uniform, "spread").await?
            }
            Scenario::Hot => {
                reservation_scenario(&clients, &args, &run, Picker::One, "hot").await?
            }
            Scenario::Zipf => {
                reservation_scenario(&clients, &args, &run, Picker::Zipf, "zipf").await?
            }
            Scenario::Mixed => mixed(&clients, &args, &run).await?,
            Scenario::Overload => overload(&clients, &args, &run).await?,
            Scenario::ReturnsSurge => returns_surge(&clients, &args, &run).await?,
        };
        if !passed {
            bail!("correctness check FAILED");
        }
        Ok(())
    })
}
