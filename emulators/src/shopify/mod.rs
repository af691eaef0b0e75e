//! Shopify Admin GraphQL emulator (CHANNELS.md A.1-A.5): the inventory
//! mutations with the 2026-04 rules, the read-back query, the cost-based leaky
//! bucket per (app, shop), storefront orders and signed webhooks.

mod api;
mod control;
pub(crate) mod graphql;
mod idempotency;
pub mod inventory;
pub mod webhooks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Response, StatusCode};
use axum::response::IntoResponse;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::json;

use crate::bucket::TokenBucket;
use crate::faults::Faults;
use crate::recorder::Recorder;
use crate::server::{serve, FrontDoor, RunningServer};
use idempotency::IdempotencyStore;
use inventory::Inventory;
pub use inventory::{item_gid, level_gid, location_gid, LevelRow, Levels, REASONS};
pub use webhooks::{WebhookConfig, WebhookDelivery};

/// The store plan, which sets the restore rate (A.4's table). The bucket size
/// is taken as 20 x the restore rate: observed for Standard (2,000 / 100),
/// **unconfirmed** for the others, so `bucket_size` overrides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Plan {
    #[default]
    Standard,
    Advanced,
    Plus,
    CommerceComponents,
}

impl Plan {
    pub fn restore_rate(self) -> f64 {
        match self {
            Plan::Standard => 100.0,
            Plan::Advanced => 200.0,
            Plan::Plus => 1_000.0,
            Plan::CommerceComponents => 2_000.0,
        }
    }

    pub fn bucket_size(self) -> f64 {
        20.0 * self.restore_rate()
    }
}

#[derive(Debug, Clone)]
pub struct ShopifyConfig {
    /// 0 picks a free port.
    pub port: u16,
    pub shop_domain: String,
    /// Admin API access tokens, one per app; each gets its own bucket (A.4).
    pub access_tokens: Vec<String>,
    /// The app's client secret: the webhook HMAC key (A.5).
    pub api_secret: String,
    pub plan: Plan,
    /// Overrides the plan's bucket size (points).
    pub bucket_size: Option<f64>,
    /// Overrides the plan's restore rate (points per second).
    pub restore_rate: Option<f64>,
    /// A.4: the most a single query may cost (1,000).
    pub max_query_cost: u64,
    /// A.4: the HTTP status of a THROTTLED answer is **unconfirmed**: 200
    /// (what clients and emulators see) by default, 429 as the switch.
    pub throttled_http_status: u16,
    /// A.3: whether `@idempotent` is mandatory on `inventorySetQuantities` is
    /// **unconfirmed**; mandatory by default (the stricter reading).
    pub require_idempotency_on_set: bool,
    /// A.3: the key retention window is **unconfirmed**; 24 hours by default.
    pub idempotency_retention: Duration,
    /// How long a mutation runs between taking its key and applying, so a
    /// concurrent duplicate can be shown `IDEMPOTENCY_CONCURRENT_REQUEST`.
    pub mutation_processing_time: Duration,
    /// Storefront orders beyond `available` are refused unless this is set
    /// (a product that "continues selling when out of stock").
    pub allow_oversell: bool,
    pub webhooks: WebhookConfig,
}

impl Default for ShopifyConfig {
    fn default() -> Self {
        Self {
            port: 0,
            shop_domain: "skuld-emulator.myshopify.com".to_owned(),
            access_tokens: vec!["shpat_skuld_emulator".to_owned()],
            api_secret: "shpss_skuld_emulator_secret".to_owned(),
            plan: Plan::Standard,
            bucket_size: None,
            restore_rate: None,
            max_query_cost: 1_000,
            throttled_http_status: 200,
            require_idempotency_on_set: true,
            idempotency_retention: Duration::from_secs(24 * 3600),
            mutation_processing_time: Duration::ZERO,
            allow_oversell: false,
            webhooks: WebhookConfig::default(),
        }
    }
}

/// What the bucket of one app shows, as `extensions.cost.throttleStatus` does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThrottleStatus {
    pub maximum_available: f64,
    pub currently_available: f64,
    pub restore_rate: f64,
}

/// One line of a storefront order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
pub struct OrderLine {
    pub inventory_item_id: u64,
    pub location_id: u64,
    pub quantity: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StorefrontError {
    #[error("inventory item {0} is not stocked at location {1}")]
    NotStocked(u64, u64),
    #[error("only {available} available of item {item} at location {location}")]
    Insufficient {
        item: u64,
        location: u64,
        available: i64,
    },
    #[error("an order line needs a positive quantity")]
    BadQuantity,
}

pub(crate) struct ShopifyState {
    pub config: ShopifyConfig,
    pub inventory: Mutex<Inventory>,
    pub buckets: Mutex<HashMap<String, TokenBucket>>,
    pub idempotency: Mutex<IdempotencyStore>,
    pub webhooks: webhooks::Webhooks,
    next_order_id: Mutex<u64>,
}

impl ShopifyState {
    fn new_bucket(&self) -> TokenBucket {
        TokenBucket::new(
            self.config
                .bucket_size
                .unwrap_or(self.config.plan.bucket_size()),
            self.config
                .restore_rate
                .unwrap_or(self.config.plan.restore_rate()),
        )
    }

