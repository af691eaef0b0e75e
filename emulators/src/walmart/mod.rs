//! Walmart Marketplace inventory emulator (CHANNELS.md C.1-C.3): the OAuth
//! token, single-node and multi-node inventory reads and writes, the bulk
//! inventory feed (spec 1.4) with asynchronous status, and token buckets per
//! API reported in `x-current-token-count` / `x-next-replenish-time`.

mod api;
mod control;
mod feeds;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};

use crate::bucket::TokenBucket;
use crate::faults::Faults;
use crate::recorder::Recorder;
use crate::server::{serve, FrontDoor, RunningServer, Throttled};

/// A budget: `tokens` per `per`, refilled gradually (C.3: allotments
/// "replenish gradually"), starting full.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub tokens: f64,
    pub per: Duration,
}

impl Budget {
    pub const fn new(tokens: f64, per: Duration) -> Self {
        Self { tokens, per }
    }

    fn bucket(self) -> TokenBucket {
        TokenBucket::new(self.tokens, self.tokens / self.per.as_secs_f64().max(1e-9))
    }
}

/// The APIs with their own bucket (C.3: "a token bucket per seller per API").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// `PUT`/`GET /v3/inventory` and `/v3/inventories/{sku}`.
    Inventory,
    /// `POST /v3/feeds?feedType=inventory`.
    InventoryFeed,
    /// `GET /v3/feeds/{feedId}`.
    FeedStatus,
}

impl Api {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "inventory" => Self::Inventory,
            "inventory_feed" => Self::InventoryFeed,
            "feed_status" => Self::FeedStatus,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct WalmartConfig {
    /// 0 picks a free port.
    pub port: u16,
    pub client_id: String,
    pub client_secret: String,
    /// C.1: tokens last about 15 minutes (`expires_in` 900).
    pub token_lifetime: Duration,
    /// Ship nodes of the seller; the first is the default node (C.1: "if
    /// `shipNode` is omitted, the update applies to the default node").
    pub ship_nodes: Vec<String>,
    /// C.3: "inventory 200/min" is **unconfirmed**; the default, a switch.
    pub inventory_budget: Budget,
    /// C.2: 10 inventory feeds per hour.
    pub inventory_feed_budget: Budget,
    /// Feed status reads: no figure in CHANNELS.md (**unconfirmed**); 1,000
    /// per minute by default.
    pub feed_status_budget: Budget,
    /// C.2: 5 MB per feed file; above it, 413.
    pub max_feed_bytes: usize,
    /// How long a feed stays `INPROGRESS` (production: about 30 minutes).
    pub feed_processing_time: Duration,
}

impl Default for WalmartConfig {
    fn default() -> Self {
        Self {
            port: 0,
            client_id: "skuld-emulator-client-id".to_owned(),
            client_secret: "skuld-emulator-client-secret".to_owned(),
            token_lifetime: Duration::from_secs(900),
            ship_nodes: vec!["10000000001".to_owned()],
            inventory_budget: Budget::new(200.0, Duration::from_secs(60)),
            inventory_feed_budget: Budget::new(10.0, Duration::from_secs(3600)),
            feed_status_budget: Budget::new(1000.0, Duration::from_secs(60)),
            max_feed_bytes: 5 * 1024 * 1024,
            feed_processing_time: Duration::from_secs(2),
        }
    }
}

impl WalmartConfig {
    fn budget(&self, api: Api) -> Budget {
        match api {
            Api::Inventory => self.inventory_budget,
            Api::InventoryFeed => self.inventory_feed_budget,
            Api::FeedStatus => self.feed_status_budget,
        }
    }
}

/// The quantity of one SKU at one ship node, as the control API reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeQuantity {
    pub sku: String,
    pub ship_node: String,
    pub amount: i64,
}

pub(crate) struct WalmartState {
    pub config: WalmartConfig,
    /// Access token -> expiry.
    tokens: Mutex<HashMap<String, Instant>>,
    buckets: Mutex<HashMap<Api, TokenBucket>>,
    /// sku -> ship node -> amount.
    pub inventory: Mutex<BTreeMap<String, BTreeMap<String, i64>>>,
    pub feeds: feeds::FeedStore,
}

