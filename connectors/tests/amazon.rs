//! The Amazon connector against the Amazon emulator on loopback
//! (skuld-emulators, CHANNELS.md B): accepted then applied later and
//! confirmed by read-back, validation, throttling and the limiter, 5xx,
//! and the JSON_LISTINGS_FEED bulk path.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use skuld_connectors::amazon::Amazon;
use skuld_connectors::{Connector, ConnectorConfig, ConnectorKind, ItemKey, PushItem, PushOutcome};
use skuld_emulators::amazon::{AmazonConfig, Operation};
use skuld_emulators::{Emulators, EmulatorsConfig};

const CHANNEL: &str = "amazon-us";

async fn emulators(amazon: AmazonConfig) -> Emulators {
    Emulators::start(EmulatorsConfig {
        amazon,
        ..EmulatorsConfig::default()
    })
    .await
    .unwrap()
}

fn fast() -> AmazonConfig {
    AmazonConfig {
        apply_delay: Duration::from_millis(300),
        feed_processing_time: Duration::from_millis(200),
        ..AmazonConfig::default()
    }
}

fn config(emulators: &Emulators) -> ConnectorConfig {
    let amazon = emulators.amazon();
    let emulated = amazon.config();
    ConnectorConfig::new(CHANNEL, ConnectorKind::Amazon, amazon.base_url())
        .setting("seller_id", amazon.seller_id())
        .setting("marketplace_id", amazon.marketplace_id())
        .credential("client_id", emulated.client_id.as_str())
        .credential("client_secret", emulated.client_secret.as_str())
        .credential("refresh_token", emulated.refresh_token.as_str())
}

fn item(sku: &str, value: i64, version: u64) -> PushItem {
    PushItem::new(CHANNEL, sku, None, value, version, None)
}