    /// Runs `change` on the bucket of `token` (created full on first use).
    pub fn with_bucket<T>(&self, token: &str, change: impl FnOnce(&mut TokenBucket) -> T) -> T {
        let mut buckets = self.buckets.lock();
        let bucket = buckets
            .entry(token.to_owned())
            .or_insert_with(|| self.new_bucket());
        change(bucket)
    }

    pub fn throttle_status(bucket: &mut TokenBucket) -> ThrottleStatus {
        ThrottleStatus {
            maximum_available: bucket.capacity(),
            currently_available: bucket.level().floor(),
            restore_rate: bucket.refill_per_second(),
        }
    }
}

/// Shopify answers failures outside GraphQL with `{"errors": "..."}`.
fn injected_error(status: StatusCode) -> Response<Body> {
    let message = status.canonical_reason().unwrap_or("Internal Server Error");
    (status, axum::Json(json!({"errors": message}))).into_response()
}

/// A running Shopify emulator: its base URL, remote state and controls.
#[derive(Clone)]
pub struct ShopifyEmulator {
    state: Arc<ShopifyState>,
    front: Arc<FrontDoor>,
    base_url: String,
}

pub(crate) async fn start(
    config: ShopifyConfig,
) -> std::io::Result<(ShopifyEmulator, RunningServer)> {
    let port = config.port;
    let state = Arc::new(ShopifyState {
        idempotency: Mutex::new(IdempotencyStore::new(config.idempotency_retention)),
        webhooks: webhooks::Webhooks::new(config.webhooks.clone()),
        config,
        inventory: Mutex::new(Inventory::default()),
        buckets: Mutex::new(HashMap::new()),
        next_order_id: Mutex::new(1000),
    });
    let front = Arc::new(FrontDoor {
        recorder: Arc::new(Recorder::new()),
        faults: Arc::new(Faults::default()),
        injected_error,
    });
    let emulator = ShopifyEmulator {
        state,
        front: front.clone(),
        base_url: String::new(),
    };
    let router = api::routes(emulator.state.clone())
        .merge(control::routes(emulator.clone()))
        .merge(crate::control::routes(front.clone()));
    let server = serve(router, front, port).await?;
    let emulator = ShopifyEmulator {
        base_url: format!("http://{}", server.addr),
        ..emulator
    };
    Ok((emulator, server))
}

impl ShopifyEmulator {
    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The GraphQL endpoint for an API version, e.g. `2026-04`.
    pub fn graphql_url(&self, version: &str) -> String {
        format!("{}/admin/api/{version}/graphql.json", self.base_url)
    }

    pub fn config(&self) -> &ShopifyConfig {
        &self.state.config
    }

