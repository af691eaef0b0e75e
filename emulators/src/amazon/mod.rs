//! Amazon Selling Partner API emulator (CHANNELS.md B.1-B.3): Login with
//! Amazon tokens, `patchListingsItem` / `getListingsItem` on
//! `fulfillment_availability` with the change applied after a delay, the
//! Feeds API with `JSON_LISTINGS_FEED`, and token buckets per operation and
//! (seller, application).

mod auth;
mod control;
mod feeds;
mod listings;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::bucket::TokenBucket;
use crate::faults::Faults;
use crate::recorder::Recorder;
use crate::server::{serve, FrontDoor, RunningServer, Throttled};

/// A token bucket's published numbers (B.2: "rate" per second, up to "burst").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub rate_per_second: f64,
    pub burst: f64,
}

impl RateLimit {
    pub const fn new(rate_per_second: f64, burst: f64) -> Self {
        Self {
            rate_per_second,
            burst,
        }
    }
}

/// What `patchListingsItem` does with a SKU the seller has no listing for:
/// **unconfirmed** in CHANNELS.md, so a switch. `Reject` answers `INVALID`
/// with an issue; `Create` makes the listing when the patch is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownSku {
    #[default]
    Reject,
    Create,
}

/// The operations with their own bucket (B.2, B.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Operation {
    PatchListingsItem,
    GetListingsItem,
    CreateFeedDocument,
    CreateFeed,
    GetFeed,
    GetFeedDocument,
}

