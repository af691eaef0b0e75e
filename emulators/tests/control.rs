#![allow(clippy::unwrap_used)]
//! The HTTP control API, token expiry and Shopify's webhook faults, over real
//! loopback HTTP.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use parking_lot::Mutex;
use reqwest::Client;
use serde_json::{json, Value};
use skuld_emulators::amazon::AmazonConfig;
use skuld_emulators::shopify::{Levels, OrderLine};
use skuld_emulators::walmart::WalmartConfig;
use skuld_emulators::{Emulators, EmulatorsConfig};

async fn post(url: String, body: Value) -> reqwest::Response {
    Client::new().post(url).json(&body).send().await.unwrap()
}

async fn get(url: String) -> Value {
    Client::new()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn each_emulator_is_seeded_and_read_back_through_its_control_routes() {
    let emulators = Emulators::start(EmulatorsConfig::default()).await.unwrap();
    let shopify = emulators.shopify().base_url().to_owned();
    assert_eq!(
        post(
            format!("{shopify}/_control/shopify/levels"),
            json!({"inventory_item_id": 5, "location_id": 6, "available": 9})
        )
        .await
        .status(),
        204
    );
    assert_eq!(
        post(
            format!("{shopify}/_control/shopify/edits"),
            json!({"inventory_item_id": 5, "location_id": 6, "available": 4})
        )
        .await
        .status(),
        204
    );
    let order: Value = post(
        format!("{shopify}/_control/shopify/orders"),
        json!({"lines": [{"inventory_item_id": 5, "location_id": 6, "quantity": 1}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(order["order_id"].is_u64());
    let levels = get(format!("{shopify}/_control/shopify/levels")).await;
    assert_eq!(levels[0]["available"], 3);
    assert_eq!(levels[0]["committed"], 1);
    assert_eq!(levels[0]["on_hand"], 4);
    let bucket: Value = post(
        format!("{shopify}/_control/shopify/bucket"),
        json!({"drain": true}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(bucket["currentlyAvailable"].as_f64().unwrap() < 1.0);

    let amazon = emulators.amazon().base_url().to_owned();
    assert_eq!(
        post(
            format!("{amazon}/_control/amazon/listings"),
            json!({"sku": "A-1", "quantity": 3})
        )
        .await
        .status(),
        204
    );
    assert_eq!(
        post(
            format!("{amazon}/_control/amazon/edits"),
            json!({"sku": "A-1", "quantity": 8})
        )
        .await
        .status(),
        204
    );
    assert_eq!(
        post(
            format!("{amazon}/_control/amazon/applies"),
            json!({"delay_ms": 10, "drop_next": 1})
        )
        .await
        .status(),
        204
    );
    assert_eq!(emulators.amazon().quantity("A-1"), Some(8));
    let drained: Value = post(
        format!("{amazon}/_control/amazon/buckets"),
        json!({"operation": "patchListingsItem"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(drained["tokens"].as_f64().unwrap() < 1.0);

    let walmart = emulators.walmart().base_url().to_owned();
    assert_eq!(
        post(
            format!("{walmart}/_control/walmart/inventory"),
            json!({"sku": "W-1", "amount": 12})
        )
        .await
        .status(),
        204
    );
    let inventory = get(format!("{walmart}/_control/walmart/inventory")).await;
    assert_eq!(inventory[0]["amount"], 12);
    assert_eq!(
        post(
            format!("{walmart}/_control/walmart/buckets"),
            json!({"api": "nope"})
        )
        .await
        .status(),
        400
    );

    let adobe = emulators.adobe().base_url().to_owned();
    assert_eq!(
        post(
            format!("{adobe}/_control/adobe/source-items"),
            json!({"sku": "M-1", "source_code": "default", "quantity": 10})
        )
        .await
        .status(),
        204
    );
    let order: Value = post(
        format!("{adobe}/_control/adobe/orders"),
        json!({"sku": "M-1", "quantity": 4}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        get(format!("{adobe}/_control/adobe/salable/M-1/1")).await["salable_quantity"],
        6.0
    );
    let order_id = order["order_id"].as_u64().unwrap();
    assert_eq!(
        post(
            format!("{adobe}/_control/adobe/orders/{order_id}/ship"),
            json!({"source_code": "default"})
        )
        .await
        .status(),
        204
    );
    assert_eq!(
        post(
            format!("{adobe}/_control/adobe/orders/{order_id}/cancel"),
            json!({})
        )
        .await
        .status(),
        409
    );
    assert_eq!(
        emulators
            .adobe()
            .source_item("M-1", "default")
            .unwrap()
            .quantity,
        6.0
    );

    // Faults and the recorder through HTTP; control calls are not recorded.
    assert_eq!(
        post(
            format!("{walmart}/_control/faults"),
            json!({"fail_next": 1, "error_status": 503})
        )
        .await
        .status(),
        204
    );
    let failed = Client::new()
        .get(format!("{walmart}/v3/inventory?sku=W-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 503);
    let requests = get(format!("{walmart}/_control/requests")).await;
    assert_eq!(requests.as_array().unwrap().len(), 1);
    assert_eq!(requests[0]["fault_injected"], true);
    assert_eq!(
        post(format!("{walmart}/_control/faults"), json!({"unknown": 1}))
            .await
            .status()
            .as_u16(),
        422
    );
    emulators.shutdown().await;
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let emulators = Emulators::start(EmulatorsConfig {
        amazon: AmazonConfig {
            access_token_lifetime: Duration::from_millis(50),
            ..AmazonConfig::default()
        },
        walmart: WalmartConfig {
            token_lifetime: Duration::from_millis(50),
            ..WalmartConfig::default()
        },
        ..EmulatorsConfig::default()
    })
    .await
    .unwrap();
    emulators.amazon().add_listing("A-1", "PRODUCT", 1);
    emulators.walmart().add_item("W-1", 1);
    let amazon = emulators.amazon();
    let token: Value = Client::new()
        .post(amazon.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "sellingpartnerapi::notifications"),
            ("client_id", amazon.config().client_id.as_str()),
            ("client_secret", amazon.config().client_secret.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    let read = |token: String| {
        let url = format!(
            "{}/listings/2021-08-01/items/{}/A-1?marketplaceIds={}",
            amazon.base_url(),
            amazon.seller_id(),
            amazon.marketplace_id()
        );
        async move {
            Client::new()
                .get(url)
                .header("x-amz-access-token", token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(read(token.clone()).await, 200);
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(read(token).await, 403);
    emulators.shutdown().await;
}

#[tokio::test]
async fn webhooks_can_be_delayed_duplicated_reordered_and_dropped() {
    let received: Arc<Mutex<Vec<(HeaderMap, String)>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let sink = sink.clone();
            async move {
                sink.lock().push((headers, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let emulators = Emulators::start(EmulatorsConfig::default()).await.unwrap();
    let shopify = emulators.shopify();
    shopify.seed_level(1, 10, Levels::with_available(20));
    assert_eq!(
        post(
            format!("{}/_control/shopify/webhooks", shopify.base_url()),
            json!({"url": url})
        )
        .await
        .status(),
        204
    );
    let faults = json!({"delay_ms": 150, "duplicates": 1, "reorder": true});
    assert_eq!(
        post(
            format!("{}/_control/shopify/webhooks/faults", shopify.base_url()),
            faults
        )
        .await
        .status(),
        204
    );
    shopify
        .storefront_order(&[OrderLine {
            inventory_item_id: 1,
            location_id: 10,
            quantity: 2,
        }])
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(received.lock().is_empty(), "delayed");
    for _ in 0..50 {
        if received.lock().len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let topics: Vec<String> = received
        .lock()
        .iter()
        .map(|(headers, _)| headers["x-shopify-topic"].to_str().unwrap().to_owned())
        .collect();
    // Reordered: the level update comes before the order; each one twice.
    assert_eq!(
        topics,
        vec![
            "inventory_levels/update",
            "inventory_levels/update",
            "orders/create",
            "orders/create"
        ]
    );
    let ids: Vec<String> = received
        .lock()
        .iter()
        .map(|(headers, _)| headers["x-shopify-webhook-id"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids[0], ids[1], "a duplicate keeps its webhook id");
    assert_ne!(ids[1], ids[2]);

    shopify
        .webhook_faults()
        .set_faults(skuld_emulators::shopify::webhooks::WebhookFaults {
            drop_next: 2,
            ..Default::default()
        });
    received.lock().clear();
    shopify
        .storefront_order(&[OrderLine {
            inventory_item_id: 1,
            location_id: 10,
            quantity: 1,
        }])
        .unwrap();
    // A mutation's level change is sent too, and is not dropped (the drops were used up).
    shopify.edit_available(1, 10, 30);
    for _ in 0..50 {
        if !received.lock().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let bodies: Vec<Value> = received
        .lock()
        .iter()
        .map(|(_, body)| serde_json::from_str(body).unwrap())
        .collect();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(bodies[0]["available"], 30);
    let dropped = shopify
        .webhook_deliveries()
        .iter()
        .filter(|delivery| delivery.dropped)
        .count();
    assert_eq!(dropped, 2);
    emulators.shutdown().await;
}
