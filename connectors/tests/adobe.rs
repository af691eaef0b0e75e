//! The Adobe Commerce connector against the Adobe emulator on loopback
//! (skuld-emulators, CHANNELS.md D): the reservation trap of D.2 (no
//! double subtraction), applied and read back, validation, 5xx, the admin
//! token renewed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use skuld_connectors::adobe::Adobe;
use skuld_connectors::{Connector, ConnectorConfig, ConnectorKind, ItemKey, PushItem, PushOutcome};
use skuld_emulators::adobe::AdobeConfig;
use skuld_emulators::{Emulators, EmulatorsConfig};

const CHANNEL: &str = "magento-eu";

async fn emulators() -> Emulators {
    Emulators::start(EmulatorsConfig {
        adobe: AdobeConfig::default(),
        ..EmulatorsConfig::default()
    })
    .await
    .unwrap()
}

fn config(emulators: &Emulators) -> ConnectorConfig {
    let adobe = emulators.adobe();
    ConnectorConfig::new(CHANNEL, ConnectorKind::AdobeCommerce, adobe.base_url())
        .credential("username", adobe.config().username.as_str())
        .credential("password", adobe.config().password.as_str())
}

fn item(sku: &str, value: i64, version: u64) -> PushItem {
    PushItem::new(CHANNEL, sku, None, value, version, None)
}

#[tokio::test]
async fn an_adobe_order_is_not_subtracted_twice() {
    let emulators = emulators().await;
    let adobe_emulator = emulators.adobe();
    adobe_emulator.set_source_item("SKU-1", "default", 10.0, true);
    let adobe = Adobe::new(config(&emulators)).unwrap();

    // A storefront order of 3 on Adobe: a reservation, salable 7.
    let order = adobe_emulator.place_order("SKU-1", 1, 3.0).unwrap();
    assert_eq!(adobe_emulator.salable_quantity("SKU-1", 1), Some(7.0));
    // skuld hears of the order too and now wants Adobe to sell 7.
    assert_eq!(
        adobe.push(&[item("SKU-1", 7, 2)]).await,
        vec![PushOutcome::Applied]
    );
    // The 3 reserved are added back: 10 on the source, salable 7, not 4.
    assert_eq!(
        adobe_emulator
            .source_item("SKU-1", "default")
            .map(|i| i.quantity),
        Some(10.0)
    );
    assert_eq!(adobe_emulator.salable_quantity("SKU-1", 1), Some(7.0));
    assert_eq!(
        adobe.read(&[ItemKey::new("SKU-1", None)]).await.unwrap(),
        vec![Some(7)]
    );

    // It ships: the source drops to 7, the reservation is compensated.
    adobe_emulator.ship_order(order, "default").unwrap();
    assert_eq!(adobe_emulator.salable_quantity("SKU-1", 1), Some(7.0));
    // skuld's figure is still 7 (the unit left on both sides): pushed again,
    // nothing is added back any more.
    assert_eq!(
        adobe.push(&[item("SKU-1", 7, 3)]).await,
        vec![PushOutcome::Applied]
    );
    assert_eq!(
        adobe_emulator
            .source_item("SKU-1", "default")
            .map(|i| i.quantity),
        Some(7.0)
    );
    assert_eq!(adobe_emulator.salable_quantity("SKU-1", 1), Some(7.0));

    // The trap itself, for contrast: as_is writes the net figure and Adobe
    // subtracts the open order again.
    adobe_emulator.place_order("SKU-1", 1, 2.0).unwrap();
    let naive = Adobe::new(config(&emulators).setting("quantity_rule", "as_is")).unwrap();
    assert_eq!(
        naive.push(&[item("SKU-1", 5, 4)]).await,
        vec![PushOutcome::Applied]
    );
    assert_eq!(adobe_emulator.salable_quantity("SKU-1", 1), Some(3.0));
    // The rule puts it right.
    assert_eq!(
        adobe.push(&[item("SKU-1", 5, 5)]).await,
        vec![PushOutcome::Applied]
    );
    assert_eq!(adobe_emulator.salable_quantity("SKU-1", 1), Some(5.0));
    assert_eq!(emulators.budget_violations(), 0);
    emulators.shutdown().await;
}