async fn read_until(amazon: &Amazon, sku: &str, want: i64) -> Option<i64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = None;
    while Instant::now() < deadline {
        seen = amazon.read(&[ItemKey::new(sku, None)]).await.unwrap()[0];
        if seen == Some(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

#[tokio::test]
async fn accepted_is_not_applied_until_the_read_back_shows_it() {
    let emulators = emulators(fast()).await;
    emulators.amazon().add_listing("SKU-1", "PRODUCT", 10);
    let amazon = Amazon::new(config(&emulators)).unwrap();

    let outcomes = amazon.push(&[item("SKU-1", 4, 1)]).await;
    let PushOutcome::Accepted { submission_id } = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert!(!submission_id.is_empty());
    // Not yet applied: the read-back still shows 10.
    assert_eq!(
        amazon.read(&[ItemKey::new("SKU-1", None)]).await.unwrap(),
        vec![Some(10)]
    );
    assert_eq!(read_until(&amazon, "SKU-1", 4).await, Some(4));
    let patch = &emulators.amazon().recorder().requests_to("/listings/")[0];
    assert_eq!(patch.method, "PATCH");
    assert!(patch.body.contains("\"op\":\"merge\""), "{}", patch.body);
    // An unknown listing reads as None.
    assert_eq!(
        amazon.read(&[ItemKey::new("NOPE", None)]).await.unwrap(),
        vec![None]
    );
    assert_eq!(emulators.budget_violations(), 0);
    emulators.shutdown().await;
}

#[tokio::test]
async fn an_accepted_patch_never_applied_is_caught_by_the_read_back() {
    let emulators = emulators(fast()).await;
    emulators.amazon().add_listing("SKU-1", "PRODUCT", 10);
    emulators.amazon().drop_next_applies(1);
    let amazon = Amazon::new(config(&emulators)).unwrap();

    assert!(matches!(
        amazon.push(&[item("SKU-1", 3, 1)]).await[0],
        PushOutcome::Accepted { .. }
    ));
    assert!(emulators.amazon().settle(Duration::from_secs(5)).await);
    // Still 10: the worker's read-back sees the drift and pushes again.
    assert_eq!(
        amazon.read(&[ItemKey::new("SKU-1", None)]).await.unwrap(),
        vec![Some(10)]
    );
    assert!(matches!(
        amazon.push(&[item("SKU-1", 3, 1)]).await[0],
        PushOutcome::Accepted { .. }
    ));
    assert_eq!(read_until(&amazon, "SKU-1", 3).await, Some(3));
    emulators.shutdown().await;
}

#[tokio::test]
async fn invalid_submissions_and_unknown_locations_are_dead_letters() {
    let emulators = emulators(fast()).await;
    emulators.amazon().add_listing("SKU-1", "PRODUCT", 10);
    let amazon = Amazon::new(config(&emulators)).unwrap();

    let outcomes = amazon
        .push(&[
            item("SKU-1", -2, 1),
            item("NO-SUCH-LISTING", 1, 1),
            PushItem::new(CHANNEL, "SKU-1", Some("dc-9"), 1, 1, None),
        ])
        .await;
    assert!(
        matches!(&outcomes[0], PushOutcome::Invalid { .. }),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[1], PushOutcome::Invalid { code, .. } if code == "LISTING_NOT_FOUND"),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[2], PushOutcome::Invalid { code, .. } if code == "UNMAPPED_LOCATION")
    );
    assert!(emulators.amazon().settle(Duration::from_secs(2)).await);
    assert_eq!(emulators.amazon().quantity("SKU-1"), Some(10));
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_5xx_and_a_drained_bucket_are_retries() {
    let emulators = emulators(fast()).await;
    emulators.amazon().add_listing("SKU-1", "PRODUCT", 10);
    let amazon = Amazon::new(config(&emulators)).unwrap();

    emulators.amazon().faults().fail_next(1, 503);
    let outcomes = amazon.push(&[item("SKU-1", 5, 1)]).await;
    assert!(
        matches!(&outcomes[0], PushOutcome::Retry { reason, .. } if reason.contains("503")),
        "{outcomes:?}"
    );

    emulators
        .amazon()
        .drain_bucket(Operation::PatchListingsItem);
    let outcomes = amazon.push(&[item("SKU-1", 5, 1)]).await;
    let PushOutcome::Retry { after, reason } = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert_eq!(reason, "QuotaExceeded");
    assert!(
        *after >= Duration::from_millis(100) && *after <= Duration::from_secs(1),
        "{after:?}"
    );
    assert_eq!(emulators.budget_violations(), 1);
    // The limiter waits out the refill; the push goes through.
    assert!(amazon.ready_in() > Duration::ZERO);
    assert!(matches!(
        amazon.push(&[item("SKU-1", 5, 1)]).await[0],
        PushOutcome::Accepted { .. }
    ));
    assert_eq!(emulators.budget_violations(), 1);
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_burst_through_the_limiter_never_exceeds_5_per_second_burst_10() {
    let emulators = emulators(fast()).await;
    for n in 0..25 {
        emulators
            .amazon()
            .add_listing(&format!("SKU-{n}"), "PRODUCT", 0);
    }
    let amazon = Amazon::new(config(&emulators).setting("max_wait_ms", "10000")).unwrap();

    let items: Vec<PushItem> = (0..25)
        .map(|n| item(&format!("SKU-{n}"), n + 1, 1))
        .collect();
    let started = Instant::now();
    let outcomes = amazon.push(&items).await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, PushOutcome::Accepted { .. })),
        "{outcomes:?}"
    );
    // 10 at once, then 15 at 5 per second.
    assert!(
        started.elapsed() >= Duration::from_millis(2800),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(emulators.budget_violations(), 0);
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_large_batch_goes_as_one_listings_feed() {
    let emulators = emulators(fast()).await;
    for n in 0..5 {
        emulators
            .amazon()
            .add_listing(&format!("SKU-{n}"), "PRODUCT", 0);
    }
    let amazon = Amazon::new(config(&emulators).setting("bulk_threshold", "5")).unwrap();

    let items: Vec<PushItem> = (0..5)
        .map(|n| item(&format!("SKU-{n}"), 10 + n, 1))
        .collect();
    let outcomes = amazon.push(&items).await;
    let PushOutcome::Accepted { submission_id } = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert!(submission_id.starts_with("feed:"));
    assert!(outcomes.iter().all(|o| o == &outcomes[0]));
    assert!(emulators
        .amazon()
        .recorder()
        .requests_to("/listings/")
        .is_empty());
    for n in 0..5 {
        assert_eq!(
            read_until(&amazon, &format!("SKU-{n}"), 10 + n).await,
            Some(10 + n)
        );
    }
    assert_eq!(emulators.budget_violations(), 0);
    emulators.shutdown().await;
}
