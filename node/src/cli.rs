//! The people-facing command-line client: one subcommand per `InventoryService`
//! RPC (and, under `skuld returns`, per `ReturnsService` RPC), printing either a
//! plain-text summary or the proto3-JSON reply.

mod admin;
mod returns;

use std::fmt;
use std::future::Future;
use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
use skuld_proto::v1::{
    AdjustRequest, AdjustmentReason, Bucket, Buckets, CancelCommitmentRequest,
    CommitReservationRequest, Commitment, ExtendReservationRequest, FulfillRequest,
    GetAvailabilityRequest, GetAvailabilityResponse, GetPositionRequest, LocationAvailability,
    MoveRequest, MutationHeader, MutationResponse, OwnerType, Position, PositionKey,
    ReleaseReservationRequest, Reservation, ReservationOwner, ReservationState, ReserveRequest,
    SetOnHandRequest,
};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tonic_types::StatusExt as _;
use uuid::Uuid;

/// Metadata key carrying the correlation id of a call.
const CORRELATION_ID_HEADER: &str = "x-correlation-id";
/// Metadata key in which the server hints how long to wait before retrying.
const RETRY_AFTER_HEADER: &str = "retry-after-ms";

/// Where and how the client subcommands talk to a node.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientOptions {
    /// gRPC endpoint of any skuld node.
    #[arg(
        long,
        global = true,
        env = "SKULD_ENDPOINT",
        default_value = "http://127.0.0.1:7070"
    )]
    pub endpoint: String,
    /// Print the reply as JSON (proto3 JSON mapping) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Correlation id sent as `x-correlation-id` (one is made when absent).
    #[arg(long, global = true, env = "SKULD_CORRELATION_ID")]
    pub correlation_id: Option<String>,
    /// Per-call deadline in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub timeout_ms: u64,
}

/// One subcommand per `InventoryService` RPC.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Add a signed delta to one bucket of a position.
    Adjust(AdjustArgs),
    /// Record a physical count: set on_hand to the counted quantity.
    SetOnHand(SetOnHandArgs),
    /// Move a quantity from one bucket to another.
    Move(MoveArgs),
    /// Reserve available units for a cart, checkout, order, ...
    Reserve(ReserveArgs),
    /// Extend a reservation's expiry to now + ttl.
    Extend(ExtendArgs),
    /// Release a reservation's remaining units back to available.
    Release(ReleaseArgs),
    /// Commit a reservation (all or part of it) to an order.
    Commit(CommitArgs),
    /// Ship committed units of an order: they leave on_hand.
    Fulfill(FulfillArgs),
    /// Cancel committed units of an order, restocking them or writing them off.
    CancelCommitment(CancelCommitmentArgs),
    /// Show a position: buckets, reservations and commitments.
    Position(PositionArgs),
    /// Show a SKU's availability at several locations.
    Availability(AvailabilityArgs),
    /// Return cases: request, approve, receive, inspect, dispose, refund, ...
    #[command(subcommand)]
    Returns(returns::ReturnsCommand),
    /// The node's own status: mode, shards served, lease, load.
    Status,
    /// Cluster members: state, shards owned, endpoint.
    Members,
    /// Owner and epoch of every shard.
    Shards(admin::ShardsArgs),
    /// Ask a node to hand all its shards over (before maintenance).
    Drain(admin::DrainArgs),
    /// Withdraw a drain: the node takes its share of shards again.
    Undrain(admin::DrainArgs),
}

/// Names one inventory position.
#[derive(Args, Debug, Clone)]
pub struct PositionArgs {
    /// Tenant owning the position.
    #[arg(long, env = "SKULD_TENANT", default_value = "default")]
    pub tenant: String,
    /// Stock-keeping unit.
    #[arg(long)]
    pub sku: String,
    /// Location id (warehouse, store, ...).
    #[arg(long)]
    pub location: String,
}

impl PositionArgs {
    fn key(&self) -> PositionKey {
        PositionKey {
            tenant: self.tenant.clone(),
            sku: self.sku.clone(),
            location: self.location.clone(),
        }
    }
}

/// Flags common to every mutation.
#[derive(Args, Debug, Clone)]
pub struct MutationArgs {
    /// Idempotency key; a UUID v4 is generated (and printed) when absent.
    /// Retrying with the same key never applies the change twice.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Apply only if the position is at this version.
    #[arg(long)]
    pub expected_version: Option<u64>,
}

impl MutationArgs {
    /// Builds the request header, generating an idempotency key if none was given.
    fn header(&self, position: &PositionArgs) -> (MutationHeader, IdempotencyKey) {
        let key = IdempotencyKey::from_flag(self.idempotency_key.as_deref());
        let header = MutationHeader {
            key: Some(position.key()),
            idempotency_key: key.value.clone(),
            expected_version: self.expected_version,
        };
        (header, key)
    }
}

/// Flags of `adjust`.
#[derive(Args, Debug)]
pub struct AdjustArgs {
    #[command(flatten)]
    pub position: PositionArgs,
    #[command(flatten)]
    pub mutation: MutationArgs,
    /// Bucket to change.
    #[arg(long, value_enum, default_value_t = BucketArg::Available)]
    pub bucket: BucketArg,
    /// Signed, non-zero change, e.g. `--delta -3`.
    #[arg(long, allow_negative_numbers = true)]
    pub delta: i64,
    /// Why the quantity changes (recorded in the ledger).
    #[arg(long, value_enum, default_value_t = ReasonArg::Other)]
    pub reason: ReasonArg,
    /// Apply only if the bucket currently holds exactly this quantity.
    #[arg(long, allow_negative_numbers = true)]
    pub change_from: Option<i64>,
    /// Reference document (PO, receipt, count sheet), recorded in the ledger.
    #[arg(long)]
    pub reference: Option<String>,
}

