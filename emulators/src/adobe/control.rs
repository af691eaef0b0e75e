//! Adobe Commerce's own control routes (`/_control/adobe/...`): seed or edit
//! source items, place, ship and cancel orders (reservations), read the remote
//! state and the salable quantity.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::AdobeEmulator;

pub(super) fn routes(emulator: AdobeEmulator) -> Router {
    Router::new()
        .route(
            "/_control/adobe/source-items",
            get(source_items).post(set_source_item),
        )
        .route("/_control/adobe/orders", get(orders).post(place_order))
        .route("/_control/adobe/orders/{order_id}/ship", post(ship_order))
        .route(
            "/_control/adobe/orders/{order_id}/cancel",
            post(cancel_order),
        )
        .route("/_control/adobe/salable/{sku}/{stock_id}", get(salable))
        .with_state(emulator)
}

#[derive(Deserialize)]
struct SetSourceItem {
    sku: String,
    source_code: String,
    quantity: f64,
    #[serde(default = "in_stock")]
    status: u8,
}

fn in_stock() -> u8 {
    1
}

async fn set_source_item(
    State(emulator): State<AdobeEmulator>,
    Json(item): Json<SetSourceItem>,
) -> StatusCode {
    emulator.set_source_item(
        &item.sku,
        &item.source_code,
        item.quantity,
        item.status == 1,
    );
    StatusCode::NO_CONTENT
}

async fn source_items(State(emulator): State<AdobeEmulator>) -> Response {
    Json(json!({"source_items": emulator.source_items(), "reservations": emulator.reservations()}))
        .into_response()
}

#[derive(Deserialize)]
struct NewOrder {
    sku: String,
    #[serde(default = "default_stock")]
    stock_id: u32,
    quantity: f64,
}

fn default_stock() -> u32 {
    1
}

async fn place_order(
    State(emulator): State<AdobeEmulator>,
    Json(order): Json<NewOrder>,
) -> Response {
    match emulator.place_order(&order.sku, order.stock_id, order.quantity) {
        Ok(order_id) => Json(json!({"order_id": order_id})).into_response(),
        Err(error) => (
            StatusCode::CONFLICT,
            Json(json!({"error": error.to_string()})),
        )
            .into_response(),
    }
}

async fn orders(State(emulator): State<AdobeEmulator>) -> Response {
    Json(emulator.orders()).into_response()
}

#[derive(Deserialize)]
struct Ship {
    source_code: String,
}

async fn ship_order(
    State(emulator): State<AdobeEmulator>,
    Path(order_id): Path<u64>,
    Json(ship): Json<Ship>,
) -> Response {
    match emulator.ship_order(order_id, &ship.source_code) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => (
            StatusCode::CONFLICT,
            Json(json!({"error": error.to_string()})),
        )
            .into_response(),
    }
}

async fn cancel_order(
    State(emulator): State<AdobeEmulator>,
    Path(order_id): Path<u64>,
) -> Response {
    match emulator.cancel_order(order_id) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => (
            StatusCode::CONFLICT,
            Json(json!({"error": error.to_string()})),
        )
            .into_response(),
    }
}

async fn salable(
    State(emulator): State<AdobeEmulator>,
    Path((sku, stock_id)): Path<(String, u32)>,
) -> Response {
    Json(json!({"salable_quantity": emulator.salable_quantity(&sku, stock_id)})).into_response()
}
