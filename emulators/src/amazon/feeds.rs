//! Feeds API v2021-06-30 with `JSON_LISTINGS_FEED` (CHANNELS.md B.3):
//! `createFeedDocument` returns an upload URL on this emulator, the document is
//! uploaded there, `createFeed` queues it, one worker processes feeds **in
//! arrival order** (`IN_QUEUE` -> `IN_PROGRESS` -> `DONE` or `FATAL`), and the
//! processing report lists per-message issues.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::Router;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::listings::{check_values, issue};
use super::{error_list, json_response, AmazonState, Operation};
use crate::clock;

#[derive(Debug, Clone)]
struct Document {
    content_type: String,
    content: Option<Bytes>,
}

#[derive(Debug, Clone)]
struct Feed {
    feed_id: String,
    marketplace_id: String,
    input_document_id: String,
    status: &'static str,
    created_ms: u64,
    started_ms: Option<u64>,
    ended_ms: Option<u64>,
    result_document_id: Option<String>,
}

pub(crate) struct FeedStore {
    documents: Mutex<HashMap<String, Document>>,
    feeds: Mutex<HashMap<String, Feed>>,
    queue: mpsc::UnboundedSender<String>,
    paused: watch::Sender<bool>,
}

impl FeedStore {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<String>) {
        let (queue, receiver) = mpsc::unbounded_channel();
        let store = Self {
            documents: Mutex::new(HashMap::new()),
            feeds: Mutex::new(HashMap::new()),
            queue,
            paused: watch::channel(false).0,
        };
        (store, receiver)
    }

    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    fn set_status(&self, feed_id: &str, change: impl FnOnce(&mut Feed)) {
        if let Some(feed) = self.feeds.lock().get_mut(feed_id) {
            change(feed);
        }
    }
}

pub(super) fn routes(state: Arc<AmazonState>) -> Router {
    Router::new()
        .route("/feeds/2021-06-30/documents", post(create_feed_document))
        .route(
            "/feeds/2021-06-30/documents/{document_id}",
            get(get_feed_document),
        )
        .route("/feeds/2021-06-30/feeds", post(create_feed))
        .route("/feeds/2021-06-30/feeds/{feed_id}", get(get_feed))
        .route("/feed-documents/{document_id}", put(upload).get(download))
        .with_state(state)
}

fn new_document_id() -> String {
    format!("amzn1.tortuga.4.na.{}", uuid::Uuid::new_v4())
}

fn document_url(state: &AmazonState, document_id: &str) -> String {
    format!("{}/feed-documents/{document_id}", state.base_url.lock())
}

fn unwrap_either(result: Result<Response<Body>, Response<Body>>) -> Response<Body> {
    match result {
        Ok(response) | Err(response) => response,
    }
}

async fn create_feed_document(
    State(state): State<Arc<AmazonState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    unwrap_either((|| {
        let client_id = state.authorize(&headers)?;
        let rate = state.take(Operation::CreateFeedDocument, &client_id)?;
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let Some(content_type) = request.get("contentType").and_then(Value::as_str) else {
            return Err(error_list(
                StatusCode::BAD_REQUEST,
                "InvalidInput",
                "Missing required field 'contentType'.",
                "",
            ));
        };
        let document_id = new_document_id();
        state.feeds.documents.lock().insert(
            document_id.clone(),
            Document {
                content_type: content_type.to_owned(),
                content: None,
            },
        );
        let url = document_url(&state, &document_id);
        Ok(json_response(
            StatusCode::CREATED,
            json!({"feedDocumentId": document_id, "url": url}),
            Some(rate),
        ))
    })())
}

/// The presigned upload (S3 in production): no SP-API token, just the URL.
async fn upload(
    State(state): State<Arc<AmazonState>>,
    Path(document_id): Path<String>,
    body: Bytes,
) -> Response<Body> {
    let mut documents = state.feeds.documents.lock();
    match documents.get_mut(&document_id) {
        Some(document) if document.content.is_none() => {
            document.content = Some(body);
            StatusCode::OK.into_response()
        }
        _ => (
            StatusCode::FORBIDDEN,
            "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
        )
            .into_response(),
    }
}

async fn download(
    State(state): State<Arc<AmazonState>>,
    Path(document_id): Path<String>,
) -> Response<Body> {
    let documents = state.feeds.documents.lock();
    match documents.get(&document_id).and_then(|document| {
        document
            .content
            .clone()
            .map(|c| (document.content_type.clone(), c))
    }) {
        Some((content_type, content)) => {
            ([("content-type", content_type)], content).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            "<Error><Code>NoSuchKey</Code></Error>",
        )
            .into_response(),
    }
}

