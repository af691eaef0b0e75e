//! Shopify webhooks in (CHANNELS.md A.5): `POST /webhooks/shopify/{tenant}/
//! {channel}` on the node's HTTP port.
//!
//! Intake: the channel must be a Shopify channel; `X-Shopify-Hmac-Sha256`
//! is checked, in constant time, against the HMAC-SHA256 of the raw body
//! keyed with the channel's `webhook_secret` (from its `credentials_ref`;
//! `webhook_secret_previous` is accepted too, for the hour a rotation takes
//! at Shopify) before anything is parsed; a missing or wrong signature is
//! 401 and nothing is stored. The body is bounded. A verified delivery goes
//! to the inbox (`inbox::admit`) and is answered 200: the business meaning
//! is applied later, by the [`Applier`], from the inbox.
//!
//! Mapping back from Shopify to skuld (the channel's account settings, as
//! the connector maps forward): a line's `sku` is the SKU when the channel
//! maps it (`inventory_item_id.<sku>`); else the SKU whose
//! `inventory_item_id.<sku>` (or `variant_id.<sku>`) names the item; a
//! Shopify location is the skuld location whose `location_id.<location>`
//! names it, or a location of the network named by the number itself.
//! Anything else is an exception with an owner (`exceptions`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::Value;
use sha2::Sha256;
use skuld_actors::channel::inbound::parse_rfc3339_ms;
use skuld_actors::channel::{Channel, ChannelKind};
use skuld_cluster::Store;
use skuld_proto::v1 as pb;
use skuld_proto::v1::inventory_service_server::InventoryService as _;
use skuld_proto::v1::order_service_server::OrderService as _;
use skuld_proto::v1::returns_service_server::ReturnsService as _;
use tokio::sync::Notify;
use tonic::{Code, Request, Status};
use xxhash_rust::xxh3::xxh3_64;

use super::exceptions::{ExceptionCode, WebhookException, DEFAULT_OWNER, OWNER_SETTING};
use super::inbox::{self, Admitted, Applied, Delivery};
use super::metrics as m;
use crate::api::InventoryApi;
use crate::auth::{Caller, Principal, Role};
use crate::channels::credentials::{read_credentials, CredentialPolicy};
use crate::channels::definitions::{self, validate_channel_id};
use crate::channels::worker::RECONCILE_KIND;
use crate::orders_api::OrdersApi;
use crate::returns_api::ReturnsApi;

/// The credential names (in the JSON object `credentials_ref` names) that
/// hold the app's client secret, the key of `X-Shopify-Hmac-Sha256`.
pub const SECRET: &str = "webhook_secret";
pub const PREVIOUS_SECRET: &str = "webhook_secret_previous";
/// A secret read is used this long before the reference is read again (a
/// rotated file is picked up without a change of the definition).
const SECRET_TTL: Duration = Duration::from_secs(30);
/// The largest body taken in; Shopify's orders with many lines stay far
/// below it.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// A header's value, if present and text.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

struct CachedSecrets {
    revision: u64,
    read_at: Instant,
    keys: Arc<Vec<Vec<u8>>>,
}

/// The HTTP side: verification and intake.
pub struct Intake {
    pub store: Arc<dyn Store>,
    pub credentials: CredentialPolicy,
    pub shard_count: u32,
    pub max_body_bytes: usize,
    pub wake: Arc<Notify>,
    secrets: Mutex<HashMap<(String, String), CachedSecrets>>,
}