    /// The first configured access token (`X-Shopify-Access-Token`).
    pub fn access_token(&self) -> &str {
        self.state
            .config
            .access_tokens
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

    /// Requests refused THROTTLED; zero means no budget was exceeded.
    pub fn budget_violations(&self) -> u64 {
        self.front.recorder.budget_violations()
    }

    pub fn add_item(&self, inventory_item_id: u64, sku: &str) {
        self.state
            .inventory
            .lock()
            .items
            .insert(inventory_item_id, sku.to_owned());
    }

    pub fn add_location(&self, location_id: u64, name: &str) {
        self.state
            .inventory
            .lock()
            .locations
            .insert(location_id, name.to_owned());
    }

    /// Stocks the item at the location with these quantities, creating the
    /// item (sku `SKU-<id>`) and location if they are new. Also the
    /// "channel-side edit": it overwrites what is there, without webhooks.
    pub fn seed_level(&self, inventory_item_id: u64, location_id: u64, levels: Levels) {
        let mut inventory = self.state.inventory.lock();
        inventory
            .items
            .entry(inventory_item_id)
            .or_insert_with(|| format!("SKU-{inventory_item_id}"));
        inventory
            .locations
            .entry(location_id)
            .or_insert_with(|| format!("Location {location_id}"));
        inventory.levels.insert(
            (inventory_item_id, location_id),
            inventory::StockedLevel {
                levels,
                updated_at_ms: crate::clock::unix_millis(),
            },
        );
    }

    /// A merchant edits `available` in the Shopify admin: the value changes
    /// under the connector and `inventory_levels/update` is sent.
    pub fn edit_available(&self, inventory_item_id: u64, location_id: u64, available: i64) -> bool {
        let edited = {
            let mut inventory = self.state.inventory.lock();
            match inventory.levels.get_mut(&(inventory_item_id, location_id)) {
                Some(stocked) => {
                    stocked.levels.available = available;
                    stocked.updated_at_ms = crate::clock::unix_millis();
                    true
                }
                None => false,
            }
        };
        if edited {
            self.state
                .send_level_updates(&[(inventory_item_id, location_id)]);
        }
        edited
    }

    /// What Shopify shows for the item at the location.
    pub fn level(&self, inventory_item_id: u64, location_id: u64) -> Option<Levels> {
        self.state
            .inventory
            .lock()
            .levels
            .get(&(inventory_item_id, location_id))
            .map(|stocked| stocked.levels)
    }

    /// The whole remote state.
    pub fn levels(&self) -> Vec<LevelRow> {
        self.state.inventory.lock().rows()
    }

    /// A storefront order: moves `available` to `committed` per line (all or
    /// nothing) and sends `orders/create` and `inventory_levels/update`.
    /// Returns the order id.
    pub fn storefront_order(&self, lines: &[OrderLine]) -> Result<u64, StorefrontError> {
        self.state.storefront_order(lines)
    }

    /// The bucket of an access token, as Shopify would report it now.
    pub fn throttle_status(&self, access_token: &str) -> ThrottleStatus {
        self.state
            .with_bucket(access_token, ShopifyState::throttle_status)
    }

    /// Empties an app's bucket: its next request is THROTTLED.
    pub fn drain_bucket(&self, access_token: &str) {
        self.state
            .with_bucket(access_token, |bucket| bucket.drain());
    }

    /// Shrinks or grows an app's bucket ("Shopify may temporarily reduce limits").
    pub fn resize_bucket(&self, access_token: &str, maximum: f64, restore_rate: f64) {
        self.state
            .with_bucket(access_token, |bucket| bucket.resize(maximum, restore_rate));
    }

    /// Points webhooks at a URL (or stops them with `None`).
    pub fn set_webhook_url(&self, url: Option<String>) {
        self.state.webhooks.set_url(url);
    }

    /// Webhook faults: delay, duplicates, reordering, drops.
    pub fn webhook_faults(&self) -> &webhooks::Webhooks {
        &self.state.webhooks
    }

    /// Sends one webhook of `topic` with `payload` as is (signed, with the
    /// faults in force): the topics the emulator has no API for
    /// (`refunds/create`, `returns/request`) and hand-made updates.
    pub fn send_webhook(&self, topic: &str, payload: serde_json::Value) {
        self.state
            .webhooks
            .send(&self.state.config, vec![(topic.to_owned(), payload)]);
    }

    /// Every webhook sent so far, in send order.
    pub fn webhook_deliveries(&self) -> Vec<WebhookDelivery> {
        self.state.webhooks.deliveries()
    }
}

impl ShopifyState {
    fn storefront_order(&self, lines: &[OrderLine]) -> Result<u64, StorefrontError> {
        let (order_id, order, touched) = {
            let mut inventory = self.inventory.lock();
            for line in lines {
                if line.quantity <= 0 {
                    return Err(StorefrontError::BadQuantity);
                }
                let key = (line.inventory_item_id, line.location_id);
                let stocked = inventory
                    .levels
                    .get(&key)
                    .ok_or(StorefrontError::NotStocked(key.0, key.1))?;
                if stocked.levels.available < line.quantity && !self.config.allow_oversell {
                    return Err(StorefrontError::Insufficient {
                        item: key.0,
                        location: key.1,
                        available: stocked.levels.available,
                    });
                }
            }
            let now = crate::clock::unix_millis();
            let mut touched = Vec::new();
            for line in lines {
                let key = (line.inventory_item_id, line.location_id);
                if let Some(stocked) = inventory.levels.get_mut(&key) {
                    stocked.levels.available -= line.quantity;
                    stocked.levels.committed += line.quantity;
                    stocked.updated_at_ms = now;
                    touched.push(key);
                }
            }
            let order_id = {
                let mut next = self.next_order_id.lock();
                *next += 1;
                *next
            };
            let order = webhooks::order_payload(order_id, lines, &inventory.items, now);
            (order_id, order, touched)
        };
        let mut events = vec![("orders/create".to_owned(), order)];
        events.extend(self.level_update_events(&touched));
        self.webhooks.send(&self.config, events);
        Ok(order_id)
    }

    fn level_update_events(&self, touched: &[(u64, u64)]) -> Vec<(String, serde_json::Value)> {
        let inventory = self.inventory.lock();
        touched
            .iter()
            .filter_map(|key| inventory.levels.get(key).map(|stocked| (key, stocked)))
            .map(|(&(item, location), stocked)| {
                (
                    "inventory_levels/update".to_owned(),
                    webhooks::level_payload(item, location, stocked),
                )
            })
            .collect()
    }

    /// `inventory_levels/update` for levels a mutation or an edit changed.
    pub fn send_level_updates(&self, touched: &[(u64, u64)]) {
        if touched.is_empty() || !self.webhooks.enabled() {
            return;
        }
        let events = self.level_update_events(touched);
        self.webhooks.send(&self.config, events);
    }
}
