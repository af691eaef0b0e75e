#![allow(clippy::unwrap_used)]
//! The Amazon emulator over real loopback HTTP (CHANNELS.md B).

use std::time::Duration;

use reqwest::Client;
use serde_json::{json, Value};
use skuld_emulators::amazon::{AmazonConfig, RateLimit, SubmissionStatus};
use skuld_emulators::{Emulators, EmulatorsConfig};

async fn start(config: AmazonConfig) -> Emulators {
    let emulators = Emulators::start(EmulatorsConfig {
        amazon: config,
        ..EmulatorsConfig::default()
    })
    .await
    .unwrap();
    emulators.amazon().add_listing("SKU-1", "LUGGAGE", 4);
    emulators
}

fn fast() -> AmazonConfig {
    AmazonConfig {
        apply_delay: Duration::from_millis(100),
        feed_processing_time: Duration::from_millis(50),
        ..AmazonConfig::default()
    }
}

async fn access_token(emulators: &Emulators) -> String {
    let amazon = emulators.amazon();
    let config = amazon.config();
    let body: Value = Client::new()
        .post(amazon.token_url())
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", config.refresh_token.as_str()),
            ("client_id", config.client_id.as_str()),
            ("client_secret", config.client_secret.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["token_type"], "bearer");
    body["access_token"].as_str().unwrap().to_owned()
}

fn item_url(emulators: &Emulators, sku: &str, query: &str) -> String {
    let amazon = emulators.amazon();
    format!(
        "{}/listings/2021-08-01/items/{}/{sku}?marketplaceIds={}{query}",
        amazon.base_url(),
        amazon.seller_id(),
        amazon.marketplace_id()
    )
}

fn merge(quantity: Value) -> Value {
    json!({"productType": "LUGGAGE", "patches": [{"op": "merge", "path": "/attributes/fulfillment_availability",
        "value": [{"fulfillment_channel_code": "DEFAULT", "quantity": quantity}]}]})
}

