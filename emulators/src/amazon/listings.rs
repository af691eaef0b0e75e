//! Listings Items API v2021-08-01 (CHANNELS.md B.1): `patchListingsItem` with
//! `add` / `replace` / `merge` / `delete` on top-level attributes, answered
//! `ACCEPTED` and applied later; `getListingsItem` reads it back with
//! `includedData=fulfillmentAvailability`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Response, StatusCode};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};

use super::{error_list, json_response, AmazonState, Operation, PendingApply, UnknownSku};

pub(super) fn routes(state: Arc<AmazonState>) -> Router {
    Router::new()
        .route(
            "/listings/2021-08-01/items/{seller_id}/{sku}",
            get(get_listings_item).patch(patch_listings_item),
        )
        .with_state(state)
}

/// Fields that select which element of an attribute's array a `merge` or a
/// `delete` addresses (B.1: merge "must carry non-empty selector fields").
const SELECTORS: &[&str] = &["fulfillment_channel_code", "marketplace_id", "language_tag"];

pub(super) fn issue(code: &str, message: impl Into<String>, attribute: Option<&str>) -> Value {
    json!({
        "code": code,
        "message": message.into(),
        "severity": "ERROR",
        "attributeNames": attribute.map(|name| vec![name]).unwrap_or_default(),
        "categories": ["INVALID_ATTRIBUTE"],
    })
}

/// The top-level attribute a JSON Pointer names; deeper paths are refused
/// (B.1: "only top-level attributes can be patched").
fn attribute_name(path: &str) -> Option<&str> {
    let name = path.strip_prefix("/attributes/")?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// The structure of one patch: `Err` is a 400 (malformed request).
fn check_structure(patch: &Value) -> Result<(), String> {
    let op = patch.get("op").and_then(Value::as_str).unwrap_or("");
    if !matches!(op, "add" | "replace" | "merge" | "delete") {
        return Err(format!(
            "'{op}' is not a valid patch operation; expected add, replace, merge or delete"
        ));
    }
    let path = patch.get("path").and_then(Value::as_str).unwrap_or("");
    if attribute_name(path).is_none() {
        return Err(format!("'{path}' is not a top-level attribute path"));
    }
    match patch.get("value") {
        Some(Value::Array(items)) if items.iter().all(Value::is_object) => Ok(()),
        None if op == "delete" => Ok(()),
        _ => Err("'value' must be an array of objects".to_owned()),
    }
}

/// What the listing's schema would say about the values: issues make the
/// submission `INVALID`.
pub(super) fn check_values(patch: &Value) -> Vec<Value> {
    let mut issues = Vec::new();
    let op = patch.get("op").and_then(Value::as_str).unwrap_or("");
    let path = patch.get("path").and_then(Value::as_str).unwrap_or("");
    let Some(name) = attribute_name(path) else {
        return vec![issue(
            "INVALID_PATH",
            format!("'{path}' is not a top-level attribute path"),
            None,
        )];
    };
    let items = patch
        .get("value")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for item in &items {
        if (op == "merge" || op == "delete")
            && !SELECTORS.iter().any(|selector| {
                item.get(*selector)
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
            })
        {
            issues.push(issue(
                "MISSING_SELECTOR",
                format!("'{op}' on '{name}' needs a non-empty selector such as fulfillment_channel_code"),
                Some(name),
            ));
        }
        if name == "fulfillment_availability" {
            if item
                .get("fulfillment_channel_code")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                issues.push(issue(
                    "MISSING_REQUIRED",
                    "'fulfillment_channel_code' is required but not supplied",
                    Some(name),
                ));
            }
            if let Some(quantity) = item.get("quantity") {
                if quantity.as_i64().is_none_or(|quantity| quantity < 0) {
                    issues.push(issue(
                        "INVALID_VALUE",
                        format!("'quantity' must be a non-negative integer, not {quantity}"),
                        Some(name),
                    ));
                }
            }
        }
    }
    issues
}

