//! The push worker in cluster mode (issue 16: "a node killed and shards
//! moved during pushes: no push lost, none applied with an old value after
//! a newer one was acknowledged").
//!
//! Three nodes with real etcd and PostgreSQL push one Shopify channel (the
//! emulator, in process): 24 SKUs at 3 locations, so the push keys spread
//! over every node's shards. While sales stream in through the nodes, one
//! node is killed -9 (its shards move after the lease TTL), a fourth joins
//! (shards move to it) and another is drained with SIGTERM. Then:
//! * (a) the shop shows exactly skuld's figure for every SKU x location
//!   (`GetChannelAvailability`, checked against the positions);
//! * (b) within the lease TTL + 15 s of the last sale, and every dirty
//!   record is gone after (the work was acknowledged);
//! * (c) from the emulator's recorder, every `inventorySetQuantities`
//!   replayed through Shopify's rules (all or nothing, the compare of
//!   `changeFromQuantity`, an `@idempotent` key runs once) gives, per
//!   (item, location), the sequence of applied quantities: it must be a
//!   subsequence of the position's history in version order (each applied
//!   value one skuld had, never one older than a value applied before it),
//!   and nothing but the final figure is applied once the final figure was.
//!   Sales only take stock away, so each figure has one version and the
//!   check is exact. Stale compares (CHANGE_FROM_QUANTITY_STALE) are
//!   counted: they are what stops a stale writer; a set without a compare
//!   is refused outright (every level is read back before its first push).
//!
//! The shop answers in 250 ms meanwhile, and the SKUs are sold in three
//! groups, each group's last sales right before a fault (the kill, the
//! drain), so what a node still had to push then must survive it rather
//! than be washed out by later changes. Removing both of the worker's
//! durabilities (the dirty record kept until every target is acknowledged,
//! and the known keys loaded on a shard gain) loses pushes here: the shop
//! keeps showing more than skuld has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use skuld_emulators::{Emulators, EmulatorsConfig, RecordedRequest};
use skuld_proto::v1 as pb;
use skuld_proto::v1::channel_service_client::ChannelServiceClient;
use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
use skuld_tests::cluster::{node_id, ClusterOptions, TestCluster, TEST_LEASE_TTL_SECS};
use skuld_tests::metrics::Scrape;
use skuld_tests::requests::{adjust, get, key, receive};
use skuld_tests::workload::{channel, next_random};
use skuld_tests::{events, NodeOptions, TestDir};
use tokio::sync::RwLock;
use tonic::transport::Channel;

const TENANT: &str = "acme";
const CHANNEL: &str = "web";
/// skuld's locations and their Shopify ids.
const LOCATIONS: [(&str, u64); 3] = [("DC1", 1), ("DC2", 2), ("STORE1", 3)];
/// SKUs besides TEE, named by their Shopify item id (used as is).
const NUMBERED_SKUS: u64 = 23;
/// Each position's receipt before the sales.
const STOCK: i64 = 400;
/// Units sold per position at most: the figures stay positive.
const MAX_SOLD: i64 = 300;
const SELLERS: u64 = 6;
/// The shop's reply latency while the cluster changes.
const LATENCY_MS: u64 = 250;

/// `(skuld SKU, Shopify inventory item id)`.
fn skus() -> Vec<(String, u64)> {
    let mut skus = vec![("TEE".to_owned(), 1001)];
    skus.extend((0..NUMBERED_SKUS).map(|n| ((5001 + n).to_string(), 5001 + n)));
    skus
}

/// Every position of the channel's network, with its Shopify level.
fn positions() -> Vec<(pb::PositionKey, (u64, u64))> {
    let mut all = Vec::new();
    for (sku, item) in skus() {
        for (location, location_id) in LOCATIONS {
            all.push((key(TENANT, &sku, location), (item, location_id)));
        }
    }
    all
}

/// Nodes whose channel workers look often, so the test waits little.
fn options(secrets: &TestDir) -> NodeOptions {
    NodeOptions::default()
        .arg("--channel-credentials-dir", secrets.path().display())
        .arg("--channel-poll-interval-ms", 50)
        .arg("--channel-confirm-after-ms", 200)
}