#[tokio::test]
async fn zero_is_out_of_stock_and_unknown_items_read_none() {
    let emulators = emulators().await;
    emulators
        .adobe()
        .set_source_item("SKU-1", "default", 4.0, true);
    let adobe = Adobe::new(config(&emulators)).unwrap();

    let outcomes = adobe
        .push(&[item("SKU-1", 0, 1), item("SKU-NEW", 6, 1)])
        .await;
    assert_eq!(outcomes, vec![PushOutcome::Applied, PushOutcome::Applied]);
    let zero = emulators.adobe().source_item("SKU-1", "default").unwrap();
    assert_eq!((zero.quantity, zero.status), (0.0, 0));
    let read = adobe
        .read(&[
            ItemKey::new("SKU-1", None),
            ItemKey::new("SKU-NEW", None),
            ItemKey::new("SKU-NONE", None),
        ])
        .await
        .unwrap();
    assert_eq!(read, vec![Some(0), Some(6), None]);
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_wrong_item_is_a_dead_letter_and_the_rest_is_saved() {
    let emulators = emulators().await;
    let adobe = Adobe::new(config(&emulators)).unwrap();

    let outcomes = adobe
        .push(&[
            item("SKU-1", 3, 1),
            PushItem::new(CHANNEL, "SKU-2", Some("no_such_source"), 1, 1, None),
        ])
        .await;
    assert_eq!(outcomes[0], PushOutcome::Applied);
    let PushOutcome::Invalid { message, .. } = &outcomes[1] else {
        panic!("{outcomes:?}");
    };
    assert!(message.contains("no_such_source"), "{message}");
    assert_eq!(
        emulators
            .adobe()
            .source_item("SKU-1", "default")
            .map(|i| i.quantity),
        Some(3.0)
    );
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_5xx_is_a_retry() {
    let emulators = emulators().await;
    let adobe = Adobe::new(config(&emulators).setting("quantity_rule", "as_is")).unwrap();
    // The token call goes first: fail the save after it.
    assert_eq!(
        adobe.push(&[item("SKU-1", 1, 1)]).await,
        vec![PushOutcome::Applied]
    );
    emulators.adobe().faults().fail_next(1, 500);
    let outcomes = adobe.push(&[item("SKU-1", 2, 2)]).await;
    assert!(
        matches!(&outcomes[0], PushOutcome::Retry { .. }),
        "{outcomes:?}"
    );
    assert_eq!(
        adobe.push(&[item("SKU-1", 2, 2)]).await,
        vec![PushOutcome::Applied]
    );
    let tokens = emulators
        .adobe()
        .recorder()
        .requests_to("/integration/admin/token")
        .len();
    assert_eq!(tokens, 1, "the admin token is kept");
    emulators.shutdown().await;
}

#[tokio::test]
async fn a_host_rate_limit_is_kept_by_the_local_bucket() {
    // D.6: no limit is documented; a host in front of the store may set
    // one. The emulator's switch: burst 5, 20 per second.
    let emulators = Emulators::start(EmulatorsConfig {
        adobe: AdobeConfig {
            rate_limit: Some((5.0, 20.0)),
            ..AdobeConfig::default()
        },
        ..EmulatorsConfig::default()
    })
    .await
    .unwrap();
    let adobe = Adobe::new(
        config(&emulators)
            .setting("quantity_rule", "as_is")
            .setting("max_batch", "1")
            .setting("burst", "5")
            .setting("rate", "20")
            .setting("max_wait_ms", "10000"),
    )
    .unwrap();
    let items: Vec<PushItem> = (0..30).map(|n| item(&format!("SKU-{n}"), n, 1)).collect();
    let outcomes = adobe.push(&items).await;
    assert!(outcomes.iter().all(PushOutcome::is_applied), "{outcomes:?}");
    assert_eq!(emulators.adobe().source_items().len(), 30);
    assert_eq!(emulators.budget_violations(), 0);
    emulators.shutdown().await;
}