/// C.3: the error body is `errors[]{code, message, category, severity, field}`.
pub(crate) fn walmart_error(
    status: StatusCode,
    code: &str,
    message: &str,
    category: &str,
    field: Option<&str>,
) -> Response<Body> {
    (
        status,
        axum::Json(json!({"errors": [{
            "code": code, "message": message, "category": category, "severity": "ERROR", "field": field,
        }]})),
    )
        .into_response()
}

pub(crate) fn invalid_param(field: &str, message: &str) -> Response<Body> {
    walmart_error(
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST_PARAM",
        message,
        "DATA",
        Some(field),
    )
}

fn injected_error(status: StatusCode) -> Response<Body> {
    walmart_error(
        status,
        "SYSTEM_ERROR.GMP_GATEWAY_API",
        "The service is temporarily unavailable. Please try again later.",
        "SYSTEM",
        None,
    )
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
}

/// What a request charged: the token count left and when the next one comes.
pub(crate) struct Charge {
    tokens_left: f64,
    next_token_ms: u64,
}

impl Charge {
    /// C.3's headers; the next-token time goes out in both spellings the docs
    /// and clients use (`x-next-replenish-time`, `x-next-replenishment-time`).
    pub fn stamp(&self, mut response: Response<Body>) -> Response<Body> {
        let headers = response.headers_mut();
        if let Ok(count) = HeaderValue::from_str(&format!("{}", self.tokens_left.floor() as i64)) {
            headers.insert("x-current-token-count", count);
        }
        if let Ok(next) = HeaderValue::from_str(&self.next_token_ms.to_string()) {
            headers.insert("x-next-replenish-time", next.clone());
            headers.insert("x-next-replenishment-time", next);
        }
        response
    }
}

impl WalmartState {
    /// C.1: `WM_SEC.ACCESS_TOKEN`, `WM_SVC.NAME` and `WM_QOS.CORRELATION_ID`.
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), Response<Body>> {
        for required in ["wm_svc.name", "wm_qos.correlation_id"] {
            if header(headers, required).is_empty() {
                return Err(walmart_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST_HEADER.GMP_GATEWAY_API",
                    &format!("Missing required header {}", required.to_uppercase()),
                    "REQUEST",
                    Some(&required.to_uppercase()),
                ));
            }
        }
        let token = header(headers, "wm_sec.access_token");
        match self.tokens.lock().get(token) {
            Some(expiry) if *expiry > Instant::now() => Ok(()),
            _ => Err(walmart_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED.GMP_GATEWAY_API",
                "Unauthorized token or invalid client credentials",
                "REQUEST",
                Some("WM_SEC.ACCESS_TOKEN"),
            )),
        }
    }

    /// Takes one token from the API's bucket, or answers 429 with `Retry-After`.
    pub fn take(&self, api: Api) -> Result<Charge, Response<Body>> {
        let mut buckets = self.buckets.lock();
        let bucket = buckets
            .entry(api)
            .or_insert_with(|| self.config.budget(api).bucket());
        let taken = bucket.try_take(1.0);
        let tokens_left = bucket.level();
        let charge = Charge {
            tokens_left,
            next_token_ms: crate::clock::unix_millis_after(
                bucket.time_until(tokens_left.floor() + 1.0),
            ),
        };
        match taken {
            Ok(()) => Ok(charge),
            Err(shortfall) => {
                let mut response = charge.stamp(walmart_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "REQUEST_THRESHOLD_VIOLATED.GMP_GATEWAY_API",
                    "Too many requests: the API's token bucket is empty",
                    "REQUEST",
                    None,
                ));
                let seconds = shortfall.wait.as_secs_f64().ceil().max(1.0) as u64;
                if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                    response.headers_mut().insert("retry-after", value);
                }
                response.extensions_mut().insert(Throttled);
                Err(response)
            }
        }
    }

    pub fn ship_node(&self, requested: Option<&str>) -> Result<String, Response<Body>> {
        match requested {
            None | Some("") => self
                .config
                .ship_nodes
                .first()
                .cloned()
                .ok_or_else(|| invalid_param("shipNode", "The seller has no ship node")),
            Some(node) if self.config.ship_nodes.iter().any(|known| known == node) => {
                Ok(node.to_owned())
            }
            Some(node) => Err(invalid_param(
                "shipNode",
                &format!("Invalid shipNode {node}"),
            )),
        }
    }
}

