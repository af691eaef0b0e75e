//! The Shopify connector against the Shopify emulator on loopback
//! (skuld-emulators, CHANNELS.md A): applied, stale compare, throttling and
//! the limiter, validation, 5xx, and a lost reply retried with its key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use skuld_connectors::shopify::Shopify;
use skuld_connectors::{Connector, ConnectorConfig, ConnectorKind, ItemKey, PushItem, PushOutcome};
use skuld_emulators::shopify::{Levels, OrderLine, ShopifyConfig};
use skuld_emulators::{Emulators, EmulatorsConfig};

const CHANNEL: &str = "shop-main";
const ITEM: u64 = 101;
const LOCATION: u64 = 7;

async fn emulators(shopify: ShopifyConfig) -> Emulators {
    Emulators::start(EmulatorsConfig {
        shopify,
        ..EmulatorsConfig::default()
    })
    .await
    .unwrap()
}

fn config(emulators: &Emulators) -> ConnectorConfig {
    let shopify = emulators.shopify();
    ConnectorConfig::new(CHANNEL, ConnectorKind::Shopify, shopify.base_url())
        .credential("access_token", shopify.access_token())
        .setting(
            "inventory_item_id.SKU-A",
            format!("gid://shopify/InventoryItem/{ITEM}"),
        )
        .setting("inventory_item_id.SKU-B", "102")
        .setting("location_id.store-1", LOCATION.to_string())
}

fn item(sku: &str, value: i64, version: u64, change_from: Option<i64>) -> PushItem {
    PushItem::new(CHANNEL, sku, Some("store-1"), value, version, change_from)
}

fn available(emulators: &Emulators, item: u64) -> Option<i64> {
    emulators
        .shopify()
        .level(item, LOCATION)
        .map(|levels| levels.available)
}