fn same_selection(existing: &Value, wanted: &Value) -> bool {
    let selectors: Vec<&str> = SELECTORS
        .iter()
        .copied()
        .filter(|selector| wanted.get(*selector).is_some())
        .collect();
    !selectors.is_empty()
        && selectors
            .iter()
            .all(|selector| existing.get(*selector) == wanted.get(*selector))
}

/// Applies one checked patch to a listing's attributes.
pub(super) fn apply_patch(attributes: &mut Map<String, Value>, patch: &Value) {
    let op = patch.get("op").and_then(Value::as_str).unwrap_or("");
    let Some(name) = patch
        .get("path")
        .and_then(Value::as_str)
        .and_then(attribute_name)
    else {
        return;
    };
    let items = patch.get("value").and_then(Value::as_array).cloned();
    match (op, items) {
        ("add" | "replace", Some(items)) => {
            attributes.insert(name.to_owned(), Value::Array(items));
        }
        ("merge", Some(items)) => {
            let current = attributes
                .entry(name.to_owned())
                .or_insert_with(|| Value::Array(Vec::new()));
            if !current.is_array() {
                *current = Value::Array(Vec::new());
            }
            let Some(current) = current.as_array_mut() else {
                return;
            };
            for item in items {
                match current
                    .iter_mut()
                    .find(|existing| same_selection(existing, &item))
                {
                    Some(existing) => {
                        if let (Some(existing), Some(fields)) =
                            (existing.as_object_mut(), item.as_object())
                        {
                            for (key, value) in fields {
                                existing.insert(key.clone(), value.clone());
                            }
                        }
                    }
                    None => current.push(item),
                }
            }
        }
        ("delete", Some(items)) => {
            if let Some(Value::Array(current)) = attributes.get_mut(name) {
                current.retain(|existing| !items.iter().any(|item| same_selection(existing, item)));
            }
        }
        ("delete", None) => {
            attributes.remove(name);
        }
        _ => {}
    }
}

/// `marketplaceIds` must name exactly one known marketplace (B.1: maxItems 1).
fn one_marketplace(
    state: &AmazonState,
    query: &HashMap<String, String>,
) -> Result<String, Response<Body>> {
    let ids: Vec<&str> = query
        .get("marketplaceIds")
        .map(|ids| ids.split(',').filter(|id| !id.is_empty()).collect())
        .unwrap_or_default();
    match ids.as_slice() {
        [] => Err(error_list(
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            "Missing required parameter 'marketplaceIds'.",
            "",
        )),
        [id] if state.knows_marketplace(id) => Ok((*id).to_owned()),
        [id] => Err(error_list(
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            &format!("Invalid 'marketplaceIds' provided: {id}."),
            "",
        )),
        _ => Err(error_list(
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            "'marketplaceIds' accepts at most 1 value.",
            "",
        )),
    }
}

fn seller_matches(state: &AmazonState, seller_id: &str) -> Result<(), Response<Body>> {
    if seller_id == state.config.seller_id {
        Ok(())
    } else {
        Err(error_list(
            StatusCode::FORBIDDEN,
            "Unauthorized",
            "Access to requested resource is denied.",
            "The seller id in the path does not match the authorised seller.",
        ))
    }
}