impl Intake {
    pub fn new(
        store: Arc<dyn Store>,
        credentials: CredentialPolicy,
        shard_count: u32,
        max_body_bytes: usize,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            credentials,
            shard_count,
            max_body_bytes,
            wake,
            secrets: Mutex::new(HashMap::new()),
        }
    }

    /// The channel's webhook keys (current first), read again after
    /// [`SECRET_TTL`] or a change of the definition.
    async fn keys(&self, channel: &Channel, revision: u64) -> Result<Arc<Vec<Vec<u8>>>, String> {
        let cache_key = (channel.tenant.clone(), channel.id.clone());
        if let Some(cached) = self.secrets.lock().get(&cache_key) {
            if cached.revision == revision && cached.read_at.elapsed() < SECRET_TTL {
                return Ok(Arc::clone(&cached.keys));
            }
        }
        let policy = self.credentials.clone();
        let (tenant, reference) = (channel.tenant.clone(), channel.credentials_ref.clone());
        // A file read: off the async threads.
        let credentials =
            tokio::task::spawn_blocking(move || read_credentials(&policy, &tenant, &reference))
                .await
                .map_err(|_| "the credentials read did not finish".to_owned())??;
        let keys: Vec<Vec<u8>> = [SECRET, PREVIOUS_SECRET]
            .iter()
            .filter_map(|name| credentials.get(name))
            .map(|secret| secret.expose().as_bytes().to_vec())
            .filter(|key| !key.is_empty())
            .collect();
        if keys.is_empty() {
            return Err(format!(
                "the channel's credentials hold no {SECRET:?}: webhooks cannot be verified"
            ));
        }
        let keys = Arc::new(keys);
        self.secrets.lock().insert(
            cache_key,
            CachedSecrets {
                revision,
                read_at: Instant::now(),
                keys: Arc::clone(&keys),
            },
        );
        Ok(keys)
    }
}

/// `X-Shopify-Hmac-Sha256` against the raw body, in constant time
/// (`verify_slice`), with each key.
pub fn signature_valid(keys: &[Vec<u8>], body: &[u8], signature: &str) -> bool {
    let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(signature) else {
        return false;
    };
    keys.iter().any(|key| {
        Hmac::<Sha256>::new_from_slice(key).is_ok_and(|mut mac| {
            mac.update(body);
            mac.verify_slice(&expected).is_ok()
        })
    })
}

pub fn routes(intake: Arc<Intake>) -> axum::Router {
    axum::Router::new()
        .route("/webhooks/shopify/{tenant}/{channel}", post(receive))
        // The body is read by `receive` against its own limit.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(intake)
}

fn refuse(status: StatusCode, reason: &str) -> Response {
    (status, format!("{reason}\n")).into_response()
}

fn refused_signature(reason: &'static str) -> Response {
    metrics::counter!(m::REFUSED_SIGNATURE, "reason" => reason).increment(1);
    tracing::warn!(reason, "a Shopify webhook refused: signature");
    refuse(
        StatusCode::UNAUTHORIZED,
        "the webhook signature does not verify",
    )
}

