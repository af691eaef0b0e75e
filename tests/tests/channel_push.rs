//! The push worker against the channel emulators on loopback: a channel
//! defined through the ChannelService is kept showing what it may sell, a
//! burst of changes is coalesced into a bounded number of pushes without
//! tripping the channel's budget, a stale compare (a storefront order on the
//! channel) converges, a node killed mid-push loses nothing, a channel-side
//! edit is found by reconciliation, and a refused push is a dead letter
//! that a replay sends again with the current value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skuld_emulators::shopify::OrderLine;
use skuld_emulators::{Emulators, EmulatorsConfig};
use skuld_proto::v1 as pb;
use skuld_proto::v1::channel_service_client::ChannelServiceClient;
use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
use skuld_tests::events::{self, From};
use skuld_tests::metrics::Scrape;
use skuld_tests::requests::{adjust, key, receive};
use skuld_tests::{NodeOptions, TestDir, TestNode};
use tonic::transport::Channel;

/// How long an event stream read waits for nothing more to come.
const QUIET: Duration = Duration::from_millis(400);

const TEE: u64 = 1001;
const DC1: u64 = 1;
const STORE1: u64 = 2;

/// A node whose channel worker looks often, so the tests wait little, and
/// reads channel credentials from the test directory (`<dir>/acme/...`).
fn options(dir: &TestDir) -> NodeOptions {
    NodeOptions::default()
        .arg("--channel-credentials-dir", dir.path().display())
        .arg("--channel-poll-interval-ms", 50)
        .arg("--channel-confirm-after-ms", 200)
}

/// Emulated Shopify with the shop's TEE stocked at two locations (0 each).
async fn shopify() -> Emulators {
    let emulators = Emulators::start(EmulatorsConfig::default()).await.unwrap();
    let shop = emulators.shopify();
    shop.add_item(TEE, "TEE");
    shop.add_location(DC1, "DC1");
    shop.add_location(STORE1, "STORE1");
    for location in [DC1, STORE1] {
        shop.seed_level(TEE, location, Default::default());
    }
    emulators
}