/// Flags of `set-on-hand`.
#[derive(Args, Debug)]
pub struct SetOnHandArgs {
    #[command(flatten)]
    pub position: PositionArgs,
    #[command(flatten)]
    pub mutation: MutationArgs,
    /// The counted physical quantity (>= 0).
    #[arg(long)]
    pub on_hand: i64,
    /// Why the quantity changes (recorded in the ledger).
    #[arg(long, value_enum, default_value_t = ReasonArg::Other)]
    pub reason: ReasonArg,
    /// When the count was taken, in Unix milliseconds; 0 means now.
    #[arg(long, default_value_t = 0)]
    pub counted_at_ms: i64,
    /// Apply only if on_hand currently holds exactly this quantity.
    #[arg(long, allow_negative_numbers = true)]
    pub change_from: Option<i64>,
    /// Reference document (count sheet, ...), recorded in the ledger.
    #[arg(long)]
    pub reference: Option<String>,
}

/// Flags of `move`.
#[derive(Args, Debug)]
pub struct MoveArgs {
    #[command(flatten)]
    pub position: PositionArgs,
    #[command(flatten)]
    pub mutation: MutationArgs,
    /// Source bucket.
    #[arg(long, value_enum)]
    pub from: BucketArg,
    /// Destination bucket.
    #[arg(long, value_enum)]
    pub to: BucketArg,
    /// Units to move (> 0).
    #[arg(long)]
    pub quantity: i64,
    /// Why the quantity moves (recorded in the ledger).
    #[arg(long, value_enum, default_value_t = ReasonArg::Other)]
    pub reason: ReasonArg,
    /// Apply only if the source bucket currently holds exactly this quantity.
    #[arg(long, allow_negative_numbers = true)]
    pub from_change_from: Option<i64>,
    /// Apply only if the destination bucket currently holds exactly this quantity.
    #[arg(long, allow_negative_numbers = true)]
    pub to_change_from: Option<i64>,
    /// Reference document (transfer, inspection), recorded in the ledger.
    #[arg(long)]
    pub reference: Option<String>,
}

/// Flags of `reserve`.
#[derive(Args, Debug)]
pub struct ReserveArgs {
    #[command(flatten)]
    pub position: PositionArgs,
    #[command(flatten)]
    pub mutation: MutationArgs,
    /// Units to reserve (> 0).
    #[arg(long)]
    pub quantity: i64,
    /// Reservation id; defaults to the idempotency key.
    #[arg(long)]
    pub reservation_id: Option<String>,
    /// Kind of holder.
    #[arg(long, value_enum, default_value_t = OwnerTypeArg::Cart)]
    pub owner_type: OwnerTypeArg,
    /// Holder id (cart, checkout or order id); defaults to the reservation id.
    #[arg(long)]
    pub owner_id: Option<String>,
    /// Line of the holder (cart line, order line).
    #[arg(long)]
    pub line_id: Option<String>,
    /// Sales channel the reservation is for.
    #[arg(long)]
    pub channel: Option<String>,
    /// Time to live in seconds; 0 means the server default.
    #[arg(long, default_value_t = 0)]
    pub ttl: i64,
    /// Grant what is available (at least 1) instead of failing.
    #[arg(long)]
    pub allow_partial: bool,
}

/// Flags of `extend`.
#[derive(Args, Debug)]
pub struct ExtendArgs {
    #[command(flatten)]
    pub position: PositionArgs,
    #[command(flatten)]
    pub mutation: MutationArgs,
    /// Reservation to extend.
    #[arg(long)]
    pub reservation_id: String,
    /// New time to live in seconds, counted from now.
    #[arg(long)]
    pub ttl: i64,
}

/// Flags of `release`.
#[derive(Args, Debug)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub position: PositionArgs,
    #[command(flatten)]
    pub mutation: MutationArgs,
    /// Reservation to release.
    #[arg(long)]
    pub reservation_id: String,
}

/// Flags of `commit`.
#[derive(Args, Debug)]
pub struct CommitArgs {
    #[command(flatten)]
    pub position: PositionArgs,
    #[command(flatten)]
    pub mutation: MutationArgs,
    /// Reservation to commit.
    #[arg(long)]
    pub reservation_id: String,
    /// Order the units are committed to.
    #[arg(long)]
    pub order_ref: String,
    /// Units to commit; 0 commits all the reservation still holds.
    #[arg(long, default_value_t = 0)]
    pub quantity: i64,
}

/// Flags of `fulfill`.
#[derive(Args, Debug)]
pub struct FulfillArgs {
    #[command(flatten)]
    pub position: PositionArgs,
    #[command(flatten)]
    pub mutation: MutationArgs,
    /// Order whose committed units ship.
    #[arg(long)]
    pub order_ref: String,
    /// Units shipped (> 0).
    #[arg(long)]
    pub quantity: i64,
}

/// Flags of `cancel-commitment`.
#[derive(Args, Debug)]
pub struct CancelCommitmentArgs {
    #[command(flatten)]
    pub position: PositionArgs,
    #[command(flatten)]
    pub mutation: MutationArgs,
    /// Order whose commitment is cancelled.
    #[arg(long)]
    pub order_ref: String,
    /// Units cancelled (> 0).
    #[arg(long)]
    pub quantity: i64,
    /// Put the units back to available; without it they leave on_hand.
    #[arg(long)]
    pub restock: bool,
}

/// Flags of `availability`.
#[derive(Args, Debug)]
pub struct AvailabilityArgs {
    /// Tenant owning the positions.
    #[arg(long, env = "SKULD_TENANT", default_value = "default")]
    pub tenant: String,
    /// Stock-keeping unit.
    #[arg(long)]
    pub sku: String,
    /// Comma-separated location ids, e.g. `--locations DC1,DC2`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub locations: Vec<String>,
}

/// A quantity bucket, as named on the command line.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketArg {
    Available,
    OnHand,
    Damaged,
    QualityControl,
    SafetyStock,
    Incoming,
    Reserved,
    Committed,
}

impl From<BucketArg> for Bucket {
    fn from(bucket: BucketArg) -> Self {
        match bucket {
            BucketArg::Available => Bucket::Available,
            BucketArg::OnHand => Bucket::OnHand,
            BucketArg::Damaged => Bucket::Damaged,
            BucketArg::QualityControl => Bucket::QualityControl,
            BucketArg::SafetyStock => Bucket::SafetyStock,
            BucketArg::Incoming => Bucket::Incoming,
            BucketArg::Reserved => Bucket::Reserved,
            BucketArg::Committed => Bucket::Committed,
        }
    }
}

