#![allow(clippy::unwrap_used)]
//! The Shopify emulator over real loopback HTTP (CHANNELS.md A).

use std::time::Duration;

use serde_json::{json, Value};
use skuld_emulators::shopify::{Levels, OrderLine, ShopifyConfig};
use skuld_emulators::{Emulators, EmulatorsConfig};

const SET: &str = "mutation($input: InventorySetQuantitiesInput!, $key: String!) {
  inventorySetQuantities(input: $input) @idempotent(key: $key) {
    inventoryAdjustmentGroup { id reason changes { name delta quantityAfterChange } }
    userErrors { code field message }
  }
}";

const READ: &str = "query($item: ID!, $location: ID!) {
  inventoryItem(id: $item) { id inventoryLevel(locationId: $location) { quantities(names: [\"available\", \"committed\", \"on_hand\"]) { name quantity } } }
}";

async fn start(config: ShopifyConfig) -> Emulators {
    let emulators = Emulators::start(EmulatorsConfig {
        shopify: config,
        ..EmulatorsConfig::default()
    })
    .await
    .unwrap();
    emulators
        .shopify()
        .seed_level(1, 10, Levels::with_available(20));
    emulators
}

async fn post(emulators: &Emulators, token: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(emulators.shopify().graphql_url("2026-04"))
        .header("X-Shopify-Access-Token", token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn graphql(emulators: &Emulators, query: &str, variables: Value) -> Value {
    let token = emulators.shopify().access_token().to_owned();
    let (status, body) = post(
        emulators,
        &token,
        json!({"query": query, "variables": variables}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn set_input(quantity: i64, change_from: Value) -> Value {
    json!({"name": "available", "reason": "correction",
        "referenceDocumentUri": "gid://skuld/Push/1",
        "quantities": [{"inventoryItemId": "gid://shopify/InventoryItem/1",
            "locationId": "gid://shopify/Location/10", "quantity": quantity,
            "changeFromQuantity": change_from}]})
}

fn user_error_codes(body: &Value) -> Vec<String> {
    body["data"]["inventorySetQuantities"]["userErrors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| error["code"].as_str().unwrap().to_owned())
        .collect()
}

fn available_read_back(body: &Value) -> i64 {
    body["data"]["inventoryItem"]["inventoryLevel"]["quantities"][0]["quantity"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn set_with_compare_applies_and_reads_back_with_cost_extensions() {
    let emulators = start(ShopifyConfig::default()).await;
    let body = graphql(
        &emulators,
        SET,
        json!({"input": set_input(15, json!(20)), "key": "k-1"}),
    )
    .await;
    assert_eq!(user_error_codes(&body), Vec::<String>::new());
    let changes = &body["data"]["inventorySetQuantities"]["inventoryAdjustmentGroup"]["changes"];
    assert_eq!(
        changes[0],
        json!({"name": "available", "delta": -5, "quantityAfterChange": 15})
    );
    let cost = &body["extensions"]["cost"];
    assert_eq!(cost["requestedQueryCost"], 10);
    assert_eq!(cost["throttleStatus"]["maximumAvailable"], 2000.0);
    assert_eq!(cost["throttleStatus"]["restoreRate"], 100.0);
    assert!(
        cost["throttleStatus"]["currentlyAvailable"]
            .as_f64()
            .unwrap()
            <= 1991.0
    );

    let read = graphql(
        &emulators,
        READ,
        json!({"item": "gid://shopify/InventoryItem/1", "location": "gid://shopify/Location/10"}),
    )
    .await;
    assert_eq!(available_read_back(&read), 15);
    assert_eq!(read["extensions"]["cost"]["requestedQueryCost"], 3);
    assert_eq!(emulators.shopify().level(1, 10).unwrap().available, 15);

    // Null opts out of the compare.
    let body = graphql(
        &emulators,
        SET,
        json!({"input": set_input(7, Value::Null), "key": "k-2"}),
    )
    .await;
    assert_eq!(user_error_codes(&body), Vec::<String>::new());
    assert_eq!(emulators.shopify().level(1, 10).unwrap().available, 7);
    emulators.shutdown().await;
}

#[tokio::test]
async fn stale_compare_and_input_errors_use_shopifys_codes() {
    let emulators = start(ShopifyConfig::default()).await;
    emulators.shopify().add_item(2, "SKU-2");
    let stale = graphql(
        &emulators,
        SET,
        json!({"input": set_input(15, json!(19)), "key": "k-1"}),
    )
    .await;
    assert_eq!(user_error_codes(&stale), vec!["CHANGE_FROM_QUANTITY_STALE"]);
    assert_eq!(
        stale["data"]["inventorySetQuantities"]["userErrors"][0]["field"],
        json!(["input", "quantities", "0", "changeFromQuantity"])
    );
    assert_eq!(emulators.shopify().level(1, 10).unwrap().available, 20);

    let mut input = set_input(5, json!(20));
    input["name"] = json!("committed");
    input["reason"] = json!("because");
    let body = graphql(&emulators, SET, json!({"input": input, "key": "k-2"})).await;
    assert_eq!(
        user_error_codes(&body),
        vec!["INVALID_NAME", "INVALID_REASON"]
    );

    let mut input = set_input(-1, json!(20));
    input["quantities"][0]["inventoryItemId"] = json!("gid://shopify/InventoryItem/99");
    input["quantities"].as_array_mut().unwrap().push(json!({
        "inventoryItemId": "gid://shopify/InventoryItem/1", "locationId": "gid://shopify/Location/77",
        "quantity": 1, "changeFromQuantity": null}));
    input["quantities"].as_array_mut().unwrap().push(json!({
        "inventoryItemId": "gid://shopify/InventoryItem/2", "locationId": "gid://shopify/Location/10",
        "quantity": 1, "changeFromQuantity": null}));
    input["quantities"].as_array_mut().unwrap().push(json!({
        "inventoryItemId": "gid://shopify/InventoryItem/1", "locationId": "gid://shopify/Location/10",
        "quantity": -3, "changeFromQuantity": null}));
    let body = graphql(&emulators, SET, json!({"input": input, "key": "k-3"})).await;
    assert_eq!(
        user_error_codes(&body),
        vec![
            "INVALID_INVENTORY_ITEM",
            "INVALID_LOCATION",
            "ITEM_NOT_STOCKED_AT_LOCATION",
            "INVALID_QUANTITY_NEGATIVE"
        ]
    );

    // changeFromQuantity omitted: an error from 2026-04.
    let mut input = set_input(5, Value::Null);
    input["quantities"][0]
        .as_object_mut()
        .unwrap()
        .remove("changeFromQuantity");
    let body = graphql(&emulators, SET, json!({"input": input, "key": "k-4"})).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "INVALID_VARIABLE",
        "{body}"
    );
    assert!(body.get("data").is_none());

    // 251 quantities: over the input array cap.
    let mut input = set_input(5, Value::Null);
    let line = input["quantities"][0].clone();
    input["quantities"] = Value::Array(vec![line; 251]);
    let body = graphql(&emulators, SET, json!({"input": input, "key": "k-5"})).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "MAX_INPUT_SIZE_EXCEEDED"
    );

    // Unknown fields and syntax errors are top-level errors.
    let body = graphql(
        &emulators,
        "{ inventoryItem(id: \"1\") { nope } }",
        json!({}),
    )
    .await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "undefinedField");
    let body = graphql(&emulators, "mutation {", json!({})).await;
    assert!(body["errors"][0]["message"].is_string());
    emulators.shutdown().await;
}

#[tokio::test]
async fn wrong_token_is_401_with_shopifys_body_and_bad_version_is_404() {
    let emulators = start(ShopifyConfig::default()).await;
    let (status, body) = post(&emulators, "shpat_wrong", json!({"query": READ})).await;
    assert_eq!(status, 401);
    assert_eq!(
        body["errors"],
        "[API] Invalid API key or access token (unrecognized login or wrong password)"
    );
    let response = reqwest::Client::new()
        .post(format!(
            "{}/admin/api/latest/graphql.json",
            emulators.shopify().base_url()
        ))
        .header("X-Shopify-Access-Token", emulators.shopify().access_token())
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    emulators.shutdown().await;
}

#[tokio::test]
async fn idempotency_replays_refuses_mismatch_and_concurrent_and_is_mandatory() {
    let emulators = start(ShopifyConfig {
        mutation_processing_time: Duration::from_millis(300),
        ..ShopifyConfig::default()
    })
    .await;
    let first = graphql(
        &emulators,
        SET,
        json!({"input": set_input(15, json!(20)), "key": "same"}),
    )
    .await;
    assert_eq!(user_error_codes(&first), Vec::<String>::new());
    // The replay answers the original result although the compare is now stale.
    let replay = graphql(
        &emulators,
        SET,
        json!({"input": set_input(15, json!(20)), "key": "same"}),
    )
    .await;
    assert_eq!(
        replay["data"]["inventorySetQuantities"],
        first["data"]["inventorySetQuantities"]
    );
    assert_eq!(emulators.shopify().level(1, 10).unwrap().available, 15);
    let mismatch = graphql(
        &emulators,
        SET,
        json!({"input": set_input(16, json!(15)), "key": "same"}),
    )
    .await;
    assert_eq!(
        user_error_codes(&mismatch),
        vec!["IDEMPOTENCY_KEY_PARAMETER_MISMATCH"]
    );

    let variables = json!({"input": set_input(10, json!(15)), "key": "racing"});
    let (one, two) = tokio::join!(graphql(&emulators, SET, variables.clone()), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        graphql(&emulators, SET, variables.clone()).await
    });
    assert_eq!(user_error_codes(&one), Vec::<String>::new());
    assert_eq!(
        user_error_codes(&two),
        vec!["IDEMPOTENCY_CONCURRENT_REQUEST"]
    );
    assert_eq!(emulators.shopify().level(1, 10).unwrap().available, 10);

    let without_key = "mutation($input: InventoryAdjustQuantitiesInput!) {
      inventoryAdjustQuantities(input: $input) { userErrors { code } } }";
    let body = graphql(&emulators, without_key, json!({"input": {"name": "available", "reason": "received",
        "changes": [{"inventoryItemId": "gid://shopify/InventoryItem/1", "locationId": "gid://shopify/Location/10",
            "delta": 5, "changeFromQuantity": null}]}})).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "IDEMPOTENCY_KEY_REQUIRED"
    );
    assert_eq!(emulators.shopify().level(1, 10).unwrap().available, 10);
    emulators.shutdown().await;
}

#[tokio::test]
async fn adjust_applies_deltas_with_ledger_rules() {
    let emulators = start(ShopifyConfig::default()).await;
    let adjust = "mutation($input: InventoryAdjustQuantitiesInput!) {
      inventoryAdjustQuantities(input: $input) @idempotent(key: \"adj-KEY\") {
        inventoryAdjustmentGroup { changes { name delta quantityAfterChange } } userErrors { code field } } }";
    let change = |name: &str, ledger: Value, key: &str| {
        let document = adjust.replace("KEY", key);
        let mut line = json!({"inventoryItemId": "gid://shopify/InventoryItem/1",
            "locationId": "gid://shopify/Location/10", "delta": 3, "changeFromQuantity": 20});
        if !ledger.is_null() {
            line["ledgerDocumentUri"] = ledger;
        }
        (
            document,
            json!({"input": {"name": name, "reason": "received", "changes": [line]}}),
        )
    };
    let (document, variables) = change("available", Value::Null, "1");
    let body = graphql(&emulators, &document, variables).await;
    let payload = &body["data"]["inventoryAdjustQuantities"];
    assert_eq!(payload["userErrors"], json!([]), "{body}");
    assert_eq!(
        payload["inventoryAdjustmentGroup"]["changes"][0]["quantityAfterChange"],
        23
    );

    let (document, variables) = change("damaged", Value::Null, "2");
    let body = graphql(&emulators, &document, variables).await;
    assert_eq!(
        body["data"]["inventoryAdjustQuantities"]["userErrors"][0]["code"],
        "INVALID_QUANTITY_DOCUMENT"
    );
    let (document, variables) = change("available", json!("gid://erp/Doc/1"), "3");
    let body = graphql(&emulators, &document, variables).await;
    assert_eq!(
        body["data"]["inventoryAdjustQuantities"]["userErrors"][0]["code"],
        "INVALID_AVAILABLE_DOCUMENT"
    );
    let (document, variables) = change("committed", Value::Null, "4");
    let body = graphql(&emulators, &document, variables).await;
    assert_eq!(
        body["data"]["inventoryAdjustQuantities"]["userErrors"][0]["code"],
        "INVALID_QUANTITY_NAME"
    );
    // The compare saw 20, but available is now 23.
    let (document, variables) = change("available", Value::Null, "5");
    let body = graphql(&emulators, &document, variables).await;
    assert_eq!(
        body["data"]["inventoryAdjustQuantities"]["userErrors"][0]["code"],
        "CHANGE_FROM_QUANTITY_STALE"
    );
    assert_eq!(emulators.shopify().level(1, 10).unwrap().available, 23);
    emulators.shutdown().await;
}

#[tokio::test]
async fn the_bucket_throttles_when_empty_counts_the_violation_and_restores() {
    let emulators = start(ShopifyConfig {
        bucket_size: Some(30.0),
        restore_rate: Some(100.0),
        ..ShopifyConfig::default()
    })
    .await;
    let shopify = emulators.shopify();
    for key in 0..3 {
        let body = graphql(
            &emulators,
            SET,
            json!({"input": set_input(20, Value::Null), "key": format!("k-{key}")}),
        )
        .await;
        assert!(body.get("errors").is_none(), "{body}");
    }
    shopify.drain_bucket(shopify.access_token());
    let throttled = graphql(
        &emulators,
        SET,
        json!({"input": set_input(5, Value::Null), "key": "t"}),
    )
    .await;
    assert_eq!(throttled["errors"][0]["extensions"]["code"], "THROTTLED");
    assert!(throttled.get("data").is_none());
    assert_eq!(
        throttled["extensions"]["cost"]["actualQueryCost"],
        Value::Null
    );
    assert_eq!(shopify.level(1, 10).unwrap().available, 20);
    assert_eq!(emulators.budget_violations(), 1);
    // 100 points/s: 10 points are back within 100 ms.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let body = graphql(
        &emulators,
        SET,
        json!({"input": set_input(5, Value::Null), "key": "t"}),
    )
    .await;
    assert!(body.get("errors").is_none(), "{body}");
    assert_eq!(emulators.budget_violations(), 1);
    emulators.shutdown().await;
}

#[tokio::test]
async fn throttled_status_can_be_429() {
    let emulators = start(ShopifyConfig {
        throttled_http_status: 429,
        bucket_size: Some(5.0),
        ..ShopifyConfig::default()
    })
    .await;
    let token = emulators.shopify().access_token().to_owned();
    let (status, body) = post(
        &emulators,
        &token,
        json!({"query": SET, "variables": {"input": set_input(5, Value::Null), "key": "a"}}),
    )
    .await;
    assert_eq!(status, 429);
    assert_eq!(body["errors"][0]["extensions"]["code"], "THROTTLED");
    emulators.shutdown().await;
}

#[tokio::test]
async fn faults_5xx_lost_reply_duplicate_and_the_recorder() {
    let emulators = start(ShopifyConfig::default()).await;
    let shopify = emulators.shopify();
    let token = shopify.access_token().to_owned();
    shopify.faults().fail_next(1, 502);
    let (status, _) = post(
        &emulators,
        &token,
        json!({"query": READ, "variables": {"item": "1", "location": "10"}}),
    )
    .await;
    assert_eq!(status, 502);

    shopify.faults().drop_reply_next(1);
    let lost = reqwest::Client::new()
        .post(shopify.graphql_url("2026-04"))
        .header("X-Shopify-Access-Token", &token)
        .json(
            &json!({"query": SET, "variables": {"input": set_input(12, json!(20)), "key": "lost"}}),
        )
        .send()
        .await;
    assert!(lost.is_err(), "the reply should be dropped");
    assert_eq!(
        shopify.level(1, 10).unwrap().available,
        12,
        "applied before the reply was lost"
    );
    // The retry with the same key is answered from the first result.
    let retry = graphql(
        &emulators,
        SET,
        json!({"input": set_input(12, json!(20)), "key": "lost"}),
    )
    .await;
    assert_eq!(user_error_codes(&retry), Vec::<String>::new());

    shopify.faults().duplicate_next(1);
    let body = graphql(
        &emulators,
        SET,
        json!({"input": set_input(8, json!(12)), "key": "dup"}),
    )
    .await;
    assert_eq!(user_error_codes(&body), Vec::<String>::new());
    assert_eq!(shopify.level(1, 10).unwrap().available, 8);

    let counters = shopify.recorder().counters();
    assert_eq!(counters.faults_injected, 1);
    assert_eq!(counters.replies_dropped, 1);
    assert_eq!(counters.duplicates_applied, 1);
    let requests = shopify.recorder().requests_to("/graphql.json");
    assert_eq!(requests.len(), 5);
    assert_eq!(requests[0].status, 502);
    assert!(requests[1].body.contains("\"lost\""));

    // The same through the HTTP control API.
    let client = reqwest::Client::new();
    let counters: Value = client
        .get(format!("{}/_control/counters", shopify.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counters["budget_violations"], 0);
    assert_eq!(counters["counters"]["requests"], 5);
    emulators.shutdown().await;
}

#[tokio::test]
async fn storefront_orders_commit_stock_and_send_signed_webhooks() {
    use axum::{routing::post, Router};
    let received = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<(
        axum::http::HeaderMap,
        String,
    )>::new()));
    let sink = received.clone();
    let app = Router::new().route(
        "/hooks",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let sink = sink.clone();
            async move {
                sink.lock().push((headers, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let emulators = start(ShopifyConfig::default()).await;
    let shopify = emulators.shopify();
    shopify.set_webhook_url(Some(hook_url));
    let order = shopify
        .storefront_order(&[OrderLine {
            inventory_item_id: 1,
            location_id: 10,
            quantity: 3,
        }])
        .unwrap();
    assert_eq!(
        shopify.level(1, 10).unwrap(),
        Levels {
            available: 17,
            committed: 3,
            ..Levels::default()
        }
    );
    assert!(shopify
        .storefront_order(&[OrderLine {
            inventory_item_id: 1,
            location_id: 10,
            quantity: 30
        }])
        .is_err());
    // The connector's compare against the old value is now stale.
    let stale = graphql(
        &emulators,
        SET,
        json!({"input": set_input(20, json!(20)), "key": "x"}),
    )
    .await;
    assert_eq!(user_error_codes(&stale), vec!["CHANGE_FROM_QUANTITY_STALE"]);

    for _ in 0..50 {
        if received.lock().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let received = received.lock().clone();
    assert_eq!(received.len(), 2);
    let (headers, body) = &received[0];
    assert_eq!(headers["x-shopify-topic"], "orders/create");
    assert_eq!(
        headers["x-shopify-hmac-sha256"].to_str().unwrap(),
        skuld_emulators::shopify::webhooks::sign(&shopify.config().api_secret, body.as_bytes())
    );
    for name in [
        "x-shopify-webhook-id",
        "x-shopify-event-id",
        "x-shopify-triggered-at",
        "x-shopify-shop-domain",
        "x-shopify-api-version",
    ] {
        assert!(headers.contains_key(name), "{name}");
    }
    let order_body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(order_body["id"], order);
    assert_eq!(order_body["line_items"][0]["quantity"], 3);
    let level: Value = serde_json::from_str(&received[1].1).unwrap();
    assert_eq!(received[1].0["x-shopify-topic"], "inventory_levels/update");
    assert_eq!(level["available"], 17);
    emulators.shutdown().await;
}
