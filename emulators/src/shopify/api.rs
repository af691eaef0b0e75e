//! `POST /admin/api/{version}/graphql.json` (CHANNELS.md A): authentication,
//! the cost check against the app's bucket (A.4), and execution of the
//! inventory mutations (A.1-A.3) and the read-back query.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Map, Value};

use super::graphql::{self, GraphqlError, Operation, OperationKind, SelectedField};
use super::idempotency::Claim;
use super::inventory::{self, Inventory, Mutation};
use super::ShopifyState;
use crate::server::Throttled;

pub(super) fn routes(state: Arc<ShopifyState>) -> Router {
    Router::new()
        .route("/admin/api/{version}/graphql.json", post(graphql_endpoint))
        .with_state(state)
}

/// Shopify's answer to a missing or wrong access token.
fn unauthorized() -> Response<Body> {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"})),
    )
        .into_response()
}

fn is_api_version(version: &str) -> bool {
    let bytes = version.as_bytes();
    version == "unstable"
        || (bytes.len() == 7
            && bytes[4] == b'-'
            && bytes[..4].iter().all(u8::is_ascii_digit)
            && bytes[5..].iter().all(u8::is_ascii_digit))
}

/// The request body: JSON `{query, variables, operationName}`, or a bare
/// document with `Content-Type: application/graphql`.
struct GraphqlRequest {
    query: String,
    variables: Map<String, Value>,
    operation_name: Option<String>,
}

fn read_request(headers: &HeaderMap, body: &[u8]) -> Option<GraphqlRequest> {
    let content_type = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/graphql") {
        return Some(GraphqlRequest {
            query: String::from_utf8(body.to_vec()).ok()?,
            variables: Map::new(),
            operation_name: None,
        });
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    Some(GraphqlRequest {
        query: value.get("query")?.as_str()?.to_owned(),
        variables: match value.get("variables") {
            Some(Value::Object(variables)) => variables.clone(),
            Some(Value::Null) | None => Map::new(),
            Some(_) => return None,
        },
        operation_name: value
            .get("operationName")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

fn respond(status: StatusCode, body: Value) -> Response<Body> {
    let mut response = (status, axum::Json(body)).into_response();
    if let Ok(request_id) = uuid::Uuid::new_v4().to_string().parse() {
        response.headers_mut().insert("x-request-id", request_id);
    }
    response
}

async fn graphql_endpoint(
    State(state): State<Arc<ShopifyState>>,
    Path(version): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    if !is_api_version(&version) {
        return respond(StatusCode::NOT_FOUND, json!({"errors": "Not Found"}));
    }
    let token = headers
        .get("x-shopify-access-token")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if !state
        .config
        .access_tokens
        .iter()
        .any(|known| known == token)
    {
        return unauthorized();
    }
    let Some(request) = read_request(&headers, &body) else {
        return respond(
            StatusCode::BAD_REQUEST,
            json!({"errors": {"query": "Required parameter missing or invalid"}}),
        );
    };
    let operation = match graphql::parse_operation(
        &request.query,
        &request.variables,
        request.operation_name.as_deref(),
    ) {
        Ok(operation) => operation,
        Err(error) => return respond(StatusCode::OK, json!({"errors": [error.0]})),
    };
    let requested = graphql::requested_cost(&operation);
    if requested > state.config.max_query_cost {
        let status = state.with_bucket(token, ShopifyState::throttle_status);
        return respond(
            StatusCode::OK,
            json!({
                "errors": [{"message": format!("Query cost is {requested}, which exceeds the single query max cost limit ({}).", state.config.max_query_cost),
                    "extensions": {"code": "MAX_COST_EXCEEDED", "cost": requested, "maxCost": state.config.max_query_cost,
                        "documentation": "https://shopify.dev/api/usage/rate-limits"}}],
                "extensions": {"cost": {"requestedQueryCost": requested, "actualQueryCost": null, "throttleStatus": status}},
            }),
        );
    }
    // A.4: the bucket is charged the requested cost first.
    let charged = state.with_bucket(token, |bucket| {
        let taken = bucket.try_take(requested as f64);
        (taken, ShopifyState::throttle_status(bucket))
    });
    if let (Err(_), status) = charged {
        let http_status =
            StatusCode::from_u16(state.config.throttled_http_status).unwrap_or(StatusCode::OK);
        let mut response = respond(
            http_status,
            json!({
                "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED",
                    "documentation": "https://shopify.dev/api/usage/rate-limits"}}],
                "extensions": {"cost": {"requestedQueryCost": requested, "actualQueryCost": null, "throttleStatus": status}},
            }),
        );
        if http_status == StatusCode::TOO_MANY_REQUESTS {
            let wait = status.maximum_available.min(requested as f64) - status.currently_available;
            let retry_after = (wait / status.restore_rate.max(0.001)).ceil().max(1.0) as u64;
            if let Ok(value) = retry_after.to_string().parse() {
                response.headers_mut().insert("retry-after", value);
            }
        }
        response.extensions_mut().insert(Throttled);
        return response;
    }
    let result = match operation.kind {
        OperationKind::Query => run_query(&state.inventory.lock(), &operation),
        OperationKind::Mutation => run_mutations(&state, token, &operation).await,
    };
    // The emulator's actual cost equals the requested cost, so the refund of
    // the difference (A.4) is zero; the status is read after execution.
    let actual = requested;
    let status = state.with_bucket(token, |bucket| {
        bucket.refund((requested - actual) as f64);
        ShopifyState::throttle_status(bucket)
    });
    let cost = json!({"requestedQueryCost": requested, "actualQueryCost": actual, "throttleStatus": status});
    match result {
        Ok(data) => respond(
            StatusCode::OK,
            json!({"data": data, "extensions": {"cost": cost}}),
        ),
        Err(error) => respond(
            StatusCode::OK,
            json!({"errors": [error.0], "extensions": {"cost": cost}}),
        ),
    }
}