#[tokio::test]
async fn a_push_is_applied_and_read_back() {
    let emulators = emulators(ShopifyConfig::default()).await;
    emulators
        .shopify()
        .seed_level(ITEM, LOCATION, Levels::with_available(10));
    emulators
        .shopify()
        .seed_level(102, LOCATION, Levels::with_available(3));
    let shopify = Shopify::new(config(&emulators)).unwrap();

    let outcomes = shopify
        .push(&[item("SKU-A", 7, 1, Some(10)), item("SKU-B", 0, 1, Some(3))])
        .await;
    assert_eq!(outcomes, vec![PushOutcome::Applied, PushOutcome::Applied]);
    assert_eq!(available(&emulators, ITEM), Some(7));
    assert_eq!(available(&emulators, 102), Some(0));
    // Both lines went in one mutation (the quantities[] path).
    let mutations = emulators.shopify().recorder().requests();
    assert_eq!(mutations.len(), 1);
    assert!(mutations[0].body.contains("@idempotent"));
    assert!(mutations[0].body.contains("\"changeFromQuantity\":10"));

    let read = shopify
        .read(&[
            ItemKey::new("SKU-A", Some("store-1")),
            ItemKey::new("SKU-B", Some("store-1")),
            ItemKey::new("SKU-A", Some("nowhere")),
            ItemKey::new("999", Some("store-1")),
        ])
        .await
        .unwrap();
    assert_eq!(read, vec![Some(7), Some(0), None, None]);
    assert_eq!(emulators.budget_violations(), 0);
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_storefront_order_between_read_and_write_is_a_conflict_with_the_new_remote() {
    let emulators = emulators(ShopifyConfig::default()).await;
    emulators
        .shopify()
        .seed_level(ITEM, LOCATION, Levels::with_available(10));
    let shopify = Shopify::new(config(&emulators)).unwrap();

    let read = shopify
        .read(&[ItemKey::new("SKU-A", Some("store-1"))])
        .await
        .unwrap();
    assert_eq!(read, vec![Some(10)]);
    emulators
        .shopify()
        .storefront_order(&[OrderLine {
            inventory_item_id: ITEM,
            location_id: LOCATION,
            quantity: 3,
        }])
        .unwrap();
    // skuld still believes 10 and wants 8: the compare fails, nothing is
    // overwritten, the connector reads the 7 back.
    let outcomes = shopify.push(&[item("SKU-A", 8, 2, Some(10))]).await;
    assert_eq!(outcomes, vec![PushOutcome::Conflict { remote: 7 }]);
    assert_eq!(available(&emulators, ITEM), Some(7));
    assert_eq!(
        emulators
            .shopify()
            .level(ITEM, LOCATION)
            .map(|l| l.committed),
        Some(3)
    );

    // The worker recomputes (8 - 3 = 5) and compares against 7: a new key.
    let retry = item("SKU-A", 5, 3, Some(7));
    assert_ne!(
        retry.idempotency_key,
        item("SKU-A", 8, 2, Some(10)).idempotency_key
    );
    assert_eq!(shopify.push(&[retry]).await, vec![PushOutcome::Applied]);
    assert_eq!(available(&emulators, ITEM), Some(5));
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_refused_line_does_not_hold_back_the_others() {
    let emulators = emulators(ShopifyConfig::default()).await;
    emulators
        .shopify()
        .seed_level(ITEM, LOCATION, Levels::with_available(10));
    emulators
        .shopify()
        .seed_level(102, LOCATION, Levels::with_available(4));
    let shopify = Shopify::new(config(&emulators)).unwrap();

    let outcomes = shopify
        .push(&[
            item("SKU-A", -1, 1, Some(10)),
            item("SKU-B", 2, 1, Some(4)),
            item("SKU-UNKNOWN", 1, 1, None),
        ])
        .await;
    assert!(
        matches!(&outcomes[0], PushOutcome::Invalid { code, .. } if code == "INVALID_QUANTITY_NEGATIVE"),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1], PushOutcome::Applied);
    assert!(matches!(&outcomes[2], PushOutcome::Invalid { code, .. } if code == "UNMAPPED_SKU"));
    assert_eq!(available(&emulators, ITEM), Some(10));
    assert_eq!(available(&emulators, 102), Some(2));
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_5xx_is_a_retry_and_the_retry_applies() {
    let emulators = emulators(ShopifyConfig::default()).await;
    emulators
        .shopify()
        .seed_level(ITEM, LOCATION, Levels::with_available(10));
    let shopify = Shopify::new(config(&emulators)).unwrap();

    emulators.shopify().faults().fail_next(1, 503);
    let push = item("SKU-A", 6, 1, Some(10));
    let outcomes = shopify.push(std::slice::from_ref(&push)).await;
    assert!(
        matches!(&outcomes[0], PushOutcome::Retry { reason, .. } if reason.contains("503")),
        "{outcomes:?}"
    );
    assert_eq!(available(&emulators, ITEM), Some(10));
    assert_eq!(shopify.push(&[push]).await, vec![PushOutcome::Applied]);
    assert_eq!(available(&emulators, ITEM), Some(6));
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_lost_reply_retried_with_the_same_key_gives_the_original_result() {
    let emulators = emulators(ShopifyConfig::default()).await;
    emulators
        .shopify()
        .seed_level(ITEM, LOCATION, Levels::with_available(10));
    let shopify = Shopify::new(config(&emulators)).unwrap();

    emulators.shopify().faults().drop_reply_next(1);
    let push = item("SKU-A", 4, 1, Some(10));
    let outcomes = shopify.push(std::slice::from_ref(&push)).await;
    assert!(
        matches!(outcomes[0], PushOutcome::Retry { .. }),
        "{outcomes:?}"
    );
    // Applied, though the connector could not know.
    assert_eq!(available(&emulators, ITEM), Some(4));

    // The same push again: without the key its compare (10) would now be
    // stale; with it Shopify replays the original success.
    assert_eq!(
        shopify.push(std::slice::from_ref(&push)).await,
        vec![PushOutcome::Applied]
    );
    assert_eq!(available(&emulators, ITEM), Some(4));
    let requests = emulators.shopify().recorder().requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].body, requests[1].body,
        "the retry is the same request"
    );
    assert_eq!(emulators.shopify().recorder().counters().replies_dropped, 1);
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_drained_bucket_is_a_retry_with_the_throttle_wait() {
    let emulators = emulators(ShopifyConfig::default()).await;
    emulators
        .shopify()
        .seed_level(ITEM, LOCATION, Levels::with_available(10));
    let shopify = Shopify::new(config(&emulators)).unwrap();
    // The app's bucket drained behind the connector's back (another
    // process of the same app): the limiter cannot know before a reply.
    emulators
        .shopify()
        .drain_bucket(emulators.shopify().access_token());

    let push = item("SKU-A", 9, 1, Some(10));
    let outcomes = shopify.push(std::slice::from_ref(&push)).await;
    let PushOutcome::Retry { after, reason } = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert_eq!(reason, "THROTTLED");
    // (10 + 1 reserve - ~0) points at 100 per second.
    assert!(
        *after >= Duration::from_millis(50) && *after <= Duration::from_millis(300),
        "{after:?}"
    );
    assert_eq!(emulators.budget_violations(), 1);
    // The limiter now knows: the next push waits itself, then applies.
    assert!(shopify.ready_in() > Duration::ZERO);
    assert_eq!(shopify.push(&[push]).await, vec![PushOutcome::Applied]);
    assert_eq!(
        emulators.budget_violations(),
        1,
        "the limiter waited this time"
    );
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_200_pushes_through_the_limiter_never_trips_the_bucket() {
    // A small plan so the burst outruns it: 200 points, 500 per second.
    let emulators = emulators(ShopifyConfig {
        bucket_size: Some(200.0),
        restore_rate: Some(500.0),
        ..ShopifyConfig::default()
    })
    .await;
    for item in 0..8u64 {
        emulators
            .shopify()
            .seed_level(1000 + item, LOCATION, Levels::with_available(0));
    }
    let mut config = config(&emulators)
        .setting("bucket_size", "200")
        .setting("restore_rate", "500")
        .setting("max_wait_ms", "50");
    for item in 0..8u64 {
        config = config.setting(
            format!("inventory_item_id.S{item}"),
            (1000 + item).to_string(),
        );
    }
    let shopify = Arc::new(Shopify::new(config).unwrap());

    // Eight workers, 25 single-line pushes each, each push compared
    // against the last value it set, retried after the connector's hint.
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let shopify = shopify.clone();
        tasks.push(tokio::spawn(async move {
            let sku = format!("S{worker}");
            let mut acked = 0;
            let mut retries = 0;
            for version in 1..=25u64 {
                let value = version as i64;
                loop {
                    let push =
                        PushItem::new(CHANNEL, &sku, Some("store-1"), value, version, Some(acked));
                    match shopify.push(&[push]).await.remove(0) {
                        PushOutcome::Applied => break,
                        PushOutcome::Retry { after, .. } => {
                            retries += 1;
                            tokio::time::sleep(after).await;
                        }
                        other => panic!("{other:?}"),
                    }
                }
                acked = value;
            }
            retries
        }));
    }
    let mut retries = 0;
    for task in tasks {
        retries += task.await.unwrap();
    }
    for item in 0..8u64 {
        assert_eq!(available(&emulators, 1000 + item), Some(25));
    }
    // Every call the limiter let through was answered: the waits longer
    // than 50 ms went back to the workers as Retry without a call.
    assert_eq!(emulators.shopify().recorder().counters().requests, 200);
    assert_eq!(emulators.budget_violations(), 0, "no THROTTLED answer");
    assert!(
        retries > 0,
        "the limiter handed some waits back to the workers"
    );
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_duplicate_in_flight_is_a_retry_then_the_replayed_result() {
    let emulators = emulators(ShopifyConfig {
        mutation_processing_time: Duration::from_millis(300),
        ..ShopifyConfig::default()
    })
    .await;
    emulators
        .shopify()
        .seed_level(ITEM, LOCATION, Levels::with_available(10));
    let shopify = Arc::new(Shopify::new(config(&emulators)).unwrap());

    // Two workers (a node and its successor after a shard move) send the
    // same push at once: one runs, the other is told to try again.
    let push = item("SKU-A", 6, 1, Some(10));
    let first = {
        let (shopify, push) = (shopify.clone(), push.clone());
        tokio::spawn(async move { shopify.push(&[push]).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = shopify.push(std::slice::from_ref(&push)).await;
    assert!(
        matches!(&second[0], PushOutcome::Retry { reason, .. } if reason.contains("IDEMPOTENCY_CONCURRENT_REQUEST")),
        "{second:?}"
    );
    assert_eq!(first.await.unwrap(), vec![PushOutcome::Applied]);
    assert_eq!(shopify.push(&[push]).await, vec![PushOutcome::Applied]);
    assert_eq!(available(&emulators, ITEM), Some(6));
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_throttle_answered_429_honours_retry_after() {
    // A.4: the HTTP status of a GraphQL throttle is unconfirmed: the
    // emulator's switch answers 429 with Retry-After.
    let emulators = emulators(ShopifyConfig {
        throttled_http_status: 429,
        ..ShopifyConfig::default()
    })
    .await;
    emulators
        .shopify()
        .seed_level(ITEM, LOCATION, Levels::with_available(10));
    let shopify = Shopify::new(config(&emulators)).unwrap();
    emulators
        .shopify()
        .drain_bucket(emulators.shopify().access_token());

    let outcomes = shopify.push(&[item("SKU-A", 9, 1, Some(10))]).await;
    let PushOutcome::Retry { after, reason } = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert_eq!(reason, "THROTTLED");
    assert_eq!(*after, Duration::from_secs(1));
    assert!(shopify.ready_in() >= Duration::from_millis(900));
    assert_eq!(available(&emulators, ITEM), Some(10));
    emulators.shutdown().await;
}