async fn patch(emulators: &Emulators, token: &str, sku: &str, body: &Value) -> reqwest::Response {
    Client::new()
        .patch(item_url(emulators, sku, ""))
        .header("x-amz-access-token", token)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn patch_is_accepted_then_applied_after_the_delay_and_reads_back() {
    let emulators = start(fast()).await;
    let token = access_token(&emulators).await;
    // A sibling attribute survives the merge.
    let amazon = emulators.amazon();
    let response = patch(&emulators, &token, "SKU-1", &merge(json!(9))).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-amzn-ratelimit-limit"], "5");
    assert!(response.headers().contains_key("x-amzn-requestid"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ACCEPTED");
    assert!(body["submissionId"].as_str().unwrap().len() >= 16);
    // Accepted is not applied.
    assert_eq!(amazon.quantity("SKU-1"), Some(4));
    let read: Value = Client::new()
        .get(item_url(
            &emulators,
            "SKU-1",
            "&includedData=fulfillmentAvailability,issues",
        ))
        .header("x-amz-access-token", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        read["fulfillmentAvailability"],
        json!([{"fulfillmentChannelCode": "DEFAULT", "quantity": 4}])
    );
    assert!(amazon.settle(Duration::from_secs(2)).await);
    assert_eq!(amazon.quantity("SKU-1"), Some(9));
    let read: Value = Client::new()
        .get(item_url(
            &emulators,
            "SKU-1",
            "&includedData=fulfillmentAvailability",
        ))
        .header("x-amz-access-token", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["fulfillmentAvailability"][0]["quantity"], 9);
    assert_eq!(amazon.submissions()[0].status, SubmissionStatus::Applied);
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_dropped_apply_is_accepted_but_never_lands() {
    let emulators = start(fast()).await;
    let token = access_token(&emulators).await;
    let amazon = emulators.amazon();
    amazon.drop_next_applies(1);
    let body: Value = patch(&emulators, &token, "SKU-1", &merge(json!(2)))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "ACCEPTED");
    assert!(amazon.settle(Duration::from_secs(2)).await);
    assert_eq!(amazon.quantity("SKU-1"), Some(4));
    assert_eq!(amazon.submissions()[0].status, SubmissionStatus::Dropped);
    emulators.shutdown().await;
}

#[tokio::test]
async fn errors_are_error_lists_and_invalid_submissions_carry_issues() {
    let emulators = start(fast()).await;
    let token = access_token(&emulators).await;
    let client = Client::new();
    let forbidden = patch(&emulators, "Atza|wrong", "SKU-1", &merge(json!(1))).await;
    assert_eq!(forbidden.status(), 403);
    let body: Value = forbidden.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "Unauthorized");

    let bad = patch(
        &emulators,
        &token,
        "SKU-1",
        &json!({"productType": "LUGGAGE", "patches": []}),
    )
    .await;
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "BAD_REQUEST");
    assert_eq!(body["errors"][0]["message"], "Invalid input");

    let nested = json!({"productType": "LUGGAGE", "patches": [{"op": "replace",
        "path": "/attributes/fulfillment_availability/0/quantity", "value": [{"x": 1}]}]});
    assert_eq!(
        patch(&emulators, &token, "SKU-1", &nested).await.status(),
        400
    );

    let two_marketplaces = client
        .patch(item_url(&emulators, "SKU-1", ",A2EUQ1WTGCTBG2"))
        .header("x-amz-access-token", &token)
        .json(&merge(json!(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(two_marketplaces.status(), 400);

    let body: Value = patch(&emulators, &token, "SKU-1", &merge(json!(-3)))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "INVALID");
    assert_eq!(body["issues"][0]["severity"], "ERROR");
    let no_selector = json!({"productType": "LUGGAGE", "patches": [{"op": "merge",
        "path": "/attributes/fulfillment_availability", "value": [{"quantity": 1}]}]});
    let body: Value = patch(&emulators, &token, "SKU-1", &no_selector)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "INVALID");
    let body: Value = patch(&emulators, &token, "SKU-NEW", &merge(json!(1)))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "INVALID");
    assert_eq!(body["issues"][0]["code"], "LISTING_NOT_FOUND");

    let missing = client
        .get(item_url(&emulators, "SKU-NEW", ""))
        .header("x-amz-access-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let lwa = client
        .post(emulators.amazon().token_url())
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "nope"),
            ("client_secret", "nope"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(lwa.status(), 401);
    let body: Value = lwa.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    emulators.shutdown().await;
}

#[tokio::test]
async fn the_token_bucket_allows_the_burst_refuses_with_quota_exceeded_and_refills() {
    let emulators = start(AmazonConfig {
        listings_rate: RateLimit::new(20.0, 10.0),
        ..fast()
    })
    .await;
    let token = access_token(&emulators).await;
    let mut statuses = Vec::new();
    for quantity in 0..12 {
        statuses.push(
            patch(&emulators, &token, "SKU-1", &merge(json!(quantity)))
                .await
                .status()
                .as_u16(),
        );
    }
    let accepted = statuses.iter().filter(|status| **status == 200).count();
    assert!((10..=11).contains(&accepted), "{statuses:?}");
    let throttled = patch(&emulators, &token, "SKU-1", &merge(json!(1))).await;
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["x-amzn-ratelimit-limit"], "20");
    let body: Value = throttled.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "QuotaExceeded");
    let violations = emulators.budget_violations();
    assert_eq!(violations as usize, 12 - accepted + 1);
    // 20 tokens/s: one is back within 50 ms.
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(
        patch(&emulators, &token, "SKU-1", &merge(json!(1)))
            .await
            .status(),
        200
    );
    assert_eq!(emulators.budget_violations(), violations);
    emulators.shutdown().await;
}