async fn get_feed_document(
    State(state): State<Arc<AmazonState>>,
    Path(document_id): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    unwrap_either((|| {
        let client_id = state.authorize(&headers)?;
        let rate = state.take(Operation::GetFeedDocument, &client_id)?;
        if !state.feeds.documents.lock().contains_key(&document_id) {
            return Err(error_list(
                StatusCode::NOT_FOUND,
                "NotFound",
                "The requested feed document was not found.",
                "",
            ));
        }
        let url = document_url(&state, &document_id);
        Ok(json_response(
            StatusCode::OK,
            json!({"feedDocumentId": document_id, "url": url}),
            Some(rate),
        ))
    })())
}

async fn create_feed(
    State(state): State<Arc<AmazonState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    unwrap_either((|| {
        let client_id = state.authorize(&headers)?;
        let rate = state.take(Operation::CreateFeed, &client_id)?;
        let invalid =
            |message: &str| error_list(StatusCode::BAD_REQUEST, "InvalidInput", message, "");
        let request: Value = serde_json::from_slice(&body)
            .map_err(|_| invalid("The request body is not valid JSON."))?;
        if request.get("feedType").and_then(Value::as_str) != Some("JSON_LISTINGS_FEED") {
            return Err(invalid(
                "The emulator accepts feedType JSON_LISTINGS_FEED only.",
            ));
        }
        let marketplaces: Vec<&str> = request
            .get("marketplaceIds")
            .and_then(Value::as_array)
            .map(|ids| ids.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        // B.3: one marketplace per feed.
        let [marketplace_id] = marketplaces.as_slice() else {
            return Err(invalid(
                "JSON_LISTINGS_FEED takes exactly one marketplace in 'marketplaceIds'.",
            ));
        };
        if !state.knows_marketplace(marketplace_id) {
            return Err(invalid(&format!(
                "Invalid marketplace identifier: {marketplace_id}."
            )));
        }
        let document_id = request
            .get("inputFeedDocumentId")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("Missing required field 'inputFeedDocumentId'."))?;
        let uploaded = state
            .feeds
            .documents
            .lock()
            .get(document_id)
            .is_some_and(|document| document.content.is_some());
        if !uploaded {
            return Err(invalid(
                "The input feed document does not exist or was not uploaded.",
            ));
        }
        let feed_id = format!(
            "{}",
            50_000_000_000u64
                + clock::unix_millis() % 10_000_000_000
                + state.feeds.feeds.lock().len() as u64
        );
        state.feeds.feeds.lock().insert(
            feed_id.clone(),
            Feed {
                feed_id: feed_id.clone(),
                marketplace_id: (*marketplace_id).to_owned(),
                input_document_id: document_id.to_owned(),
                status: "IN_QUEUE",
                created_ms: clock::unix_millis(),
                started_ms: None,
                ended_ms: None,
                result_document_id: None,
            },
        );
        let _ = state.feeds.queue.send(feed_id.clone());
        Ok(json_response(
            StatusCode::ACCEPTED,
            json!({"feedId": feed_id}),
            Some(rate),
        ))
    })())
}

async fn get_feed(
    State(state): State<Arc<AmazonState>>,
    Path(feed_id): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    unwrap_either((|| {
        let client_id = state.authorize(&headers)?;
        let rate = state.take(Operation::GetFeed, &client_id)?;
        let Some(feed) = state.feeds.feeds.lock().get(&feed_id).cloned() else {
            return Err(error_list(
                StatusCode::NOT_FOUND,
                "NotFound",
                "The requested feed was not found.",
                "",
            ));
        };
        let mut body = json!({
            "feedId": feed.feed_id,
            "feedType": "JSON_LISTINGS_FEED",
            "marketplaceIds": [feed.marketplace_id],
            "createdTime": clock::rfc3339(feed.created_ms),
            "processingStatus": feed.status,
        });
        if let Some(started) = feed.started_ms {
            body["processingStartTime"] = json!(clock::rfc3339(started));
        }
        if let Some(ended) = feed.ended_ms {
            body["processingEndTime"] = json!(clock::rfc3339(ended));
        }
        if let Some(result) = feed.result_document_id {
            body["resultFeedDocumentId"] = json!(result);
        }
        Ok(json_response(StatusCode::OK, body, Some(rate)))
    })())
}

/// Processes queued feeds one at a time, in the order they were created.
pub(super) async fn feed_worker(
    state: Arc<AmazonState>,
    mut queue: mpsc::UnboundedReceiver<String>,
) {
    let mut paused = state.feeds.paused.subscribe();
    while let Some(feed_id) = queue.recv().await {
        state.feeds.set_status(&feed_id, |feed| {
            feed.status = "IN_PROGRESS";
            feed.started_ms = Some(clock::unix_millis());
        });
        tokio::time::sleep(state.config.feed_processing_time).await;
        while *paused.borrow_and_update() {
            if paused.changed().await.is_err() {
                return;
            }
        }
        let Some(feed) = state.feeds.feeds.lock().get(&feed_id).cloned() else {
            continue;
        };
        let content = state
            .feeds
            .documents
            .lock()
            .get(&feed.input_document_id)
            .and_then(|document| document.content.clone())
            .unwrap_or_default();
        let (status, report) = process(&state, &feed, &content);
        let report_id = new_document_id();
        state.feeds.documents.lock().insert(
            report_id.clone(),
            Document {
                content_type: "application/json".to_owned(),
                content: Some(Bytes::from(report.to_string())),
            },
        );
        state.feeds.set_status(&feed_id, |feed| {
            feed.status = status;
            feed.ended_ms = Some(clock::unix_millis());
            feed.result_document_id = Some(report_id);
        });
    }
}

