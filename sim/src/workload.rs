//! The contended workload the simulated clients run, the prober that
//! watches every node serve, and the read-back after healing.
//!
//! Clients reserve, release, commit and adjust on a few positions whose
//! stock is below the demand, so refusals are common and an oversell would
//! show. Every operation has its own idempotency key and is retried with
//! it, through random nodes, while its outcome is open (UNAVAILABLE,
//! DEADLINE_EXCEEDED, UNKNOWN, CANCELLED, ...), for a bounded simulated
//! time; then its outcome is unknown until the read-back resends it.
//! All randomness comes from the seed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use skuld_proto::v1 as pb;
use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
use tonic::transport::Channel;
use tonic::Code;

use crate::history::{Ask, History, Op, Outcome, Record};
use crate::net;
use crate::rng::Rng;
use crate::trace::{sim_now, Trace};

type Inventory = InventoryServiceClient<Channel>;

/// How long a client keeps retrying one operation before its outcome is
/// unknown (more than a lease TTL, so a handoff usually ends within it).
const RETRY_BUDGET: Duration = Duration::from_secs(8);
/// How long the read-back keeps resending an unknown operation.
const RESOLVE_BUDGET: Duration = Duration::from_secs(20);
/// The deadline of one attempt, sent as grpc-timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Reservations outlive the simulation: an expiry would be a legitimate
/// change the history does not model.
const RESERVATION_TTL_SECONDS: i64 = 3_600;

/// The shape of a workload.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub tenant: String,
    pub positions: usize,
    /// Initial stock of every position.
    pub stock: i64,
    pub clients: usize,
    /// The client API of every node (`http://node-1:7070`).
    pub nodes: Vec<String>,
    /// Simulated time at which clients stop starting operations.
    pub stop_at: Duration,
    /// Simulated time after which the read-back may start (every fault
    /// healed, the cluster given time to settle).
    pub read_back_at: Duration,
    pub seed: u64,
}

impl WorkloadConfig {
    pub fn key(&self, position: usize) -> pb::PositionKey {
        pb::PositionKey {
            tenant: self.tenant.clone(),
            sku: format!("sku-{position}"),
            location: "dc-1".into(),
        }
    }
}

/// What one node was seen doing by the prober: simulated times of its
/// probes and whether each was answered.
#[derive(Debug, Clone, Default)]
pub struct Probes {
    pub answered: Vec<(Duration, bool)>,
}

/// A position as read back after healing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    pub buckets: pb::Buckets,
    /// Active reservations: id -> quantity still held.
    pub held: BTreeMap<String, i64>,
    /// Commitments: order ref -> quantity.
    pub commitments: BTreeMap<String, i64>,
}

/// What the client hosts share with each other and with the checker. All
/// hosts run on one thread, one at a time, so the locks never wait.
#[derive(Clone, Default)]
pub struct Shared {
    pub history: Arc<Mutex<History>>,
    pub probes: Arc<Mutex<BTreeMap<String, Probes>>>,
    /// The positions as read back, one per index, once the read-back ran.
    pub observed: Arc<Mutex<Option<Vec<Observed>>>>,
    stocked: Arc<AtomicBool>,
    clients_done: Arc<AtomicUsize>,
}

/// One lazy channel per node, dialled through the simulated network.
struct Nodes {
    endpoints: Vec<String>,
    clients: BTreeMap<usize, Inventory>,
}

impl Nodes {
    fn new(endpoints: &[String]) -> Self {
        Self {
            endpoints: endpoints.to_vec(),
            clients: BTreeMap::new(),
        }
    }

    fn get(&mut self, index: usize) -> Result<Inventory, tonic::Status> {
        if let Some(client) = self.clients.get(&index) {
            return Ok(client.clone());
        }
        let endpoint = self
            .endpoints
            .get(index)
            .ok_or_else(|| tonic::Status::internal(format!("no node {index}")))?;
        let channel = net::channel(endpoint, Duration::from_secs(1))
            .map_err(|error| tonic::Status::internal(format!("{endpoint}: {error}")))?;
        let client = InventoryServiceClient::new(channel);
        self.clients.insert(index, client.clone());
        Ok(client)
    }

    /// Forgets a node's channel: a connection that timed out may be stuck
    /// behind a held link, so the next attempt dials afresh.
    fn reset(&mut self, index: usize) {
        self.clients.remove(&index);
    }
}

fn header(key: &pb::PositionKey, idempotency_key: &str) -> Option<pb::MutationHeader> {
    Some(pb::MutationHeader {
        key: Some(key.clone()),
        idempotency_key: idempotency_key.into(),
        expected_version: None,
    })
}