/// A running Walmart emulator.
#[derive(Clone)]
pub struct WalmartEmulator {
    state: Arc<WalmartState>,
    front: Arc<FrontDoor>,
    base_url: String,
}

pub(crate) async fn start(
    config: WalmartConfig,
) -> std::io::Result<(WalmartEmulator, RunningServer)> {
    let port = config.port;
    let (feeds, feed_queue) = feeds::FeedStore::new();
    let state = Arc::new(WalmartState {
        config,
        tokens: Mutex::new(HashMap::new()),
        buckets: Mutex::new(HashMap::new()),
        inventory: Mutex::new(BTreeMap::new()),
        feeds,
    });
    let front = Arc::new(FrontDoor {
        recorder: Arc::new(Recorder::new()),
        faults: Arc::new(Faults::default()),
        injected_error,
    });
    let emulator = WalmartEmulator {
        state: state.clone(),
        front: front.clone(),
        base_url: String::new(),
    };
    let router = Router::new()
        .merge(api::routes(state.clone()))
        .merge(feeds::routes(state.clone()))
        .merge(control::routes(emulator.clone()))
        .merge(crate::control::routes(front.clone()));
    let mut server = serve(router, front, port).await?;
    server.add_background(tokio::spawn(feeds::feed_worker(state, feed_queue)));
    let base_url = format!("http://{}", server.addr);
    Ok((
        WalmartEmulator {
            base_url,
            ..emulator
        },
        server,
    ))
}

impl WalmartEmulator {
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn config(&self) -> &WalmartConfig {
        &self.state.config
    }

    pub fn default_ship_node(&self) -> &str {
        self.state
            .config
            .ship_nodes
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

    /// Requests refused 429; zero means no budget was exceeded.
    pub fn budget_violations(&self) -> u64 {
        self.front.recorder.budget_violations()
    }

    /// Sets (seeds, or edits on the channel side) a SKU's quantity at a node.
    pub fn set_quantity(&self, sku: &str, ship_node: &str, amount: i64) {
        self.state
            .inventory
            .lock()
            .entry(sku.to_owned())
            .or_default()
            .insert(ship_node.to_owned(), amount);
    }

    /// Seeds a SKU at the default node.
    pub fn add_item(&self, sku: &str, amount: i64) {
        let node = self.default_ship_node().to_owned();
        self.set_quantity(sku, &node, amount);
    }

    pub fn quantity(&self, sku: &str, ship_node: &str) -> Option<i64> {
        self.state
            .inventory
            .lock()
            .get(sku)?
            .get(ship_node)
            .copied()
    }

    /// The whole remote state.
    pub fn quantities(&self) -> Vec<NodeQuantity> {
        self.state
            .inventory
            .lock()
            .iter()
            .flat_map(|(sku, nodes)| {
                nodes.iter().map(move |(node, amount)| NodeQuantity {
                    sku: sku.clone(),
                    ship_node: node.clone(),
                    amount: *amount,
                })
            })
            .collect()
    }

    /// Empties an API's bucket.
    pub fn drain_bucket(&self, api: Api) {
        let mut buckets = self.state.buckets.lock();
        buckets
            .entry(api)
            .or_insert_with(|| self.state.config.budget(api).bucket())
            .drain();
    }

    /// Tokens left in an API's bucket.
    pub fn tokens_left(&self, api: Api) -> f64 {
        let mut buckets = self.state.buckets.lock();
        buckets
            .entry(api)
            .or_insert_with(|| self.state.config.budget(api).bucket())
            .level()
    }

    /// Holds feeds `INPROGRESS` until released.
    pub fn pause_feeds(&self, paused: bool) {
        self.state.feeds.pause(paused);
    }
}

/// `Value` helpers shared by the routes.
pub(crate) fn quantity_json(amount: i64) -> Value {
    json!({"unit": "EACH", "amount": amount})
}
