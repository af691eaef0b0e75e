//! The client subcommands and their flags.

use super::*;

use clap::{Args, Subcommand, ValueEnum};
use skuld_proto::v1::{AdjustmentReason, Bucket, MutationHeader, OwnerType, PositionKey};

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
    /// owner: send a position's or a return's command to the node that
    /// owns it (asked with RoutingService.GetShardMap, --endpoint when that
    /// fails); any: to --endpoint, which forwards.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "owner",
        env = "SKULD_ROUTING"
    )]
    pub routing: RoutingMode,
    #[command(flatten)]
    pub credentials: credentials::CredentialArgs,
}

/// Where the CLI sends a keyed command.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoutingMode {
    #[default]
    Owner,
    Any,
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
    /// Orders: hold several lines at once, all or none; commit or release them.
    #[command(subcommand)]
    Orders(orders::OrdersCommand),
    /// The event stream: follow it, or read one aggregate's history.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Outbound webhooks: endpoints, secrets, dead letters and replays.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
    /// Sales channels: definitions, controls, what each may sell.
    #[command(subcommand)]
    Channels(channels::ChannelsCommand),
    /// Bulk loads: counts of many positions from a CSV or JSON Lines file.
    #[command(subcommand)]
    Import(import::ImportCommand),
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
    pub(super) fn key(&self) -> PositionKey {
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
    pub(super) fn header(&self, position: &PositionArgs) -> (MutationHeader, IdempotencyKey) {
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
