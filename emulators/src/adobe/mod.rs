//! Adobe Commerce (Magento MSI) REST emulator (CHANNELS.md D.1-D.6): admin
//! tokens, source items save / delete / search, salable quantity computed from
//! the stock's sources and the reservations of simulated orders (D.2, so a
//! test can show a connector subtracting orders twice), Magento's error body
//! (D.5) and the optional `/async/bulk` variant (D.3).

mod api;
mod bulk;
mod control;
mod search;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};

use crate::bucket::TokenBucket;
use crate::faults::Faults;
use crate::recorder::Recorder;
use crate::server::{serve, FrontDoor, RunningServer, Throttled};

/// A stock: the sources whose quantities it sells (D.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stock {
    pub stock_id: u32,
    pub name: String,
    pub source_codes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AdobeConfig {
    /// 0 picks a free port.
    pub port: u16,
    /// The admin user for `POST /V1/integration/admin/token`.
    pub username: String,
    pub password: String,
    /// Store codes accepted in `/rest/{store}/...`.
    pub store_codes: Vec<String>,
    /// D.4: admin tokens last 4 hours.
    pub admin_token_lifetime: Duration,
    pub source_codes: Vec<String>,
    pub stocks: Vec<Stock>,
    /// D.2: the out-of-stock threshold subtracted from salable quantity.
    pub out_of_stock_threshold: f64,
    /// D.6: no request-rate limit is documented (**unconfirmed**): none by
    /// default; `Some((burst, per_second))` adds a host-style 429.
    pub rate_limit: Option<(f64, f64)>,
    /// D.3: how long an async bulk operation stays open before it runs.
    pub bulk_processing_time: Duration,
}

impl Default for AdobeConfig {
    fn default() -> Self {
        Self {
            port: 0,
            username: "admin".to_owned(),
            password: "skuld-emulator-password1".to_owned(),
            store_codes: vec!["default".to_owned(), "all".to_owned()],
            admin_token_lifetime: Duration::from_secs(4 * 3600),
            source_codes: vec!["default".to_owned()],
            stocks: vec![Stock {
                stock_id: 1,
                name: "Default Stock".to_owned(),
                source_codes: vec!["default".to_owned()],
            }],
            out_of_stock_threshold: 0.0,
            rate_limit: None,
            bulk_processing_time: Duration::from_millis(500),
        }
    }
}

/// One source item: a SKU's quantity at a source (D.1).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceItem {
    pub sku: String,
    pub source_code: String,
    pub quantity: f64,
    pub status: u8,
}

