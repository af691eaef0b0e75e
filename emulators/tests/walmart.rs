#![allow(clippy::unwrap_used)]
//! The Walmart emulator over real loopback HTTP (CHANNELS.md C).

use std::time::Duration;

use base64::Engine;
use reqwest::{Client, RequestBuilder};
use serde_json::{json, Value};
use skuld_emulators::walmart::{Budget, WalmartConfig};
use skuld_emulators::{Emulators, EmulatorsConfig};

async fn start(config: WalmartConfig) -> Emulators {
    let emulators = Emulators::start(EmulatorsConfig {
        walmart: config,
        ..EmulatorsConfig::default()
    })
    .await
    .unwrap();
    emulators.walmart().add_item("SKU-1", 3);
    emulators
}

fn fast() -> WalmartConfig {
    WalmartConfig {
        feed_processing_time: Duration::from_millis(50),
        ship_nodes: vec!["NODE-A".to_owned(), "NODE-B".to_owned()],
        ..WalmartConfig::default()
    }
}

async fn token(emulators: &Emulators) -> String {
    let config = emulators.walmart().config();
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", config.client_id, config.client_secret));
    let response = Client::new()
        .post(format!("{}/v3/token", emulators.walmart().base_url()))
        .header("Authorization", format!("Basic {basic}"))
        .header("WM_SVC.NAME", "Walmart Marketplace")
        .header("WM_QOS.CORRELATION_ID", "c-1")
        .header("Accept", "application/json")
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["expires_in"], 900);
    body["access_token"].as_str().unwrap().to_owned()
}

fn signed(builder: RequestBuilder, token: &str) -> RequestBuilder {
    builder
        .header("WM_SEC.ACCESS_TOKEN", token)
        .header("WM_SVC.NAME", "Walmart Marketplace")
        .header("WM_QOS.CORRELATION_ID", uuid::Uuid::new_v4().to_string())
        .header("Accept", "application/json")
}

fn url(emulators: &Emulators, path: &str) -> String {
    format!("{}{path}", emulators.walmart().base_url())
}