async fn receive(
    State(intake): State<Arc<Intake>>,
    Path((tenant, channel_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    metrics::counter!(m::RECEIVED, "kind" => "shopify").increment(1);
    let span =
        tracing::info_span!("webhook_intake", channel = %channel_id, topic = tracing::field::Empty);
    let _entered = span.enter();
    if skuld_actors::key::validate_tenant("tenant", &tenant).is_err()
        || validate_channel_id("channel", &channel_id).is_err()
    {
        return refuse(StatusCode::NOT_FOUND, "no such channel");
    }
    let stored = match definitions::load(intake.store.as_ref(), &tenant, &channel_id).await {
        Ok(Some(stored)) if stored.channel.kind == ChannelKind::Shopify => stored,
        Ok(_) => return refuse(StatusCode::NOT_FOUND, "no such Shopify channel"),
        Err(error) => {
            tracing::warn!(%error, "cannot read the channel for a webhook");
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "try again");
        }
    };
    let Some(signature) = header(&headers, "x-shopify-hmac-sha256").map(str::to_owned) else {
        return refused_signature("missing");
    };
    // Refused unread when it says it is too large; counted while read.
    let declared = header(&headers, "content-length").and_then(|n| n.parse::<usize>().ok());
    if declared.is_some_and(|length| length > intake.max_body_bytes) {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large");
    }
    let body = match axum::body::to_bytes(body, intake.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large"),
    };
    let keys = match intake.keys(&stored.channel, stored.revision).await {
        Ok(keys) => keys,
        Err(reason) => {
            // A configuration fault, not the sender's: Shopify retries.
            tracing::warn!(%reason, "cannot verify webhooks of the channel");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the channel's webhook secret is not readable",
            );
        }
    };
    if !signature_valid(&keys, &body, &signature) {
        return refused_signature("mismatch");
    }
    // Verified: only now is anything read from the delivery.
    let (Some(topic), Some(webhook_id)) = (
        header(&headers, "x-shopify-topic"),
        header(&headers, "x-shopify-webhook-id"),
    ) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "X-Shopify-Topic and X-Shopify-Webhook-Id are required",
        );
    };
    let event_id = header(&headers, "x-shopify-event-id").unwrap_or(webhook_id);
    let ids_fit = [topic, webhook_id, event_id]
        .iter()
        .all(|id| skuld_actors::key::validate_token("header", id).is_ok());
    if !ids_fit {
        return refuse(StatusCode::BAD_REQUEST, "a Shopify header is not a token");
    }
    span.record("topic", topic);
    let triggered_at = header(&headers, "x-shopify-triggered-at").unwrap_or_default();
    let received_at_ms = u64::try_from(skuld_cluster::now_ms()).unwrap_or(0);
    let payload: Option<Value> = serde_json::from_slice(&body).ok();
    let (resource, updated_at) = describe(topic, payload.as_ref(), webhook_id);
    let updated_at_ms = updated_at
        .or_else(|| parse_rfc3339_ms(triggered_at))
        .unwrap_or(i64::try_from(received_at_ms).unwrap_or(i64::MAX));
    let delivery = Delivery {
        tenant,
        channel: channel_id,
        topic: topic.to_owned(),
        webhook_id: webhook_id.to_owned(),
        event_id: event_id.to_owned(),
        triggered_at: triggered_at.to_owned(),
        received_at_ms,
        resource,
        updated_at_ms,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    match inbox::admit(intake.store.as_ref(), &delivery, intake.shard_count).await {
        Ok(Admitted::Accepted) => {
            intake.wake.notify_one();
            tracing::debug!(event_id = %delivery.event_id, "webhook taken into the inbox");
            (StatusCode::OK, "accepted\n").into_response()
        }
        Ok(Admitted::Duplicate(by)) => {
            metrics::counter!(m::DUPLICATES, "by" => by).increment(1);
            tracing::debug!(by, "a webhook seen before");
            (StatusCode::OK, "duplicate\n").into_response()
        }
        Err(error) => {
            tracing::warn!(%error, "cannot store a webhook");
            refuse(StatusCode::SERVICE_UNAVAILABLE, "try again")
        }
    }
}

/// A JSON number or a numeric string (`12`, `"12"`, `"gid://shopify/X/12"`).
fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(text) => gid_number(text),
        _ => None,
    }
}

fn gid_number(text: &str) -> Option<u64> {
    text.rsplit('/').next()?.parse().ok()
}

fn text(value: &Value) -> Option<&str> {
    value
        .as_str()
        .map(str::trim)
        .filter(|text| !text.is_empty())
}

/// What a delivery is about, and its `updated_at`: the unit of ordering.
pub fn describe(topic: &str, payload: Option<&Value>, webhook_id: &str) -> (String, Option<i64>) {
    let Some(payload) = payload.filter(|payload| payload.is_object()) else {
        return (format!("unreadable:{webhook_id}"), None);
    };
    let at = |field: &str| {
        payload
            .get(field)
            .and_then(Value::as_str)
            .and_then(parse_rfc3339_ms)
    };
    let id = payload.get("id").and_then(number);
    let family = topic.split('/').next().unwrap_or(topic);
    let resource = match (family, id) {
        ("inventory_levels", _) => {
            let item = payload.get("inventory_item_id").and_then(number);
            let location = payload.get("location_id").and_then(number);
            match (item, location) {
                (Some(item), Some(location)) => format!("level:{item}:{location}"),
                _ => format!("unreadable:{webhook_id}"),
            }
        }
        ("orders", Some(id)) => format!("order:{id}"),
        ("refunds", Some(id)) => format!("refund:{id}"),
        ("returns", Some(id)) => format!("return:{id}"),
        (family, Some(id)) => format!("{family}:{id}"),
        (_, None) => format!("unreadable:{webhook_id}"),
    };
    (
        resource,
        at("updated_at")
            .or_else(|| at("processed_at"))
            .or_else(|| at("created_at")),
    )
}