/// Runs a listings feed: `FATAL` for a document that cannot be processed at
/// all, else `DONE` with each invalid message's issues; valid messages apply
/// in message order.
fn process(state: &AmazonState, feed: &Feed, content: &[u8]) -> (&'static str, Value) {
    let seller_id = &state.config.seller_id;
    let fatal = |message: &str| {
        (
            "FATAL",
            json!({"header": {"sellerId": seller_id, "version": "2.0", "feedId": feed.feed_id},
                "issues": [{"code": "FATAL", "severity": "ERROR", "message": message}],
                "summary": {"errors": 1, "warnings": 0, "messagesProcessed": 0, "messagesAccepted": 0, "messagesInvalid": 0}}),
        )
    };
    let Ok(document) = serde_json::from_slice::<Value>(content) else {
        return fatal("The feed document is not valid JSON.");
    };
    if document["header"]["sellerId"].as_str() != Some(seller_id.as_str()) {
        return fatal("header.sellerId is missing or does not match the seller.");
    }
    let Some(messages) = document.get("messages").and_then(Value::as_array) else {
        return fatal("The feed document has no 'messages' array.");
    };
    if messages.len() > state.config.max_feed_messages {
        return fatal(&format!(
            "The feed has {} messages; at most {} are allowed.",
            messages.len(),
            state.config.max_feed_messages
        ));
    }
    let mut issues = Vec::new();
    let mut invalid = 0;
    for message in messages {
        let message_id = message.get("messageId").cloned().unwrap_or(Value::Null);
        let message_issues = apply_message(state, feed, message);
        if !message_issues.is_empty() {
            invalid += 1;
        }
        for mut message_issue in message_issues {
            message_issue["messageId"] = message_id.clone();
            issues.push(message_issue);
        }
    }
    let report = json!({
        "header": {"sellerId": seller_id, "version": "2.0", "feedId": feed.feed_id},
        "issues": issues,
        "summary": {"errors": issues.len(), "warnings": 0, "messagesProcessed": messages.len(),
            "messagesAccepted": messages.len() - invalid, "messagesInvalid": invalid},
    });
    ("DONE", report)
}

fn apply_message(state: &AmazonState, feed: &Feed, message: &Value) -> Vec<Value> {
    let Some(sku) = message.get("sku").and_then(Value::as_str) else {
        return vec![issue(
            "MISSING_REQUIRED",
            "'sku' is required but not supplied",
            None,
        )];
    };
    let product_type = message
        .get("productType")
        .and_then(Value::as_str)
        .unwrap_or("PRODUCT");
    let exists = state
        .listings
        .lock()
        .contains_key(&(feed.marketplace_id.clone(), sku.to_owned()));
    let operation = message
        .get("operationType")
        .and_then(Value::as_str)
        .unwrap_or("");
    let patches: Vec<Value> = match operation {
        "PATCH" => message.get("patches").and_then(Value::as_array).cloned().unwrap_or_default(),
        // A partial update replaces the attributes it names.
        "PARTIAL_UPDATE" | "UPDATE" => message
            .get("attributes")
            .and_then(Value::as_object)
            .map(|attributes| {
                attributes
                    .iter()
                    .map(|(name, value)| json!({"op": "replace", "path": format!("/attributes/{name}"), "value": value}))
                    .collect()
            })
            .unwrap_or_default(),
        "DELETE" => {
            state.listings.lock().remove(&(feed.marketplace_id.clone(), sku.to_owned()));
            return Vec::new();
        }
        other => return vec![issue("INVALID_OPERATION", format!("'{other}' is not a valid operationType"), None)],
    };
    if patches.is_empty() {
        return vec![issue(
            "MISSING_REQUIRED",
            "The message has nothing to change",
            None,
        )];
    }
    let mut issues: Vec<Value> = patches.iter().flat_map(check_values).collect();
    if !exists && operation == "PATCH" && state.config.unknown_sku == super::UnknownSku::Reject {
        issues.push(issue(
            "LISTING_NOT_FOUND",
            format!("The seller has no listing with SKU '{sku}'"),
            None,
        ));
    }
    if issues.is_empty() {
        state.apply_patches(&feed.marketplace_id, sku, product_type, &patches);
    }
    issues
}
