//! The Walmart connector against the Walmart emulator on loopback
//! (skuld-emulators, CHANNELS.md C): applied and read back, DATA errors,
//! 5xx and 429 as retries, a burst through the token limiter, the token
//! renewed, and the inventory feed for bulk.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use skuld_connectors::walmart::Walmart;
use skuld_connectors::{Connector, ConnectorConfig, ConnectorKind, ItemKey, PushItem, PushOutcome};
use skuld_emulators::walmart::{Api, Budget, WalmartConfig};
use skuld_emulators::{Emulators, EmulatorsConfig};

const CHANNEL: &str = "walmart-us";

async fn emulators(walmart: WalmartConfig) -> Emulators {
    Emulators::start(EmulatorsConfig {
        walmart,
        ..EmulatorsConfig::default()
    })
    .await
    .unwrap()
}

fn fast() -> WalmartConfig {
    WalmartConfig {
        feed_processing_time: Duration::from_millis(200),
        ..WalmartConfig::default()
    }
}

fn config(emulators: &Emulators) -> ConnectorConfig {
    let walmart = emulators.walmart();
    ConnectorConfig::new(CHANNEL, ConnectorKind::Walmart, walmart.base_url())
        .credential("client_id", walmart.config().client_id.as_str())
        .credential("client_secret", walmart.config().client_secret.as_str())
}

fn item(sku: &str, value: i64, version: u64) -> PushItem {
    PushItem::new(CHANNEL, sku, None, value, version, None)
}

#[tokio::test]
async fn a_put_is_applied_and_read_back_with_one_token() {
    let emulators = emulators(fast()).await;
    emulators.walmart().add_item("SKU-1", 10);
    let walmart = Walmart::new(config(&emulators)).unwrap();

    assert_eq!(
        walmart.push(&[item("SKU-1", 3, 1)]).await,
        vec![PushOutcome::Applied]
    );
    let node = emulators.walmart().default_ship_node().to_owned();
    assert_eq!(emulators.walmart().quantity("SKU-1", &node), Some(3));
    let read = walmart
        .read(&[ItemKey::new("SKU-1", None), ItemKey::new("NOPE", None)])
        .await
        .unwrap();
    assert_eq!(read, vec![Some(3), None]);
    // One token for the three calls; every call its own correlation id.
    let requests = emulators.walmart().recorder().requests();
    assert_eq!(requests.iter().filter(|r| r.path == "/v3/token").count(), 1);
    assert_eq!(emulators.budget_violations(), 0);
    emulators.shutdown().await;
}

#[tokio::test]
async fn data_errors_are_dead_letters_and_5xx_retries() {
    let emulators = emulators(fast()).await;
    emulators.walmart().add_item("SKU-1", 10);
    let walmart = Walmart::new(config(&emulators)).unwrap();

    let outcomes = walmart
        .push(&[item("NOPE", 1, 1), item("SKU-1", -1, 1)])
        .await;
    assert!(
        matches!(&outcomes[0], PushOutcome::Invalid { .. }),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[1], PushOutcome::Invalid { .. }),
        "{outcomes:?}"
    );

    emulators.walmart().faults().fail_next(1, 502);
    let outcomes = walmart.push(&[item("SKU-1", 4, 2)]).await;
    assert!(
        matches!(&outcomes[0], PushOutcome::Retry { .. }),
        "{outcomes:?}"
    );
    assert_eq!(
        walmart.push(&[item("SKU-1", 4, 2)]).await,
        vec![PushOutcome::Applied]
    );
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_drained_bucket_is_a_retry_after_its_replenish_time() {
    let emulators = emulators(WalmartConfig {
        inventory_budget: Budget::new(10.0, Duration::from_secs(1)),
        ..fast()
    })
    .await;
    emulators.walmart().add_item("SKU-1", 10);
    let walmart = Walmart::new(
        config(&emulators)
            .setting("inventory_tokens", "10")
            .setting("inventory_window_s", "1"),
    )
    .unwrap();

    emulators.walmart().drain_bucket(Api::Inventory);
    let outcomes = walmart.push(&[item("SKU-1", 2, 1)]).await;
    let PushOutcome::Retry { after, .. } = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert!(*after <= Duration::from_secs(2), "{after:?}");
    assert_eq!(emulators.budget_violations(), 1);
    tokio::time::sleep(*after).await;
    assert_eq!(
        walmart.push(&[item("SKU-1", 2, 1)]).await,
        vec![PushOutcome::Applied]
    );
    assert_eq!(emulators.budget_violations(), 1);
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_burst_through_the_limiter_never_empties_the_bucket() {
    let emulators = emulators(WalmartConfig {
        inventory_budget: Budget::new(20.0, Duration::from_secs(2)),
        ..fast()
    })
    .await;
    for n in 0..40 {
        emulators.walmart().add_item(&format!("SKU-{n}"), 0);
    }
    // The connector starts from the documented default (200 / 60 s), not
    // the emulator's 20 / 2 s: the token counts it reads correct it.
    let walmart = Walmart::new(config(&emulators).setting("max_wait_ms", "10000")).unwrap();
    let items: Vec<PushItem> = (0..40)
        .map(|n| item(&format!("SKU-{n}"), n + 1, 1))
        .collect();
    let started = Instant::now();
    let outcomes = walmart.push(&items).await;
    assert!(outcomes.iter().all(PushOutcome::is_applied), "{outcomes:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(emulators.budget_violations(), 0);
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_large_batch_goes_as_one_inventory_feed() {
    let emulators = emulators(fast()).await;
    for n in 0..6 {
        emulators.walmart().add_item(&format!("SKU-{n}"), 0);
    }
    let walmart = Walmart::new(config(&emulators).setting("bulk_threshold", "6")).unwrap();
    let items: Vec<PushItem> = (0..6)
        .map(|n| item(&format!("SKU-{n}"), 20 + n, 1))
        .collect();
    let outcomes = walmart.push(&items).await;
    let PushOutcome::Accepted { submission_id } = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert!(submission_id.starts_with("feed:"));
    assert_eq!(
        emulators
            .walmart()
            .recorder()
            .requests_to("/v3/feeds")
            .len(),
        1
    );
    let keys: Vec<ItemKey> = (0..6)
        .map(|n| ItemKey::new(format!("SKU-{n}"), None))
        .collect();
    let want: Vec<Option<i64>> = (0..6).map(|n| Some(20 + n)).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        seen = walmart.read(&keys).await.unwrap();
        if seen == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, want);
    assert_eq!(emulators.budget_violations(), 0);
    emulators.shutdown().await;
}