/// One attempt of `op` through `client`.
async fn send(client: &mut Inventory, key: &pb::PositionKey, op: &Op) -> Result<(), tonic::Status> {
    let idempotency_key = op.idempotency_key.as_str();
    macro_rules! call {
        ($method:ident, $message:expr) => {{
            let mut request = tonic::Request::new($message);
            request.set_timeout(CALL_TIMEOUT);
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
                header: header(key, idempotency_key),
                reservation_id: reservation_id.clone(),
                quantity: *quantity,
                owner: Some(pb::ReservationOwner {
                    r#type: pb::OwnerType::Cart.into(),
                    id: "cart".into(),
                    line_id: String::new(),
                }),
                channel: "web".into(),
                ttl_seconds: RESERVATION_TTL_SECONDS,
                allow_partial: false,
            }
        ),
        Ask::Release { reservation_id, .. } => call!(
            release_reservation,
            pb::ReleaseReservationRequest {
                header: header(key, idempotency_key),
                reservation_id: reservation_id.clone(),
            }
        ),
        Ask::Commit { reservation_id, .. } => call!(
            commit_reservation,
            pb::CommitReservationRequest {
                header: header(key, idempotency_key),
                reservation_id: reservation_id.clone(),
                quantity: 0,
                order_ref: reservation_id.clone(),
            }
        ),
        Ask::Adjust { delta } => call!(
            adjust,
            pb::AdjustRequest {
                header: header(key, idempotency_key),
                bucket: pb::Bucket::Available.into(),
                delta: *delta,
                reason: pb::AdjustmentReason::Receipt.into(),
                change_from: None,
                reference_document_uri: String::new(),
            }
        ),
    }
}

/// How an operation ended after its retries.
struct Sent {
    outcome: Outcome,
    attempts: u32,
    /// The node that gave the deciding answer.
    via: Option<usize>,
}

/// Sends `op`, retrying with its key through random nodes while its
/// outcome is open, for `budget` of simulated time.
async fn send_with_retries(
    nodes: &mut Nodes,
    config: &WorkloadConfig,
    op: &Op,
    rng: &mut Rng,
    errors: &mut BTreeMap<String, u64>,
    budget: Duration,
) -> Sent {
    let key = config.key(op.position);
    let started = tokio::time::Instant::now();
    let mut attempts = 0;
    while started.elapsed() < budget {
        attempts += 1;
        let node = rng.index(config.nodes.len());
        let result = match nodes.get(node) {
            Ok(mut client) => {
                match tokio::time::timeout(
                    CALL_TIMEOUT + Duration::from_secs(1),
                    send(&mut client, &key, op),
                )
                .await
                {
                    Ok(result) => result,
                    Err(_) => Err(tonic::Status::deadline_exceeded("client timeout")),
                }
            }
            Err(status) => Err(status),
        };
        match result {
            Ok(()) => {
                return Sent {
                    outcome: Outcome::Applied,
                    attempts,
                    via: Some(node),
                }
            }
            Err(status) => {
                *errors.entry(format!("{:?}", status.code())).or_default() += 1;
                if !skuld_proto::retry::worth_retrying(status.code()) {
                    return Sent {
                        outcome: Outcome::Refused {
                            code: status.code(),
                            message: status.message().to_owned(),
                        },
                        attempts,
                        via: Some(node),
                    };
                }
                if status.code() != Code::Unavailable {
                    nodes.reset(node);
                }
                tokio::time::sleep(Duration::from_millis(rng.between(50, 150))).await;
            }
        }
    }
    Sent {
        outcome: Outcome::Unknown,
        attempts,
        via: None,
    }
}

fn describe(sent: &Sent, config: &WorkloadConfig) -> String {
    let via = sent
        .via
        .and_then(|node| config.nodes.get(node))
        .map_or("-", String::as_str);
    format!(
        "{} after {} attempts via {via}",
        sent.outcome, sent.attempts
    )
}

/// Stocks every position (client 1 does it; the others wait for it).
async fn stock(
    nodes: &mut Nodes,
    config: &WorkloadConfig,
    rng: &mut Rng,
    trace: &Trace,
    host: &str,
) -> Result<(), String> {
    for position in 0..config.positions {
        let op = Op {
            position,
            idempotency_key: format!("stock-{position}"),
            ask: Ask::Adjust {
                delta: config.stock,
            },
        };
        let mut errors = BTreeMap::new();
        // The cluster may still be forming: keep at it.
        let sent = send_with_retries(
            nodes,
            config,
            &op,
            rng,
            &mut errors,
            Duration::from_secs(30),
        )
        .await;
        trace.event(host, format_args!("{op} -> {}", describe(&sent, config)));
        if sent.outcome != Outcome::Applied {
            return Err(format!(
                "cannot stock position {position}: {}",
                sent.outcome
            ));
        }
    }
    Ok(())
}