/// Why a quantity changes, as named on the command line.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonArg {
    Receipt,
    Sale,
    CycleCount,
    Damage,
    ReturnRestock,
    Transfer,
    Correction,
    Shrinkage,
    Other,
}

impl From<ReasonArg> for AdjustmentReason {
    fn from(reason: ReasonArg) -> Self {
        match reason {
            ReasonArg::Receipt => AdjustmentReason::Receipt,
            ReasonArg::Sale => AdjustmentReason::Sale,
            ReasonArg::CycleCount => AdjustmentReason::CycleCount,
            ReasonArg::Damage => AdjustmentReason::Damage,
            ReasonArg::ReturnRestock => AdjustmentReason::ReturnRestock,
            ReasonArg::Transfer => AdjustmentReason::Transfer,
            ReasonArg::Correction => AdjustmentReason::Correction,
            ReasonArg::Shrinkage => AdjustmentReason::Shrinkage,
            ReasonArg::Other => AdjustmentReason::Other,
        }
    }
}

/// Kind of reservation holder, as named on the command line.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerTypeArg {
    Cart,
    Checkout,
    Order,
    Fulfillment,
    ReturnExchange,
    Draft,
    Manual,
}

impl From<OwnerTypeArg> for OwnerType {
    fn from(owner: OwnerTypeArg) -> Self {
        match owner {
            OwnerTypeArg::Cart => OwnerType::Cart,
            OwnerTypeArg::Checkout => OwnerType::Checkout,
            OwnerTypeArg::Order => OwnerType::Order,
            OwnerTypeArg::Fulfillment => OwnerType::Fulfillment,
            OwnerTypeArg::ReturnExchange => OwnerType::ReturnExchange,
            OwnerTypeArg::Draft => OwnerType::Draft,
            OwnerTypeArg::Manual => OwnerType::Manual,
        }
    }
}

/// A client command failed and its one-line reason was already printed to
/// stderr; the caller only needs to exit non-zero.
#[derive(Debug)]
pub struct CommandFailed {
    message: String,
}

impl fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CommandFailed {}

/// Prints `error: <message>` to stderr and returns it as an error.
fn fail(message: String) -> anyhow::Error {
    // Nothing sensible is left to do if stderr itself is gone.
    let _ = writeln!(io::stderr(), "error: {message}");
    CommandFailed { message }.into()
}

/// The idempotency key a mutation was sent with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IdempotencyKey {
    value: String,
    /// Made up by the client because none was given.
    generated: bool,
}

impl IdempotencyKey {
    /// The key given with `--idempotency-key`, or a new UUID v4.
    fn from_flag(flag: Option<&str>) -> Self {
        match flag {
            Some(value) => Self {
                value: value.to_owned(),
                generated: false,
            },
            None => Self {
                value: Uuid::new_v4().to_string(),
                generated: true,
            },
        }
    }
}