fn argument_str<'f>(field: &'f SelectedField, name: &str) -> Result<&'f str, GraphqlError> {
    field
        .arguments
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| GraphqlError::missing_argument(field, name))
}

fn run_query(inventory: &Inventory, operation: &Operation) -> Result<Value, GraphqlError> {
    let mut data = Map::new();
    for field in &operation.fields {
        let value = match field.name.as_str() {
            "inventoryItem" => {
                let id = argument_str(field, "id")?;
                match inventory::parse_gid(id, "InventoryItem") {
                    Some(item) if inventory.items.contains_key(&item) => {
                        resolve_item(inventory, item, &field.children)?
                    }
                    _ => Value::Null,
                }
            }
            "inventoryLevel" => {
                let id = argument_str(field, "id")?;
                match inventory::parse_level_gid(id) {
                    Some((item, location)) if inventory.levels.contains_key(&(item, location)) => {
                        resolve_level(inventory, item, location, &field.children)?
                    }
                    _ => Value::Null,
                }
            }
            "location" => {
                let id = argument_str(field, "id")?;
                match inventory::parse_gid(id, "Location").and_then(|location| {
                    inventory
                        .locations
                        .get(&location)
                        .map(|name| (location, name))
                }) {
                    Some((location, name)) => graphql::project(
                        &json!({"__typename": "Location", "id": inventory::location_gid(location), "name": name}),
                        &field.children,
                    )?,
                    None => Value::Null,
                }
            }
            "__typename" => json!("QueryRoot"),
            _ => return Err(GraphqlError::undefined_field("QueryRoot", field)),
        };
        data.insert(field.response_key.clone(), value);
    }
    Ok(Value::Object(data))
}

fn resolve_item(
    inventory: &Inventory,
    item: u64,
    fields: &[SelectedField],
) -> Result<Value, GraphqlError> {
    let mut out = Map::new();
    for field in fields {
        let value = match field.name.as_str() {
            "id" => json!(inventory::item_gid(item)),
            "legacyResourceId" => json!(item.to_string()),
            "sku" => json!(inventory.items.get(&item)),
            "tracked" => json!(true),
            "__typename" => json!("InventoryItem"),
            "inventoryLevel" => {
                let location = argument_str(field, "locationId")?;
                match inventory::parse_gid(location, "Location") {
                    Some(location) if inventory.levels.contains_key(&(item, location)) => {
                        resolve_level(inventory, item, location, &field.children)?
                    }
                    _ => Value::Null,
                }
            }
            _ => return Err(GraphqlError::undefined_field("InventoryItem", field)),
        };
        out.insert(field.response_key.clone(), value);
    }
    Ok(Value::Object(out))
}