/// The channel's SKU for a Shopify line or level, if the channel maps it.
pub fn sku_of(
    channel: &Channel,
    sku: Option<&str>,
    item: Option<u64>,
    variant: Option<u64>,
) -> Option<String> {
    if let Some(sku) = sku {
        if channel
            .account
            .contains_key(&format!("inventory_item_id.{sku}"))
        {
            return Some(sku.to_owned());
        }
    }
    let by = |prefix: &str, wanted: Option<u64>| {
        let wanted = wanted?;
        channel.account.iter().find_map(|(name, value)| {
            let sku = name.strip_prefix(prefix)?;
            (gid_number(value) == Some(wanted)).then(|| sku.to_owned())
        })
    };
    by("inventory_item_id.", item).or_else(|| by("variant_id.", variant))
}

/// The skuld location of a Shopify location, if the channel maps it.
pub fn location_of(channel: &Channel, location: u64) -> Option<String> {
    channel
        .account
        .iter()
        .find_map(|(name, value)| {
            let skuld = name.strip_prefix("location_id.")?;
            (gid_number(value) == Some(location)).then(|| skuld.to_owned())
        })
        .or_else(|| {
            let named = location.to_string();
            channel.network.iter().find(|l| **l == named).cloned()
        })
}

/// A key of at most `limit` characters built from the channel and `rest`:
/// a long channel id is hashed, so keys stay within the API's limits.
fn scoped(channel: &str, rest: &str, limit: usize) -> String {
    let plain = format!("shopify:{channel}:{rest}");
    if plain.len() <= limit {
        plain
    } else {
        format!("shopify:{:016x}:{rest}", xxh3_64(channel.as_bytes()))
    }
}

fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Internal
            | Code::Unknown
            | Code::Cancelled
    )
}

/// Applies deliveries through the node's own services, in process, as the
/// channel (a writer of its tenant only).
pub struct Applier {
    pub store: Arc<dyn Store>,
    pub orders: OrdersApi,
    pub inventory: InventoryApi,
    pub returns: ReturnsApi,
}

/// One delivery being applied: what it needs and what it found.
struct Work<'a> {
    delivery: &'a Delivery,
    channel: Channel,
    caller: Caller,
    exceptions: Vec<WebhookException>,
}

impl Work<'_> {
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.extensions_mut().insert(self.caller.clone());
        request
    }

    fn except(&mut self, code: ExceptionCode, remote_ref: String, detail: String) {
        let owner = self
            .channel
            .account
            .get(OWNER_SETTING)
            .cloned()
            .unwrap_or_else(|| DEFAULT_OWNER.to_owned());
        self.exceptions.push(WebhookException {
            tenant: self.delivery.tenant.clone(),
            channel: self.delivery.channel.clone(),
            topic: self.delivery.topic.clone(),
            event_id: self.delivery.event_id.clone(),
            webhook_id: self.delivery.webhook_id.clone(),
            resource: self.delivery.resource.clone(),
            code,
            detail,
            remote_ref,
            owner,
            recorded_at_ms: u64::try_from(skuld_cluster::now_ms()).unwrap_or(0),
        });
    }

    /// A refusal by skuld: an exception; anything transient: try again.
    fn failed(&mut self, what: &str, status: Status) -> Option<Applied> {
        if retryable(&status) {
            return Some(Applied::Retry(format!("{what}: {}", status.message())));
        }
        self.except(
            ExceptionCode::Refused,
            String::new(),
            format!("{what}: {:?}: {}", status.code(), status.message()),
        );
        None
    }

    fn done(self) -> Applied {
        Applied::Done(self.exceptions)
    }

    /// A line's SKU, or an UNKNOWN_SKU exception.
    fn sku(&mut self, line: &Value) -> Option<String> {
        let sku = line.get("sku").and_then(text);
        let item = line.get("inventory_item_id").and_then(number);
        let variant = line.get("variant_id").and_then(number);
        let found = sku_of(&self.channel, sku, item, variant);
        if found.is_none() {
            let remote = match (sku, variant.or(item)) {
                (Some(sku), Some(id)) => format!("{sku} ({id})"),
                (Some(sku), None) => sku.to_owned(),
                (None, Some(id)) => id.to_string(),
                (None, None) => String::new(),
            };
            self.except(
                ExceptionCode::UnknownSku,
                remote,
                "the channel maps no SKU to this item (inventory_item_id.<sku>)".into(),
            );
        }
        found
    }

    /// A Shopify location's skuld location, or an UNKNOWN_LOCATION exception.
    fn location(&mut self, location: Option<u64>) -> Option<String> {
        let found = location.and_then(|location| location_of(&self.channel, location));
        if found.is_none() {
            self.except(
                ExceptionCode::UnknownLocation,
                location.map(|l| l.to_string()).unwrap_or_default(),
                "the channel maps no location of its network to this one (location_id.<location>)"
                    .into(),
            );
        }
        found
    }
}