/// Runs one client subcommand against the node at `options.endpoint`.
///
/// On failure the reason has already been printed to stderr as one line and
/// the returned error is a [`CommandFailed`].
pub async fn run(options: ClientOptions, command: ClientCommand) -> anyhow::Result<()> {
    let correlation_id = options
        .correlation_id
        .clone()
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    let correlation_id = AsciiMetadataValue::try_from(correlation_id.as_str())
        .map_err(|_| fail(format!("invalid correlation id {correlation_id:?}")))?;
    let timeout = Duration::from_millis(options.timeout_ms);
    let channel = connect(&options.endpoint, timeout).await?;
    let mut client = InventoryServiceClient::new(channel.clone());
    let ctx = CallContext {
        correlation_id,
        timeout,
        json: options.json,
    };

    match command {
        ClientCommand::Adjust(args) => {
            let (header, key) = args.mutation.header(&args.position);
            let request = AdjustRequest {
                header: Some(header),
                bucket: Bucket::from(args.bucket).into(),
                delta: args.delta,
                reason: AdjustmentReason::from(args.reason).into(),
                change_from: args.change_from,
                reference_document_uri: args.reference.unwrap_or_default(),
            };
            let reply = ctx.call(request, Some(&key), |r| client.adjust(r)).await?;
            ctx.show_mutation(&reply, &args.position, &key, false)
        }
        ClientCommand::SetOnHand(args) => {
            let (header, key) = args.mutation.header(&args.position);
            let request = SetOnHandRequest {
                header: Some(header),
                on_hand: args.on_hand,
                reason: AdjustmentReason::from(args.reason).into(),
                counted_at_unix_ms: args.counted_at_ms,
                change_from: args.change_from,
                reference_document_uri: args.reference.unwrap_or_default(),
            };
            let reply = ctx
                .call(request, Some(&key), |r| client.set_on_hand(r))
                .await?;
            ctx.show_mutation(&reply, &args.position, &key, false)
        }
        ClientCommand::Move(args) => {
            let (header, key) = args.mutation.header(&args.position);
            let request = MoveRequest {
                header: Some(header),
                from_bucket: Bucket::from(args.from).into(),
                to_bucket: Bucket::from(args.to).into(),
                quantity: args.quantity,
                reason: AdjustmentReason::from(args.reason).into(),
                from_change_from: args.from_change_from,
                to_change_from: args.to_change_from,
                reference_document_uri: args.reference.unwrap_or_default(),
            };
            let reply = ctx.call(request, Some(&key), |r| client.r#move(r)).await?;
            ctx.show_mutation(&reply, &args.position, &key, false)
        }
        ClientCommand::Reserve(args) => {
            let (header, key) = args.mutation.header(&args.position);
            let owner_id = args
                .owner_id
                .or_else(|| args.reservation_id.clone())
                .unwrap_or_else(|| key.value.clone());
            let request = ReserveRequest {
                header: Some(header),
                reservation_id: args.reservation_id.unwrap_or_default(),
                quantity: args.quantity,
                owner: Some(ReservationOwner {
                    r#type: OwnerType::from(args.owner_type).into(),
                    id: owner_id,
                    line_id: args.line_id.unwrap_or_default(),
                }),
                channel: args.channel.unwrap_or_default(),
                ttl_seconds: args.ttl,
                allow_partial: args.allow_partial,
            };
            let reply = ctx.call(request, Some(&key), |r| client.reserve(r)).await?;
            ctx.show_mutation(&reply, &args.position, &key, true)
        }
        ClientCommand::Extend(args) => {
            let (header, key) = args.mutation.header(&args.position);
            let request = ExtendReservationRequest {
                header: Some(header),
                reservation_id: args.reservation_id,
                ttl_seconds: args.ttl,
            };
            let reply = ctx
                .call(request, Some(&key), |r| client.extend_reservation(r))
                .await?;
            ctx.show_mutation(&reply, &args.position, &key, false)
        }
        ClientCommand::Release(args) => {
            let (header, key) = args.mutation.header(&args.position);
            let request = ReleaseReservationRequest {
                header: Some(header),
                reservation_id: args.reservation_id,
            };
            let reply = ctx
                .call(request, Some(&key), |r| client.release_reservation(r))
                .await?;
            ctx.show_mutation(&reply, &args.position, &key, false)
        }
        ClientCommand::Commit(args) => {
            let (header, key) = args.mutation.header(&args.position);
            let request = CommitReservationRequest {
                header: Some(header),
                reservation_id: args.reservation_id,
                quantity: args.quantity,
                order_ref: args.order_ref,
            };
            let reply = ctx
                .call(request, Some(&key), |r| client.commit_reservation(r))
                .await?;
            ctx.show_mutation(&reply, &args.position, &key, false)
        }
        ClientCommand::Fulfill(args) => {
            let (header, key) = args.mutation.header(&args.position);
            let request = FulfillRequest {
                header: Some(header),
                order_ref: args.order_ref,
                quantity: args.quantity,
            };
            let reply = ctx.call(request, Some(&key), |r| client.fulfill(r)).await?;
            ctx.show_mutation(&reply, &args.position, &key, false)
        }
        ClientCommand::CancelCommitment(args) => {
            let (header, key) = args.mutation.header(&args.position);
            let request = CancelCommitmentRequest {
                header: Some(header),
                order_ref: args.order_ref,
                quantity: args.quantity,
                restock: args.restock,
            };
            let reply = ctx
                .call(request, Some(&key), |r| client.cancel_commitment(r))
                .await?;
            ctx.show_mutation(&reply, &args.position, &key, false)
        }
        ClientCommand::Position(args) => {
            let request = GetPositionRequest {
                key: Some(args.key()),
                ..GetPositionRequest::default()
            };
            let reply = ctx.call(request, None, |r| client.get_position(r)).await?;
            if ctx.json {
                return print_json(&reply);
            }
            let text = match &reply.position {
                Some(position) => format_position(position, &args.key(), now_unix_ms()),
                None => format!("{}: no such position\n", format_key(&args.key())),
            };
            emit(&text)
        }
        ClientCommand::Availability(args) => {
            let request = GetAvailabilityRequest {
                tenant: args.tenant,
                sku: args.sku,
                locations: args.locations,
            };
            let reply = ctx
                .call(request, None, |r| client.get_availability(r))
                .await?;
            if ctx.json {
                return print_json(&reply);
            }
            emit(&format_availability(&reply))
        }
        ClientCommand::Returns(command) => returns::run(&ctx, channel, command).await,
        ClientCommand::Status => admin::status(&ctx, channel).await,
        ClientCommand::Members => admin::members(&ctx, channel).await,
        ClientCommand::Shards(args) => admin::shards(&ctx, channel, args).await,
        ClientCommand::Drain(args) => admin::drain(&ctx, channel, args).await,
        ClientCommand::Undrain(args) => admin::undrain(&ctx, channel, args).await,
    }
}

/// Opens a channel to `endpoint`, reporting failure as one line on stderr.
async fn connect(endpoint: &str, timeout: Duration) -> anyhow::Result<Channel> {
    let channel = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| {
            fail(format!(
                "invalid endpoint {endpoint:?}: {}",
                error_chain(&e)
            ))
        })?
        .connect_timeout(timeout)
        .connect()
        .await
        .map_err(|e| {
            fail(format!(
                "cannot reach skuld at {endpoint}: {}",
                error_chain(&e)
            ))
        })?;
    Ok(channel)
}

/// What every call of one invocation shares.
struct CallContext {
    correlation_id: AsciiMetadataValue,
    timeout: Duration,
    json: bool,
}

impl CallContext {
    /// Sends one request with the correlation id and deadline attached and
    /// turns a failed call into a printed one-line error.
    async fn call<T, R, F, Fut>(
        &self,
        message: T,
        idempotency_key: Option<&IdempotencyKey>,
        send: F,
    ) -> anyhow::Result<R>
    where
        F: FnOnce(Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(CORRELATION_ID_HEADER, self.correlation_id.clone());
        // Sent as `grpc-timeout` so the server drops the request once it is
        // too late; the local timer below covers a server that never answers.
        request.set_timeout(self.timeout);
        let status = match tokio::time::timeout(self.timeout, send(request)).await {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) => status,
            Err(_elapsed) => Status::deadline_exceeded(format!(
                "no reply within {} ms",
                self.timeout.as_millis()
            )),
        };
        Err(fail(format_status(&status, idempotency_key)))
    }

    /// Prints the reply of a mutation, as JSON or as readable text.
    fn show_mutation(
        &self,
        reply: &MutationResponse,
        position: &PositionArgs,
        key: &IdempotencyKey,
        show_granted: bool,
    ) -> anyhow::Result<()> {
        if self.json {
            if key.generated {
                // stdout carries only the JSON; the key a person needs to
                // retry goes to stderr.
                let _ = writeln!(io::stderr(), "idempotency key: {}", key.value);
            }
            return print_json(reply);
        }
        emit(&format_mutation(
            reply,
            &position.key(),
            key,
            show_granted,
            now_unix_ms(),
        ))
    }
}

