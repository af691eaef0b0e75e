//! `POST /v3/token` and the inventory routes (CHANNELS.md C.1):
//! `PUT`/`GET /v3/inventory?sku=[&shipNode=]` and `PUT`/`GET
//! /v3/inventories/{sku}` (multi-node).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};

use super::{invalid_param, quantity_json, walmart_error, Api, WalmartState};

pub(super) fn routes(state: Arc<WalmartState>) -> Router {
    Router::new()
        .route("/v3/token", post(token))
        .route("/v3/inventory", get(get_inventory).put(put_inventory))
        .route(
            "/v3/inventories/{sku}",
            get(get_inventories).put(put_inventories),
        )
        .with_state(state)
}

fn either(result: Result<Response<Body>, Response<Body>>) -> Response<Body> {
    match result {
        Ok(response) | Err(response) => response,
    }
}

async fn token(
    State(state): State<Arc<WalmartState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    for required in ["wm_svc.name", "wm_qos.correlation_id"] {
        if headers.get(required).is_none() {
            return walmart_error(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST_HEADER.GMP_GATEWAY_API",
                &format!("Missing required header {}", required.to_uppercase()),
                "REQUEST",
                Some(&required.to_uppercase()),
            );
        }
    }
    let expected = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        state.config.client_id, state.config.client_secret
    ));
    let given = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .unwrap_or("");
    if given != expected {
        return walmart_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED.GMP_GATEWAY_API",
            "Unauthorized token or invalid client credentials",
            "REQUEST",
            Some("Authorization"),
        );
    }
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return invalid_param("grant_type", "grant_type must be client_credentials");
    }
    let access_token = format!("eyJ.skuld-emulator.{}", uuid::Uuid::new_v4().simple());
    state.tokens.lock().insert(
        access_token.clone(),
        Instant::now() + state.config.token_lifetime,
    );
    axum::Json(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": state.config.token_lifetime.as_secs(),
    }))
    .into_response()
}

/// Reads `{"unit": "EACH", "amount": n}`; `field` names it in errors.
pub(super) fn read_quantity(value: Option<&Value>, field: &str) -> Result<i64, String> {
    let value = value.ok_or_else(|| format!("{field} is required"))?;
    if value.get("unit").and_then(Value::as_str) != Some("EACH") {
        return Err(format!("{field}.unit must be EACH"));
    }
    value
        .get("amount")
        .and_then(Value::as_i64)
        .filter(|amount| *amount >= 0)
        .ok_or_else(|| format!("{field}.amount must be a non-negative integer"))
}

fn not_found(sku: &str) -> Response<Body> {
    walmart_error(
        StatusCode::NOT_FOUND,
        "CONTENT_NOT_FOUND.GMP_INVENTORY_API",
        &format!("Item not found for sku {sku}"),
        "DATA",
        Some("sku"),
    )
}

async fn put_inventory(
    State(state): State<Arc<WalmartState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    either((|| {
        state.authorize(&headers)?;
        let charge = state.take(Api::Inventory)?;
        let sku = query
            .get("sku")
            .filter(|sku| !sku.is_empty())
            .ok_or_else(|| invalid_param("sku", "sku is required"))?;
        let node = state.ship_node(query.get("shipNode").map(String::as_str))?;
        let request: Value = serde_json::from_slice(&body)
            .map_err(|_| invalid_param("body", "The request body is not valid JSON"))?;
        if request.get("sku").and_then(Value::as_str) != Some(sku.as_str()) {
            return Err(invalid_param(
                "sku",
                "The sku in the body must match the sku parameter",
            ));
        }
        let amount = read_quantity(request.get("quantity"), "quantity")
            .map_err(|message| invalid_param("quantity", &message))?;
        let mut inventory = state.inventory.lock();
        let nodes = inventory
            .get_mut(sku.as_str())
            .ok_or_else(|| not_found(sku))?;
        nodes.insert(node, amount);
        Ok(charge.stamp(
            axum::Json(json!({"sku": sku, "quantity": quantity_json(amount)})).into_response(),
        ))
    })())
}

async fn get_inventory(
    State(state): State<Arc<WalmartState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response<Body> {
    either((|| {
        state.authorize(&headers)?;
        let charge = state.take(Api::Inventory)?;
        let sku = query
            .get("sku")
            .filter(|sku| !sku.is_empty())
            .ok_or_else(|| invalid_param("sku", "sku is required"))?;
        let node = state.ship_node(query.get("shipNode").map(String::as_str))?;
        let inventory = state.inventory.lock();
        let nodes = inventory.get(sku.as_str()).ok_or_else(|| not_found(sku))?;
        let amount = nodes.get(&node).copied().unwrap_or(0);
        Ok(charge.stamp(
            axum::Json(json!({"sku": sku, "quantity": quantity_json(amount)})).into_response(),
        ))
    })())
}

async fn put_inventories(
    State(state): State<Arc<WalmartState>>,
    Path(sku): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    either((|| {
        state.authorize(&headers)?;
        let charge = state.take(Api::Inventory)?;
        let request: Value = serde_json::from_slice(&body)
            .map_err(|_| invalid_param("body", "The request body is not valid JSON"))?;
        let nodes = request["inventories"]["nodes"]
            .as_array()
            .filter(|nodes| !nodes.is_empty())
            .ok_or_else(|| {
                invalid_param(
                    "inventories.nodes",
                    "inventories.nodes must list at least one node",
                )
            })?;
        let mut updates = Vec::new();
        for (index, node) in nodes.iter().enumerate() {
            let ship_node = node.get("shipNode").and_then(Value::as_str);
            let ship_node = match ship_node {
                Some(node) if !node.is_empty() => state.ship_node(Some(node))?,
                _ => {
                    return Err(invalid_param(
                        "shipNode",
                        &format!("inventories.nodes[{index}].shipNode is required"),
                    ))
                }
            };
            let amount = read_quantity(node.get("inputQty"), "inputQty")
                .map_err(|message| invalid_param("inputQty", &message))?;
            updates.push((ship_node, amount));
        }
        let mut inventory = state.inventory.lock();
        let stored = inventory.get_mut(&sku).ok_or_else(|| not_found(&sku))?;
        let mut statuses = Vec::new();
        for (ship_node, amount) in updates {
            statuses.push(json!({"shipNode": ship_node, "status": "Success"}));
            stored.insert(ship_node, amount);
        }
        Ok(charge.stamp(axum::Json(json!({"sku": sku, "nodes": statuses})).into_response()))
    })())
}

async fn get_inventories(
    State(state): State<Arc<WalmartState>>,
    Path(sku): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response<Body> {
    either((|| {
        state.authorize(&headers)?;
        let charge = state.take(Api::Inventory)?;
        let only = match query.get("shipNode") {
            Some(node) => Some(state.ship_node(Some(node))?),
            None => None,
        };
        let inventory = state.inventory.lock();
        let nodes = inventory.get(&sku).ok_or_else(|| not_found(&sku))?;
        let listed: Vec<Value> = nodes
            .iter()
            .filter(|(node, _)| only.as_ref().is_none_or(|only| only == *node))
            .map(|(node, amount)| {
                json!({"shipNode": node, "inputQty": quantity_json(*amount),
                    "availToSellQty": quantity_json(*amount), "reservedQty": quantity_json(0)})
            })
            .collect();
        Ok(charge.stamp(axum::Json(json!({"sku": sku, "nodes": listed})).into_response()))
    })())
}