async fn submit_feed(emulators: &Emulators, token: &str, document: &Value) -> String {
    let client = Client::new();
    let base = emulators.amazon().base_url().to_owned();
    let created: Value = client
        .post(format!("{base}/feeds/2021-06-30/documents"))
        .header("x-amz-access-token", token)
        .json(&json!({"contentType": "application/json; charset=UTF-8"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let upload = client
        .put(created["url"].as_str().unwrap())
        .body(document.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 200);
    let feed = client
        .post(format!("{base}/feeds/2021-06-30/feeds"))
        .header("x-amz-access-token", token)
        .json(&json!({"feedType": "JSON_LISTINGS_FEED", "marketplaceIds": [emulators.amazon().marketplace_id()],
            "inputFeedDocumentId": created["feedDocumentId"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 202);
    let feed: Value = feed.json().await.unwrap();
    feed["feedId"].as_str().unwrap().to_owned()
}

async fn feed_status(emulators: &Emulators, token: &str, feed_id: &str) -> Value {
    Client::new()
        .get(format!(
            "{}/feeds/2021-06-30/feeds/{feed_id}",
            emulators.amazon().base_url()
        ))
        .header("x-amz-access-token", token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_done(emulators: &Emulators, token: &str, feed_id: &str) -> Value {
    for _ in 0..100 {
        let status = feed_status(emulators, token, feed_id).await;
        if status["processingStatus"] == "DONE" || status["processingStatus"] == "FATAL" {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("feed {feed_id} never finished");
}

#[tokio::test]
async fn listings_feeds_run_in_arrival_order_with_a_per_message_report() {
    let emulators = start(fast()).await;
    let token = access_token(&emulators).await;
    let amazon = emulators.amazon();
    amazon.add_listing("SKU-2", "LUGGAGE", 0);
    let seller = amazon.seller_id().to_owned();
    let message = |id: u64, sku: &str, quantity: Value| {
        json!({"messageId": id, "sku": sku, "operationType": "PATCH", "productType": "LUGGAGE",
            "patches": [{"op": "replace", "path": "/attributes/fulfillment_availability",
                "value": [{"fulfillment_channel_code": "DEFAULT", "quantity": quantity}]}]})
    };
    amazon.pause_feeds(true);
    let first = submit_feed(
        &emulators,
        &token,
        &json!({"header": {"sellerId": seller, "version": "2.0"},
        "messages": [message(1, "SKU-1", json!(11)), message(2, "SKU-2", json!(-1))]}),
    )
    .await;
    let second = submit_feed(&emulators, &token, &json!({"header": {"sellerId": seller, "version": "2.0"},
        "messages": [message(1, "SKU-1", json!(12)),
            {"messageId": 2, "sku": "SKU-2", "operationType": "PARTIAL_UPDATE", "productType": "LUGGAGE",
             "attributes": {"fulfillment_availability": [{"fulfillment_channel_code": "DEFAULT", "quantity": 5}]}}]})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        feed_status(&emulators, &token, &first).await["processingStatus"],
        "IN_PROGRESS"
    );
    assert_eq!(
        feed_status(&emulators, &token, &second).await["processingStatus"],
        "IN_QUEUE"
    );
    amazon.pause_feeds(false);
    let done = wait_done(&emulators, &token, &first).await;
    assert_eq!(done["processingStatus"], "DONE");
    wait_done(&emulators, &token, &second).await;
    // The later feed wins: arrival order.
    assert_eq!(amazon.quantity("SKU-1"), Some(12));
    assert_eq!(amazon.quantity("SKU-2"), Some(5));

    let client = Client::new();
    let report_document: Value = client
        .get(format!(
            "{}/feeds/2021-06-30/documents/{}",
            amazon.base_url(),
            done["resultFeedDocumentId"].as_str().unwrap()
        ))
        .header("x-amz-access-token", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let report: Value = client
        .get(report_document["url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["summary"]["messagesProcessed"], 2);
    assert_eq!(report["summary"]["messagesInvalid"], 1);
    assert_eq!(report["issues"][0]["messageId"], 2);

    let fatal = submit_feed(
        &emulators,
        &token,
        &json!({"header": {"sellerId": "SOMEONE-ELSE"}, "messages": []}),
    )
    .await;
    assert_eq!(
        wait_done(&emulators, &token, &fatal).await["processingStatus"],
        "FATAL"
    );

    // createFeed takes one marketplace only.
    let two = client
        .post(format!("{}/feeds/2021-06-30/feeds", amazon.base_url()))
        .header("x-amz-access-token", &token)
        .json(&json!({"feedType": "JSON_LISTINGS_FEED", "marketplaceIds": ["ATVPDKIKX0DER", "A2EUQ1WTGCTBG2"], "inputFeedDocumentId": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(two.status(), 400);
    emulators.shutdown().await;
}

#[tokio::test]
async fn create_feed_has_its_own_slow_bucket() {
    let emulators = start(AmazonConfig {
        create_feed_rate: RateLimit::new(0.0083, 2.0),
        ..fast()
    })
    .await;
    let token = access_token(&emulators).await;
    let document = json!({"header": {"sellerId": emulators.amazon().seller_id()}, "messages": []});
    submit_feed(&emulators, &token, &document).await;
    submit_feed(&emulators, &token, &document).await;
    let client = Client::new();
    let throttled = client
        .post(format!("{}/feeds/2021-06-30/feeds", emulators.amazon().base_url()))
        .header("x-amz-access-token", &token)
        .json(&json!({"feedType": "JSON_LISTINGS_FEED", "marketplaceIds": ["ATVPDKIKX0DER"], "inputFeedDocumentId": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["x-amzn-ratelimit-limit"], "0.0083");
    assert_eq!(emulators.amazon().budget_violations(), 1);
    emulators.shutdown().await;
}
