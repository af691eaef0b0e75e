//! Walmart's own control routes (`/_control/walmart/...`): seed or edit
//! quantities, read the remote state, drain a bucket, pause feeds.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{Api, WalmartEmulator};

pub(super) fn routes(emulator: WalmartEmulator) -> Router {
    Router::new()
        .route(
            "/_control/walmart/inventory",
            get(quantities).post(set_quantity),
        )
        .route("/_control/walmart/buckets", post(drain_bucket))
        .route("/_control/walmart/feeds", post(pause_feeds))
        .with_state(emulator)
}

#[derive(Deserialize)]
struct SetQuantity {
    sku: String,
    ship_node: Option<String>,
    amount: i64,
}

async fn set_quantity(
    State(emulator): State<WalmartEmulator>,
    Json(set): Json<SetQuantity>,
) -> StatusCode {
    let node = set
        .ship_node
        .unwrap_or_else(|| emulator.default_ship_node().to_owned());
    emulator.set_quantity(&set.sku, &node, set.amount);
    StatusCode::NO_CONTENT
}

async fn quantities(State(emulator): State<WalmartEmulator>) -> Response {
    Json(emulator.quantities()).into_response()
}

#[derive(Deserialize)]
struct Drain {
    api: String,
}

async fn drain_bucket(
    State(emulator): State<WalmartEmulator>,
    Json(drain): Json<Drain>,
) -> Response {
    match Api::parse(&drain.api) {
        Some(api) => {
            emulator.drain_bucket(api);
            Json(json!({"api": drain.api, "tokens": emulator.tokens_left(api)})).into_response()
        }
        None => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unknown api"})),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct Pause {
    paused: bool,
}

async fn pause_feeds(
    State(emulator): State<WalmartEmulator>,
    Json(pause): Json<Pause>,
) -> StatusCode {
    emulator.pause_feeds(pause.paused);
    StatusCode::NO_CONTENT
}