fn resolve_level(
    inventory: &Inventory,
    item: u64,
    location: u64,
    fields: &[SelectedField],
) -> Result<Value, GraphqlError> {
    let Some(stocked) = inventory.levels.get(&(item, location)) else {
        return Ok(Value::Null);
    };
    let mut out = Map::new();
    for field in fields {
        let value = match field.name.as_str() {
            "id" => json!(inventory::level_gid(item, location)),
            "__typename" => json!("InventoryLevel"),
            "updatedAt" | "createdAt" => json!(crate::clock::rfc3339(stocked.updated_at_ms)),
            "canDeactivate" => json!(true),
            "item" => resolve_item(inventory, item, &field.children)?,
            "location" => graphql::project(
                &json!({"__typename": "Location", "id": inventory::location_gid(location),
                    "name": inventory.locations.get(&location)}),
                &field.children,
            )?,
            "quantities" => {
                let Some(names) = field.arguments.get("names").and_then(Value::as_array) else {
                    return Err(GraphqlError::missing_argument(field, "names"));
                };
                let mut quantities = Vec::new();
                for name in names {
                    let name = name.as_str().unwrap_or("");
                    let Some(quantity) = stocked.levels.get(name) else {
                        return Err(GraphqlError::at(
                            format!("'{name}' is not a valid inventory quantity name."),
                            field,
                            "INVALID_QUANTITY_NAME",
                        ));
                    };
                    quantities.push(json!({"__typename": "InventoryQuantity", "name": name,
                        "quantity": quantity, "updatedAt": crate::clock::rfc3339(stocked.updated_at_ms)}));
                }
                graphql::project(&Value::Array(quantities), &field.children)?
            }
            _ => return Err(GraphqlError::undefined_field("InventoryLevel", field)),
        };
        out.insert(field.response_key.clone(), value);
    }
    Ok(Value::Object(out))
}

/// One mutation field, checked before anything runs.
struct PlannedMutation<'o> {
    field: &'o SelectedField,
    mutation: Mutation,
    input: inventory::CoercedInput,
    idempotency_key: Option<String>,
}

fn plan<'o>(
    state: &ShopifyState,
    field: &'o SelectedField,
) -> Result<PlannedMutation<'o>, GraphqlError> {
    let mutation = match field.name.as_str() {
        "inventorySetQuantities" => Mutation::SetQuantities,
        "inventoryAdjustQuantities" => Mutation::AdjustQuantities,
        _ => return Err(GraphqlError::undefined_field("Mutation", field)),
    };
    let input = inventory::coerce(mutation, field.arguments.get("input"))?;
    let idempotency_key = match field.directive("idempotent") {
        Some(arguments) => match arguments.get("key").and_then(Value::as_str) {
            Some(key) if !key.is_empty() => Some(key.to_owned()),
            _ => {
                return Err(GraphqlError::at(
                    "Directive 'idempotent' is missing required arguments: key",
                    field,
                    "missingRequiredArguments",
                ))
            }
        },
        None => None,
    };
    // A.3: mandatory at runtime from 2026-04 on inventoryAdjustQuantities; on
    // inventorySetQuantities it is a switch (unconfirmed).
    let required = match mutation {
        Mutation::AdjustQuantities => true,
        Mutation::SetQuantities => state.config.require_idempotency_on_set,
    };
    if required && idempotency_key.is_none() {
        return Err(GraphqlError::at(
            format!(
                "The @idempotent directive is required for the '{}' mutation.",
                field.name
            ),
            field,
            "IDEMPOTENCY_KEY_REQUIRED",
        ));
    }
    Ok(PlannedMutation {
        field,
        mutation,
        input,
        idempotency_key,
    })
}

async fn run_mutations(
    state: &ShopifyState,
    token: &str,
    operation: &Operation,
) -> Result<Value, GraphqlError> {
    let planned = operation
        .fields
        .iter()
        .map(|field| plan(state, field))
        .collect::<Result<Vec<_>, _>>()?;
    let mut data = Map::new();
    for planned in planned {
        let payload = run_one(state, token, &planned).await;
        data.insert(
            planned.field.response_key.clone(),
            graphql::project(&payload, &planned.field.children)?,
        );
    }
    Ok(Value::Object(data))
}

async fn run_one(state: &ShopifyState, token: &str, planned: &PlannedMutation<'_>) -> Value {
    let fingerprint = json!({"mutation": planned.field.name, "arguments": planned.field.arguments});
    if let Some(key) = &planned.idempotency_key {
        let claim = state.idempotency.lock().claim(token, key, &fingerprint);
        match claim {
            Claim::Run => {}
            Claim::Replay(payload) => return payload,
            Claim::Mismatch => {
                return planned.mutation.refused(
                    "IDEMPOTENCY_KEY_PARAMETER_MISMATCH",
                    "The same idempotency key was used with different parameters.",
                )
            }
            Claim::Concurrent => {
                return planned.mutation.refused(
                    "IDEMPOTENCY_CONCURRENT_REQUEST",
                    "A request with this idempotency key is already in progress, please try again.",
                )
            }
        }
    }
    if !state.config.mutation_processing_time.is_zero() {
        tokio::time::sleep(state.config.mutation_processing_time).await;
    }
    let (payload, touched) = {
        let mut inventory = state.inventory.lock();
        match planned.mutation {
            Mutation::SetQuantities => inventory.set_quantities(&planned.input),
            Mutation::AdjustQuantities => inventory.adjust_quantities(&planned.input),
        }
    };
    if let Some(key) = &planned.idempotency_key {
        state.idempotency.lock().finish(token, key, payload.clone());
    }
    state.send_level_updates(&touched);
    payload
}
