//! A contended inventory workload with a client-side history, and the check
//! of that history against what the cluster stored.
//!
//! Callers reserve, release, commit, receive, write off and move stock on a
//! few positions whose stock is smaller than the demand, so refusals are
//! common and an oversell would show. Every operation has its own
//! idempotency key and is retried with that key, through random nodes, on
//! every error that leaves its outcome open (UNAVAILABLE, RESOURCE_EXHAUSTED,
//! DEADLINE_EXCEEDED, a broken connection), for a bounded time; then its
//! outcome is unknown. Adjustments and moves have no natural id, so a double
//! apply of a retried one shows in the totals.
//!
//! The check ([`Workload::finish`]) first resolves every unknown operation by
//! sending it again with its key (the first answer, if there was one, comes
//! back; otherwise it is decided now), then requires of every position:
//! `on_hand` is the initial stock plus exactly the applied adjustments,
//! `damaged` exactly the applied moves, the active reservations exactly the
//! applied reservations not released or committed, `reserved` and
//! `committed` their quantities, the commitments exactly the applied
//! commits, and no bucket negative (no oversell). A refusal an operation
//! cannot legitimately get (a release of a held reservation refused, a
//! retry answered "key already used") fails the check too.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use skuld_proto::v1 as pb;
use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
use tokio::sync::RwLock;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::requests::{commit, header, key, receive, release, reserve};
use crate::{check_buckets, position_with_all_reservations};

type Inventory = InventoryServiceClient<Channel>;

/// How long a client keeps retrying one operation before calling its
/// outcome unknown.
const RETRY_BUDGET: Duration = Duration::from_secs(8);
/// How long the check keeps resending an unknown operation.
const RESOLVE_BUDGET: Duration = Duration::from_secs(30);
const TTL_SECONDS: i64 = 3_600;

/// The shape of a workload.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// The tenant of its positions, so workloads do not share positions.
    pub tenant: String,
    pub positions: usize,
    /// Initial stock of every position.
    pub stock: i64,
    pub callers: usize,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            tenant: "contended".into(),
            positions: 8,
            stock: 40,
            callers: 8,
        }
    }
}

/// What one operation asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    Reserve {
        reservation_id: String,
        quantity: i64,
    },
    Release {
        reservation_id: String,
        quantity: i64,
    },
    Commit {
        reservation_id: String,
        quantity: i64,
    },
    /// On the available bucket; negative writes stock off.
    Adjust { delta: i64 },
    /// Available to damaged.
    Move { quantity: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub position: usize,
    pub idempotency_key: String,
    pub ask: Ask,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Refused {
        code: Code,
        message: String,
    },
    /// No definitive answer within the retry budget.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Record {
    pub op: Op,
    pub outcome: Outcome,
    /// When the client first sent it, since the workload started.
    pub sent_at: Duration,
    /// How long the client waited for its answer, retries included.
    pub waited: Duration,
}

/// What the clients saw.
#[derive(Debug, Default)]
pub struct History {
    pub records: Vec<Record>,
    /// Every failed attempt by status code, retried or not.
    pub attempt_errors: BTreeMap<String, u64>,
    /// Operations answered only after more than one attempt.
    pub retried: u64,
}

impl History {
    fn merge(&mut self, other: History) {
        self.records.extend(other.records);
        for (code, count) in other.attempt_errors {
            *self.attempt_errors.entry(code).or_default() += count;
        }
        self.retried += other.retried;
    }

    fn count(&self, outcome: impl Fn(&Outcome) -> bool) -> usize {
        self.records
            .iter()
            .filter(|record| outcome(&record.outcome))
            .count()
    }

    pub fn applied(&self) -> usize {
        self.count(|outcome| *outcome == Outcome::Applied)
    }

    pub fn unknown(&self) -> usize {
        self.count(|outcome| *outcome == Outcome::Unknown)
    }

    pub fn summary(&self) -> String {
        format!(
            "{} operations: {} applied ({} after retries), {} refused, {} unknown; failed attempts by code: {:?}",
            self.records.len(),
            self.applied(),
            self.retried,
            self.count(|outcome| matches!(outcome, Outcome::Refused { .. })),
            self.unknown(),
            self.attempt_errors
        )
    }
}