async fn patch_listings_item(
    State(state): State<Arc<AmazonState>>,
    Path((seller_id, sku)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    match patch_inner(&state, &seller_id, &sku, &query, &headers, &body) {
        Ok(response) | Err(response) => response,
    }
}

fn patch_inner(
    state: &AmazonState,
    seller_id: &str,
    sku: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, Response<Body>> {
    let client_id = state.authorize(headers)?;
    let rate = state.take(Operation::PatchListingsItem, &client_id)?;
    seller_matches(state, seller_id)?;
    let marketplace_id = one_marketplace(state, query)?;
    let bad_request = |details: &str| {
        error_list(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "Invalid input",
            details,
        )
    };
    let request: Value = serde_json::from_slice(body)
        .map_err(|_| bad_request("The request body is not valid JSON"))?;
    let product_type = request
        .get("productType")
        .and_then(Value::as_str)
        .filter(|product_type| !product_type.is_empty())
        .ok_or_else(|| bad_request("'productType' is required"))?;
    let patches = request
        .get("patches")
        .and_then(Value::as_array)
        .filter(|patches| !patches.is_empty())
        .ok_or_else(|| bad_request("'patches' must hold at least one patch operation"))?;
    for patch in patches {
        check_structure(patch).map_err(|details| bad_request(&details))?;
    }
    let mut issues: Vec<Value> = patches.iter().flat_map(check_values).collect();
    let exists = state
        .listings
        .lock()
        .contains_key(&(marketplace_id.clone(), sku.to_owned()));
    if !exists && state.config.unknown_sku == UnknownSku::Reject {
        issues.push(issue(
            "LISTING_NOT_FOUND",
            format!("The seller has no listing with SKU '{sku}' in this marketplace"),
            None,
        ));
    }
    let submission_id = uuid::Uuid::new_v4().simple().to_string();
    let validation_only = query
        .get("mode")
        .is_some_and(|mode| mode == "VALIDATION_PREVIEW");
    let status = match (issues.is_empty(), validation_only) {
        (false, _) => "INVALID",
        (true, true) => "VALID",
        (true, false) => "ACCEPTED",
    };
    if status == "ACCEPTED" {
        let delay = *state.apply_delay.lock();
        state.accept(PendingApply {
            due: Instant::now() + delay,
            submission_id: submission_id.clone(),
            marketplace_id,
            sku: sku.to_owned(),
            product_type: product_type.to_owned(),
            patches: patches.clone(),
        });
    }
    Ok(json_response(
        StatusCode::OK,
        json!({"sku": sku, "status": status, "submissionId": submission_id, "issues": issues}),
        Some(rate),
    ))
}

async fn get_listings_item(
    State(state): State<Arc<AmazonState>>,
    Path((seller_id, sku)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response<Body> {
    let result = (|| {
        let client_id = state.authorize(&headers)?;
        let rate = state.take(Operation::GetListingsItem, &client_id)?;
        seller_matches(&state, &seller_id)?;
        let marketplace_id = one_marketplace(&state, &query)?;
        let Some(listing) = state
            .listings
            .lock()
            .get(&(marketplace_id.clone(), sku.clone()))
            .cloned()
        else {
            return Err(error_list(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                &format!("SKU '{sku}' not found in marketplace {marketplace_id}"),
                "",
            ));
        };
        let included = query
            .get("includedData")
            .map(String::as_str)
            .unwrap_or("summaries");
        let mut body = json!({"sku": listing.sku});
        for part in included.split(',') {
            match part {
                "summaries" => {
                    body["summaries"] = json!([{
                        "marketplaceId": listing.marketplace_id,
                        "productType": listing.product_type,
                        "conditionType": "new_new",
                        "status": ["BUYABLE"],
                        "createdDate": crate::clock::rfc3339(listing.created_ms),
                        "lastUpdatedDate": crate::clock::rfc3339(listing.updated_ms),
                    }])
                }
                "attributes" => body["attributes"] = Value::Object(listing.attributes.clone()),
                "issues" => body["issues"] = json!([]),
                "fulfillmentAvailability" => {
                    let availability: Vec<Value> = listing
                        .attributes
                        .get("fulfillment_availability")
                        .and_then(Value::as_array)
                        .map(|entries| {
                            entries
                                .iter()
                                .map(|entry| {
                                    json!({"fulfillmentChannelCode": entry.get("fulfillment_channel_code"),
                                        "quantity": entry.get("quantity")})
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    body["fulfillmentAvailability"] = Value::Array(availability);
                }
                "offers" | "procurement" | "relationships" | "productTypes" | "identifiers" => {
                    body[part] = json!([]);
                }
                other => {
                    return Err(error_list(
                        StatusCode::BAD_REQUEST,
                        "InvalidInput",
                        &format!("Invalid 'includedData' value: {other}."),
                        "",
                    ))
                }
            }
        }
        Ok(json_response(StatusCode::OK, body, Some(rate)))
    })();
    match result {
        Ok(response) | Err(response) => response,
    }
}
