//! The bulk inventory feed (CHANNELS.md C.2): `POST /v3/feeds?feedType=inventory`
//! with a spec 1.4 JSON file (`InventoryHeader`, `Inventory`), as the raw body or
//! a multipart `file` part; 413 above the size limit; processed in arrival order
//! with status `RECEIVED` -> `INPROGRESS` -> `PROCESSED` (or `ERROR`) and
//! per-item ingestion statuses at `GET /v3/feeds/{feedId}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, Query, State};
use axum::http::{HeaderMap, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::api::read_quantity;
use super::{invalid_param, walmart_error, Api, WalmartState};

#[derive(Debug, Clone)]
struct Feed {
    status: &'static str,
    ship_node: String,
    content: Bytes,
    items: Vec<Value>,
    received: usize,
    succeeded: usize,
    failed: usize,
}

pub(crate) struct FeedStore {
    feeds: Mutex<HashMap<String, Feed>>,
    queue: mpsc::UnboundedSender<String>,
    paused: watch::Sender<bool>,
}

impl FeedStore {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<String>) {
        let (queue, receiver) = mpsc::unbounded_channel();
        let store = Self {
            feeds: Mutex::new(HashMap::new()),
            queue,
            paused: watch::channel(false).0,
        };
        (store, receiver)
    }

    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }
}

pub(super) fn routes(state: Arc<WalmartState>) -> Router {
    Router::new()
        .route("/v3/feeds", post(submit_feed))
        .route("/v3/feeds/{feed_id}", get(feed_status))
        .with_state(state)
}

/// The file: the first multipart part, or the whole body.
async fn feed_file(headers: &HeaderMap, body: Bytes) -> Result<Bytes, Response<Body>> {
    let is_multipart = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("multipart/form-data"));
    if !is_multipart {
        return Ok(body);
    }
    let mut request = Request::new(Body::from(body));
    *request.headers_mut() = headers.clone();
    let bad = || invalid_param("file", "The multipart body has no readable file part");
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|_| bad())?;
    let field = multipart
        .next_field()
        .await
        .map_err(|_| bad())?
        .ok_or_else(bad)?;
    field.bytes().await.map_err(|_| bad())
}

async fn submit_feed(
    State(state): State<Arc<WalmartState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    if let Err(response) = state.authorize(&headers) {
        return response;
    }
    let charge = match state.take(Api::InventoryFeed) {
        Ok(charge) => charge,
        Err(response) => return response,
    };
    if query.get("feedType").map(String::as_str) != Some("inventory") {
        return invalid_param("feedType", "The emulator accepts feedType=inventory only");
    }
    let ship_node = match state.ship_node(query.get("shipNode").map(String::as_str)) {
        Ok(node) => node,
        Err(response) => return response,
    };
    let file = match feed_file(&headers, body).await {
        Ok(file) => file,
        Err(response) => return response,
    };
    if file.len() > state.config.max_feed_bytes {
        return walmart_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "REQUEST_ENTITY_TOO_LARGE.GMP_GATEWAY_API",
            &format!(
                "The feed file is larger than {} bytes",
                state.config.max_feed_bytes
            ),
            "REQUEST",
            Some("file"),
        );
    }
    let feed_id = format!("{}@skuld-emulator", uuid::Uuid::new_v4().simple()).to_uppercase();
    state.feeds.feeds.lock().insert(
        feed_id.clone(),
        Feed {
            status: "RECEIVED",
            ship_node,
            content: file,
            items: Vec::new(),
            received: 0,
            succeeded: 0,
            failed: 0,
        },
    );
    let _ = state.feeds.queue.send(feed_id.clone());
    charge.stamp(axum::Json(json!({"feedId": feed_id})).into_response())
}