impl Operation {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "patchListingsItem" => Self::PatchListingsItem,
            "getListingsItem" => Self::GetListingsItem,
            "createFeedDocument" => Self::CreateFeedDocument,
            "createFeed" => Self::CreateFeed,
            "getFeed" => Self::GetFeed,
            "getFeedDocument" => Self::GetFeedDocument,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct AmazonConfig {
    /// 0 picks a free port.
    pub port: u16,
    /// The LWA application credentials.
    pub client_id: String,
    pub client_secret: String,
    /// The seller's refresh token (the `refresh_token` grant).
    pub refresh_token: String,
    pub seller_id: String,
    /// Marketplaces the seller sells in; the first is the default.
    pub marketplace_ids: Vec<String>,
    pub access_token_lifetime: Duration,
    /// B.2: patch, get, put and delete of listings items: 5/s, burst 10.
    pub listings_rate: RateLimit,
    /// B.3: createFeedDocument 0.5/s burst 15.
    pub create_feed_document_rate: RateLimit,
    /// B.3: createFeed 0.0083/s (one per two minutes) burst 15.
    pub create_feed_rate: RateLimit,
    /// B.3: getFeed 2/s burst 15.
    pub get_feed_rate: RateLimit,
    /// getFeedDocument is not in CHANNELS.md (**unconfirmed**); 0.0222/s burst
    /// 10 by default, Amazon's published figure for it elsewhere.
    pub get_feed_document_rate: RateLimit,
    /// B.1: `ACCEPTED` is not applied: the patch lands this long after.
    pub apply_delay: Duration,
    /// How long a feed stays `IN_PROGRESS` before it is `DONE`.
    pub feed_processing_time: Duration,
    /// B.3: at most 10,000 messages per feed.
    pub max_feed_messages: usize,
    pub unknown_sku: UnknownSku,
}

impl Default for AmazonConfig {
    fn default() -> Self {
        Self {
            port: 0,
            client_id: "amzn1.application-oa2-client.skuldemulator".to_owned(),
            client_secret: "amzn1.oa2-cs.v1.skuld-emulator-secret".to_owned(),
            refresh_token: "Atzr|skuld-emulator-refresh-token".to_owned(),
            seller_id: "A1SKULDEMULATOR".to_owned(),
            marketplace_ids: vec!["ATVPDKIKX0DER".to_owned()],
            access_token_lifetime: Duration::from_secs(3600),
            listings_rate: RateLimit::new(5.0, 10.0),
            create_feed_document_rate: RateLimit::new(0.5, 15.0),
            create_feed_rate: RateLimit::new(0.0083, 15.0),
            get_feed_rate: RateLimit::new(2.0, 15.0),
            get_feed_document_rate: RateLimit::new(0.0222, 10.0),
            apply_delay: Duration::from_secs(2),
            feed_processing_time: Duration::from_secs(5),
            max_feed_messages: 10_000,
            unknown_sku: UnknownSku::Reject,
        }
    }
}

impl AmazonConfig {
    fn rate(&self, operation: Operation) -> RateLimit {
        match operation {
            Operation::PatchListingsItem | Operation::GetListingsItem => self.listings_rate,
            Operation::CreateFeedDocument => self.create_feed_document_rate,
            Operation::CreateFeed => self.create_feed_rate,
            Operation::GetFeed => self.get_feed_rate,
            Operation::GetFeedDocument => self.get_feed_document_rate,
        }
    }
}

/// A listing as the channel holds it: attributes per top-level name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listing {
    pub sku: String,
    pub marketplace_id: String,
    pub product_type: String,
    pub attributes: Map<String, Value>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl Listing {
    /// The quantity on the `DEFAULT` (merchant) fulfillment channel.
    pub fn quantity(&self) -> Option<i64> {
        self.attributes
            .get("fulfillment_availability")?
            .as_array()?
            .iter()
            .find(|entry| entry["fulfillment_channel_code"] == "DEFAULT")?
            .get("quantity")?
            .as_i64()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SubmissionStatus {
    Pending,
    Applied,
    /// Accepted, then never applied (an injected fault).
    Dropped,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Submission {
    pub submission_id: String,
    pub sku: String,
    pub status: SubmissionStatus,
    pub accepted_ms: u64,
}

/// A patch waiting to be applied, in arrival order.
struct PendingApply {
    due: Instant,
    submission_id: String,
    marketplace_id: String,
    sku: String,
    product_type: String,
    patches: Vec<Value>,
}

pub(crate) struct AmazonState {
    pub config: AmazonConfig,
    /// Access token -> (LWA client id, expiry).
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    buckets: Mutex<HashMap<(Operation, String, String), TokenBucket>>,
    /// (marketplace, sku) -> listing.
    listings: Mutex<BTreeMap<(String, String), Listing>>,
    submissions: Mutex<Vec<Submission>>,
    apply_delay: Mutex<Duration>,
    drop_next_applies: Mutex<u32>,
    applies: mpsc::UnboundedSender<PendingApply>,
    feeds: feeds::FeedStore,
    pub base_url: Mutex<String>,
}

/// Every SP-API response carries a request id (B.2).
pub(crate) fn with_request_id(mut response: Response<Body>) -> Response<Body> {
    if let Ok(value) = uuid::Uuid::new_v4().to_string().parse() {
        response.headers_mut().insert("x-amzn-requestid", value);
    }
    response
}

/// B.2: every 4xx and 5xx is an `ErrorList`.
pub(crate) fn error_list(
    status: StatusCode,
    code: &str,
    message: &str,
    details: &str,
) -> Response<Body> {
    with_request_id(
        (
            status,
            axum::Json(json!({"errors": [{"code": code, "message": message, "details": details}]})),
        )
            .into_response(),
    )
}

pub(crate) fn json_response(status: StatusCode, body: Value, rate: Option<f64>) -> Response<Body> {
    let mut response = with_request_id((status, axum::Json(body)).into_response());
    if let Some(rate) = rate {
        if let Ok(value) = format!("{rate}").parse() {
            response
                .headers_mut()
                .insert("x-amzn-ratelimit-limit", value);
        }
    }
    response
}

fn injected_error(status: StatusCode) -> Response<Body> {
    let code = if status == StatusCode::SERVICE_UNAVAILABLE {
        "ServiceUnavailable"
    } else {
        "InternalFailure"
    };
    error_list(
        status,
        code,
        "We encountered an internal error. Please try again.",
        "",
    )
}

impl AmazonState {
    /// The LWA client id behind a valid `x-amz-access-token`, else B.2's 403.
    pub fn authorize(&self, headers: &HeaderMap) -> Result<String, Response<Body>> {
        let token = headers
            .get("x-amz-access-token")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        let tokens = self.tokens.lock();
        match tokens.get(token) {
            Some((client_id, expires)) if *expires > Instant::now() => Ok(client_id.clone()),
            _ => Err(error_list(
                StatusCode::FORBIDDEN,
                "Unauthorized",
                "Access to requested resource is denied.",
                "The access token you provided is revoked, malformed or invalid.",
            )),
        }
    }

    /// Takes one token from the operation's bucket for (seller, app): the
    /// applied rate for `x-amzn-RateLimit-Limit`, or the 429.
    pub fn take(&self, operation: Operation, client_id: &str) -> Result<f64, Response<Body>> {
        let limit = self.config.rate(operation);
        let mut buckets = self.buckets.lock();
        let bucket = buckets
            .entry((
                operation,
                self.config.seller_id.clone(),
                client_id.to_owned(),
            ))
            .or_insert_with(|| TokenBucket::new(limit.burst, limit.rate_per_second));
        let rate = bucket.refill_per_second();
        match bucket.try_take(1.0) {
            Ok(()) => Ok(rate),
            Err(_) => {
                let mut response = error_list(
                    StatusCode::TOO_MANY_REQUESTS,
                    "QuotaExceeded",
                    "You exceeded your quota for the requested resource.",
                    "",
                );
                if let Ok(value) = format!("{rate}").parse() {
                    response
                        .headers_mut()
                        .insert("x-amzn-ratelimit-limit", value);
                }
                response.extensions_mut().insert(Throttled);
                Err(response)
            }
        }
    }

    fn with_bucket<T>(
        &self,
        operation: Operation,
        client_id: &str,
        change: impl FnOnce(&mut TokenBucket) -> T,
    ) -> T {
        let limit = self.config.rate(operation);
        let mut buckets = self.buckets.lock();
        let bucket = buckets
            .entry((
                operation,
                self.config.seller_id.clone(),
                client_id.to_owned(),
            ))
            .or_insert_with(|| TokenBucket::new(limit.burst, limit.rate_per_second));
        change(bucket)
    }

    pub fn knows_marketplace(&self, marketplace_id: &str) -> bool {
        self.config
            .marketplace_ids
            .iter()
            .any(|known| known == marketplace_id)
    }

    fn accept(&self, pending: PendingApply) {
        self.submissions.lock().push(Submission {
            submission_id: pending.submission_id.clone(),
            sku: pending.sku.clone(),
            status: SubmissionStatus::Pending,
            accepted_ms: crate::clock::unix_millis(),
        });
        let _ = self.applies.send(pending);
    }

    fn mark(&self, submission_id: &str, status: SubmissionStatus) {
        if let Some(submission) = self
            .submissions
            .lock()
            .iter_mut()
            .find(|submission| submission.submission_id == submission_id)
        {
            submission.status = status;
        }
    }

    /// Applies patches to a listing (creating it when allowed).
    pub fn apply_patches(
        &self,
        marketplace_id: &str,
        sku: &str,
        product_type: &str,
        patches: &[Value],
    ) {
        let mut listings = self.listings.lock();
        let key = (marketplace_id.to_owned(), sku.to_owned());
        let now = crate::clock::unix_millis();
        let listing = listings.entry(key).or_insert_with(|| Listing {
            sku: sku.to_owned(),
            marketplace_id: marketplace_id.to_owned(),
            product_type: product_type.to_owned(),
            attributes: Map::new(),
            created_ms: now,
            updated_ms: now,
        });
        for patch in patches {
            listings::apply_patch(&mut listing.attributes, patch);
        }
        listing.updated_ms = now;
    }
}

/// Applies accepted patches in arrival order, each after its delay.
async fn apply_worker(state: Arc<AmazonState>, mut queue: mpsc::UnboundedReceiver<PendingApply>) {
    while let Some(pending) = queue.recv().await {
        tokio::time::sleep_until(pending.due.into()).await;
        let dropped = {
            let mut drops = state.drop_next_applies.lock();
            let dropped = *drops > 0;
            *drops = drops.saturating_sub(1);
            dropped
        };
        if dropped {
            state.mark(&pending.submission_id, SubmissionStatus::Dropped);
            continue;
        }
        state.apply_patches(
            &pending.marketplace_id,
            &pending.sku,
            &pending.product_type,
            &pending.patches,
        );
        state.mark(&pending.submission_id, SubmissionStatus::Applied);
    }
}

/// A running Amazon emulator.
#[derive(Clone)]
pub struct AmazonEmulator {
    state: Arc<AmazonState>,
    front: Arc<FrontDoor>,
    base_url: String,
}

pub(crate) async fn start(
    config: AmazonConfig,
) -> std::io::Result<(AmazonEmulator, RunningServer)> {
    let port = config.port;
    let (applies, queue) = mpsc::unbounded_channel();
    let (feeds, feed_queue) = feeds::FeedStore::new();
    let state = Arc::new(AmazonState {
        apply_delay: Mutex::new(config.apply_delay),
        config,
        tokens: Mutex::new(HashMap::new()),
        buckets: Mutex::new(HashMap::new()),
        listings: Mutex::new(BTreeMap::new()),
        submissions: Mutex::new(Vec::new()),
        drop_next_applies: Mutex::new(0),
        applies,
        feeds,
        base_url: Mutex::new(String::new()),
    });
    let front = Arc::new(FrontDoor {
        recorder: Arc::new(Recorder::new()),
        faults: Arc::new(Faults::default()),
        injected_error,
    });
    let emulator = AmazonEmulator {
        state: state.clone(),
        front: front.clone(),
        base_url: String::new(),
    };
    let router = Router::new()
        .merge(auth::routes(state.clone()))
        .merge(listings::routes(state.clone()))
        .merge(feeds::routes(state.clone()))
        .merge(control::routes(emulator.clone()))
        .merge(crate::control::routes(front.clone()));
    let mut server = serve(router, front, port).await?;
    let base_url = format!("http://{}", server.addr);
    *state.base_url.lock() = base_url.clone();
    server.add_background(tokio::spawn(apply_worker(state.clone(), queue)));
    server.add_background(tokio::spawn(feeds::feed_worker(state.clone(), feed_queue)));
    Ok((
        AmazonEmulator {
            base_url,
            ..emulator
        },
        server,
    ))
}

impl AmazonEmulator {
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The LWA token endpoint on this emulator.
    pub fn token_url(&self) -> String {
        format!("{}/auth/o2/token", self.base_url)
    }

    pub fn config(&self) -> &AmazonConfig {
        &self.state.config
    }

    pub fn seller_id(&self) -> &str {
        &self.state.config.seller_id
    }

    pub fn marketplace_id(&self) -> &str {
        self.state
            .config
            .marketplace_ids
            .first()
            .map(String::as_str)
            .unwrap_or("")
    }

    pub fn recorder(&self) -> &Recorder {
        &self.front.recorder
    }

    pub fn faults(&self) -> &Faults {
        &self.front.faults
    }

    /// Requests refused `QuotaExceeded`; zero means no budget was exceeded.
    pub fn budget_violations(&self) -> u64 {
        self.front.recorder.budget_violations()
    }

    /// A listing in the default marketplace with a `DEFAULT` quantity.
    pub fn add_listing(&self, sku: &str, product_type: &str, quantity: i64) {
        let marketplace = self.marketplace_id().to_owned();
        self.state.apply_patches(
            &marketplace,
            sku,
            product_type,
            &[
                json!({"op": "replace", "path": "/attributes/fulfillment_availability",
                "value": [{"fulfillment_channel_code": "DEFAULT", "quantity": quantity}]}),
            ],
        );
    }

    /// A change made on the channel side (Seller Central): the quantity
    /// changes under the connector at once.
    pub fn edit_quantity(&self, sku: &str, quantity: i64) {
        let marketplace = self.marketplace_id().to_owned();
        self.state.apply_patches(
            &marketplace,
            sku,
            "PRODUCT",
            &[
                json!({"op": "merge", "path": "/attributes/fulfillment_availability",
                "value": [{"fulfillment_channel_code": "DEFAULT", "quantity": quantity}]}),
            ],
        );
    }

    /// What Amazon shows now for the SKU's `DEFAULT` quantity.
    pub fn quantity(&self, sku: &str) -> Option<i64> {
        self.listing(sku).and_then(|listing| listing.quantity())
    }

    pub fn listing(&self, sku: &str) -> Option<Listing> {
        let key = (self.marketplace_id().to_owned(), sku.to_owned());
        self.state.listings.lock().get(&key).cloned()
    }

    /// The whole remote state.
    pub fn listings(&self) -> Vec<Listing> {
        self.state.listings.lock().values().cloned().collect()
    }

    pub fn submissions(&self) -> Vec<Submission> {
        self.state.submissions.lock().clone()
    }

    /// Delay between `ACCEPTED` and applied for patches accepted from now on.
    pub fn set_apply_delay(&self, delay: Duration) {
        *self.state.apply_delay.lock() = delay;
    }

    /// The next `count` accepted patches are never applied.
    pub fn drop_next_applies(&self, count: u32) {
        *self.state.drop_next_applies.lock() = count;
    }

    /// Holds feeds `IN_PROGRESS` (B.3: feeds stuck for days block later ones).
    pub fn pause_feeds(&self, paused: bool) {
        self.state.feeds.pause(paused);
    }

    /// Empties an operation's bucket for the configured application.
    pub fn drain_bucket(&self, operation: Operation) {
        let client_id = self.state.config.client_id.clone();
        self.state
            .with_bucket(operation, &client_id, TokenBucket::drain);
    }

    /// Tokens left in an operation's bucket for the configured application.
    pub fn bucket_level(&self, operation: Operation) -> f64 {
        let client_id = self.state.config.client_id.clone();
        self.state
            .with_bucket(operation, &client_id, TokenBucket::level)
    }

    /// Waits until no accepted patch is pending (for tests).
    pub async fn settle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let pending = self
                .state
                .submissions
                .lock()
                .iter()
                .any(|submission| submission.status == SubmissionStatus::Pending);
            if !pending {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}