pub async fn channel(addr: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

/// xorshift64*: enough to spread keys, nodes and faults; seeded, so a
/// schedule can be replayed.
pub fn next_random(seed: &mut u64) -> u64 {
    *seed ^= *seed >> 12;
    *seed ^= *seed << 25;
    *seed ^= *seed >> 27;
    seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// One client connection per node, made when first needed.
#[derive(Default)]
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

/// The workload's positions.
pub struct Positions {
    tenant: String,
}

impl Positions {
    pub fn key(&self, index: usize) -> pb::PositionKey {
        key(&self.tenant, &format!("sku-{index}"), "dc-1")
    }
}

async fn send(
    client: &mut Inventory,
    position: &pb::PositionKey,
    op: &Op,
) -> Result<(), tonic::Status> {
    let key = op.idempotency_key.as_str();
    let timeout = Duration::from_secs(3);
    macro_rules! call {
        ($method:ident, $message:expr) => {{
            let mut request = tonic::Request::new($message);
            request.set_timeout(timeout);
            client.$method(request).await.map(|_| ())
        }};
    }
    match &op.ask {
        Ask::Reserve {
            reservation_id,
            quantity,
        } => call!(
            reserve,
            pb::ReserveRequest {
                reservation_id: reservation_id.clone(),
                ..reserve(position, key, *quantity, TTL_SECONDS)
            }
        ),
        Ask::Release { reservation_id, .. } => {
            call!(release_reservation, release(position, key, reservation_id))
        }
        Ask::Commit { reservation_id, .. } => call!(
            commit_reservation,
            commit(position, key, reservation_id, 0, reservation_id)
        ),
        Ask::Adjust { delta } => call!(adjust, receive(position, key, *delta)),
        Ask::Move { quantity } => call!(
            r#move,
            pb::MoveRequest {
                header: header(position, key),
                from_bucket: pb::Bucket::Available.into(),
                to_bucket: pb::Bucket::Damaged.into(),
                quantity: *quantity,
                reason: pb::AdjustmentReason::Damage.into(),
                from_change_from: None,
                to_change_from: None,
                reference_document_uri: String::new(),
            }
        ),
    }
}

/// Sends one operation, retrying with its key through random nodes within
/// `budget`. Returns the outcome and the number of attempts.
async fn send_with_retries(
    clients: &mut Clients,
    addresses: &RwLock<Vec<String>>,
    positions: &Positions,
    op: &Op,
    seed: &mut u64,
    errors: &mut BTreeMap<String, u64>,
    budget: Duration,
) -> (Outcome, u32) {
    let position = positions.key(op.position);
    let started = Instant::now();
    let mut attempts = 0;
    while started.elapsed() < budget {
        attempts += 1;
        let addr = {
            let addresses = addresses.read().await;
            if addresses.is_empty() {
                drop(addresses);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            addresses[next_random(seed) as usize % addresses.len()].clone()
        };
        let result = match clients.get(&addr).await {
            Ok(mut client) => {
                match tokio::time::timeout(Duration::from_secs(4), send(&mut client, &position, op))
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(tonic::Status::deadline_exceeded("client timeout")),
                }
            }
            Err(status) => Err(status),
        };
        match result {
            Ok(()) => return (Outcome::Applied, attempts),
            Err(status) => {
                *errors.entry(format!("{:?}", status.code())).or_default() += 1;
                if !skuld_proto::retry::worth_retrying(status.code()) {
                    return (
                        Outcome::Refused {
                            code: status.code(),
                            message: status.message().to_owned(),
                        },
                        attempts,
                    );
                }
                if status.code() != Code::Unavailable {
                    // A broken channel stays broken: connect afresh next time.
                    clients.channels.remove(&addr);
                }
                tokio::time::sleep(Duration::from_millis(50 + next_random(seed) % 100)).await;
            }
        }
    }
    (Outcome::Unknown, attempts)
}

/// Callers running the contended operation mix until stopped.
pub struct Workload {
    stop: Arc<AtomicBool>,
    addresses: Arc<RwLock<Vec<String>>>,
    callers: Vec<JoinHandle<History>>,
    config: WorkloadConfig,
    started: Instant,
}

/// Retries a setup call while its outcome is open, for up to 30 s.
pub async fn retry_setup<F, Fut>(mut call: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let started = Instant::now();
    loop {
        match call().await {
            Ok(()) => return Ok(()),
            Err(status)
                if skuld_proto::retry::worth_retrying(status.code())
                    && started.elapsed() < Duration::from_secs(30) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => bail!("setup call failed: {status}"),
        }
    }
}

impl Workload {
    /// Stocks the positions through `addresses[0]` and starts the callers.
    pub async fn start(addresses: Vec<String>, config: WorkloadConfig) -> anyhow::Result<Self> {
        let first = addresses.first().context("no node to send to")?.clone();
        let client = InventoryServiceClient::new(channel(&first).await?);
        let positions = Positions {
            tenant: config.tenant.clone(),
        };
        for index in 0..config.positions {
            let request = receive(
                &positions.key(index),
                &format!("stock-{index}"),
                config.stock,
            );
            retry_setup(|| {
                let mut client = client.clone();
                let request = request.clone();
                async move { client.adjust(request).await.map(|_| ()) }
            })
            .await?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let addresses = Arc::new(RwLock::new(addresses));
        let started = Instant::now();
        let callers = (0..config.callers)
            .map(|caller| {
                tokio::spawn(run_caller(
                    caller,
                    config.clone(),
                    Arc::clone(&stop),
                    Arc::clone(&addresses),
                    started,
                ))
            })
            .collect();
        Ok(Self {
            stop,
            addresses,
            callers,
            config,
            started,
        })
    }

    /// When the callers started: [`Record::sent_at`] counts from here.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Replaces the nodes the callers send to (what a load balancer does
    /// when a node is added, restarted elsewhere or about to stop).
    pub async fn set_addresses(&self, addresses: Vec<String>) {
        *self.addresses.write().await = addresses;
    }

    /// Stops the callers and checks their history against the cluster
    /// (through `addresses`); fails when fewer than `min_applied`
    /// operations were applied. Prints what the callers saw under `label`.
    pub async fn finish(
        self,
        addresses: Vec<String>,
        label: &str,
        min_applied: usize,
    ) -> anyhow::Result<History> {
        let ran_for = self.started.elapsed();
        self.stop.store(true, Ordering::Release);
        let mut history = History::default();
        for caller in self.callers {
            history.merge(caller.await.context("a caller panicked")?);
        }
        eprintln!(
            "{label}: {} in {ran_for:.1?} ({:.0} applied/s)",
            history.summary(),
            history.applied() as f64 / ran_for.as_secs_f64()
        );
        let resolved = verify(addresses, &self.config, &mut history).await?;
        eprintln!("{label}: {resolved} unknown outcomes resolved; history verified");
        if history.applied() < min_applied {
            bail!(
                "{label}: only {} operations applied (at least {min_applied} expected)",
                history.applied()
            );
        }
        Ok(history)
    }
}

async fn run_caller(
    caller: usize,
    config: WorkloadConfig,
    stop: Arc<AtomicBool>,
    addresses: Arc<RwLock<Vec<String>>>,
    started: Instant,
) -> History {
    let positions = Positions {
        tenant: config.tenant.clone(),
    };
    let mut history = History::default();
    let mut clients = Clients::default();
    let mut seed = 0x9e37_79b9_7f4a_7c15 ^ (caller as u64 + 1);
    let mut sequence = 0u64;
    // Reservations this caller holds: (position, id, quantity).
    let mut held: Vec<(usize, String, i64)> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        sequence += 1;
        let idempotency_key = format!("c{caller}-{sequence}");
        let dice = next_random(&mut seed) % 100;
        let mut random_position = || next_random(&mut seed) as usize % config.positions;
        let op = if (40..70).contains(&dice) && !held.is_empty() {
            let index = next_random(&mut seed) as usize % held.len();
            let (position, reservation_id, quantity) = held.swap_remove(index);
            let ask = if dice < 55 {
                Ask::Release {
                    reservation_id,
                    quantity,
                }
            } else {
                Ask::Commit {
                    reservation_id,
                    quantity,
                }
            };
            Op {
                position,
                idempotency_key,
                ask,
            }
        } else if (70..85).contains(&dice) {
            let position = random_position();
            Op {
                position,
                idempotency_key,
                ask: Ask::Adjust {
                    delta: 1 + (next_random(&mut seed) % 3) as i64,
                },
            }
        } else if (85..92).contains(&dice) {
            Op {
                position: random_position(),
                idempotency_key,
                ask: Ask::Adjust { delta: -1 },
            }
        } else if dice >= 92 {
            Op {
                position: random_position(),
                idempotency_key,
                ask: Ask::Move { quantity: 1 },
            }
        } else {
            let position = random_position();
            Op {
                position,
                ask: Ask::Reserve {
                    reservation_id: idempotency_key.clone(),
                    quantity: 1 + (next_random(&mut seed) % 3) as i64,
                },
                idempotency_key,
            }
        };
        let sent = Instant::now();
        let (outcome, attempts) = send_with_retries(
            &mut clients,
            &addresses,
            &positions,
            &op,
            &mut seed,
            &mut history.attempt_errors,
            RETRY_BUDGET,
        )
        .await;
        let waited = sent.elapsed();
        let sent_at = sent.duration_since(started);
        if outcome == Outcome::Applied {
            if attempts > 1 {
                history.retried += 1;
            }
            if let Ask::Reserve {
                reservation_id,
                quantity,
            } = &op.ask
            {
                held.push((op.position, reservation_id.clone(), *quantity));
            }
        }
        history.records.push(Record {
            op,
            outcome,
            sent_at,
            waited,
        });
    }
    history
}

/// Which refusals an operation may legitimately get: stock short for a
/// reservation, a write-off or a move; nothing for a release or a commit of
/// a reservation the caller holds, or for a receipt.
fn refusal_allowed(ask: &Ask, code: Code) -> bool {
    match ask {
        Ask::Reserve { .. } | Ask::Move { .. } => code == Code::FailedPrecondition,
        Ask::Adjust { delta } if *delta < 0 => code == Code::FailedPrecondition,
        Ask::Adjust { .. } | Ask::Release { .. } | Ask::Commit { .. } => false,
    }
}

/// What a position must hold after the history.
#[derive(Debug, Default, PartialEq, Eq)]
struct Expected {
    on_hand: i64,
    damaged: i64,
    committed: i64,
    /// Active reservations: id -> quantity.
    held: BTreeMap<String, i64>,
    /// Commitments: order ref -> quantity.
    commitments: BTreeMap<String, i64>,
}

/// Resolves unknown outcomes, then checks every position against the
/// history. Returns how many unknowns were resolved.
async fn verify(
    addresses: Vec<String>,
    config: &WorkloadConfig,
    history: &mut History,
) -> anyhow::Result<usize> {
    let positions = Positions {
        tenant: config.tenant.clone(),
    };
    let addresses_lock = RwLock::new(addresses.clone());
    let mut clients = Clients::default();
    let mut seed = 7;
    let mut errors = BTreeMap::new();
    let mut resolved = 0;
    for record in history.records.iter_mut() {
        if record.outcome != Outcome::Unknown {
            continue;
        }
        let (outcome, _) = send_with_retries(
            &mut clients,
            &addresses_lock,
            &positions,
            &record.op,
            &mut seed,
            &mut errors,
            RESOLVE_BUDGET,
        )
        .await;
        if outcome == Outcome::Unknown {
            bail!("cannot resolve the unknown outcome of {:?}", record.op);
        }
        record.outcome = outcome;
        resolved += 1;
    }
    let mut violations = Vec::new();
    let mut expected: Vec<Expected> = (0..config.positions)
        .map(|_| Expected {
            on_hand: config.stock,
            ..Expected::default()
        })
        .collect();
    let mut keys = BTreeSet::new();
    for record in &history.records {
        if !keys.insert(record.op.idempotency_key.clone()) {
            bail!("the workload used {} twice", record.op.idempotency_key);
        }
        match &record.outcome {
            Outcome::Applied => {}
            Outcome::Refused { code, message } => {
                if !refusal_allowed(&record.op.ask, *code) {
                    violations.push(format!("{:?} refused with {code:?}: {message}", record.op));
                }
                continue;
            }
            Outcome::Unknown => bail!("unresolved outcome of {:?}", record.op),
        }
        let position = &mut expected[record.op.position];
        match &record.op.ask {
            Ask::Reserve {
                reservation_id,
                quantity,
            } => {
                position.held.insert(reservation_id.clone(), *quantity);
            }
            Ask::Release { reservation_id, .. } => {
                position.held.remove(reservation_id);
            }
            Ask::Commit {
                reservation_id,
                quantity,
            } => {
                position.held.remove(reservation_id);
                position.committed += quantity;
                position
                    .commitments
                    .insert(reservation_id.clone(), *quantity);
            }
            Ask::Adjust { delta } => position.on_hand += delta,
            Ask::Move { quantity } => position.damaged += quantity,
        }
    }
    let first = addresses.first().context("no node to read from")?;
    let mut client = InventoryServiceClient::new(channel(first).await?);
    for (index, want) in expected.iter().enumerate() {
        let key = positions.key(index);
        let (state, reservations) = position_with_all_reservations(&mut client, &key)
            .await
            .with_context(|| format!("reading {key:?}"))?;
        let buckets = state.buckets.context("position without buckets")?;
        if let Err(error) = check_buckets(&buckets) {
            violations.push(format!("{key:?}: {error:#}"));
        }
        let found = Expected {
            on_hand: buckets.on_hand,
            damaged: buckets.damaged,
            committed: buckets.committed,
            held: reservations
                .iter()
                .map(|reservation| (reservation.reservation_id.clone(), reservation.quantity))
                .collect(),
            commitments: state
                .commitments
                .iter()
                .map(|commitment| (commitment.order_ref.clone(), commitment.quantity))
                .collect(),
        };
        let reserved: i64 = want.held.values().sum();
        if buckets.reserved != reserved {
            violations.push(format!(
                "{key:?}: reserved {} but the applied reservations hold {reserved}",
                buckets.reserved
            ));
        }
        if &found != want {
            violations.push(describe_difference(&key, want, &found));
        }
    }
    if !violations.is_empty() {
        bail!(
            "the history does not match the store ({} violations):\n{}",
            violations.len(),
            violations.join("\n")
        );
    }
    Ok(resolved)
}

fn describe_difference(key: &pb::PositionKey, want: &Expected, found: &Expected) -> String {
    let mut parts = Vec::new();
    if want.on_hand != found.on_hand {
        parts.push(format!(
            "on_hand {} (history says {}: an adjustment lost or applied twice)",
            found.on_hand, want.on_hand
        ));
    }
    if want.damaged != found.damaged {
        parts.push(format!(
            "damaged {} (history says {}: a move lost or applied twice)",
            found.damaged, want.damaged
        ));
    }
    if want.committed != found.committed {
        parts.push(format!(
            "committed {} (history says {})",
            found.committed, want.committed
        ));
    }
    let missing: Vec<_> = want
        .held
        .keys()
        .filter(|id| !found.held.contains_key(*id))
        .take(5)
        .collect();
    let extra: Vec<_> = found
        .held
        .keys()
        .filter(|id| !want.held.contains_key(*id))
        .take(5)
        .collect();
    if !missing.is_empty() || !extra.is_empty() || want.held != found.held {
        parts.push(format!(
            "reservations: {} held, {} expected; lost e.g. {missing:?}, unexpected e.g. {extra:?}",
            found.held.len(),
            want.held.len()
        ));
    }
    if want.commitments != found.commitments {
        parts.push(format!(
            "commitments: {} stored, {} expected",
            found.commitments.len(),
            want.commitments.len()
        ));
    }
    format!("{key:?}: {}", parts.join("; "))
}