/// A reservation (D.2): negative for an order placed, positive when it is
/// shipped or canceled (the compensation).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reservation {
    pub sku: String,
    pub stock_id: u32,
    pub quantity: f64,
    pub metadata: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    Placed,
    Shipped,
    Canceled,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Order {
    pub order_id: u64,
    pub sku: String,
    pub stock_id: u32,
    pub quantity: f64,
    pub state: OrderState,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OrderError {
    #[error("no order {0}")]
    NoSuchOrder(u64),
    #[error("order {0} is not open")]
    NotOpen(u64),
    #[error("no stock {0}")]
    NoSuchStock(u32),
    #[error("source {0} is not in the order's stock")]
    WrongSource(String),
}

#[derive(Default)]
pub(crate) struct Catalog {
    /// (sku, source_code) -> item.
    pub source_items: BTreeMap<(String, String), SourceItem>,
    pub reservations: Vec<Reservation>,
    pub orders: BTreeMap<u64, Order>,
}

impl Catalog {
    pub fn has_product(&self, sku: &str) -> bool {
        self.source_items
            .keys()
            .any(|(item_sku, _)| item_sku == sku)
            || self.orders.values().any(|order| order.sku == sku)
    }
}

pub(crate) struct AdobeState {
    pub config: AdobeConfig,
    tokens: Mutex<HashMap<String, Instant>>,
    pub catalog: Mutex<Catalog>,
    bucket: Option<Mutex<TokenBucket>>,
    pub bulks: bulk::BulkStore,
    next_order_id: Mutex<u64>,
}

/// D.5: `{message, parameters, errors[]}`.
pub(crate) fn magento_error(
    status: StatusCode,
    message: &str,
    parameters: Value,
    errors: Option<Vec<Value>>,
) -> Response<Body> {
    let mut body = json!({"message": message});
    if !parameters.is_null() {
        body["parameters"] = parameters;
    }
    if let Some(errors) = errors {
        body["errors"] = Value::Array(errors);
    }
    (status, axum::Json(body)).into_response()
}

/// D.5: in production an unexpected error is masked with a report id.
fn injected_error(status: StatusCode) -> Response<Body> {
    let report = uuid::Uuid::new_v4().simple().to_string();
    magento_error(
        status,
        &format!(
            "Internal Error. Details are available in Magento log file. Report ID: webapi-{}",
            &report[..13]
        ),
        Value::Null,
        None,
    )
}

impl AdobeState {
    pub fn check_store(&self, store: &str) -> Result<(), Response<Body>> {
        if self.config.store_codes.iter().any(|code| code == store) {
            Ok(())
        } else {
            Err(magento_error(
                StatusCode::NOT_FOUND,
                "The store that was requested wasn't found. Verify the store and try again.",
                Value::Null,
                None,
            ))
        }
    }

    /// A valid admin bearer token (D.4), else D.5's 401; then the optional
    /// rate limit.
    pub fn authorize(&self, headers: &HeaderMap, resource: &str) -> Result<(), Response<Body>> {
        let token = headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or("");
        let valid = self
            .tokens
            .lock()
            .get(token)
            .is_some_and(|expiry| *expiry > Instant::now());
        if !valid {
            return Err(magento_error(
                StatusCode::UNAUTHORIZED,
                "The consumer isn't authorized to access %resources.",
                json!({"resources": resource}),
                None,
            ));
        }
        if let Some(bucket) = &self.bucket {
            if bucket.lock().try_take(1.0).is_err() {
                let mut response = magento_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too Many Requests",
                    Value::Null,
                    None,
                );
                response.extensions_mut().insert(Throttled);
                return Err(response);
            }
        }
        Ok(())
    }

    pub fn stock(&self, stock_id: u32) -> Option<&Stock> {
        self.config
            .stocks
            .iter()
            .find(|stock| stock.stock_id == stock_id)
    }

    /// D.2: Σ source quantity (in-stock items of the stock's sources) +
    /// Σ reservations − the out-of-stock threshold.
    pub fn salable_quantity(&self, catalog: &Catalog, sku: &str, stock: &Stock) -> f64 {
        let on_sources: f64 = catalog
            .source_items
            .values()
            .filter(|item| {
                item.sku == sku
                    && item.status == 1
                    && stock.source_codes.contains(&item.source_code)
            })
            .map(|item| item.quantity)
            .sum();
        let reserved: f64 = catalog
            .reservations
            .iter()
            .filter(|reservation| reservation.sku == sku && reservation.stock_id == stock.stock_id)
            .map(|reservation| reservation.quantity)
            .sum();
        on_sources + reserved - self.config.out_of_stock_threshold
    }
}

/// Whole numbers go out as integers, as PHP's `json_encode` writes floats.
pub(crate) fn number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        json!(value as i64)
    } else {
        json!(value)
    }
}

/// A running Adobe Commerce emulator.
#[derive(Clone)]
pub struct AdobeEmulator {
    state: Arc<AdobeState>,
    front: Arc<FrontDoor>,
    base_url: String,
}

pub(crate) async fn start(config: AdobeConfig) -> std::io::Result<(AdobeEmulator, RunningServer)> {
    let port = config.port;
    let (bulks, bulk_queue) = bulk::BulkStore::new();
    let state = Arc::new(AdobeState {
        bucket: config
            .rate_limit
            .map(|(burst, per_second)| Mutex::new(TokenBucket::new(burst, per_second))),
        config,
        tokens: Mutex::new(HashMap::new()),
        catalog: Mutex::new(Catalog::default()),
        bulks,
        next_order_id: Mutex::new(0),
    });
    let front = Arc::new(FrontDoor {
        recorder: Arc::new(Recorder::new()),
        faults: Arc::new(Faults::default()),
        injected_error,
    });
    let emulator = AdobeEmulator {
        state: state.clone(),
        front: front.clone(),
        base_url: String::new(),
    };
    let router = Router::new()
        .merge(api::routes(state.clone()))
        .merge(bulk::routes(state.clone()))
        .merge(control::routes(emulator.clone()))
        .merge(crate::control::routes(front.clone()));
    let mut server = serve(router, front, port).await?;
    server.add_background(tokio::spawn(bulk::bulk_worker(state, bulk_queue)));
    let base_url = format!("http://{}", server.addr);
    Ok((
        AdobeEmulator {
            base_url,
            ..emulator
        },
        server,
    ))
}

impl AdobeEmulator {
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `http://127.0.0.1:<port>/rest/<store>`.
    pub fn rest_url(&self, store: &str) -> String {
        format!("{}/rest/{store}", self.base_url)
    }

    pub fn config(&self) -> &AdobeConfig {
        &self.state.config
    }

    pub fn recorder(&self) -> &Recorder {
        &self.front.recorder
    }

    pub fn faults(&self) -> &Faults {
        &self.front.faults
    }

    /// Requests refused 429 (only with `rate_limit` set).
    pub fn budget_violations(&self) -> u64 {
        self.front.recorder.budget_violations()
    }