/// Prints a proto reply in the proto3 JSON mapping.
fn print_json<T: Serialize>(reply: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(reply).context("cannot encode reply as JSON")?;
    text.push('\n');
    emit(&text)
}

/// Writes to stdout; a closed pipe (`skuld ... | head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Joins an error and its sources: `transport error: tcp connect error: ...`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Wrappers often repeat their source's message; print it once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The server's retry hint: the `retry-after-ms` metadata, else the
/// `google.rpc.RetryInfo` detail.
fn retry_after_ms(status: &Status) -> Option<u128> {
    retry_after_from_metadata(status.metadata()).or_else(|| {
        status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay)
            .map(|delay| delay.as_millis())
    })
}

fn retry_after_from_metadata(metadata: &MetadataMap) -> Option<u128> {
    metadata
        .get(RETRY_AFTER_HEADER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The one-line description of a failed call (without the `error: ` prefix).
fn format_status(status: &Status, idempotency_key: Option<&IdempotencyKey>) -> String {
    let code = status.code();
    let message = if status.message().is_empty() {
        code.description()
    } else {
        status.message()
    };
    let mut line = format!("{}: {}", skuld_proto::code_name(code), message.trim());
    if let Some(ms) = retry_after_ms(status) {
        line.push_str(&format!("; retry after {ms} ms"));
    }
    if let Some(key) =
        idempotency_key.filter(|k| k.generated && skuld_proto::retry::worth_retrying(code))
    {
        line.push_str(&format!(
            "; to retry safely pass --idempotency-key {}",
            key.value
        ));
    }
    line
}

/// How a table column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// Formats `rows` under `columns` as a plain-text table, two spaces between
/// columns, no trailing spaces.
fn format_table(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|(title, _)| title.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = columns
        .iter()
        .map(|(title, _)| (*title).to_owned())
        .collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, ((_, align), width)) in columns.iter().zip(&widths).enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            if i > 0 {
                line.push_str("  ");
            }
            match align {
                Align::Left => line.push_str(&format!("{cell:<width$}")),
                Align::Right => line.push_str(&format!("{cell:>width$}")),
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Formats `label  value` lines with the values aligned.
fn format_fields(fields: &[(&str, String)]) -> String {
    let width = fields
        .iter()
        .map(|(label, _)| label.len())
        .max()
        .unwrap_or(0);
    fields
        .iter()
        .map(|(label, value)| format!("{label:<width$}  {value}").trim_end().to_owned() + "\n")
        .collect()
}

/// `tenant/sku@location`.
fn format_key(key: &PositionKey) -> String {
    format!("{}/{}@{}", key.tenant, key.sku, key.location)
}

/// The buckets as a two-column table, on_hand first.
fn format_buckets(buckets: &Buckets) -> String {
    let rows = buckets
        .named()
        .map(|(name, quantity)| vec![name.to_owned(), quantity.to_string()]);
    format_table(
        &[("BUCKET", Align::Left), ("QUANTITY", Align::Right)],
        &rows,
    )
}

/// Unix milliseconds as an RFC 3339 UTC timestamp, to the second.
fn format_unix_ms(unix_ms: i64) -> String {
    let seconds = unix_ms.div_euclid(1000);
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let second_of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// Proleptic Gregorian (year, month, day) of a count of days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A duration in milliseconds as its two largest units: `2d 3h`, `14m 5s`, `9s`.
fn format_duration_ms(ms: i64) -> String {
    let seconds = ms.unsigned_abs() / 1000;
    let (days, hours, minutes, secs) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
        seconds % 60,
    );
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

/// `at` relative to `now`: `in 14m 5s`, `3s ago`.
fn format_relative(at_ms: i64, now_ms: i64) -> String {
    let delta = at_ms.saturating_sub(now_ms);
    if delta >= 0 {
        format!("in {}", format_duration_ms(delta))
    } else {
        format!("{} ago", format_duration_ms(delta))
    }
}

/// A timestamp with its distance from now, or `-` when unset (0).
/// When a reservation expires: only an active one does (a committed,
/// released or expired one has nothing left to expire).
fn expiry(reservation: &Reservation, now_ms: i64) -> String {
    if reservation.state == ReservationState::Active as i32 {
        format_timestamp(reservation.expires_at_unix_ms, now_ms)
    } else {
        "-".to_owned()
    }
}

fn format_timestamp(at_ms: i64, now_ms: i64) -> String {
    if at_ms == 0 {
        "-".to_owned()
    } else {
        format!(
            "{} ({})",
            format_unix_ms(at_ms),
            format_relative(at_ms, now_ms)
        )
    }
}

/// The enum value's proto name without its type prefix, e.g. `ACTIVE`.
fn enum_label(name: Option<&'static str>, prefix: &str, raw: i32) -> String {
    match name {
        Some(name) => name.strip_prefix(prefix).unwrap_or(name).to_owned(),
        None => format!("UNKNOWN({raw})"),
    }
}

fn state_label(raw: i32) -> String {
    let name = ReservationState::try_from(raw)
        .ok()
        .map(|s| s.as_str_name());
    enum_label(name, "RESERVATION_STATE_", raw)
}

fn owner_label(owner: Option<&ReservationOwner>) -> String {
    let Some(owner) = owner else {
        return "-".to_owned();
    };
    let name = OwnerType::try_from(owner.r#type)
        .ok()
        .map(|t| t.as_str_name());
    let mut label = format!(
        "{} {}",
        enum_label(name, "OWNER_TYPE_", owner.r#type),
        owner.id
    );
    if !owner.line_id.is_empty() {
        label.push_str(&format!(" line {}", owner.line_id));
    }
    label
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// Readable text of a mutation's reply. `requested` names the position when
/// the reply does not; `show_granted` is set for `reserve`.
fn format_mutation(
    reply: &MutationResponse,
    requested: &PositionKey,
    idempotency_key: &IdempotencyKey,
    show_granted: bool,
    now_ms: i64,
) -> String {
    let key = reply.key.as_ref().unwrap_or(requested);
    let mut fields = vec![
        ("position", format_key(key)),
        ("version", reply.version.to_string()),
    ];
    if show_granted {
        fields.push(("granted", reply.granted_quantity.to_string()));
    }
    if reply.replayed {
        fields.push((
            "replayed",
            "true (stored reply of an earlier request)".to_owned(),
        ));
    }
    let key_note = if idempotency_key.generated {
        " (generated; pass --idempotency-key to retry)"
    } else {
        ""
    };
    fields.push((
        "idempotency key",
        format!("{}{key_note}", idempotency_key.value),
    ));
    let mut out = format_fields(&fields);
    out.push('\n');
    out.push_str(&format_buckets(&reply.buckets.unwrap_or_default()));
    if let Some(reservation) = &reply.reservation {
        out.push('\n');
        out.push_str(&format_reservation(reservation, now_ms));
    }
    out
}

/// One reservation as labelled fields.
fn format_reservation(reservation: &Reservation, now_ms: i64) -> String {
    let mut fields = vec![
        ("reservation", reservation.reservation_id.clone()),
        ("state", state_label(reservation.state)),
        (
            "quantity",
            format!(
                "{} (requested {}, committed {})",
                reservation.quantity,
                reservation.requested_quantity,
                reservation.committed_quantity
            ),
        ),
        ("owner", owner_label(reservation.owner.as_ref())),
    ];
    if !reservation.channel.is_empty() {
        fields.push(("channel", reservation.channel.clone()));
    }
    fields.push(("expires at", expiry(reservation, now_ms)));
    format_fields(&fields)
}

/// Readable text of a position: summary, buckets, reservations, commitments.
fn format_position(position: &Position, requested: &PositionKey, now_ms: i64) -> String {
    let key = position.key.as_ref().unwrap_or(requested);
    let last_count = if position.last_counted_at_unix_ms == 0 {
        "never".to_owned()
    } else {
        format_timestamp(position.last_counted_at_unix_ms, now_ms)
    };
    let mut out = format_fields(&[
        ("position", format_key(key)),
        ("version", position.version.to_string()),
        (
            "backorder",
            if position.allow_backorder {
                "allowed"
            } else {
                "no"
            }
            .to_owned(),
        ),
        ("last count", last_count),
    ]);
    out.push('\n');
    out.push_str(&format_buckets(&position.buckets.unwrap_or_default()));
    out.push('\n');
    out.push_str(&format_reservations(&position.reservations, now_ms));
    let shown = position.reservations.len() as u64;
    if position.active_reservations > shown {
        out.push_str(&format!(
            "({} of {} active reservations shown)\n",
            shown, position.active_reservations
        ));
    }
    out.push('\n');
    out.push_str(&format_commitments(&position.commitments));
    out
}

fn format_reservations(reservations: &[Reservation], now_ms: i64) -> String {
    if reservations.is_empty() {
        return "reservations: none\n".to_owned();
    }
    let rows: Vec<Vec<String>> = reservations
        .iter()
        .map(|r| {
            vec![
                r.reservation_id.clone(),
                state_label(r.state),
                r.quantity.to_string(),
                r.committed_quantity.to_string(),
                owner_label(r.owner.as_ref()),
                or_dash(&r.channel),
                expiry(r, now_ms),
            ]
        })
        .collect();
    let table = format_table(
        &[
            ("RESERVATION", Align::Left),
            ("STATE", Align::Left),
            ("QTY", Align::Right),
            ("COMMITTED", Align::Right),
            ("OWNER", Align::Left),
            ("CHANNEL", Align::Left),
            ("EXPIRES AT", Align::Left),
        ],
        &rows,
    );
    format!("reservations: {}\n{table}", reservations.len())
}

fn format_commitments(commitments: &[Commitment]) -> String {
    if commitments.is_empty() {
        return "commitments: none\n".to_owned();
    }
    let rows: Vec<Vec<String>> = commitments
        .iter()
        .map(|c| vec![c.order_ref.clone(), c.quantity.to_string()])
        .collect();
    let table = format_table(&[("ORDER", Align::Left), ("QTY", Align::Right)], &rows);
    format!("commitments: {}\n{table}", commitments.len())
}

/// Readable text of an availability reply: one row per location and a total.
fn format_availability(reply: &GetAvailabilityResponse) -> String {
    let mut rows: Vec<Vec<String>> = reply
        .locations
        .iter()
        .map(|l: &LocationAvailability| {
            vec![
                l.location.clone(),
                l.available.to_string(),
                l.on_hand.to_string(),
                l.version.to_string(),
            ]
        })
        .collect();
    rows.push(vec!["TOTAL".to_owned(), reply.total_available.to_string()]);
    format_table(
        &[
            ("LOCATION", Align::Left),
            ("AVAILABLE", Align::Right),
            ("ON_HAND", Align::Right),
            ("VERSION", Align::Right),
        ],
        &rows,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// The client part of the `skuld` command line, as main.rs wires it.
    #[derive(Parser, Debug)]
    #[command(name = "skuld")]
    struct TestCli {
        #[command(flatten)]
        options: ClientOptions,
        #[command(subcommand)]
        command: ClientCommand,
    }

    fn parse(args: &[&str]) -> TestCli {
        TestCli::try_parse_from(args).unwrap()
    }

    #[test]
    fn command_definition_is_consistent() {
        TestCli::command().debug_assert();
    }

    #[test]
    fn parses_reserve_with_defaults() {
        let cli = parse(&[
            "skuld",
            "reserve",
            "--sku",
            "A",
            "--location",
            "L",
            "--quantity",
            "2",
        ]);
        assert_eq!(cli.options.timeout_ms, 10_000);
        assert!(!cli.options.json);
        let ClientCommand::Reserve(args) = cli.command else {
            panic!("expected reserve, got {:?}", cli.command);
        };
        assert_eq!(args.position.sku, "A");
        assert_eq!(args.position.location, "L");
        assert_eq!(args.quantity, 2);
        assert_eq!(args.owner_type, OwnerTypeArg::Cart);
        assert_eq!(args.ttl, 0);
        assert!(!args.allow_partial);
        assert!(args.mutation.idempotency_key.is_none());
        assert!(args.mutation.expected_version.is_none());
    }

    #[test]
    fn parses_negative_delta_and_enums() {
        let cli = parse(&[
            "skuld",
            "adjust",
            "--sku",
            "A",
            "--location",
            "L",
            "--delta",
            "-3",
            "--bucket",
            "quality-control",
            "--reason",
            "cycle-count",
            "--change-from",
            "-1",
            "--expected-version",
            "7",
            "--idempotency-key",
            "k1",
        ]);
        let ClientCommand::Adjust(args) = cli.command else {
            panic!("expected adjust, got {:?}", cli.command);
        };
        assert_eq!(args.delta, -3);
        assert_eq!(Bucket::from(args.bucket), Bucket::QualityControl);
        assert_eq!(
            AdjustmentReason::from(args.reason),
            AdjustmentReason::CycleCount
        );
        assert_eq!(args.change_from, Some(-1));
        assert_eq!(args.mutation.expected_version, Some(7));
        assert_eq!(args.mutation.idempotency_key.as_deref(), Some("k1"));
    }

    #[test]
    fn reason_defaults_to_other() {
        let cli = parse(&[
            "skuld",
            "adjust",
            "--sku",
            "A",
            "--location",
            "L",
            "--delta",
            "5",
        ]);
        let ClientCommand::Adjust(args) = cli.command else {
            panic!("expected adjust");
        };
        assert_eq!(args.reason, ReasonArg::Other);
        assert_eq!(args.bucket, BucketArg::Available);
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = parse(&[
            "skuld",
            "position",
            "--sku",
            "A",
            "--location",
            "L",
            "--json",
            "--endpoint",
            "http://node:7070",
            "--timeout-ms",
            "250",
            "--correlation-id",
            "c-1",
        ]);
        assert!(cli.options.json);
        assert_eq!(cli.options.endpoint, "http://node:7070");
        assert_eq!(cli.options.timeout_ms, 250);
        assert_eq!(cli.options.correlation_id.as_deref(), Some("c-1"));
        assert!(matches!(cli.command, ClientCommand::Position(_)));
    }

    #[test]
    fn parses_move_buckets_and_availability_locations() {
        let cli = parse(&[
            "skuld",
            "move",
            "--sku",
            "A",
            "--location",
            "L",
            "--from",
            "incoming",
            "--to",
            "available",
            "--quantity",
            "4",
        ]);
        let ClientCommand::Move(args) = cli.command else {
            panic!("expected move");
        };
        assert_eq!(Bucket::from(args.from), Bucket::Incoming);
        assert_eq!(Bucket::from(args.to), Bucket::Available);

        let cli = parse(&[
            "skuld",
            "availability",
            "--sku",
            "A",
            "--locations",
            "DC1,DC2",
        ]);
        let ClientCommand::Availability(args) = cli.command else {
            panic!("expected availability");
        };
        assert_eq!(args.locations, ["DC1", "DC2"]);
    }

    #[test]
    fn parses_cancel_commitment_and_owner_type() {
        let cli = parse(&[
            "skuld",
            "cancel-commitment",
            "--sku",
            "A",
            "--location",
            "L",
            "--order-ref",
            "o-1",
            "--quantity",
            "1",
            "--restock",
        ]);
        let ClientCommand::CancelCommitment(args) = cli.command else {
            panic!("expected cancel-commitment");
        };
        assert!(args.restock);
        assert_eq!(args.order_ref, "o-1");

        let cli = parse(&[
            "skuld",
            "reserve",
            "--sku",
            "A",
            "--location",
            "L",
            "--quantity",
            "1",
            "--owner-type",
            "return-exchange",
        ]);
        let ClientCommand::Reserve(args) = cli.command else {
            panic!("expected reserve");
        };
        assert_eq!(OwnerType::from(args.owner_type), OwnerType::ReturnExchange);
    }

    #[test]
    fn rejects_missing_sku_and_unknown_bucket() {
        assert!(TestCli::try_parse_from(["skuld", "position", "--location", "L"]).is_err());
        assert!(TestCli::try_parse_from([
            "skuld",
            "adjust",
            "--sku",
            "A",
            "--location",
            "L",
            "--delta",
            "1",
            "--bucket",
            "shelf",
        ])
        .is_err());
    }

    #[test]
    fn generated_idempotency_key_is_a_uuid() {
        let position = PositionArgs {
            tenant: "t".into(),
            sku: "A".into(),
            location: "L".into(),
        };
        let args = MutationArgs {
            idempotency_key: None,
            expected_version: Some(3),
        };
        let (header, key) = args.header(&position);
        assert!(key.generated);
        assert!(Uuid::parse_str(&key.value).is_ok());
        assert_eq!(header.idempotency_key, key.value);
        assert_eq!(header.expected_version, Some(3));
        assert_eq!(header.key.unwrap().tenant, "t");
    }

    #[test]
    fn formats_timestamps_as_rfc3339_utc() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix_ms(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_unix_ms(951_782_400_999), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix_ms(-1_000), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn formats_durations_and_relative_times() {
        assert_eq!(format_duration_ms(0), "0s");
        assert_eq!(format_duration_ms(59_999), "59s");
        assert_eq!(format_duration_ms(14 * 60_000 + 5_000), "14m 5s");
        assert_eq!(format_duration_ms(3 * 3_600_000 + 60_000), "3h 1m");
        assert_eq!(format_duration_ms(2 * 86_400_000 + 3_600_000), "2d 1h");
        assert_eq!(format_relative(10_000, 1_000), "in 9s");
        assert_eq!(format_relative(1_000, 4_000), "3s ago");
        assert_eq!(format_timestamp(0, 5), "-");
    }

    #[test]
    fn table_aligns_columns_without_trailing_spaces() {
        let table = format_table(
            &[("NAME", Align::Left), ("QTY", Align::Right)],
            &[
                vec!["available".into(), "5".into()],
                vec!["on_hand".into(), "-12".into()],
            ],
        );
        assert_eq!(
            table,
            "NAME       QTY\n\
             available    5\n\
             on_hand    -12\n"
        );
    }

    #[test]
    fn formats_mutation_reply() {
        let reply = MutationResponse {
            key: Some(PositionKey {
                tenant: "default".into(),
                sku: "SKU-1".into(),
                location: "DC1".into(),
            }),
            version: 7,
            buckets: Some(Buckets {
                on_hand: 10,
                available: 6,
                reserved: 2,
                committed: 2,
                ..Buckets::default()
            }),
            reservation: Some(Reservation {
                reservation_id: "r-1".into(),
                owner: Some(ReservationOwner {
                    r#type: OwnerType::Cart.into(),
                    id: "cart-9".into(),
                    line_id: String::new(),
                }),
                channel: "web".into(),
                quantity: 2,
                requested_quantity: 2,
                committed_quantity: 0,
                state: ReservationState::Active.into(),
                created_at_unix_ms: 1_700_000_000_000,
                expires_at_unix_ms: 1_700_000_900_000,
            }),
            granted_quantity: 2,
            replayed: true,
        };
        let key = IdempotencyKey {
            value: "k-1".into(),
            generated: false,
        };
        let text = format_mutation(
            &reply,
            &PositionKey::default(),
            &key,
            true,
            1_700_000_000_000,
        );
        let expected = "\
position         default/SKU-1@DC1
version          7
granted          2
replayed         true (stored reply of an earlier request)
idempotency key  k-1

BUCKET           QUANTITY
on_hand                10
available               6
reserved                2
committed               2
damaged                 0
quality_control         0
safety_stock            0
incoming                0

reservation  r-1
state        ACTIVE
quantity     2 (requested 2, committed 0)
owner        CART cart-9
channel      web
expires at   2023-11-14T22:28:20Z (in 15m 0s)
";
        assert_eq!(text, expected);
    }

    #[test]
    fn mutation_reply_shows_generated_key_and_falls_back_to_requested_key() {
        let requested = PositionKey {
            tenant: "t".into(),
            sku: "A".into(),
            location: "L".into(),
        };
        let key = IdempotencyKey {
            value: "gen".into(),
            generated: true,
        };
        let text = format_mutation(&MutationResponse::default(), &requested, &key, false, 0);
        assert!(text.starts_with("position         t/A@L\n"), "{text}");
        assert!(text.contains("idempotency key  gen (generated; pass --idempotency-key to retry)"));
        assert!(!text.contains("granted"));
        assert!(!text.contains("replayed"));
        assert!(!text.contains("reservation"));
    }

    #[test]
    fn formats_position_with_reservations_and_commitments() {
        let position = Position {
            key: None,
            version: 3,
            buckets: Some(Buckets {
                on_hand: 5,
                available: 2,
                reserved: 1,
                committed: 2,
                ..Buckets::default()
            }),
            allow_backorder: false,
            reservations: vec![Reservation {
                reservation_id: "r-1".into(),
                owner: Some(ReservationOwner {
                    r#type: OwnerType::Order.into(),
                    id: "o-1".into(),
                    line_id: "2".into(),
                }),
                quantity: 1,
                requested_quantity: 1,
                state: ReservationState::Active.into(),
                expires_at_unix_ms: 61_000,
                ..Reservation::default()
            }],
            commitments: vec![Commitment {
                order_ref: "o-1".into(),
                quantity: 2,
            }],
            last_counted_at_unix_ms: 0,
            active_reservations: 1,
            next_reservations_page_token: String::new(),
        };
        let requested = PositionKey {
            tenant: "t".into(),
            sku: "A".into(),
            location: "L".into(),
        };
        let text = format_position(&position, &requested, 1_000);
        assert!(
            text.starts_with("position    t/A@L\nversion     3\n"),
            "{text}"
        );
        assert!(text.contains("last count  never\n"), "{text}");
        assert!(
            text.contains(
                "reservations: 1\n\
             RESERVATION  STATE   QTY  COMMITTED  OWNER             CHANNEL  EXPIRES AT\n\
             r-1          ACTIVE    1          0  ORDER o-1 line 2  -        \
             1970-01-01T00:01:01Z (in 1m 0s)\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("commitments: 1\nORDER  QTY\no-1      2\n"),
            "{text}"
        );
    }

    #[test]
    fn formats_availability_with_total() {
        let reply = GetAvailabilityResponse {
            locations: vec![
                LocationAvailability {
                    location: "DC1".into(),
                    available: 5,
                    on_hand: 9,
                    version: 12,
                },
                LocationAvailability {
                    location: "STORE-7".into(),
                    available: -1,
                    on_hand: 0,
                    version: 3,
                },
            ],
            total_available: 5,
        };
        assert_eq!(
            format_availability(&reply),
            "LOCATION  AVAILABLE  ON_HAND  VERSION\n\
             DC1               5        9       12\n\
             STORE-7          -1        0        3\n\
             TOTAL             5\n"
        );
    }

    #[test]
    fn formats_status_with_retry_hint_and_key() {
        let mut status = Status::resource_exhausted("shard queue full");
        status
            .metadata_mut()
            .insert(RETRY_AFTER_HEADER, AsciiMetadataValue::from_static("250"));
        let key = IdempotencyKey {
            value: "k-9".into(),
            generated: true,
        };
        assert_eq!(
            format_status(&status, Some(&key)),
            "RESOURCE_EXHAUSTED: shard queue full; retry after 250 ms; \
             to retry safely pass --idempotency-key k-9"
        );
        let refused = Status::failed_precondition("insufficient available: 1 < 2");
        assert_eq!(
            format_status(&refused, Some(&key)),
            "FAILED_PRECONDITION: insufficient available: 1 < 2"
        );
        assert_eq!(
            format_status(&Status::not_found(""), None),
            format!("NOT_FOUND: {}", tonic::Code::NotFound.description())
        );
    }

    #[test]
    fn labels_unknown_enum_values() {
        assert_eq!(state_label(ReservationState::Expired.into()), "EXPIRED");
        assert_eq!(state_label(42), "UNKNOWN(42)");
        assert_eq!(owner_label(None), "-");
    }
}
