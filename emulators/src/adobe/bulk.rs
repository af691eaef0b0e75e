//! The asynchronous bulk variant (CHANNELS.md D.3):
//! `POST /rest/{store}/async/bulk/V1/inventory/source-items` takes an array of
//! request bodies and answers `bulk_uuid` with `request_items[]`; the
//! operations run later, in arrival order, and
//! `GET /rest/{store}/V1/bulk/{uuid}/status` reports each one (1 complete,
//! 3 failed and needs a change, 4 open).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use parking_lot::Mutex;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::api::{read_source_items, save};
use super::{magento_error, AdobeState};

/// D.3's operation statuses.
const COMPLETE: u8 = 1;
const NOT_RETRIABLY_FAILED: u8 = 3;
const OPEN: u8 = 4;

#[derive(Debug, Clone)]
struct Operation {
    body: Value,
    status: u8,
    result_message: Option<String>,
}

#[derive(Debug, Clone)]
struct Bulk {
    operations: Vec<Operation>,
    started_ms: u64,
}

pub(crate) struct BulkStore {
    bulks: Mutex<HashMap<String, Bulk>>,
    queue: mpsc::UnboundedSender<String>,
}

impl BulkStore {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<String>) {
        let (queue, receiver) = mpsc::unbounded_channel();
        (
            Self {
                bulks: Mutex::new(HashMap::new()),
                queue,
            },
            receiver,
        )
    }
}

pub(super) fn routes(state: Arc<AdobeState>) -> Router {
    Router::new()
        .route(
            "/rest/{store}/async/bulk/V1/inventory/source-items",
            post(submit),
        )
        .route("/rest/{store}/V1/bulk/{bulk_uuid}/status", get(status))
        .with_state(state)
}

async fn submit(
    State(state): State<Arc<AdobeState>>,
    Path(store): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    if let Err(response) = state
        .check_store(&store)
        .and_then(|()| state.authorize(&headers, "Magento_InventoryApi::stock_source_item_assign"))
    {
        return response;
    }
    let Ok(Value::Array(requests)) = serde_json::from_slice::<Value>(&body) else {
        return magento_error(
            StatusCode::BAD_REQUEST,
            "The bulk request body must be an array of requests.",
            Value::Null,
            None,
        );
    };
    let bulk_uuid = uuid::Uuid::new_v4().to_string();
    let request_items: Vec<Value> = requests
        .iter()
        .enumerate()
        .map(|(id, request)| {
            let hash = Sha256::digest(request.to_string().as_bytes());
            let data_hash: String = hash.iter().map(|byte| format!("{byte:02x}")).collect();
            json!({"id": id, "data_hash": data_hash, "status": "accepted"})
        })
        .collect();
    let operations = requests
        .into_iter()
        .map(|body| Operation {
            body,
            status: OPEN,
            result_message: None,
        })
        .collect();
    state.bulks.bulks.lock().insert(
        bulk_uuid.clone(),
        Bulk {
            operations,
            started_ms: crate::clock::unix_millis(),
        },
    );
    let _ = state.bulks.queue.send(bulk_uuid.clone());
    (
        StatusCode::ACCEPTED,
        axum::Json(
            json!({"bulk_uuid": bulk_uuid, "request_items": request_items, "errors": false}),
        ),
    )
        .into_response()
}

async fn status(
    State(state): State<Arc<AdobeState>>,
    Path((store, bulk_uuid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response<Body> {
    if let Err(response) = state.check_store(&store).and_then(|()| {
        state.authorize(
            &headers,
            "Magento_Logging::system_magento_logging_bulk_operations",
        )
    }) {
        return response;
    }
    let Some(bulk) = state.bulks.bulks.lock().get(&bulk_uuid).cloned() else {
        return magento_error(
            StatusCode::NOT_FOUND,
            "Bulk uuid %bulkUuid not exist",
            json!({"bulkUuid": bulk_uuid}),
            None,
        );
    };
    let operations: Vec<Value> = bulk
        .operations
        .iter()
        .enumerate()
        .map(|(id, operation)| {
            json!({"id": id, "bulk_uuid": bulk_uuid, "topic_name": "async.magento.inventoryapi.api.sourceitemssaveinterface.execute.post",
                "status": operation.status, "result_message": operation.result_message, "error_code": null})
        })
        .collect();
    axum::Json(json!({
        "operations_list": operations,
        "bulk_id": bulk_uuid,
        "description": "Topic async.magento.inventoryapi.api.sourceitemssaveinterface.execute.post",
        "start_time": crate::clock::rfc3339(bulk.started_ms),
        "user_type": 2,
        "operation_count": bulk.operations.len(),
    }))
    .into_response()
}

/// Runs bulks in arrival order after the configured delay (D.3: the async path
/// is a queue consumer in Magento).
pub(super) async fn bulk_worker(
    state: Arc<AdobeState>,
    mut queue: mpsc::UnboundedReceiver<String>,
) {
    while let Some(bulk_uuid) = queue.recv().await {
        tokio::time::sleep(state.config.bulk_processing_time).await;
        let operations = state
            .bulks
            .bulks
            .lock()
            .get(&bulk_uuid)
            .map(|bulk| bulk.operations.clone())
            .unwrap_or_default();
        let mut finished = Vec::with_capacity(operations.len());
        for mut operation in operations {
            match read_source_items(&state, &operation.body, true) {
                Ok(items) => {
                    save(&state, items);
                    operation.status = COMPLETE;
                    operation.result_message = Some("Service execution success".to_owned());
                }
                Err(_) => {
                    operation.status = NOT_RETRIABLY_FAILED;
                    operation.result_message = Some("Validation Failed".to_owned());
                }
            }
            finished.push(operation);
        }
        if let Some(bulk) = state.bulks.bulks.lock().get_mut(&bulk_uuid) {
            bulk.operations = finished;
        }
    }
}
