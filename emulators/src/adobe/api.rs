//! The REST routes (CHANNELS.md D.1, D.4): `POST /rest/{store}/V1/integration/admin/token`,
//! `POST .../V1/inventory/source-items`, `POST .../source-items-delete`,
//! `GET .../source-items?searchCriteria[...]`, and the salable quantity reads.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::{magento_error, number, search, AdobeState, SourceItem};

/// ACL resources named in 401s (D.1's table).
const ASSIGN_RESOURCE: &str = "Magento_InventoryApi::stock_source_item_assign";
const SOURCE_RESOURCE: &str = "Magento_InventoryApi::source";

pub(super) fn routes(state: Arc<AdobeState>) -> Router {
    Router::new()
        .route(
            "/rest/{store}/V1/integration/admin/token",
            post(admin_token),
        )
        .route(
            "/rest/{store}/V1/inventory/source-items",
            post(save_source_items).get(search_source_items),
        )
        .route(
            "/rest/{store}/V1/inventory/source-items-delete",
            post(delete_source_items),
        )
        .route(
            "/rest/{store}/V1/inventory/get-product-salable-quantity/{sku}/{stock_id}",
            get(salable_quantity),
        )
        .route(
            "/rest/{store}/V1/inventory/is-product-salable/{sku}/{stock_id}",
            get(is_salable),
        )
        .with_state(state)
}

fn either(result: Result<Response<Body>, Response<Body>>) -> Response<Body> {
    match result {
        Ok(response) | Err(response) => response,
    }
}

fn required_field(field: &str) -> Value {
    json!({"message": "\"%fieldName\" is required. Enter and try again.", "parameters": {"fieldName": field}})
}

