#![allow(clippy::unwrap_used)]
//! The Adobe Commerce emulator over real loopback HTTP (CHANNELS.md D).

use std::time::Duration;

use reqwest::Client;
use serde_json::{json, Value};
use skuld_emulators::adobe::{AdobeConfig, Stock};
use skuld_emulators::{Emulators, EmulatorsConfig};

async fn start(config: AdobeConfig) -> Emulators {
    Emulators::start(EmulatorsConfig {
        adobe: config,
        ..EmulatorsConfig::default()
    })
    .await
    .unwrap()
}

fn two_sources() -> AdobeConfig {
    AdobeConfig {
        source_codes: vec!["east".to_owned(), "west".to_owned(), "other".to_owned()],
        stocks: vec![Stock {
            stock_id: 1,
            name: "Default".to_owned(),
            source_codes: vec!["east".to_owned(), "west".to_owned()],
        }],
        bulk_processing_time: Duration::from_millis(50),
        ..AdobeConfig::default()
    }
}

async fn admin_token(emulators: &Emulators) -> String {
    let adobe = emulators.adobe();
    let response = Client::new()
        .post(format!(
            "{}/V1/integration/admin/token",
            adobe.rest_url("default")
        ))
        .json(&json!({"username": adobe.config().username, "password": adobe.config().password}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let token: Value = response.json().await.unwrap();
    token.as_str().unwrap().to_owned()
}

async fn save(emulators: &Emulators, token: &str, items: Value) -> reqwest::Response {
    Client::new()
        .post(format!(
            "{}/V1/inventory/source-items",
            emulators.adobe().rest_url("default")
        ))
        .bearer_auth(token)
        .json(&json!({"sourceItems": items}))
        .send()
        .await
        .unwrap()
}

async fn salable(emulators: &Emulators, token: &str, sku: &str) -> Value {
    Client::new()
        .get(format!(
            "{}/V1/inventory/get-product-salable-quantity/{sku}/1",
            emulators.adobe().rest_url("default")
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn salable_is_sources_plus_reservations_and_shows_a_double_subtraction() {
    let emulators = start(two_sources()).await;
    let token = admin_token(&emulators).await;
    let response = save(
        &emulators,
        &token,
        json!([
        {"sku": "24-WB01", "source_code": "east", "quantity": 60, "status": 1},
        {"sku": "24-WB01", "source_code": "west", "quantity": 40, "status": 1},
        {"sku": "24-WB01", "source_code": "other", "quantity": 1000, "status": 1}]),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(salable(&emulators, &token, "24-WB01").await, json!(100));
    let adobe = emulators.adobe();
    let order = adobe.place_order("24-WB01", 1, 5.0).unwrap();
    assert_eq!(salable(&emulators, &token, "24-WB01").await, json!(95));
    // A connector that pushes salable (net of the open order) into the
    // source quantity makes Magento subtract that order a second time.
    save(
        &emulators,
        &token,
        json!([{"sku": "24-WB01", "source_code": "east", "quantity": 55, "status": 1}]),
    )
    .await;
    assert_eq!(salable(&emulators, &token, "24-WB01").await, json!(90));
    save(
        &emulators,
        &token,
        json!([{"sku": "24-WB01", "source_code": "east", "quantity": 60, "status": 1}]),
    )
    .await;
    // Shipping moves the quantity off the source and releases the reservation.
    adobe.ship_order(order, "east").unwrap();
    assert_eq!(adobe.source_item("24-WB01", "east").unwrap().quantity, 55.0);
    assert_eq!(salable(&emulators, &token, "24-WB01").await, json!(95));
    let second = adobe.place_order("24-WB01", 1, 2.0).unwrap();
    adobe.cancel_order(second).unwrap();
    assert_eq!(adobe.salable_quantity("24-WB01", 1), Some(95.0));
    emulators.shutdown().await;
}

#[tokio::test]
async fn search_by_sku_and_source_and_delete() {
    let emulators = start(two_sources()).await;
    let token = admin_token(&emulators).await;
    save(
        &emulators,
        &token,
        json!([
        {"sku": "A", "source_code": "east", "quantity": 1, "status": 1},
        {"sku": "A", "source_code": "west", "quantity": 2, "status": 1},
        {"sku": "B", "source_code": "east", "quantity": 3, "status": 0}]),
    )
    .await;
    let base = emulators.adobe().rest_url("default");
    let client = Client::new();
    let found: Value = client
        .get(format!("{base}/V1/inventory/source-items"))
        .query(&[
            ("searchCriteria[filter_groups][0][filters][0][field]", "sku"),
            ("searchCriteria[filter_groups][0][filters][0][value]", "A"),
            (
                "searchCriteria[filter_groups][0][filters][0][condition_type]",
                "eq",
            ),
            (
                "searchCriteria[filter_groups][1][filters][0][field]",
                "source_code",
            ),
            (
                "searchCriteria[filter_groups][1][filters][0][value]",
                "west",
            ),
        ])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["total_count"], 1);
    assert_eq!(
        found["items"][0],
        json!({"sku": "A", "source_code": "west", "quantity": 2, "status": 1})
    );
    let all: Value = client
        .get(format!("{base}/V1/inventory/source-items?searchCriteria[pageSize]=2&searchCriteria[currentPage]=2"))
        .bearer_auth(&token)
        .send().await.unwrap().json().await.unwrap();
    assert_eq!(all["total_count"], 3);
    assert_eq!(all["items"].as_array().unwrap().len(), 1);

    let deleted = client
        .post(format!("{base}/V1/inventory/source-items-delete"))
        .bearer_auth(&token)
        .json(&json!({"sourceItems": [{"sku": "A", "source_code": "east"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert!(emulators.adobe().source_item("A", "east").is_none());
    emulators.shutdown().await;
}

#[tokio::test]
async fn errors_follow_magentos_body_and_status_mapping() {
    let emulators = start(two_sources()).await;
    let adobe = emulators.adobe();
    let client = Client::new();
    let wrong = client
        .post(format!(
            "{}/V1/integration/admin/token",
            adobe.rest_url("default")
        ))
        .json(&json!({"username": "admin", "password": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let token = admin_token(&emulators).await;
    let unauthorized = save(
        &emulators,
        "not-a-token",
        json!([{"sku": "A", "source_code": "east", "quantity": 1, "status": 1}]),
    )
    .await;
    assert_eq!(unauthorized.status(), 401);
    let body: Value = unauthorized.json().await.unwrap();
    assert_eq!(
        body["message"],
        "The consumer isn't authorized to access %resources."
    );
    assert_eq!(
        body["parameters"]["resources"],
        "Magento_InventoryApi::stock_source_item_assign"
    );

    let invalid = save(
        &emulators,
        &token,
        json!([{"sku": "", "source_code": "nowhere", "quantity": "x", "status": 1}]),
    )
    .await;
    assert_eq!(invalid.status(), 400);
    let body: Value = invalid.json().await.unwrap();
    assert_eq!(body["message"], "Validation Failed");
    assert_eq!(body["errors"].as_array().unwrap().len(), 3);
    assert_eq!(body["errors"][0]["parameters"]["field"], "sku");
    assert!(adobe.source_items().is_empty());

    let missing = client
        .get(format!(
            "{}/V1/inventory/get-product-salable-quantity/NOPE/1",
            adobe.rest_url("default")
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let store = client
        .get(format!(
            "{}/V1/inventory/source-items",
            adobe.rest_url("nostore")
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(store.status(), 404);
    adobe.faults().fail_next(1, 500);
    let masked = save(
        &emulators,
        &token,
        json!([{"sku": "A", "source_code": "east", "quantity": 1, "status": 1}]),
    )
    .await;
    assert_eq!(masked.status(), 500);
    let body: Value = masked.json().await.unwrap();
    assert!(body["message"]
        .as_str()
        .unwrap()
        .starts_with("Internal Error."));
    emulators.shutdown().await;
}

#[tokio::test]
async fn async_bulk_returns_a_uuid_and_runs_later() {
    let emulators = start(two_sources()).await;
    let token = admin_token(&emulators).await;
    let adobe = emulators.adobe();
    let client = Client::new();
    let response = client
        .post(format!(
            "{}/async/bulk/V1/inventory/source-items",
            adobe.rest_url("default")
        ))
        .bearer_auth(&token)
        .json(&json!([
            {"sourceItems": [{"sku": "A", "source_code": "east", "quantity": 7, "status": 1}]},
            {"sourceItems": [{"sku": "", "source_code": "east", "quantity": 7, "status": 1}]}]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let uuid = body["bulk_uuid"].as_str().unwrap().to_owned();
    assert_eq!(body["request_items"].as_array().unwrap().len(), 2);
    assert!(adobe.source_item("A", "east").is_none(), "not applied yet");
    let status_url = format!("{}/V1/bulk/{uuid}/status", adobe.rest_url("default"));
    let mut statuses = Vec::new();
    for _ in 0..50 {
        let status: Value = client
            .get(&status_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        statuses = status["operations_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|op| op["status"].as_u64().unwrap())
            .collect();
        if !statuses.contains(&4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(statuses, vec![1, 3]);
    assert_eq!(adobe.source_item("A", "east").unwrap().quantity, 7.0);
    emulators.shutdown().await;
}

#[tokio::test]
async fn an_optional_rate_limit_counts_violations() {
    let emulators = start(AdobeConfig {
        rate_limit: Some((2.0, 0.001)),
        ..two_sources()
    })
    .await;
    let token = admin_token(&emulators).await;
    let item = json!([{"sku": "A", "source_code": "east", "quantity": 1, "status": 1}]);
    assert_eq!(save(&emulators, &token, item.clone()).await.status(), 200);
    assert_eq!(save(&emulators, &token, item.clone()).await.status(), 200);
    assert_eq!(save(&emulators, &token, item).await.status(), 429);
    assert_eq!(emulators.budget_violations(), 1);
    emulators.shutdown().await;
}
