//! Shopify's own control routes (`/_control/shopify/...`): seed items,
//! locations and levels, edit on the channel side, place storefront orders,
//! read the remote state, and drain or resize a bucket.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::webhooks::WebhookFaults;
use super::{Levels, OrderLine, ShopifyEmulator};

pub(super) fn routes(emulator: ShopifyEmulator) -> Router {
    Router::new()
        .route("/_control/shopify/items", post(add_item))
        .route("/_control/shopify/locations", post(add_location))
        .route("/_control/shopify/levels", get(levels).post(seed_level))
        .route("/_control/shopify/edits", post(edit_available))
        .route("/_control/shopify/orders", post(storefront_order))
        .route("/_control/shopify/bucket", get(bucket).post(change_bucket))
        .route(
            "/_control/shopify/webhooks",
            get(webhook_deliveries).post(set_webhook_url),
        )
        .route(
            "/_control/shopify/webhooks/faults",
            post(set_webhook_faults),
        )
        .route("/_control/shopify/webhooks/send", post(send_webhook))
        .with_state(emulator)
}

#[derive(Deserialize)]
struct NewItem {
    id: u64,
    sku: String,
}

async fn add_item(
    State(emulator): State<ShopifyEmulator>,
    Json(item): Json<NewItem>,
) -> StatusCode {
    emulator.add_item(item.id, &item.sku);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct NewLocation {
    id: u64,
    name: String,
}

async fn add_location(
    State(emulator): State<ShopifyEmulator>,
    Json(location): Json<NewLocation>,
) -> StatusCode {
    emulator.add_location(location.id, &location.name);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct SeedLevel {
    inventory_item_id: u64,
    location_id: u64,
    available: i64,
    #[serde(default)]
    committed: i64,
}

async fn seed_level(
    State(emulator): State<ShopifyEmulator>,
    Json(seed): Json<SeedLevel>,
) -> StatusCode {
    emulator.seed_level(
        seed.inventory_item_id,
        seed.location_id,
        Levels {
            available: seed.available,
            committed: seed.committed,
            ..Levels::default()
        },
    );
    StatusCode::NO_CONTENT
}

async fn levels(State(emulator): State<ShopifyEmulator>) -> Response {
    Json(emulator.levels()).into_response()
}

#[derive(Deserialize)]
struct Edit {
    inventory_item_id: u64,
    location_id: u64,
    available: i64,
}

async fn edit_available(
    State(emulator): State<ShopifyEmulator>,
    Json(edit): Json<Edit>,
) -> StatusCode {
    if emulator.edit_available(edit.inventory_item_id, edit.location_id, edit.available) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

#[derive(Deserialize)]
struct Order {
    lines: Vec<OrderLine>,
}

async fn storefront_order(
    State(emulator): State<ShopifyEmulator>,
    Json(order): Json<Order>,
) -> Response {
    match emulator.storefront_order(&order.lines) {
        Ok(order_id) => Json(json!({"order_id": order_id})).into_response(),
        Err(error) => (
            StatusCode::CONFLICT,
            Json(json!({"error": error.to_string()})),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn bucket(
    State(emulator): State<ShopifyEmulator>,
    Query(query): Query<TokenQuery>,
) -> Response {
    let token = query
        .token
        .unwrap_or_else(|| emulator.access_token().to_owned());
    Json(emulator.throttle_status(&token)).into_response()
}

#[derive(Deserialize)]
struct BucketChange {
    token: Option<String>,
    #[serde(default)]
    drain: bool,
    maximum_available: Option<f64>,
    restore_rate: Option<f64>,
}

async fn change_bucket(
    State(emulator): State<ShopifyEmulator>,
    Json(change): Json<BucketChange>,
) -> Response {
    let token = change
        .token
        .unwrap_or_else(|| emulator.access_token().to_owned());
    if change.maximum_available.is_some() || change.restore_rate.is_some() {
        let now = emulator.throttle_status(&token);
        emulator.resize_bucket(
            &token,
            change.maximum_available.unwrap_or(now.maximum_available),
            change.restore_rate.unwrap_or(now.restore_rate),
        );
    }
    if change.drain {
        emulator.drain_bucket(&token);
    }
    Json(emulator.throttle_status(&token)).into_response()
}

async fn webhook_deliveries(State(emulator): State<ShopifyEmulator>) -> Response {
    Json(emulator.webhook_deliveries()).into_response()
}

#[derive(Deserialize)]
struct WebhookTarget {
    url: Option<String>,
}

async fn set_webhook_url(
    State(emulator): State<ShopifyEmulator>,
    Json(target): Json<WebhookTarget>,
) -> StatusCode {
    emulator.set_webhook_url(target.url);
    StatusCode::NO_CONTENT
}

async fn set_webhook_faults(
    State(emulator): State<ShopifyEmulator>,
    Json(faults): Json<WebhookFaults>,
) -> StatusCode {
    emulator.webhook_faults().set_faults(faults);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct HandMadeWebhook {
    topic: String,
    payload: serde_json::Value,
}

async fn send_webhook(
    State(emulator): State<ShopifyEmulator>,
    Json(webhook): Json<HandMadeWebhook>,
) -> StatusCode {
    emulator.send_webhook(&webhook.topic, webhook.payload);
    StatusCode::ACCEPTED
}