#[async_trait::async_trait]
impl inbox::Apply for Applier {
    async fn apply(&self, delivery: &Delivery) -> Applied {
        let channel =
            match definitions::load(self.store.as_ref(), &delivery.tenant, &delivery.channel).await
            {
                Ok(Some(stored)) => stored.channel,
                // Deleted since: nothing of it is applied any more.
                Ok(None) => return Applied::Ignored,
                Err(error) => return Applied::Retry(error.to_string()),
            };
        let principal = Principal::new(
            &format!("shopify-webhook:{}/{}", delivery.tenant, delivery.channel),
            [delivery.tenant.as_str()],
            [Role::Reader, Role::Writer],
        );
        let mut work = Work {
            delivery,
            channel,
            caller: Caller::new(Arc::new(principal), None),
            exceptions: Vec::new(),
        };
        let payload: Value = match serde_json::from_str(&delivery.body) {
            Ok(payload @ Value::Object(_)) => payload,
            _ => {
                work.except(
                    ExceptionCode::UnreadablePayload,
                    String::new(),
                    "the body is not a JSON object".into(),
                );
                return work.done();
            }
        };
        match delivery.topic.as_str() {
            "orders/create" => self.order_created(work, &payload).await,
            "refunds/create" => self.refund_created(work, &payload).await,
            "returns/request" => self.return_requested(work, &payload).await,
            "inventory_levels/update" => self.level_updated(work, &payload).await,
            _ => Applied::Ignored,
        }
    }
}