async fn shopify() -> Emulators {
    let emulators = Emulators::start(EmulatorsConfig::default()).await.unwrap();
    let shop = emulators.shopify();
    for (location, id) in LOCATIONS {
        shop.add_location(id, location);
    }
    for (sku, item) in skus() {
        shop.add_item(item, &sku);
        for (_, location) in LOCATIONS {
            shop.seed_level(item, location, Default::default());
        }
    }
    emulators
}

async fn channels(cluster: &TestCluster, index: usize) -> ChannelServiceClient<Channel> {
    ChannelServiceClient::new(cluster.node(index).channel().await.unwrap())
}

/// The channel `web` of tenant `acme` on the emulated shop, per location.
async fn define_shopify(cluster: &TestCluster, secrets: &TestDir, emulators: &Emulators) {
    let own = secrets.path().join("acme");
    std::fs::create_dir_all(&own).unwrap();
    let credentials = own.join("shopify.json");
    std::fs::write(
        &credentials,
        serde_json::json!({ "access_token": emulators.shopify().access_token() }).to_string(),
    )
    .unwrap();
    let mut account = HashMap::from([
        (
            "base_url".to_owned(),
            emulators.shopify().base_url().to_owned(),
        ),
        ("inventory_item_id.TEE".to_owned(), "1001".to_owned()),
    ]);
    for (location, id) in LOCATIONS {
        account.insert(format!("location_id.{location}"), id.to_string());
    }
    channels(cluster, 0)
        .await
        .create_channel(pb::CreateChannelRequest {
            channel: Some(pb::Channel {
                tenant: TENANT.into(),
                id: CHANNEL.into(),
                kind: pb::ChannelKind::Shopify.into(),
                network: LOCATIONS.iter().map(|(name, _)| (*name).into()).collect(),
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

/// Sends one adjustment (one idempotency key) to the live nodes in turn
/// until one answers; returns the attempts it took.
async fn send(
    addresses: &RwLock<Vec<String>>,
    clients: &mut HashMap<String, InventoryServiceClient<Channel>>,
    turn: &mut usize,
    request: &pb::AdjustRequest,
) -> u64 {
    let started = Instant::now();
    for attempt in 1.. {
        let address = {
            let addresses = addresses.read().await;
            addresses[*turn % addresses.len()].clone()
        };
        *turn += 1;
        if !clients.contains_key(&address) {
            if let Ok(channel) = channel(&address).await {
                clients.insert(address.clone(), InventoryServiceClient::new(channel));
            }
        }
        if let Some(client) = clients.get_mut(&address) {
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(Duration::from_secs(2));
            match client.adjust(call).await {
                Ok(_) => return attempt,
                Err(status) => {
                    assert!(
                        skuld_proto::retry::worth_retrying(status.code()),
                        "adjust refused: {status:?}"
                    );
                    clients.remove(&address);
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "{request:?} not answered within 40 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
}

/// What the sellers did.
#[derive(Default)]
struct Sales {
    sent: AtomicU64,
    retried: AtomicU64,
}

/// The group of the position at `at` in [`positions`]: by SKU, so a push
/// key's targets are in one group.
fn group(at: usize) -> u64 {
    ((at / LOCATIONS.len()) % 3) as u64
}

/// Sells one or two units of a random position, again and again, through
/// the live nodes, until `stop`; each position loses at most `MAX_SOLD`.
/// Only the positions of groups `phase` and above are sold: a group's last
/// sales come right before a fault, so what is still to push then must
/// survive it, not be washed out by later changes.
async fn sell(
    seller: u64,
    addresses: Arc<RwLock<Vec<String>>>,
    sold: Arc<Vec<AtomicI64>>,
    sales: Arc<Sales>,
    phase: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let all = positions();
    let mut seed = 0x9e37_79b9_7f4a_7c15 ^ (seller + 1);
    let mut clients = HashMap::new();
    let mut turn = seller as usize;
    let mut n = 0;
    while !stop.load(Ordering::Acquire) {
        let at = (next_random(&mut seed) % all.len() as u64) as usize;
        if group(at) < phase.load(Ordering::Acquire) {
            continue;
        }
        let units = 1 + (next_random(&mut seed) % 2) as i64;
        if sold[at].fetch_add(units, Ordering::AcqRel) + units > MAX_SOLD {
            sold[at].fetch_sub(units, Ordering::AcqRel);
            continue;
        }
        let request = adjust(
            &all[at].0,
            &format!("sale-{seller}-{n}"),
            pb::Bucket::Available,
            -units,
        );
        n += 1;
        let attempts = send(&addresses, &mut clients, &mut turn, &request).await;
        sales.sent.fetch_add(1, Ordering::Relaxed);
        sales.retried.fetch_add(attempts - 1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// skuld's figure for every (item, location): the channel's availability,
/// each line checked against its position's available quantity.
async fn truth(cluster: &TestCluster, index: usize) -> BTreeMap<(u64, u64), i64> {
    let answer = channels(cluster, index)
        .await
        .get_channel_availability(pb::GetChannelAvailabilityRequest {
            tenant: TENANT.into(),
            channel_id: CHANNEL.into(),
            skus: skus().into_iter().map(|(sku, _)| sku).collect(),
            per_location: true,
        })
        .await
        .unwrap()
        .into_inner();
    let items: HashMap<String, u64> = skus().into_iter().collect();
    let locations: HashMap<&str, u64> = LOCATIONS.into_iter().collect();
    let mut figures = BTreeMap::new();
    for sku in answer.skus {
        for line in sku.locations {
            figures.insert(
                (items[&sku.sku], locations[line.location.as_str()]),
                line.available_to_sell,
            );
        }
    }
    assert_eq!(figures.len(), positions().len(), "{figures:?}");
    let mut client = cluster.inventory(index).await.unwrap();
    for (position, level) in positions() {
        let available = client
            .get_position(get(&position))
            .await
            .unwrap()
            .into_inner()
            .position
            .unwrap()
            .buckets
            .unwrap()
            .available;
        assert_eq!(
            figures[&level],
            available.max(0),
            "{position:?}: the channel's line and the position differ"
        );
    }
    figures
}

fn shown(emulators: &Emulators) -> BTreeMap<(u64, u64), i64> {
    emulators
        .shopify()
        .levels()
        .into_iter()
        .map(|row| {
            (
                (row.inventory_item_id, row.location_id),
                row.levels.available,
            )
        })
        .collect()
}

/// Waits until the shop shows `figures`; returns how long it took.
async fn converges(
    emulators: &Emulators,
    figures: &BTreeMap<(u64, u64), i64>,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let now = shown(emulators);
        if &now == figures {
            return started.elapsed();
        }
        if started.elapsed() > within {
            let wrong: Vec<_> = figures
                .iter()
                .filter(|(level, figure)| now.get(level) != Some(figure))
                .map(|(level, figure)| (level, figure, now.get(level)))
                .collect();
            panic!(
                "the shop differs from skuld at {} levels after {within:?} (level, skuld, shop): {wrong:?}",
                wrong.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The number a Shopify gid ends with.
fn gid_number(value: &Value) -> u64 {
    value
        .as_str()
        .and_then(|gid| gid.rsplit('/').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("not a gid: {value}"))
}

/// The recorder's `inventorySetQuantities` calls replayed through
/// Shopify's rules.
#[derive(Default, Debug)]
struct Replayed {
    /// Per level: `(recorder seq, quantity)` of every applied line.
    applied: BTreeMap<(u64, u64), Vec<(u64, i64)>>,
    /// What each level shows after the replay.
    shows: BTreeMap<(u64, u64), i64>,
    calls: u64,
    applied_calls: u64,
    /// Calls refused because a line's compare was stale, and those lines.
    stale_calls: u64,
    stale_lines: u64,
    /// Calls whose idempotency key had run already (replayed payloads).
    repeated_keys: u64,
    /// Refused for the budget or by an injected fault.
    throttled: u64,
    blind_lines: u64,
}

fn replay(requests: &[RecordedRequest], levels: impl Iterator<Item = (u64, u64)>) -> Replayed {
    let mut replayed = Replayed {
        shows: levels.map(|level| (level, 0)).collect(),
        ..Replayed::default()
    };
    let mut keys = HashSet::new();
    let mut requests: Vec<&RecordedRequest> = requests
        .iter()
        .filter(|request| request.body.contains("inventorySetQuantities"))
        .collect();
    requests.sort_by_key(|request| request.seq);
    for request in requests {
        replayed.calls += 1;
        if request.throttled || request.fault_injected || request.status != 200 {
            replayed.throttled += 1;
            continue;
        }
        let body: Value = serde_json::from_str(&request.body).unwrap();
        let variables = &body["variables"];
        let key = variables["key"].as_str().unwrap().to_owned();
        if !keys.insert(key) {
            replayed.repeated_keys += 1;
            continue;
        }
        let lines: Vec<((u64, u64), i64, Option<i64>)> = variables["input"]["quantities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|line| {
                (
                    (
                        gid_number(&line["inventoryItemId"]),
                        gid_number(&line["locationId"]),
                    ),
                    line["quantity"].as_i64().unwrap(),
                    line["changeFromQuantity"].as_i64(),
                )
            })
            .collect();
        let stale = lines
            .iter()
            .filter(|(level, _, from)| {
                from.is_some_and(|from| Some(&from) != replayed.shows.get(level))
            })
            .count() as u64;
        if stale > 0 {
            // All or nothing: one stale line refuses the whole call.
            replayed.stale_calls += 1;
            replayed.stale_lines += stale;
            continue;
        }
        replayed.applied_calls += 1;
        for (level, quantity, from) in lines {
            if from.is_none() {
                replayed.blind_lines += 1;
            }
            replayed.shows.insert(level, quantity);
            replayed
                .applied
                .entry(level)
                .or_default()
                .push((request.seq, quantity));
        }
    }
    replayed
}

/// A position's figures in version order, from 0 before its first event.
async fn figures_in_version_order(cluster: &TestCluster, position: &pb::PositionKey) -> Vec<i64> {
    let history = events::history(cluster.node(0).channel().await.unwrap(), position)
        .await
        .unwrap();
    let mut by_version: BTreeMap<u64, i64> = BTreeMap::new();
    for event in history {
        let data: Value = serde_json::from_str(&event.data_json).unwrap();
        let available = data["after"]["available"]
            .as_i64()
            .unwrap_or_else(|| panic!("no after.available in {data}"));
        by_version.insert(event.aggregate_version, available.max(0));
    }
    std::iter::once(0).chain(by_version.into_values()).collect()
}

/// The applied values that break the version order: each must be found in
/// `figures` at or after the place of the one applied before it.
fn out_of_order(figures: &[i64], applied: &[(u64, i64)]) -> Vec<String> {
    let mut at = 0;
    let mut wrong = Vec::new();
    for (seq, value) in applied {
        match figures[at..].iter().position(|figure| figure == value) {
            Some(offset) => at += offset,
            None => wrong.push(format!(
                "request {seq} applied {value} after {} (version order {}..)",
                figures[at], at
            )),
        }
    }
    wrong
}

async fn dirty_records(cluster: &TestCluster) -> i64 {
    let (client, connection) =
        tokio_postgres::connect(&cluster.postgres_url, tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    client
        .query_one(
            "SELECT count(*) FROM records WHERE kind = 'channel_dirty'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn metric(scrapes: &[Scrape], name: &str, labels: &[(&str, &str)]) -> f64 {
    scrapes
        .iter()
        .map(|scrape| scrape.or_zero(name, labels))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_survive_a_killed_node_a_join_and_a_drain_without_loss_or_regression() {
    let started = Instant::now();
    let emulators = shopify().await;
    // The channel credentials, where the nodes let tenant acme read.
    let secrets = TestDir::new().unwrap();
    let mut cluster = TestCluster::start_with(
        3,
        ClusterOptions {
            node: options(&secrets),
            ..ClusterOptions::default()
        },
    )
    .await
    .unwrap();
    define_shopify(&cluster, &secrets, &emulators).await;
    let all = positions();

    // Stock: every position receives STOCK; the shop shows it.
    let addresses = Arc::new(RwLock::new(cluster.addresses()));
    let mut clients = HashMap::new();
    let mut turn = 0;
    for (position, _) in &all {
        let request = receive(
            position,
            &format!("stock-{}-{}", position.sku, position.location),
            STOCK,
        );
        send(&addresses, &mut clients, &mut turn, &request).await;
    }
    let stocked: BTreeMap<(u64, u64), i64> = all.iter().map(|(_, level)| (*level, STOCK)).collect();
    let took = converges(&emulators, &stocked, Duration::from_secs(20)).await;
    eprintln!(
        "cluster up and {} levels stocked, the shop showing them {took:?} after the last receipt ({:?} in all)",
        all.len(),
        started.elapsed()
    );

    // Sales stream in through the nodes while the cluster changes; slow
    // replies keep pushes in flight when nodes die, drain and hand over.
    emulators
        .shopify()
        .faults()
        .set_latency(Duration::from_millis(LATENCY_MS));
    let stop = Arc::new(AtomicBool::new(false));
    let sold: Arc<Vec<AtomicI64>> = Arc::new(all.iter().map(|_| AtomicI64::new(0)).collect());
    let sales = Arc::new(Sales::default());
    let phase = Arc::new(AtomicU64::new(0));
    let sellers: Vec<_> = (0..SELLERS)
        .map(|seller| {
            tokio::spawn(sell(
                seller,
                Arc::clone(&addresses),
                Arc::clone(&sold),
                Arc::clone(&sales),
                Arc::clone(&phase),
                Arc::clone(&stop),
            ))
        })
        .collect();
    let streaming = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // kill -9 of node 1, right after the last sales of group 0: its shards
    // (positions and push keys) move to the others once its lease expires.
    phase.store(1, Ordering::Release);
    *addresses.write().await = vec![
        cluster.node(0).grpc_addr.clone(),
        cluster.node(2).grpc_addr.clone(),
    ];
    cluster.kill9(1).unwrap();
    let moved = cluster.wait_settled(Duration::from_secs(30)).await.unwrap();
    eprintln!("node-1 killed: its shards moved in {moved:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A fourth node joins: shards move to it from the live owners.
    let joined = cluster.add_node(NodeOptions::default()).await.unwrap();
    *addresses.write().await = cluster.addresses();
    let moved = cluster.wait_settled(Duration::from_secs(30)).await.unwrap();
    eprintln!("node-{joined} joined: shards moved to it in {moved:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // node 2 drains (SIGTERM) and leaves, right after the last sales of
    // group 1.
    phase.store(2, Ordering::Release);
    *addresses.write().await = vec![
        cluster.node(0).grpc_addr.clone(),
        cluster.node(joined).grpc_addr.clone(),
    ];
    let drained = cluster.terminate(2).await.unwrap();
    let moved = cluster.wait_settled(Duration::from_secs(30)).await.unwrap();
    eprintln!("node-2 drained in {drained:?}; settled {moved:?} after");
    tokio::time::sleep(Duration::from_secs(2)).await;

    stop.store(true, Ordering::Release);
    for seller in sellers {
        seller.await.unwrap();
    }
    let sales_done = Instant::now();
    let streamed = streaming.elapsed();

    // (a) and (b): the shop converges to skuld's figures within the bound.
    let figures = truth(&cluster, 0).await;
    let bound = Duration::from_secs(TEST_LEASE_TTL_SECS + 15);
    converges(
        &emulators,
        &figures,
        bound.saturating_sub(sales_done.elapsed()),
    )
    .await;
    let convergence = sales_done.elapsed();
    // The work is acknowledged: no dirty record is left behind.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = dirty_records(&cluster).await;
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} dirty records left 10 s after the shop converged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sold_units: i64 = sold.iter().map(|units| units.load(Ordering::Acquire)).sum();
    assert_eq!(
        figures.values().sum::<i64>(),
        STOCK * all.len() as i64 - sold_units,
        "skuld's figures do not add up to the stock less the sales"
    );

    // (c): the applied values, per level, follow skuld's version order.
    let requests = emulators.shopify().recorder().requests();
    let replayed = replay(&requests, all.iter().map(|(_, level)| *level));
    assert_eq!(
        replayed.shows,
        shown(&emulators),
        "the replay of the recorder does not end where the shop is: the check below would mean nothing"
    );
    let mut wrong = Vec::new();
    let mut after_final = 0;
    let mut applied_lines = 0;
    for (position, level) in &all {
        let applied = replayed.applied.get(level).cloned().unwrap_or_default();
        applied_lines += applied.len();
        let order = figures_in_version_order(&cluster, position).await;
        for problem in out_of_order(&order, &applied) {
            wrong.push(format!("{}@{}: {problem}", position.sku, position.location));
        }
        // Once the final figure is applied, nothing else is.
        let last = figures[level];
        if let Some(first) = applied.iter().position(|(_, value)| *value == last) {
            after_final += applied[first..]
                .iter()
                .filter(|(_, value)| *value != last)
                .count();
        }
    }
    let scrapes: Vec<Scrape> = {
        let mut scrapes = Vec::new();
        for index in cluster.live() {
            scrapes.push(Scrape(
                cluster.node(index).http_get("/metrics").await.unwrap().1,
            ));
        }
        scrapes
    };
    let web = [("channel", CHANNEL)];
    eprintln!(
        "{} sales ({sold_units} units, {} retried sends) over {streamed:?} through a kill -9, a join and a drain; \
         the shop converged {convergence:?} after the last sale (bound {bound:?})",
        sales.sent.load(Ordering::Relaxed),
        sales.retried.load(Ordering::Relaxed),
    );
    eprintln!(
        "inventorySetQuantities: {} calls, {} applied ({applied_lines} lines, {} blind), {} refused stale \
         ({} stale lines), {} repeated keys, {} throttled; budget violations {}; \
         survivors' metrics: {} conflicts, {} applied pushes",
        replayed.calls,
        replayed.applied_calls,
        replayed.blind_lines,
        replayed.stale_calls,
        replayed.stale_lines,
        replayed.repeated_keys,
        replayed.throttled,
        emulators.budget_violations(),
        metric(&scrapes, "skuld_channel_conflicts_total", &web),
        metric(
            &scrapes,
            "skuld_channel_pushes_total",
            &[("channel", CHANNEL), ("outcome", "applied")]
        ),
    );
    eprintln!(
        "applied out of version order: {}; applied other than the final figure after it: {after_final}; test took {:?}",
        wrong.len(),
        started.elapsed()
    );
    assert!(
        wrong.is_empty(),
        "values applied out of skuld's version order:\n{}",
        wrong.join("\n")
    );
    assert_eq!(
        after_final, 0,
        "an older value was applied after the final one"
    );
    // Every level is stocked and read back before its first push: a set
    // without a compare could overwrite a newer value unseen.
    assert_eq!(
        replayed.blind_lines, 0,
        "lines set without changeFromQuantity"
    );
    assert!(
        sold_units > 0 && replayed.applied_calls > 1,
        "nothing happened"
    );
}

#[test]
fn the_order_check_finds_an_old_value_applied_late() {
    // Figures in version order: 0, then 400 received, then sales.
    let figures = [0, 400, 398, 397, 395];
    assert!(out_of_order(&figures, &[(1, 0), (2, 400), (3, 397), (4, 395)]).is_empty());
    // The same figure again (a re-assertion) is in order.
    assert!(out_of_order(&figures, &[(1, 400), (2, 397), (3, 397)]).is_empty());
    // 398 is older than 397, applied before it.
    assert_eq!(
        out_of_order(&figures, &[(1, 400), (2, 397), (3, 398), (4, 395)]).len(),
        1
    );
    // A figure skuld never had.
    assert_eq!(out_of_order(&figures, &[(1, 396)]).len(), 1);
}

#[test]
fn the_replay_applies_shopifys_rules() {
    let call = |seq: u64, key: &str, lines: &[(u64, i64, Option<i64>)]| {
        RecordedRequest {
        seq,
        method: "POST".into(),
        path: "/admin/api/2026-04/graphql.json".into(),
        query: None,
        body: serde_json::json!({
            "query": "mutation { inventorySetQuantities }",
            "variables": {
                "key": key,
                "input": {"quantities": lines.iter().map(|(location, quantity, from)| serde_json::json!({
                    "inventoryItemId": "gid://shopify/InventoryItem/7",
                    "locationId": format!("gid://shopify/Location/{location}"),
                    "quantity": quantity,
                    "changeFromQuantity": from,
                })).collect::<Vec<_>>()},
            },
        })
        .to_string(),
        status: 200,
        throttled: false,
        fault_injected: false,
        reply_dropped: false,
        at_ms: seq,
        unix_ms: seq,
    }
    };
    let requests = [
        call(0, "a", &[(1, 10, Some(0)), (2, 5, Some(0))]),
        // Stale on location 2: nothing of the call applies.
        call(1, "b", &[(1, 9, Some(10)), (2, 4, Some(0))]),
        // The same key again: Shopify replays the first answer.
        call(2, "a", &[(1, 10, Some(0)), (2, 5, Some(0))]),
        call(3, "c", &[(1, 8, Some(10))]),
    ];
    let replayed = replay(&requests, [(7, 1), (7, 2)].into_iter());
    assert_eq!(replayed.shows, BTreeMap::from([((7, 1), 8), ((7, 2), 5)]));
    assert_eq!(
        (
            replayed.applied_calls,
            replayed.stale_calls,
            replayed.stale_lines,
            replayed.repeated_keys
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(replayed.applied[&(7, 1)], vec![(0, 10), (3, 8)]);
}

/// The Walmart channel of the blind-write test: one SKU, shown per SKU on
/// the seller's default ship node.
const WALMART: &str = "wm";
const MUG: &str = "MUG";
/// The former owner's write sits this long in the channel before it
/// applies, so it is still in flight when the shard moves.
/// Long enough for the drain to move every shard first on a loaded machine.
const SLOW_APPLY: Duration = Duration::from_secs(6);
/// The nodes' push deadline: longer than `SLOW_APPLY`, so the slow write is
/// not abandoned but lands.
const PUSH_DEADLINE_MS: u64 = 8_000;

async fn define_walmart(cluster: &TestCluster, secrets: &TestDir, emulators: &Emulators) {
    let own = secrets.path().join(TENANT);
    std::fs::create_dir_all(&own).unwrap();
    let credentials = own.join("walmart.json");
    let config = emulators.walmart().config();
    std::fs::write(
        &credentials,
        serde_json::json!({ "client_id": config.client_id, "client_secret": config.client_secret })
            .to_string(),
    )
    .unwrap();
    channels(cluster, 0)
        .await
        .create_channel(pb::CreateChannelRequest {
            channel: Some(pb::Channel {
                tenant: TENANT.into(),
                id: WALMART.into(),
                kind: pb::ChannelKind::Walmart.into(),
                network: vec!["DC1".into()],
                priority: 1,
                account: HashMap::from([(
                    "base_url".to_owned(),
                    emulators.walmart().base_url().to_owned(),
                )]),
                credentials_ref: format!("file:{}", credentials.display()),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
}

/// The amounts Walmart applied for `sku`, in the order it applied them.
fn walmart_applied(emulators: &Emulators, sku: &str) -> Vec<i64> {
    emulators
        .walmart()
        .recorder()
        .requests_to("/v3/inventory")
        .into_iter()
        .filter(|request| {
            request.method == "PUT"
                && request.status == 200
                && request
                    .query
                    .as_deref()
                    .is_some_and(|query| query.contains(&format!("sku={sku}")))
        })
        .filter_map(|request| {
            let body: Value = serde_json::from_str(&request.body).ok()?;
            body["quantity"]["amount"].as_i64()
        })
        .collect()
}

/// Walmart's `PUT /v3/inventory` overwrites whatever the item shows: no
/// compare refuses a stale write as Shopify's does. A node whose write is
/// still in flight when its shard moves (drained here, so the node and its
/// connection stay up) must not have it land after the new owner's newer
/// write was acknowledged. The new owner waits out the former owner's push
/// deadline before its first read-back and push on such a channel; without
/// that wait (`quiet_until` in the worker) it reads the old figure, pushes
/// at once, and the slow write lands over it: Walmart then applies 100,
/// 85, 90 and goes on showing 90 while skuld has 85.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blind_channel_gets_no_write_of_the_former_owner_after_the_new_owners() {
    let emulators = Emulators::start(EmulatorsConfig::default()).await.unwrap();
    emulators.walmart().add_item(MUG, 0);
    let ship_node = emulators.walmart().default_ship_node().to_owned();
    let secrets = TestDir::new().unwrap();
    let cluster = TestCluster::start_with(
        2,
        ClusterOptions {
            node: options(&secrets).arg("--channel-push-deadline-ms", PUSH_DEADLINE_MS),
            ..ClusterOptions::default()
        },
    )
    .await
    .unwrap();
    define_walmart(&cluster, &secrets, &emulators).await;
    let position = key(TENANT, MUG, "DC1");
    let mut inventory = InventoryServiceClient::new(cluster.node(0).channel().await.unwrap());
    inventory
        .adjust(receive(&position, "mug-stock", 100))
        .await
        .unwrap();
    let shows = |expected: i64| {
        let emulators = &emulators;
        let ship_node = ship_node.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while emulators.walmart().quantity(MUG, &ship_node) != Some(expected) {
                assert!(
                    Instant::now() < deadline,
                    "Walmart shows {:?}, not {expected}; applied {:?}",
                    emulators.walmart().quantity(MUG, &ship_node),
                    walmart_applied(emulators, MUG)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    shows(100).await;

    // The node that pushed it owns the key.
    let mut owner = None;
    for index in cluster.live() {
        let scrape = Scrape(cluster.node(index).http_get("/metrics").await.unwrap().1);
        if scrape.or_zero("skuld_channel_pushes_total", &[("channel", WALMART)]) > 0.0 {
            owner = Some(index);
        }
    }
    let owner = owner.expect("a node pushed the receipt");
    let other = 1 - owner;

    // A sale; its push (90) waits in Walmart while the owner is drained.
    emulators.walmart().faults().set_latency(SLOW_APPLY);
    let sold_at = Instant::now();
    inventory
        .adjust(adjust(&position, "mug-sale-1", pb::Bucket::Available, -10))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    emulators.walmart().faults().set_latency(Duration::ZERO);
    let mut admin = cluster.admin(other).await.unwrap();
    admin
        .drain_node(pb::DrainNodeRequest {
            node_id: node_id(owner),
        })
        .await
        .unwrap();
    let other_id = node_id(other);
    let moved = Instant::now();
    while !cluster
        .shard_owners(other)
        .await
        .unwrap()
        .iter()
        .all(|shard_owner| *shard_owner == other_id)
    {
        assert!(
            moved.elapsed() < Duration::from_secs(20),
            "the drain did not move every shard"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !walmart_applied(&emulators, MUG).contains(&90),
        "the first sale's push landed before the shards moved ({:?} after it): nothing was raced",
        sold_at.elapsed()
    );

    // A second sale, now pushed by the new owner.
    let mut inventory = InventoryServiceClient::new(cluster.node(other).channel().await.unwrap());
    inventory
        .adjust(adjust(&position, "mug-sale-2", pb::Bucket::Available, -5))
        .await
        .unwrap();
    shows(85).await;
    // Until the slow write has surely landed (or been abandoned).
    tokio::time::sleep_until((sold_at + SLOW_APPLY + Duration::from_secs(2)).into()).await;
    let applied = walmart_applied(&emulators, MUG);
    eprintln!(
        "Walmart applied {applied:?}; the shards moved {:?} after the first sale",
        moved.duration_since(sold_at)
    );
    assert!(
        applied.contains(&90),
        "the former owner's write never landed, so nothing was raced: {applied:?}"
    );
    assert!(
        applied.windows(2).all(|pair| pair[0] >= pair[1]),
        "an older figure applied after a newer one: {applied:?}"
    );
    assert_eq!(
        emulators.walmart().quantity(MUG, &ship_node),
        Some(85),
        "Walmart does not show skuld's figure; applied {applied:?}"
    );
}