    /// Seeds (or edits on the channel side) a source item.
    pub fn set_source_item(&self, sku: &str, source_code: &str, quantity: f64, in_stock: bool) {
        self.state.catalog.lock().source_items.insert(
            (sku.to_owned(), source_code.to_owned()),
            SourceItem {
                sku: sku.to_owned(),
                source_code: source_code.to_owned(),
                quantity,
                status: u8::from(in_stock),
            },
        );
    }

    pub fn source_item(&self, sku: &str, source_code: &str) -> Option<SourceItem> {
        self.state
            .catalog
            .lock()
            .source_items
            .get(&(sku.to_owned(), source_code.to_owned()))
            .cloned()
    }

    /// The whole remote state: every source item.
    pub fn source_items(&self) -> Vec<SourceItem> {
        self.state
            .catalog
            .lock()
            .source_items
            .values()
            .cloned()
            .collect()
    }

    pub fn reservations(&self) -> Vec<Reservation> {
        self.state.catalog.lock().reservations.clone()
    }

    /// What `get-product-salable-quantity` answers now.
    pub fn salable_quantity(&self, sku: &str, stock_id: u32) -> Option<f64> {
        let stock = self.state.stock(stock_id)?;
        let catalog = self.state.catalog.lock();
        Some(self.state.salable_quantity(&catalog, sku, stock))
    }

    /// A storefront order: appends a reservation of −quantity (D.2); source
    /// quantities do not change until it ships.
    pub fn place_order(&self, sku: &str, stock_id: u32, quantity: f64) -> Result<u64, OrderError> {
        self.state
            .stock(stock_id)
            .ok_or(OrderError::NoSuchStock(stock_id))?;
        let order_id = {
            let mut next = self.state.next_order_id.lock();
            *next += 1;
            *next
        };
        let mut catalog = self.state.catalog.lock();
        catalog.reservations.push(Reservation {
            sku: sku.to_owned(),
            stock_id,
            quantity: -quantity,
            metadata: format!("{{\"event_type\":\"order_placed\",\"object_id\":\"{order_id}\"}}"),
        });
        catalog.orders.insert(
            order_id,
            Order {
                order_id,
                sku: sku.to_owned(),
                stock_id,
                quantity,
                state: OrderState::Placed,
            },
        );
        Ok(order_id)
    }

    /// Ships an order from a source: the source quantity drops and a
    /// compensating reservation cancels the order's reservation.
    pub fn ship_order(&self, order_id: u64, source_code: &str) -> Result<(), OrderError> {
        let mut catalog = self.state.catalog.lock();
        let order = catalog
            .orders
            .get(&order_id)
            .cloned()
            .ok_or(OrderError::NoSuchOrder(order_id))?;
        if order.state != OrderState::Placed {
            return Err(OrderError::NotOpen(order_id));
        }
        let stock = self
            .state
            .stock(order.stock_id)
            .ok_or(OrderError::NoSuchStock(order.stock_id))?;
        if !stock.source_codes.iter().any(|code| code == source_code) {
            return Err(OrderError::WrongSource(source_code.to_owned()));
        }
        let item = catalog
            .source_items
            .entry((order.sku.clone(), source_code.to_owned()))
            .or_insert_with(|| SourceItem {
                sku: order.sku.clone(),
                source_code: source_code.to_owned(),
                quantity: 0.0,
                status: 1,
            });
        item.quantity -= order.quantity;
        catalog.reservations.push(Reservation {
            sku: order.sku.clone(),
            stock_id: order.stock_id,
            quantity: order.quantity,
            metadata: format!(
                "{{\"event_type\":\"shipment_created\",\"object_id\":\"{order_id}\"}}"
            ),
        });
        if let Some(order) = catalog.orders.get_mut(&order_id) {
            order.state = OrderState::Shipped;
        }
        Ok(())
    }

    /// Cancels an open order: a compensating reservation gives the quantity back.
    pub fn cancel_order(&self, order_id: u64) -> Result<(), OrderError> {
        let mut catalog = self.state.catalog.lock();
        let order = catalog
            .orders
            .get(&order_id)
            .cloned()
            .ok_or(OrderError::NoSuchOrder(order_id))?;
        if order.state != OrderState::Placed {
            return Err(OrderError::NotOpen(order_id));
        }
        catalog.reservations.push(Reservation {
            sku: order.sku.clone(),
            stock_id: order.stock_id,
            quantity: order.quantity,
            metadata: format!("{{\"event_type\":\"order_canceled\",\"object_id\":\"{order_id}\"}}"),
        });
        if let Some(order) = catalog.orders.get_mut(&order_id) {
            order.state = OrderState::Canceled;
        }
        Ok(())
    }

    pub fn orders(&self) -> Vec<Order> {
        self.state.catalog.lock().orders.values().cloned().collect()
    }
}