impl Applier {
    /// A channel's order: reserved and committed in skuld (the orders
    /// saga, idempotent per Shopify order), where the network has it.
    /// Shopify has already taken the units off its own `available`; the
    /// commit lowers skuld's sellable figure by the same units, and the
    /// push that follows compares against what Shopify acknowledged
    /// (`changeFromQuantity`, CHANNELS.md A.6): stale after Shopify's own
    /// decrement, so the worker reads back and sends the recomputed value,
    /// never the old one.
    async fn order_created(&self, mut work: Work<'_>, order: &Value) -> Applied {
        let Some(id) = order.get("id").and_then(number) else {
            work.except(
                ExceptionCode::UnreadablePayload,
                String::new(),
                "an order without an id".into(),
            );
            return work.done();
        };
        let order_location = order.get("location_id").and_then(number);
        let mut lines = Vec::new();
        for line in order
            .get("line_items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let quantity = line.get("quantity").and_then(Value::as_i64).unwrap_or(0);
            let Some(line_id) = line.get("id").and_then(number) else {
                continue;
            };
            if quantity <= 0 {
                continue;
            }
            let sku = work.sku(line);
            let location = line.get("location_id").and_then(number).or(order_location);
            let locations = match location {
                Some(location) => work.location(Some(location)).map(|l| vec![l]),
                // Where it ships from is Shopify's later choice: any
                // location the channel sells from, in the network's order.
                None => Some(work.channel.network.clone()),
            };
            if let (Some(sku), Some(locations)) = (sku, locations) {
                lines.push(pb::OrderLineSpec {
                    line_id: line_id.to_string(),
                    sku,
                    quantity,
                    locations,
                    allow_split: false,
                });
            }
        }
        if lines.is_empty() {
            return work.done();
        }
        let key = pb::OrderKey {
            tenant: work.delivery.tenant.clone(),
            order_id: scoped(&work.delivery.channel, &id.to_string(), 64),
        };
        let reserved = self
            .orders
            .reserve_order(work.request(pb::ReserveOrderRequest {
                key: Some(key.clone()),
                idempotency_key: format!("shopify-order:{id}:reserve"),
                lines,
                ttl_seconds: 0,
                channel: work.delivery.channel.clone(),
            }))
            .await;
        let order = match reserved {
            Ok(reply) => reply.into_inner().order.unwrap_or_default(),
            Err(status) => {
                return work
                    .failed("ReserveOrder", status)
                    .unwrap_or_else(|| work.done())
            }
        };
        match pb::OrderStatus::try_from(order.status).unwrap_or_default() {
            pb::OrderStatus::Held => {}
            pb::OrderStatus::Committed => return work.done(),
            pb::OrderStatus::Released => {
                let failure = order.failure.unwrap_or_default();
                let detail = format!(
                    "line {} ({} x {}): {}; skuld holds the order released",
                    failure.line_id, failure.requested, failure.sku, failure.reason
                );
                work.except(ExceptionCode::InsufficientStock, failure.sku, detail);
                return work.done();
            }
            _ => return Applied::Retry("the order's reservation is still running".into()),
        }
        let committed = self
            .orders
            .commit_order(work.request(pb::CommitOrderRequest {
                key: Some(key),
                idempotency_key: format!("shopify-order:{id}:commit"),
            }))
            .await;
        match committed {
            Ok(reply) => {
                let status = reply.into_inner().order.map_or(0, |order| order.status);
                if status == pb::OrderStatus::Committed as i32 {
                    work.done()
                } else {
                    Applied::Retry("the order's commit is still running".into())
                }
            }
            Err(status) => work
                .failed("CommitOrder", status)
                .unwrap_or_else(|| work.done()),
        }
    }