/// The next operation of a client: mostly reservations, which outrun the
/// stock; releases and commits of what it holds; receipts and write-offs.
fn next_op(
    rng: &mut Rng,
    config: &WorkloadConfig,
    client: usize,
    sequence: u64,
    held: &mut Vec<(usize, String, i64)>,
) -> Op {
    let idempotency_key = format!("c{client}-{sequence}");
    let dice = rng.below(100);
    if (40..70).contains(&dice) && !held.is_empty() {
        let (position, reservation_id, quantity) = held.swap_remove(rng.index(held.len()));
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
        return Op {
            position,
            idempotency_key,
            ask,
        };
    }
    let position = rng.index(config.positions);
    let ask = if (70..85).contains(&dice) {
        Ask::Adjust {
            delta: rng.between(1, 3) as i64,
        }
    } else if dice >= 85 {
        Ask::Adjust { delta: -1 }
    } else {
        Ask::Reserve {
            reservation_id: idempotency_key.clone(),
            quantity: rng.between(1, 3) as i64,
        }
    };
    Op {
        position,
        idempotency_key,
        ask,
    }
}

/// One workload client (`index` from 1): runs operations until
/// `config.stop_at` and records every outcome in the shared history.
pub async fn run_client(
    index: usize,
    config: Arc<WorkloadConfig>,
    shared: Shared,
    trace: Trace,
) -> turmoil::Result {
    let host = format!("client-{index}");
    let mut nodes = Nodes::new(&config.nodes);
    let mut rng = Rng::derive(config.seed, 1_000 + index as u64);
    if index == 1 {
        stock(&mut nodes, &config, &mut rng, &trace, &host).await?;
        shared.stocked.store(true, Ordering::Release);
    } else {
        while !shared.stocked.load(Ordering::Acquire) {
            if sim_now() >= config.stop_at {
                return Err("the positions were never stocked".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut held = Vec::new();
    let mut sequence = 0;
    let mut errors = BTreeMap::new();
    while sim_now() < config.stop_at {
        sequence += 1;
        let op = next_op(&mut rng, &config, index, sequence, &mut held);
        let sent_at = sim_now();
        let sent = send_with_retries(
            &mut nodes,
            &config,
            &op,
            &mut rng,
            &mut errors,
            RETRY_BUDGET,
        )
        .await;
        trace.event(&host, format_args!("{op} -> {}", describe(&sent, &config)));
        if sent.outcome == Outcome::Applied {
            if let Ask::Reserve {
                reservation_id,
                quantity,
            } = &op.ask
            {
                held.push((op.position, reservation_id.clone(), *quantity));
            }
        }
        shared.history.lock().records.push(Record {
            op,
            outcome: sent.outcome,
            sent_at,
            answered_at: sim_now(),
            attempts: sent.attempts,
            resolved: false,
        });
    }
    {
        let mut history = shared.history.lock();
        for (code, count) in errors {
            *history.attempt_errors.entry(code).or_default() += count;
        }
    }
    shared.clients_done.fetch_add(1, Ordering::AcqRel);
    Ok(())
}

/// Asks every node for a position every `interval` until `until`, and
/// records whether it answered: the evidence of liveness. The prober's own
/// links are never cut.
pub async fn run_prober(
    config: Arc<WorkloadConfig>,
    shared: Shared,
    interval: Duration,
    until: Duration,
) -> turmoil::Result {
    let mut nodes = Nodes::new(&config.nodes);
    let mut round = 0usize;
    while sim_now() < until {
        for (index, endpoint) in config.nodes.iter().enumerate() {
            let key = config.key(round % config.positions.max(1));
            let answered = match nodes.get(index) {
                Ok(mut client) => {
                    let mut request = tonic::Request::new(pb::GetPositionRequest {
                        key: Some(key),
                        ..pb::GetPositionRequest::default()
                    });
                    request.set_timeout(Duration::from_millis(800));
                    let call = client.get_position(request);
                    matches!(
                        tokio::time::timeout(Duration::from_secs(1), call).await,
                        Ok(Ok(_))
                    )
                }
                Err(_) => false,
            };
            if !answered {
                nodes.reset(index);
            }
            shared
                .probes
                .lock()
                .entry(endpoint.clone())
                .or_default()
                .answered
                .push((sim_now(), answered));
        }
        round += 1;
        tokio::time::sleep(interval).await;
    }
    Ok(())
}

/// Reads a position with all its reservations.
async fn read_position(
    client: &mut Inventory,
    key: &pb::PositionKey,
) -> Result<Observed, tonic::Status> {
    let mut observed = Observed::default();
    let mut page_token = String::new();
    let mut version = None;
    loop {
        let mut request = tonic::Request::new(pb::GetPositionRequest {
            key: Some(key.clone()),
            reservations_page_size: 1_000,
            reservations_page_token: page_token.clone(),
        });
        request.set_timeout(CALL_TIMEOUT);
        let position = client
            .get_position(request)
            .await?
            .into_inner()
            .position
            .ok_or_else(|| tonic::Status::internal("GetPosition answered without a position"))?;
        if *version.get_or_insert(position.version) != position.version {
            return Err(tonic::Status::aborted("the position changed while paging"));
        }
        observed.buckets = position.buckets.unwrap_or_default();
        observed.held.extend(
            position
                .reservations
                .iter()
                .map(|reservation| (reservation.reservation_id.clone(), reservation.quantity)),
        );
        observed.commitments = position
            .commitments
            .iter()
            .map(|commitment| (commitment.order_ref.clone(), commitment.quantity))
            .collect();
        if position.next_reservations_page_token.is_empty() {
            return Ok(observed);
        }
        page_token = position.next_reservations_page_token;
    }
}

/// After the workload stopped and every fault healed: resends every
/// operation whose outcome is unknown (same key: the first answer comes
/// back, or it is decided now), then reads every position back.
pub async fn run_read_back(
    config: Arc<WorkloadConfig>,
    shared: Shared,
    trace: Trace,
) -> turmoil::Result {
    let host = "checker";
    while shared.clients_done.load(Ordering::Acquire) < config.clients
        || sim_now() < config.read_back_at
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut nodes = Nodes::new(&config.nodes);
    let mut rng = Rng::derive(config.seed, 2_000);
    let unknown: Vec<usize> = {
        let history = shared.history.lock();
        (0..history.records.len())
            .filter(|index| history.records[*index].outcome == Outcome::Unknown)
            .collect()
    };
    for index in unknown {
        let op = shared.history.lock().records[index].op.clone();
        let mut errors = BTreeMap::new();
        let sent = send_with_retries(
            &mut nodes,
            &config,
            &op,
            &mut rng,
            &mut errors,
            RESOLVE_BUDGET,
        )
        .await;
        trace.event(
            host,
            format_args!("resolve {op} -> {}", describe(&sent, &config)),
        );
        let mut history = shared.history.lock();
        history.records[index].outcome = sent.outcome;
        history.records[index].resolved = true;
    }
    let mut observed = Vec::with_capacity(config.positions);
    for position in 0..config.positions {
        let key = config.key(position);
        let started = tokio::time::Instant::now();
        let read = loop {
            let node = rng.index(config.nodes.len());
            let attempt = match nodes.get(node) {
                Ok(mut client) => read_position(&mut client, &key).await,
                Err(status) => Err(status),
            };
            match attempt {
                Ok(read) => break read,
                Err(status) if started.elapsed() < RESOLVE_BUDGET => {
                    trace.event(
                        host,
                        format_args!("read p{position} via node {node}: {status}"),
                    );
                    nodes.reset(node);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => {
                    return Err(format!("cannot read position {position} back: {status}").into())
                }
            }
        };
        trace.event(host, format_args!("read p{position}: {:?}", read.buckets));
        observed.push(read);
    }
    *shared.observed.lock() = Some(observed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WorkloadConfig {
        WorkloadConfig {
            tenant: "sim".into(),
            positions: 3,
            stock: 10,
            clients: 2,
            nodes: vec!["http://node-1:7070".into()],
            stop_at: Duration::from_secs(50),
            read_back_at: Duration::from_secs(55),
            seed: 9,
        }
    }

    #[test]
    fn the_operation_mix_is_fixed_by_the_seed_and_only_settles_what_is_held() {
        let config = config();
        let draw = |seed: u64| {
            let mut rng = Rng::derive(seed, 1);
            let mut held = Vec::new();
            let mut ops = Vec::new();
            for sequence in 1..=200 {
                let op = next_op(&mut rng, &config, 1, sequence, &mut held);
                if let Ask::Reserve {
                    reservation_id,
                    quantity,
                } = &op.ask
                {
                    held.push((op.position, reservation_id.clone(), *quantity));
                }
                ops.push(op);
            }
            ops
        };
        let ops = draw(9);
        assert_eq!(ops, draw(9));
        assert_ne!(ops, draw(10));
        let mut reserved = std::collections::BTreeSet::new();
        for op in &ops {
            assert!(op.position < config.positions);
            match &op.ask {
                Ask::Reserve { reservation_id, .. } => {
                    assert!(reserved.insert(reservation_id.clone()));
                }
                Ask::Release { reservation_id, .. } | Ask::Commit { reservation_id, .. } => {
                    assert!(
                        reserved.remove(reservation_id),
                        "{op} settles a reservation not held"
                    );
                }
                Ask::Adjust { delta } => assert!(*delta != 0),
            }
        }
        for kind in ["reserve", "release", "commit", "adjust"] {
            assert!(
                ops.iter().any(|op| op.ask.to_string().starts_with(kind)),
                "no {kind}"
            );
        }
    }
}