async fn admin_token(
    State(state): State<Arc<AdobeState>>,
    Path(store): Path<String>,
    body: Bytes,
) -> Response<Body> {
    either((|| {
        state.check_store(&store)?;
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let username = request
            .get("username")
            .and_then(Value::as_str)
            .unwrap_or("");
        let password = request
            .get("password")
            .and_then(Value::as_str)
            .unwrap_or("");
        let mut missing = Vec::new();
        if username.is_empty() {
            missing.push(required_field("username"));
        }
        if password.is_empty() {
            missing.push(required_field("password"));
        }
        if !missing.is_empty() {
            return Err(magento_error(
                StatusCode::BAD_REQUEST,
                "One or more input exceptions have occurred.",
                Value::Null,
                Some(missing),
            ));
        }
        if username != state.config.username || password != state.config.password {
            return Err(magento_error(
                StatusCode::UNAUTHORIZED,
                "The account sign-in was incorrect or your account is disabled temporarily. Please wait and try again later.",
                Value::Null,
                None,
            ));
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        state.tokens.lock().insert(
            token.clone(),
            Instant::now() + state.config.admin_token_lifetime,
        );
        // D.4: the token is a bare JSON string.
        Ok(axum::Json(Value::String(token)).into_response())
    })())
}

/// Checks `{"sourceItems": [...]}` (D.1: sku and source_code required,
/// quantity a number, status 0 or 1); every problem goes in `errors[]`.
pub(super) fn read_source_items(
    state: &AdobeState,
    body: &Value,
    need_quantity: bool,
) -> Result<Vec<SourceItem>, Response<Body>> {
    let Some(items) = body.get("sourceItems").and_then(Value::as_array) else {
        return Err(magento_error(
            StatusCode::BAD_REQUEST,
            "\"%fieldName\" is required. Enter and try again.",
            json!({"fieldName": "sourceItems"}),
            None,
        ));
    };
    if items.is_empty() {
        return Err(magento_error(
            StatusCode::BAD_REQUEST,
            "Input data is empty",
            Value::Null,
            None,
        ));
    }
    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    for item in items {
        let text = |key: &str| {
            item.get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let (sku, source_code) = (text("sku"), text("source_code"));
        for (field, value) in [("sku", &sku), ("source_code", &source_code)] {
            if value.trim().is_empty() {
                errors.push(json!({"message": "\"%field\" can not be empty.", "parameters": {"field": field}}));
            }
        }
        if !source_code.is_empty() && !state.config.source_codes.contains(&source_code) {
            errors.push(json!({"message": "Source with code \"%code\" does not exist.", "parameters": {"code": source_code}}));
        }
        let quantity = match item.get("quantity") {
            Some(Value::Number(number)) => number.as_f64(),
            Some(Value::String(text)) => text.parse().ok(),
            None if !need_quantity => Some(0.0),
            _ => None,
        };
        if quantity.is_none() {
            errors.push(json!({"message": "\"%field\" should be numeric.", "parameters": {"field": "quantity"}}));
        }
        let status = match item.get("status") {
            None if !need_quantity => Some(0),
            Some(value) => value
                .as_u64()
                .or_else(|| value.as_str().and_then(|text| text.parse().ok()))
                .filter(|status| *status <= 1),
            None => None,
        };
        if status.is_none() {
            errors.push(json!({"message": "\"%field\" should be 0 or 1.", "parameters": {"field": "status"}}));
        }
        if let (Some(quantity), Some(status)) = (quantity, status) {
            parsed.push(SourceItem {
                sku,
                source_code,
                quantity,
                status: status as u8,
            });
        }
    }
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(magento_error(
            StatusCode::BAD_REQUEST,
            "Validation Failed",
            Value::Null,
            Some(errors),
        ))
    }
}

fn json_body(body: &[u8]) -> Result<Value, Response<Body>> {
    serde_json::from_slice(body).map_err(|_| {
        magento_error(
            StatusCode::BAD_REQUEST,
            "Decoding error: \nThe request body is not valid JSON",
            Value::Null,
            None,
        )
    })
}

async fn save_source_items(
    State(state): State<Arc<AdobeState>>,
    Path(store): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    either((|| {
        state.check_store(&store)?;
        state.authorize(&headers, ASSIGN_RESOURCE)?;
        let items = read_source_items(&state, &json_body(&body)?, true)?;
        save(&state, items);
        Ok(axum::Json(json!([])).into_response())
    })())
}

pub(super) fn save(state: &AdobeState, items: Vec<SourceItem>) {
    let mut catalog = state.catalog.lock();
    for item in items {
        catalog
            .source_items
            .insert((item.sku.clone(), item.source_code.clone()), item);
    }
}

async fn delete_source_items(
    State(state): State<Arc<AdobeState>>,
    Path(store): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    either((|| {
        state.check_store(&store)?;
        state.authorize(&headers, ASSIGN_RESOURCE)?;
        let items = read_source_items(&state, &json_body(&body)?, false)?;
        let mut catalog = state.catalog.lock();
        for item in items {
            catalog.source_items.remove(&(item.sku, item.source_code));
        }
        Ok(axum::Json(json!([])).into_response())
    })())
}

async fn search_source_items(
    State(state): State<Arc<AdobeState>>,
    Path(store): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response<Body> {
    either((|| {
        state.check_store(&store)?;
        state.authorize(&headers, SOURCE_RESOURCE)?;
        let criteria =
            search::SearchCriteria::parse(query.as_deref().unwrap_or("")).map_err(|message| {
                magento_error(StatusCode::BAD_REQUEST, &message, Value::Null, None)
            })?;
        let catalog = state.catalog.lock();
        let matching: Vec<&SourceItem> = catalog
            .source_items
            .values()
            .filter(|item| criteria.matches(item))
            .collect();
        let total = matching.len();
        let page: Vec<Value> = criteria
            .page(&matching)
            .iter()
            .map(|item| json!({"sku": item.sku, "source_code": item.source_code, "quantity": number(item.quantity), "status": item.status}))
            .collect();
        Ok(axum::Json(
            json!({"items": page, "search_criteria": criteria.echo(), "total_count": total}),
        )
        .into_response())
    })())
}

fn salable_inputs(state: &AdobeState, sku: &str, stock_id: &str) -> Result<(), Response<Body>> {
    let known_stock = stock_id
        .parse::<u32>()
        .ok()
        .and_then(|id| state.stock(id))
        .is_some();
    if !known_stock {
        return Err(magento_error(
            StatusCode::NOT_FOUND,
            "Stock with id \"%value\" does not exist.",
            json!({"value": stock_id}),
            None,
        ));
    }
    if !state.catalog.lock().has_product(sku) {
        return Err(magento_error(
            StatusCode::NOT_FOUND,
            "The product that was requested doesn't exist. Verify the product and try again.",
            Value::Null,
            None,
        ));
    }
    Ok(())
}

async fn salable_quantity(
    State(state): State<Arc<AdobeState>>,
    Path((store, sku, stock_id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response<Body> {
    either((|| {
        state.check_store(&store)?;
        state.authorize(&headers, SOURCE_RESOURCE)?;
        salable_inputs(&state, &sku, &stock_id)?;
        let stock = stock_id
            .parse::<u32>()
            .ok()
            .and_then(|id| state.stock(id))
            .cloned();
        let Some(stock) = stock else {
            return Err(magento_error(
                StatusCode::NOT_FOUND,
                "Stock with id \"%value\" does not exist.",
                json!({"value": stock_id}),
                None,
            ));
        };
        let catalog = state.catalog.lock();
        Ok(axum::Json(number(state.salable_quantity(&catalog, &sku, &stock))).into_response())
    })())
}

async fn is_salable(
    State(state): State<Arc<AdobeState>>,
    Path((store, sku, stock_id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response<Body> {
    either((|| {
        state.check_store(&store)?;
        state.authorize(&headers, SOURCE_RESOURCE)?;
        salable_inputs(&state, &sku, &stock_id)?;
        let stock = stock_id
            .parse::<u32>()
            .ok()
            .and_then(|id| state.stock(id))
            .cloned();
        let salable = stock
            .is_some_and(|stock| state.salable_quantity(&state.catalog.lock(), &sku, &stock) > 0.0);
        Ok(axum::Json(json!(salable)).into_response())
    })())
}