/// The channel `web` of tenant `acme`: TEE at DC1 and STORE1 on the
/// emulated shop, with its access token in a credentials file.
async fn define_shopify(dir: &TestDir, node: &TestNode, emulators: &Emulators) {
    let credentials = tenant_file(dir, "shopify.json");
    std::fs::write(
        &credentials,
        serde_json::json!({ "access_token": emulators.shopify().access_token() }).to_string(),
    )
    .unwrap();
    let account = HashMap::from([
        (
            "base_url".to_owned(),
            emulators.shopify().base_url().to_owned(),
        ),
        ("inventory_item_id.TEE".to_owned(), TEE.to_string()),
        ("location_id.DC1".to_owned(), DC1.to_string()),
        ("location_id.STORE1".to_owned(), STORE1.to_string()),
    ]);
    channels(node)
        .await
        .create_channel(pb::CreateChannelRequest {
            channel: Some(pb::Channel {
                tenant: "acme".into(),
                id: "web".into(),
                kind: pb::ChannelKind::Shopify.into(),
                network: vec!["DC1".into(), "STORE1".into()],
                priority: 1,
                min_push_interval_ms: 200,
                account,
                credentials_ref: format!("file:{}", credentials.display()),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
}

/// A credentials file of tenant `acme`, where the node lets acme read.
fn tenant_file(dir: &TestDir, name: &str) -> std::path::PathBuf {
    let own = dir.path().join("acme");
    std::fs::create_dir_all(&own).unwrap();
    own.join(name)
}

async fn channels(node: &TestNode) -> ChannelServiceClient<Channel> {
    ChannelServiceClient::new(node.channel().await.unwrap())
}

async fn inventory(node: &TestNode) -> InventoryServiceClient<Channel> {
    node.inventory().await.unwrap()
}

fn available(emulators: &Emulators, location: u64) -> Option<i64> {
    emulators
        .shopify()
        .level(TEE, location)
        .map(|levels| levels.available)
}

/// Waits until the emulated shop shows `dc1` and `store1` for TEE.
async fn converges(emulators: &Emulators, dc1: i64, store1: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let shown = (available(emulators, DC1), available(emulators, STORE1));
        if shown == (Some(dc1), Some(store1)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the shop shows {shown:?}, not ({dc1}, {store1}), after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An adjustment sent again (same idempotency key) while the node sheds
/// load, after the wait it hints: a hot key's burst meets back-pressure.
async fn adjust_patiently(
    client: &mut InventoryServiceClient<Channel>,
    request: pb::AdjustRequest,
) {
    loop {
        match client.adjust(request.clone()).await {
            Ok(_) => return,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                let hint_ms = status
                    .metadata()
                    .get("retry-after-ms")
                    .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
                    .unwrap_or(50);
                tokio::time::sleep(Duration::from_millis(hint_ms.clamp(5, 500))).await;
            }
            Err(status) => panic!("adjust refused: {status:?}"),
        }
    }
}

fn set_quantity_calls(emulators: &Emulators) -> usize {
    emulators
        .shopify()
        .recorder()
        .requests()
        .iter()
        .filter(|request| request.body.contains("inventorySetQuantities"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_ten_thousand_changes_is_coalesced_within_the_shops_budget() {
    let emulators = shopify().await;
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(&dir.node_dir("node"), options(&dir))
        .await
        .unwrap();
    define_shopify(&dir, &node, &emulators).await;
    let tee_dc1 = key("acme", "TEE", "DC1");
    let tee_store1 = key("acme", "TEE", "STORE1");
    let mut client = inventory(&node).await;
    client.adjust(receive(&tee_dc1, "r-dc1", 50)).await.unwrap();
    client
        .adjust(receive(&tee_store1, "r-store1", 5))
        .await
        .unwrap();
    converges(&emulators, 50, 5, Duration::from_secs(10)).await;
    let before = set_quantity_calls(&emulators);

    // 10,000 changes at DC1 from 16 callers, each a sale and a restock in
    // turn, and two more sales for each of the first 8: DC1 ends at 34.
    let started = Instant::now();
    let callers: Vec<_> = (0..16)
        .map(|caller| {
            let mut client = client.clone();
            let tee_dc1 = tee_dc1.clone();
            tokio::spawn(async move {
                let changes = if caller < 8 { 626 } else { 624 };
                for n in 0..changes {
                    let delta = if n % 2 == 0 { -1 } else { 1 };
                    let delta = if caller < 8 && n >= 624 { -1 } else { delta };
                    let request = adjust(
                        &tee_dc1,
                        &format!("burst-{caller}-{n}"),
                        pb::Bucket::Available,
                        delta,
                    );
                    adjust_patiently(&mut client, request).await;
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    let burst = started.elapsed();
    converges(&emulators, 34, 5, Duration::from_secs(15)).await;
    let pushes = set_quantity_calls(&emulators) - before;
    eprintln!(
        "10,000 changes in {burst:?}: {pushes} inventorySetQuantities calls; budget violations {}",
        emulators.budget_violations()
    );
    // A decrease goes at once, one call in flight: at most one call per
    // reply during the burst, and far fewer than the changes.
    assert!(pushes >= 1, "nothing pushed");
    assert!(pushes <= 1_000, "{pushes} calls for 10,000 changes");
    assert_eq!(
        emulators.budget_violations(),
        0,
        "the shop's budget was exceeded"
    );

    let scrape = Scrape(node.http_get("/metrics").await.unwrap().1);
    let web = [("channel", "web")];
    let lag_p50 = scrape.quantile_bound("skuld_channel_push_lag_seconds", &web, 0.5);
    let lag_p99 = scrape.quantile_bound("skuld_channel_push_lag_seconds", &web, 0.99);
    let coalesced = scrape.or_zero("skuld_channel_coalesced_changes_total", &web);
    eprintln!(
        "push lag p50 <= {lag_p50:?} s, p99 <= {lag_p99:?} s; desired values folded into another push: {coalesced}"
    );
    // The worker saw more desired values than it sent: the rest were
    // folded into a later push.
    assert!(
        coalesced > pushes as f64,
        "{coalesced} folded, {pushes} pushes"
    );
    assert!(
        lag_p99.is_some_and(|p99| p99 <= 2.5),
        "push lag p99 {lag_p99:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storefront_orders_racing_the_pushes_converge_on_skulds_figure() {
    let emulators = shopify().await;
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(&dir.node_dir("node"), options(&dir))
        .await
        .unwrap();
    define_shopify(&dir, &node, &emulators).await;
    let tee_dc1 = key("acme", "TEE", "DC1");
    let mut client = inventory(&node).await;
    client.adjust(receive(&tee_dc1, "r-1", 30)).await.unwrap();
    converges(&emulators, 30, 0, Duration::from_secs(10)).await;

    // Storefront orders take units on the shop while skuld's stock moves:
    // the next compare is stale, and the worker reads back and sends again.
    let shop = Arc::new(emulators);
    for round in 0..5 {
        shop.shopify()
            .storefront_order(&[OrderLine {
                inventory_item_id: TEE,
                location_id: DC1,
                quantity: 2,
            }])
            .unwrap();
        client
            .adjust(adjust(
                &tee_dc1,
                &format!("sale-{round}"),
                pb::Bucket::Available,
                -1,
            ))
            .await
            .unwrap();
    }
    converges(&shop, 25, 0, Duration::from_secs(10)).await;
    let scrape = Scrape(node.http_get("/metrics").await.unwrap().1);
    let conflicts = scrape.or_zero("skuld_channel_conflicts_total", &[("channel", "web")]);
    eprintln!("stale compares: {conflicts}");
    assert!(conflicts >= 1.0, "no stale compare was met: {scrape:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_during_pushes_loses_none_and_a_channel_edit_is_reconciled() {
    let emulators = shopify().await;
    // Slow replies: the kill lands while pushes are in flight.
    emulators
        .shopify()
        .faults()
        .set_latency(Duration::from_millis(300));
    let dir = TestDir::new().unwrap();
    let mut node = TestNode::start(&dir.node_dir("node"), options(&dir))
        .await
        .unwrap();
    define_shopify(&dir, &node, &emulators).await;
    let tee_dc1 = key("acme", "TEE", "DC1");
    let tee_store1 = key("acme", "TEE", "STORE1");
    let mut client = inventory(&node).await;
    client.adjust(receive(&tee_dc1, "r-dc1", 12)).await.unwrap();
    client
        .adjust(receive(&tee_store1, "r-store1", 7))
        .await
        .unwrap();
    node.kill9().unwrap();
    emulators.shopify().faults().set_latency(Duration::ZERO);
    node.restart().await.unwrap();
    converges(&emulators, 12, 7, Duration::from_secs(15)).await;

    // Someone edits the figure on the shop: a reconciliation finds it and
    // puts skuld's back.
    assert!(emulators.shopify().edit_available(TEE, STORE1, 99));
    channels(&node)
        .await
        .reconcile_channel(pb::ReconcileChannelRequest {
            tenant: "acme".into(),
            channel: "web".into(),
        })
        .await
        .unwrap();
    converges(&emulators, 12, 7, Duration::from_secs(10)).await;
    let drift = channels(&node)
        .await
        .list_channel_drift(pb::ListChannelDriftRequest {
            tenant: "acme".into(),
            channel: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .drift;
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(
        (
            drift[0].sku.as_str(),
            drift[0].location.as_str(),
            drift[0].remote,
            drift[0].desired
        ),
        ("TEE", "STORE1", Some(99), 7)
    );
    // The drift is an event of the stream too, of the SKU's listing.
    let stream = events::read_all(node.channel().await.unwrap(), From::Start, QUIET)
        .await
        .unwrap();
    let found: Vec<&pb::Event> = stream
        .events
        .iter()
        .filter(|event| event.r#type == "skuld.inventory.channel.drift_detected.v1")
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (
            found[0].aggregate_kind.as_str(),
            found[0].aggregate_key.as_str()
        ),
        ("channel", "acme/web/TEE")
    );
    let data: serde_json::Value = serde_json::from_str(&found[0].data_json).unwrap();
    assert_eq!(
        (&data["location"], &data["remote"], &data["desired"]),
        (
            &serde_json::json!("STORE1"),
            &serde_json::json!(99),
            &serde_json::json!(7)
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_push_is_a_dead_letter_and_its_replay_sends_the_current_value() {
    let emulators = shopify().await;
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(&dir.node_dir("node"), options(&dir))
        .await
        .unwrap();
    define_shopify(&dir, &node, &emulators).await;
    // MUG has no Shopify item: every push of it is refused.
    let mut client = inventory(&node).await;
    client
        .adjust(receive(&key("acme", "MUG", "DC1"), "r-mug", 3))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let letters = loop {
        let letters = dead_letters(&node).await;
        if !letters.is_empty() {
            break letters;
        }
        assert!(Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        letters.iter().all(|letter| letter.sku == "MUG"),
        "{letters:?}"
    );
    assert!(!letters[0].code.is_empty(), "{letters:?}");

    // The mapping is added: the parked push stays parked (nothing new to
    // send) until a replay sends the current value.
    emulators.shopify().add_item(2002, "MUG");
    emulators
        .shopify()
        .seed_level(2002, DC1, Default::default());
    emulators
        .shopify()
        .seed_level(2002, STORE1, Default::default());
    map_mug(&node, Some("2002")).await;
    assert_eq!(
        emulators
            .shopify()
            .level(2002, DC1)
            .map(|levels| levels.available),
        Some(0),
        "a dead-lettered push went out without a replay"
    );
    let replayed = channels(&node)
        .await
        .replay_channel_dead_letters(pb::ReplayChannelDeadLettersRequest {
            tenant: "acme".into(),
            channel: "web".into(),
            ids: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .replayed;
    assert!(replayed >= 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while emulators
        .shopify()
        .level(2002, DC1)
        .map(|levels| levels.available)
        != Some(3)
    {
        assert!(Instant::now() < deadline, "the replay did not send MUG's 3");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = dead_letters(&node).await;
    assert!(left.is_empty(), "{left:?}");

    // A refused value followed by one the channel takes, without a replay:
    // the dead letter goes once the later value is acknowledged.
    map_mug(&node, None).await;
    client
        .adjust(receive(&key("acme", "MUG", "DC1"), "r-mug-2", 2))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while dead_letters(&node).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no dead letter for the unmapped 5"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    map_mug(&node, Some("2002")).await;
    client
        .adjust(receive(&key("acme", "MUG", "DC1"), "r-mug-3", 1))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while emulators
        .shopify()
        .level(2002, DC1)
        .map(|levels| levels.available)
        != Some(6)
    {
        assert!(Instant::now() < deadline, "MUG's 6 was not pushed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = dead_letters(&node).await;
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a dead letter stayed after a later value was taken: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sets (or removes) the channel's Shopify item of MUG, and gives the
/// worker time to rebuild its connector.
async fn map_mug(node: &TestNode, item: Option<&str>) {
    let mut definition = channels(node)
        .await
        .get_channel(pb::GetChannelRequest {
            tenant: "acme".into(),
            id: "web".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .channel
        .unwrap();
    match item {
        Some(item) => definition
            .account
            .insert("inventory_item_id.MUG".into(), item.into()),
        None => definition.account.remove("inventory_item_id.MUG"),
    };
    channels(node)
        .await
        .update_channel(pb::UpdateChannelRequest {
            channel: Some(definition),
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn dead_letters(node: &TestNode) -> Vec<pb::ChannelDeadLetter> {
    channels(node)
        .await
        .list_channel_dead_letters(pb::ListChannelDeadLettersRequest {
            tenant: "acme".into(),
            channel: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .dead_letters
}

/// The channel `marketplace` of tenant `acme` on the emulated Amazon
/// seller account: TEE's quantity is DC1's and STORE1's summed.
async fn define_amazon(dir: &TestDir, node: &TestNode, emulators: &Emulators) {
    let amazon = emulators.amazon();
    let config = amazon.config();
    let credentials = tenant_file(dir, "amazon.json");
    std::fs::write(
        &credentials,
        serde_json::json!({
            "client_id": config.client_id,
            "client_secret": config.client_secret,
            "refresh_token": config.refresh_token,
        })
        .to_string(),
    )
    .unwrap();
    let account = HashMap::from([
        ("base_url".to_owned(), amazon.base_url().to_owned()),
        ("seller_id".to_owned(), amazon.seller_id().to_owned()),
        (
            "marketplace_id".to_owned(),
            amazon.marketplace_id().to_owned(),
        ),
    ]);
    channels(node)
        .await
        .create_channel(pb::CreateChannelRequest {
            channel: Some(pb::Channel {
                tenant: "acme".into(),
                id: "marketplace".into(),
                kind: pb::ChannelKind::Amazon.into(),
                network: vec!["DC1".into(), "STORE1".into()],
                priority: 1,
                min_push_interval_ms: 200,
                account,
                credentials_ref: format!("file:{}", credentials.display()),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
}

async fn amazon_shows(emulators: &Emulators, quantity: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let shown = emulators.amazon().quantity("TEE");
        if shown == Some(quantity) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Amazon shows {shown:?}, not {quantity}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amazon_accepted_is_confirmed_by_read_back_and_a_dropped_apply_is_sent_again() {
    let emulators = Emulators::start(EmulatorsConfig::default()).await.unwrap();
    emulators.amazon().add_listing("TEE", "PRODUCT", 0);
    // ACCEPTED lands later: the worker must not count it applied before.
    emulators
        .amazon()
        .set_apply_delay(Duration::from_millis(400));
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(
        &dir.node_dir("node"),
        options(&dir).arg("--channel-confirm-within-secs", 2),
    )
    .await
    .unwrap();
    define_amazon(&dir, &node, &emulators).await;
    let mut client = inventory(&node).await;
    client
        .adjust(receive(&key("acme", "TEE", "DC1"), "r-dc1", 10))
        .await
        .unwrap();
    client
        .adjust(receive(&key("acme", "TEE", "STORE1"), "r-store1", 4))
        .await
        .unwrap();
    amazon_shows(&emulators, 14, Duration::from_secs(10)).await;

    // The next accepted patch is never applied (Amazon's "accepted, but the
    // quantity never changed"): the read-back sees it and the worker sends
    // it again once the confirmation window is over.
    emulators.amazon().drop_next_applies(1);
    client
        .adjust(adjust(
            &key("acme", "TEE", "DC1"),
            "sale-1",
            pb::Bucket::Available,
            -3,
        ))
        .await
        .unwrap();
    amazon_shows(&emulators, 11, Duration::from_secs(15)).await;
    let scrape = Scrape(node.http_get("/metrics").await.unwrap().1);
    let marketplace = [("channel", "marketplace")];
    let unapplied = scrape.or_zero("skuld_channel_unapplied_total", &marketplace);
    let accepted = scrape.or_zero(
        "skuld_channel_pushes_total",
        &[("channel", "marketplace"), ("outcome", "accepted")],
    );
    eprintln!("amazon: {accepted} accepted pushes, {unapplied} never applied and sent again");
    assert!(unapplied >= 1.0, "the dropped apply was not noticed");
    assert_eq!(emulators.budget_violations(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_change_reaches_the_channel_with_no_stock_moving() {
    let emulators = shopify().await;
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(&dir.node_dir("node"), options(&dir))
        .await
        .unwrap();
    define_shopify(&dir, &node, &emulators).await;
    let mut client = inventory(&node).await;
    client
        .adjust(receive(&key("acme", "TEE", "DC1"), "r-dc1", 10))
        .await
        .unwrap();
    client
        .adjust(receive(&key("acme", "TEE", "STORE1"), "r-store1", 5))
        .await
        .unwrap();
    converges(&emulators, 10, 5, Duration::from_secs(10)).await;

    // A buffer of 3 on TEE: both lines drop at once.
    channels(&node)
        .await
        .set_controls(pb::SetControlsRequest {
            tenant: "acme".into(),
            channel_id: "web".into(),
            controls: vec![pb::ChannelControl {
                id: "hold".into(),
                priority: 1,
                scope: Some(pb::ControlScope {
                    sku: "TEE".into(),
                    location: String::new(),
                }),
                kind: Some(pb::channel_control::Kind::QuantityBuffer(
                    pb::channel_control::QuantityBuffer { units: 3 },
                )),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    converges(&emulators, 7, 2, Duration::from_secs(10)).await;

    // STORE1 leaves the network: the shop must not go on selling its 2.
    let mut definition = channels(&node)
        .await
        .get_channel(pb::GetChannelRequest {
            tenant: "acme".into(),
            id: "web".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .channel
        .unwrap();
    definition.network = vec!["DC1".into()];
    channels(&node)
        .await
        .update_channel(pb::UpdateChannelRequest {
            channel: Some(definition),
            ..Default::default()
        })
        .await
        .unwrap();
    converges(&emulators, 7, 0, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_defined_after_the_stock_moved_gets_it_on_a_sync() {
    let emulators = shopify().await;
    emulators.amazon().add_listing("TEE", "PRODUCT", 0);
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(&dir.node_dir("node"), options(&dir))
        .await
        .unwrap();
    define_shopify(&dir, &node, &emulators).await;
    let mut client = inventory(&node).await;
    client
        .adjust(receive(&key("acme", "TEE", "DC1"), "r-dc1", 10))
        .await
        .unwrap();
    client
        .adjust(receive(&key("acme", "TEE", "STORE1"), "r-store1", 4))
        .await
        .unwrap();
    converges(&emulators, 10, 4, Duration::from_secs(10)).await;

    // Amazon is defined after the stock moved: nothing marks TEE for it
    // until a sync names it.
    define_amazon(&dir, &node, &emulators).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(emulators.amazon().quantity("TEE"), Some(0));
    let queued = channels(&node)
        .await
        .sync_channel(pb::SyncChannelRequest {
            tenant: "acme".into(),
            channel: "marketplace".into(),
            skus: vec!["TEE".into(), "TEE".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .queued;
    assert_eq!(queued, 1);
    amazon_shows(&emulators, 14, Duration::from_secs(10)).await;
}