async fn feed_status(
    State(state): State<Arc<WalmartState>>,
    Path(feed_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response<Body> {
    if let Err(response) = state.authorize(&headers) {
        return response;
    }
    let charge = match state.take(Api::FeedStatus) {
        Ok(charge) => charge,
        Err(response) => return response,
    };
    let Some(feed) = state.feeds.feeds.lock().get(&feed_id).cloned() else {
        return walmart_error(
            StatusCode::NOT_FOUND,
            "CONTENT_NOT_FOUND.GMP_GATEWAY_API",
            "Feed not found",
            "DATA",
            Some("feedId"),
        );
    };
    let offset: usize = query
        .get("offset")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let limit: usize = query
        .get("limit")
        .and_then(|value| value.parse().ok())
        .unwrap_or(50)
        .min(1000);
    let mut body = json!({
        "feedId": feed_id,
        "feedStatus": feed.status,
        "feedType": "inventory",
        "itemsReceived": feed.received,
        "itemsSucceeded": feed.succeeded,
        "itemsFailed": feed.failed,
        "itemsProcessing": if feed.status == "INPROGRESS" { feed.received } else { 0 },
        "offset": offset,
        "limit": limit,
    });
    if query
        .get("includeDetails")
        .is_some_and(|value| value == "true")
    {
        let page: Vec<Value> = feed
            .items
            .iter()
            .skip(offset)
            .take(limit)
            .cloned()
            .collect();
        body["itemDetails"] = json!({"itemIngestionStatus": page});
    }
    charge.stamp(axum::Json(body).into_response())
}

/// Processes feeds one at a time, in the order they were received.
pub(super) async fn feed_worker(
    state: Arc<WalmartState>,
    mut queue: mpsc::UnboundedReceiver<String>,
) {
    let mut paused = state.feeds.paused.subscribe();
    while let Some(feed_id) = queue.recv().await {
        let content = {
            let mut feeds = state.feeds.feeds.lock();
            let Some(feed) = feeds.get_mut(&feed_id) else {
                continue;
            };
            feed.status = "INPROGRESS";
            feed.content.clone()
        };
        tokio::time::sleep(state.config.feed_processing_time).await;
        while *paused.borrow_and_update() {
            if paused.changed().await.is_err() {
                return;
            }
        }
        let ship_node = state
            .feeds
            .feeds
            .lock()
            .get(&feed_id)
            .map(|feed| feed.ship_node.clone())
            .unwrap_or_default();
        let outcome = process(&state, &content, &ship_node);
        let mut feeds = state.feeds.feeds.lock();
        if let Some(feed) = feeds.get_mut(&feed_id) {
            match outcome {
                Some(items) => {
                    feed.received = items.len();
                    feed.succeeded = items
                        .iter()
                        .filter(|item| item["ingestionStatus"] == "SUCCESS")
                        .count();
                    feed.failed = feed.received - feed.succeeded;
                    feed.items = items;
                    feed.status = "PROCESSED";
                }
                None => feed.status = "ERROR",
            }
        }
    }
}

/// `None`: the file is not a spec 1.4 inventory feed (the whole feed is
/// `ERROR`). Otherwise each item's ingestion status; valid items apply.
fn process(state: &WalmartState, content: &[u8], ship_node: &str) -> Option<Vec<Value>> {
    let document: Value = serde_json::from_slice(content).ok()?;
    if document["InventoryHeader"]["version"].as_str() != Some("1.4") {
        return None;
    }
    // C.2: `Inventory` must be capitalised.
    let items = document.get("Inventory")?.as_array()?;
    let mut statuses = Vec::with_capacity(items.len());
    let mut inventory = state.inventory.lock();
    for (index, item) in items.iter().enumerate() {
        let sku = item.get("sku").and_then(Value::as_str).unwrap_or("");
        let problem = if sku.is_empty() {
            Some((
                "ERR_EXT_DATA_0100001".to_owned(),
                "sku is required".to_owned(),
            ))
        } else {
            match read_quantity(item.get("quantity"), "quantity") {
                Err(message) => Some(("ERR_EXT_DATA_0100002".to_owned(), message)),
                Ok(amount) => match inventory.get_mut(sku) {
                    Some(nodes) => {
                        nodes.insert(ship_node.to_owned(), amount);
                        None
                    }
                    None => Some((
                        "ERR_EXT_DATA_0100003".to_owned(),
                        format!("Item not found for sku {sku}"),
                    )),
                },
            }
        };
        let (status, errors) = match problem {
            None => ("SUCCESS", Value::Null),
            Some((code, description)) => (
                "DATA_ERROR",
                json!({"ingestionError": [{"type": "DATA_ERROR", "code": code, "field": "sku", "description": description}]}),
            ),
        };
        statuses.push(
            json!({"martId": 0, "sku": sku, "index": index, "shipNode": ship_node,
            "ingestionStatus": status, "ingestionErrors": errors}),
        );
    }
    Some(statuses)
}