    /// A refund: each line restocked (`restock_type` return, cancel or
    /// legacy_restock, or the refund's `restock`) raises on-hand at its
    /// location, once (the adjustment's key is the refund line's).
    async fn refund_created(&self, mut work: Work<'_>, refund: &Value) -> Applied {
        let Some(refund_id) = refund.get("id").and_then(number) else {
            work.except(
                ExceptionCode::UnreadablePayload,
                String::new(),
                "a refund without an id".into(),
            );
            return work.done();
        };
        let restock_all = refund.get("restock").and_then(Value::as_bool) == Some(true);
        for line in refund
            .get("refund_line_items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let restocks = match line.get("restock_type").and_then(Value::as_str) {
                Some("no_restock") => false,
                Some("return" | "cancel" | "legacy_restock") => true,
                _ => restock_all,
            };
            let quantity = line.get("quantity").and_then(Value::as_i64).unwrap_or(0);
            let Some(line_id) = line.get("id").and_then(number) else {
                continue;
            };
            if !restocks || quantity <= 0 {
                continue;
            }
            let item = line.get("line_item").unwrap_or(&Value::Null);
            let sku = work.sku(item);
            let location = work.location(line.get("location_id").and_then(number));
            let (Some(sku), Some(location)) = (sku, location) else {
                continue;
            };
            let adjusted = self
                .inventory
                .adjust(work.request(pb::AdjustRequest {
                    header: Some(pb::MutationHeader {
                        key: Some(pb::PositionKey {
                            tenant: work.delivery.tenant.clone(),
                            sku,
                            location,
                        }),
                        idempotency_key: scoped(
                            &work.delivery.channel,
                            &format!("refund:{refund_id}:{line_id}"),
                            128,
                        ),
                        expected_version: None,
                    }),
                    bucket: pb::Bucket::OnHand.into(),
                    delta: quantity,
                    reason: pb::AdjustmentReason::ReturnRestock.into(),
                    change_from: None,
                    reference_document_uri: format!("gid://shopify/Refund/{refund_id}"),
                }))
                .await;
            if let Err(status) = adjusted {
                if let Some(retry) = work.failed("Adjust", status) {
                    return retry;
                }
            }
        }
        work.done()
    }

    /// A return requested on Shopify: a return case in skuld
    /// (`RequestReturn`, the channel's policy), keyed by the Shopify return.
    async fn return_requested(&self, mut work: Work<'_>, request: &Value) -> Applied {
        let Some(return_id) = request.get("id").and_then(number) else {
            work.except(
                ExceptionCode::UnreadablePayload,
                String::new(),
                "a return without an id".into(),
            );
            return work.done();
        };
        let order_ref = request
            .get("order")
            .and_then(|order| order.get("id"))
            .and_then(number)
            .map(|id| scoped(&work.delivery.channel, &id.to_string(), 64))
            .unwrap_or_default();
        let mut order_lines = Vec::new();
        let mut lines = Vec::new();
        for line in request
            .get("return_line_items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let item = line
                .get("line_item")
                .or_else(|| {
                    line.get("fulfillment_line_item")
                        .and_then(|f| f.get("line_item"))
                })
                .unwrap_or(&Value::Null);
            let quantity = line.get("quantity").and_then(Value::as_i64).unwrap_or(0);
            let Some(line_id) = item.get("id").and_then(number) else {
                continue;
            };
            let Some(sku) = work.sku(item) else {
                continue;
            };
            if quantity <= 0 {
                continue;
            }
            // Received where it shipped from when the payload says so;
            // else at the network's first location.
            let shipped_from = line
                .get("location_id")
                .or_else(|| item.get("location_id"))
                .and_then(number);
            let location = match shipped_from {
                Some(location) => match work.location(Some(location)) {
                    Some(location) => location,
                    None => continue,
                },
                None => work.channel.network.first().cloned().unwrap_or_default(),
            };
            order_lines.push(pb::OrderLine {
                location,
                // Shopify's return rules decided the request is in time
                // before sending it, and the payload says nothing of the
                // delivery: skuld's window counts from the request, so it
                // does not refuse what the shop accepted.
                fulfilled_at_unix_ms: work.delivery.updated_at_ms,
                delivered_at_unix_ms: work.delivery.updated_at_ms,
                line_id: line_id.to_string(),
                sku,
                quantity: item
                    .get("quantity")
                    .and_then(Value::as_i64)
                    .unwrap_or(quantity)
                    .max(quantity),
                ..Default::default()
            });
            lines.push(pb::RequestedLine {
                order_line_id: line_id.to_string(),
                quantity,
                reason_code: line
                    .get("return_reason")
                    .and_then(text)
                    .unwrap_or("unknown")
                    .to_owned(),
                resolution: pb::Resolution::RefundOriginal.into(),
                exchange_sku: String::new(),
            });
        }
        if lines.is_empty() {
            return work.done();
        }
        let opened = self
            .returns
            .request_return(work.request(pb::OpenReturnRequest {
                header: Some(pb::ReturnHeader {
                    key: Some(pb::ReturnKey {
                        tenant: work.delivery.tenant.clone(),
                        return_id: scoped(&work.delivery.channel, &return_id.to_string(), 96),
                    }),
                    idempotency_key: format!("shopify-return:{return_id}:request"),
                    expected_version: None,
                }),
                order_ref,
                customer_ref: String::new(),
                channel: work.delivery.channel.clone(),
                order_lines,
                lines,
                override_window: false,
            }))
            .await;
        match opened {
            Ok(_) => work.done(),
            Err(status) => work
                .failed("RequestReturn", status)
                .unwrap_or_else(|| work.done()),
        }
    }

    /// A level changed on Shopify (its own order decrement, an edit in its
    /// admin): the channel's reconciliation is asked for, so the push
    /// worker reads the channel back and pushes what differs. The figure
    /// in the payload is not trusted as is: it may be a day old.
    async fn level_updated(&self, mut work: Work<'_>, level: &Value) -> Applied {
        let item = level.get("inventory_item_id").and_then(number);
        let sku = sku_of(&work.channel, None, item, None);
        if sku.is_none() {
            work.except(
                ExceptionCode::UnknownSku,
                item.map(|item| item.to_string()).unwrap_or_default(),
                "the channel maps no SKU to this item (inventory_item_id.<sku>)".into(),
            );
        }
        let location = work.location(level.get("location_id").and_then(number));
        if sku.is_none() || location.is_none() {
            return work.done();
        }
        let requested_at_ms = skuld_cluster::now_ms();
        let asked = self
            .store
            .put_record(
                RECONCILE_KIND,
                &definitions::record_id(&work.delivery.tenant, &work.delivery.channel),
                requested_at_ms.to_string().into_bytes(),
            )
            .await;
        match asked {
            Ok(()) => work.done(),
            Err(error) => Applied::Retry(error.to_string()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;
    use skuld_actors::channel::Publication;

    use super::*;

    fn channel() -> Channel {
        Channel {
            id: "web".into(),
            tenant: "acme".into(),
            kind: ChannelKind::Shopify,
            network: vec!["DC1".into(), "77".into()],
            publication: Publication::PerLocation,
            priority: 1,
            controls: vec![],
            stacking: false,
            min_push_interval_ms: 1_000,
            reassert_interval_ms: 60_000,
            account: BTreeMap::from([
                (
                    "inventory_item_id.TEE".into(),
                    "gid://shopify/InventoryItem/11".into(),
                ),
                ("variant_id.MUG".into(), "31".into()),
                ("location_id.DC1".into(), "1".into()),
            ]),
            credentials_ref: String::new(),
        }
    }

    #[test]
    fn the_signature_is_checked_over_the_raw_body_with_any_current_key() {
        let body = br#"{"id":1}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"new").unwrap();
        mac.update(body);
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let keys = vec![b"old".to_vec(), b"new".to_vec()];
        assert!(signature_valid(&keys, body, &signature));
        assert!(!signature_valid(&keys, br#"{"id":2}"#, &signature));
        assert!(!signature_valid(&[b"old".to_vec()], body, &signature));
        assert!(!signature_valid(&keys, body, "not base64!"));
        assert!(!signature_valid(&keys, body, ""));
    }

    #[test]
    fn shopify_items_and_locations_map_back_through_the_channels_settings() {
        let channel = channel();
        assert_eq!(
            sku_of(&channel, Some("TEE"), None, None).as_deref(),
            Some("TEE")
        );
        assert_eq!(
            sku_of(&channel, None, Some(11), None).as_deref(),
            Some("TEE")
        );
        assert_eq!(
            sku_of(&channel, Some("other"), None, Some(31)).as_deref(),
            Some("MUG")
        );
        assert_eq!(sku_of(&channel, Some("GHOST"), Some(99), Some(98)), None);
        assert_eq!(location_of(&channel, 1).as_deref(), Some("DC1"));
        assert_eq!(location_of(&channel, 77).as_deref(), Some("77"));
        assert_eq!(location_of(&channel, 2), None);
    }

    #[test]
    fn a_delivery_is_ordered_per_resource_by_its_updated_at() {
        let level = json!({"inventory_item_id": 11, "location_id": 1, "updated_at": "2026-12-02T03:48:37Z"});
        assert_eq!(
            describe("inventory_levels/update", Some(&level), "w"),
            ("level:11:1".into(), Some(1_796_183_317_000))
        );
        let refund = json!({"id": 5, "created_at": "1970-01-01T00:00:01Z"});
        assert_eq!(
            describe("refunds/create", Some(&refund), "w"),
            ("refund:5".into(), Some(1_000))
        );
        assert_eq!(describe("orders/create", None, "w").0, "unreadable:w");
        assert_eq!(
            describe("orders/create", Some(&json!([1])), "w").0,
            "unreadable:w"
        );
    }

    #[test]
    fn keys_stay_within_their_limits_for_a_long_channel_id() {
        let long = "c".repeat(128);
        assert!(scoped(&long, "123", 64).len() <= 64);
        assert_eq!(scoped("web", "123", 64), "shopify:web:123");
    }
}