#[tokio::test]
async fn put_and_get_inventory_single_and_multi_node() {
    let emulators = start(fast()).await;
    let token = token(&emulators).await;
    let client = Client::new();
    let response = signed(
        client.put(url(&emulators, "/v3/inventory?sku=SKU-1")),
        &token,
    )
    .json(&json!({"sku": "SKU-1", "quantity": {"unit": "EACH", "amount": 10}}))
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-current-token-count"));
    assert!(response.headers().contains_key("x-next-replenish-time"));
    assert_eq!(emulators.walmart().quantity("SKU-1", "NODE-A"), Some(10));
    let read: Value = signed(
        client.get(url(&emulators, "/v3/inventory?sku=SKU-1")),
        &token,
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        read,
        json!({"sku": "SKU-1", "quantity": {"unit": "EACH", "amount": 10}})
    );

    let response = signed(client.put(url(&emulators, "/v3/inventories/SKU-1")), &token)
        .json(&json!({"inventories": {"nodes": [{"shipNode": "NODE-B", "inputQty": {"unit": "EACH", "amount": 88}}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let read: Value = signed(client.get(url(&emulators, "/v3/inventories/SKU-1")), &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(read["nodes"][1]["inputQty"]["amount"], 88);
    let read: Value = signed(
        client.get(url(&emulators, "/v3/inventory?sku=SKU-1&shipNode=NODE-B")),
        &token,
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(read["quantity"]["amount"], 88);
    emulators.shutdown().await;
}

#[tokio::test]
async fn errors_use_walmarts_body_and_statuses() {
    let emulators = start(fast()).await;
    let token = token(&emulators).await;
    let client = Client::new();
    let unauthorized = signed(
        client.get(url(&emulators, "/v3/inventory?sku=SKU-1")),
        "wrong",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let no_correlation = client
        .get(url(&emulators, "/v3/inventory?sku=SKU-1"))
        .header("WM_SEC.ACCESS_TOKEN", &token)
        .header("WM_SVC.NAME", "Walmart Marketplace")
        .send()
        .await
        .unwrap();
    assert_eq!(no_correlation.status(), 400);
    let bad = signed(
        client.put(url(&emulators, "/v3/inventory?sku=SKU-1")),
        &token,
    )
    .json(&json!({"sku": "SKU-1", "quantity": {"unit": "PAIR", "amount": 1}}))
    .send()
    .await
    .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    let error = &body["errors"][0];
    assert_eq!(error["code"], "INVALID_REQUEST_PARAM");
    assert_eq!(error["category"], "DATA");
    assert_eq!(error["severity"], "ERROR");
    assert_eq!(error["field"], "quantity");
    let missing = signed(
        client.get(url(&emulators, "/v3/inventory?sku=NOPE")),
        &token,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(missing.status(), 404);
    let bad_node = signed(
        client.get(url(&emulators, "/v3/inventory?sku=SKU-1&shipNode=ZZZ")),
        &token,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(bad_node.status(), 400);
    let basic = base64::engine::general_purpose::STANDARD.encode("who:what");
    let bad_token = client
        .post(url(&emulators, "/v3/token"))
        .header("Authorization", format!("Basic {basic}"))
        .header("WM_SVC.NAME", "Walmart Marketplace")
        .header("WM_QOS.CORRELATION_ID", "c")
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad_token.status(), 401);
    emulators.shutdown().await;
}

#[tokio::test]
async fn the_inventory_bucket_refuses_with_retry_after_and_replenishes() {
    let emulators = start(WalmartConfig {
        inventory_budget: Budget::new(3.0, Duration::from_millis(150)),
        ..fast()
    })
    .await;
    let token = token(&emulators).await;
    let client = Client::new();
    let mut counts = Vec::new();
    for _ in 0..3 {
        let response = signed(
            client.get(url(&emulators, "/v3/inventory?sku=SKU-1")),
            &token,
        )
        .send()
        .await
        .unwrap();
        assert_eq!(response.status(), 200);
        counts.push(
            response.headers()["x-current-token-count"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(counts, vec!["2", "1", "0"]);
    let throttled = signed(
        client.get(url(&emulators, "/v3/inventory?sku=SKU-1")),
        &token,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["retry-after"], "1");
    let body: Value = throttled.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["code"],
        "REQUEST_THRESHOLD_VIOLATED.GMP_GATEWAY_API"
    );
    assert_eq!(emulators.budget_violations(), 1);
    // 3 tokens per 150 ms: one is back after 50 ms.
    tokio::time::sleep(Duration::from_millis(80)).await;
    let response = signed(
        client.get(url(&emulators, "/v3/inventory?sku=SKU-1")),
        &token,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    emulators.shutdown().await;
}

async fn wait_feed(emulators: &Emulators, token: &str, feed_id: &str) -> Value {
    for _ in 0..100 {
        let status: Value = signed(
            Client::new().get(url(
                emulators,
                &format!("/v3/feeds/{feed_id}?includeDetails=true"),
            )),
            token,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        if status["feedStatus"] == "PROCESSED" || status["feedStatus"] == "ERROR" {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("feed {feed_id} never finished");
}

#[tokio::test]
async fn inventory_feeds_process_asynchronously_with_item_statuses_limits_and_413() {
    let emulators = start(WalmartConfig {
        inventory_feed_budget: Budget::new(3.0, Duration::from_secs(3600)),
        max_feed_bytes: 2_000,
        ..fast()
    })
    .await;
    emulators.walmart().add_item("SKU-2", 0);
    let token = token(&emulators).await;
    let client = Client::new();
    let file = json!({"InventoryHeader": {"version": "1.4"}, "Inventory": [
        {"sku": "SKU-1", "quantity": {"unit": "EACH", "amount": 7}},
        {"sku": "SKU-2", "quantity": {"unit": "EACH", "amount": -1}},
        {"sku": "SKU-9", "quantity": {"unit": "EACH", "amount": 1}}]});
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(file.to_string().into_bytes()).file_name("inventory.json"),
    );
    let response = signed(
        client.post(url(&emulators, "/v3/feeds?feedType=inventory")),
        &token,
    )
    .multipart(form)
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let feed_id = body["feedId"].as_str().unwrap().to_owned();
    let status: Value = signed(
        client.get(url(&emulators, &format!("/v3/feeds/{feed_id}"))),
        &token,
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(
        ["RECEIVED", "INPROGRESS"].contains(&status["feedStatus"].as_str().unwrap()),
        "{status}"
    );
    let done = wait_feed(&emulators, &token, &feed_id).await;
    assert_eq!(done["feedStatus"], "PROCESSED");
    assert_eq!(done["itemsReceived"], 3);
    assert_eq!(done["itemsSucceeded"], 1);
    assert_eq!(done["itemsFailed"], 2);
    assert_eq!(
        done["itemDetails"]["itemIngestionStatus"][1]["ingestionStatus"],
        "DATA_ERROR"
    );
    assert_eq!(emulators.walmart().quantity("SKU-1", "NODE-A"), Some(7));

    // A lower-case `inventory` key is not spec 1.4: the feed ends ERROR (200 first).
    let wrong = json!({"InventoryHeader": {"version": "1.4"}, "inventory": []});
    let body: Value = signed(
        client.post(url(&emulators, "/v3/feeds?feedType=inventory")),
        &token,
    )
    .json(&wrong)
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let done = wait_feed(&emulators, &token, body["feedId"].as_str().unwrap()).await;
    assert_eq!(done["feedStatus"], "ERROR");

    let large = signed(
        client.post(url(&emulators, "/v3/feeds?feedType=inventory")),
        &token,
    )
    .body(vec![b' '; 2_001])
    .send()
    .await
    .unwrap();
    assert_eq!(large.status(), 413);
    // Three feeds per "hour" were allowed; the fourth is refused.
    let throttled = signed(
        client.post(url(&emulators, "/v3/feeds?feedType=inventory")),
        &token,
    )
    .json(&file)
    .send()
    .await
    .unwrap();
    assert_eq!(throttled.status(), 429);
    assert!(throttled.headers().contains_key("retry-after"));
    assert_eq!(emulators.walmart().budget_violations(), 1);
    emulators.shutdown().await;
}
