//! Amazon's own control routes (`/_control/amazon/...`): seed listings, edit
//! on the channel side, delay or drop applies, pause feeds, drain buckets, and
//! read the remote state and the submissions.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{AmazonEmulator, Operation};

pub(super) fn routes(emulator: AmazonEmulator) -> Router {
    Router::new()
        .route("/_control/amazon/listings", get(listings).post(add_listing))
        .route("/_control/amazon/edits", post(edit_quantity))
        .route("/_control/amazon/applies", post(change_applies))
        .route("/_control/amazon/submissions", get(submissions))
        .route("/_control/amazon/feeds", post(pause_feeds))
        .route("/_control/amazon/buckets", post(drain_bucket))
        .with_state(emulator)
}

#[derive(Deserialize)]
struct NewListing {
    sku: String,
    #[serde(default = "default_product_type")]
    product_type: String,
    quantity: i64,
}

fn default_product_type() -> String {
    "PRODUCT".to_owned()
}

async fn add_listing(
    State(emulator): State<AmazonEmulator>,
    Json(listing): Json<NewListing>,
) -> StatusCode {
    emulator.add_listing(&listing.sku, &listing.product_type, listing.quantity);
    StatusCode::NO_CONTENT
}

async fn listings(State(emulator): State<AmazonEmulator>) -> Response {
    Json(emulator.listings()).into_response()
}

#[derive(Deserialize)]
struct Edit {
    sku: String,
    quantity: i64,
}

async fn edit_quantity(
    State(emulator): State<AmazonEmulator>,
    Json(edit): Json<Edit>,
) -> StatusCode {
    emulator.edit_quantity(&edit.sku, edit.quantity);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppliesChange {
    delay_ms: Option<u64>,
    drop_next: Option<u32>,
}

async fn change_applies(
    State(emulator): State<AmazonEmulator>,
    Json(change): Json<AppliesChange>,
) -> StatusCode {
    if let Some(delay_ms) = change.delay_ms {
        emulator.set_apply_delay(Duration::from_millis(delay_ms));
    }
    if let Some(count) = change.drop_next {
        emulator.drop_next_applies(count);
    }
    StatusCode::NO_CONTENT
}

async fn submissions(State(emulator): State<AmazonEmulator>) -> Response {
    Json(emulator.submissions()).into_response()
}

#[derive(Deserialize)]
struct FeedsChange {
    paused: bool,
}

async fn pause_feeds(
    State(emulator): State<AmazonEmulator>,
    Json(change): Json<FeedsChange>,
) -> StatusCode {
    emulator.pause_feeds(change.paused);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct BucketDrain {
    operation: String,
}

async fn drain_bucket(
    State(emulator): State<AmazonEmulator>,
    Json(drain): Json<BucketDrain>,
) -> Response {
    match Operation::parse(&drain.operation) {
        Some(operation) => {
            emulator.drain_bucket(operation);
            Json(json!({"operation": drain.operation, "tokens": emulator.bucket_level(operation)}))
                .into_response()
        }
        None => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unknown operation"})),
        )
            .into_response(),
    }
}
