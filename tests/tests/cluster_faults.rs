//! Cluster faults beyond a node dying: a node cut off from etcd for longer
//! than its lease, an owner cut off from PostgreSQL only, a node whose clock
//! runs a day ahead, a return whose inventory effect loses the position's
//! owner mid-way, and a malformed forwarded request. Every test that injects
//! a fault runs the contended workload across it and ends with its history
//! check; each prints the unavailability it measured.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use skuld_proto::internal::v1 as wire;
use skuld_proto::internal::v1::peer_service_client::PeerServiceClient;
use skuld_proto::v1 as pb;
use skuld_tests::cluster::{
    node_id, open_return_not_on, owner_in, return_header, ClusterOptions, TestCluster,
    TEST_LEASE_TTL_SECS,
};
use skuld_tests::metrics::Scrape;
use skuld_tests::requests::{get, key, receive};
use skuld_tests::workload::{channel, Workload, WorkloadConfig};
use skuld_tests::{libfaketime, NodeOptions};
use tonic::Code;

type Inventory = pb::inventory_service_client::InventoryServiceClient<tonic::transport::Channel>;

fn proxied() -> ClusterOptions {
    ClusterOptions {
        proxied: true,
        ..ClusterOptions::default()
    }
}

/// A position whose shard `owner` serves, found by asking node `via`.
async fn key_owned_by(
    cluster: &TestCluster,
    via: usize,
    owner: usize,
    tenant: &str,
) -> pb::PositionKey {
    let mut client = cluster.inventory(via).await.unwrap();
    for index in 0..500 {
        let position = key(tenant, &format!("sku-{index}"), "dc-1");
        let answer = client.get_position(get(&position)).await;
        if owner_in(&answer).as_deref() == Some(node_id(owner).as_str()) {
            return position;
        }
    }
    panic!("no key of 500 is owned by {}", node_id(owner));
}

/// Sends one receipt with one idempotency key until it is answered; returns
/// how long that took.
async fn receive_until_answered(
    client: &mut Inventory,
    position: &pb::PositionKey,
    idempotency_key: &str,
    give_up: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let mut request = tonic::Request::new(receive(position, idempotency_key, 1));
        request.set_timeout(Duration::from_millis(800));
        match client.adjust(request).await {
            Ok(_) => return started.elapsed(),
            Err(status) => assert!(
                skuld_proto::retry::worth_retrying(status.code()),
                "{status:?}"
            ),
        }
        assert!(
            started.elapsed() < give_up,
            "{position:?} not writable within {give_up:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn on_hand(client: &mut Inventory, position: &pb::PositionKey) -> i64 {
    client
        .get_position(get(position))
        .await
        .unwrap()
        .into_inner()
        .position
        .unwrap()
        .buckets
        .unwrap()
        .on_hand
}

/// Whether node `index`'s gRPC health says SERVING, for the whole server
/// ("") and for each client service.
async fn health_serving(cluster: &TestCluster, index: usize) -> Vec<bool> {
    let Ok(channel) = channel(&cluster.node(index).grpc_addr).await else {
        return vec![false];
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut serving = Vec::new();
    for service in ["", "skuld.v1.InventoryService", "skuld.v1.ReturnsService"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|reply| reply.into_inner().status);
        serving.push(status.is_ok_and(|status| {
            status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        }));
    }
    serving
}

/// Node `index` answers /readyz 200 and gRPC health SERVING everywhere.
async fn serves(cluster: &TestCluster, index: usize) -> bool {
    let ready = matches!(cluster.node(index).http_get("/readyz").await, Ok((200, _)));
    ready
        && health_serving(cluster, index)
            .await
            .iter()
            .all(|serving| *serving)
}

/// Waits until node `index` is unready on both probes (gRPC health
/// NOT_SERVING for the server and each service, /readyz 503).
async fn until_unready(cluster: &TestCluster, index: usize, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let unready = !matches!(cluster.node(index).http_get("/readyz").await, Ok((200, _)))
            && health_serving(cluster, index)
                .await
                .iter()
                .all(|serving| !serving);
        if unready {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{} still reports ready after {limit:?}",
            node_id(index)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the cluster is settled and `index` is ready on both probes;
/// returns how long that took.
async fn until_serving_again(cluster: &TestCluster, index: usize, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if cluster.wait_settled(Duration::from_millis(1)).await.is_ok()
            && serves(cluster, index).await
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{} does not serve again within {limit:?}: settled: {:?}",
            node_id(index),
            cluster.wait_settled(Duration::from_millis(1)).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGSTOP a node for longer than its lease while etcd restarts, then
/// SIGCONT: its lease is gone, so it must take a new one and rejoin by
/// itself (before the fix it retried the dead lease forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_across_an_etcd_restart_rejoins_with_a_new_lease() {
    let mut cluster = TestCluster::start(2).await.unwrap();
    let workload = Workload::start(cluster.addresses(), WorkloadConfig::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let paused = 1;
    workload
        .set_addresses(vec![cluster.node(0).grpc_addr.clone()])
        .await;
    cluster.signal(paused, true).unwrap();
    cluster.etcd.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.etcd.restart().unwrap();
    // Paused until etcd has let its lease expire: the others no longer list it.
    let stopped = Instant::now();
    loop {
        let members = cluster
            .admin(0)
            .await
            .unwrap()
            .list_members(pb::ListMembersRequest {})
            .await
            .map(|reply| reply.into_inner().members)
            .unwrap_or_default();
        if !members.is_empty()
            && members
                .iter()
                .all(|member| member.node_id != node_id(paused))
        {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "the paused node's lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.signal(paused, false).unwrap();
    let back = until_serving_again(
        &cluster,
        paused,
        Duration::from_secs(TEST_LEASE_TTL_SECS + 5),
    )
    .await;
    eprintln!(
        "paused {:?} across an etcd restart: serving again {back:?} after SIGCONT",
        stopped.elapsed()
    );
    assert!(
        cluster
            .node(paused)
            .log()
            .contains("registered again under a new lease"),
        "the node did not take a new lease"
    );
    workload.set_addresses(cluster.addresses()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    workload
        .finish(cluster.addresses(), "pause across an etcd restart", 100)
        .await
        .unwrap();
}

/// Black-holes one node's traffic to etcd for twice its lease TTL: it stops
/// serving on its own, the others take its shards, and once the link heals
/// it takes a new lease and serves again within TTL + 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_etcd_longer_than_its_lease_serves_again_after_the_cut() {
    let cluster = TestCluster::start_with(3, proxied()).await.unwrap();
    let cut = 1;
    let probe = key_owned_by(&cluster, 0, cut, "etcd-cut").await;
    let mut client = cluster.inventory(0).await.unwrap();
    client
        .adjust(receive(&probe, "probe-stock", 1))
        .await
        .unwrap();
    let workload = Workload::start(cluster.addresses(), WorkloadConfig::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    cluster.links(cut).etcd.cut();
    // Its keys come back on another node once its lease runs out.
    let moved =
        receive_until_answered(&mut client, &probe, "during-cut", Duration::from_secs(30)).await;
    eprintln!("cut from etcd: its key was writable through others after {moved:?}");
    // Its lease lapses unconfirmed: both probes say so.
    let unready = until_unready(&cluster, cut, Duration::from_secs(TEST_LEASE_TTL_SECS + 2)).await;
    eprintln!("cut from etcd: unready on gRPC health and /readyz after {unready:?}");
    tokio::time::sleep(
        Duration::from_secs(2 * TEST_LEASE_TTL_SECS).saturating_sub(started.elapsed()),
    )
    .await;
    cluster.links(cut).etcd.heal();
    let back =
        until_serving_again(&cluster, cut, Duration::from_secs(TEST_LEASE_TTL_SECS + 5)).await;
    eprintln!(
        "cut from etcd for {:?}: serving again {back:?} after the heal",
        started.elapsed() - back
    );
    assert_eq!(on_hand(&mut client, &probe).await, 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    workload
        .finish(cluster.addresses(), "a node cut off from etcd", 100)
        .await
        .unwrap();
}

/// Black-holes one owner's traffic to PostgreSQL while it still reaches
/// etcd: after the failover time it reports its store failing, its shards
/// move to nodes that reach the store, and writes for its keys through
/// other nodes succeed; when the link heals it takes shards again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_cut_off_from_postgres_gives_its_shards_to_nodes_that_reach_it() {
    let cluster = TestCluster::start_with(
        3,
        ClusterOptions {
            proxied: true,
            node: NodeOptions::default().arg("--store-failover-secs", 2),
        },
    )
    .await
    .unwrap();
    let cut = 2;
    let probe = key_owned_by(&cluster, 0, cut, "pg-cut").await;
    let mut client = cluster.inventory(0).await.unwrap();
    client
        .adjust(receive(&probe, "probe-stock", 1))
        .await
        .unwrap();
    let workload = Workload::start(cluster.addresses(), WorkloadConfig::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    cluster.links(cut).postgres.cut();
    let unavailable =
        receive_until_answered(&mut client, &probe, "during-cut", Duration::from_secs(30)).await;
    eprintln!("owner cut from PostgreSQL: its key was writable through another node after {unavailable:?}");
    let (status, body) = cluster.node(cut).http_get("/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store"), "{body}");
    let reported = cluster.member(0, cut).await.unwrap();
    assert!(!reported.store_healthy, "{reported:?}");
    assert_eq!(reported.shards_owned, 0, "{reported:?}");
    // What an SRE sees of it. (A partition black-holes the commits in
    // flight: they wait for the TCP timeout or the heal, and are not commit
    // errors.)
    let (_, metrics) = cluster.node(cut).http_get("/metrics").await.unwrap();
    let metrics = Scrape(metrics);
    assert_eq!(
        metrics.value("skuld_store_healthy", &[]),
        Some(0.0),
        "{}",
        metrics.0
    );
    assert!(
        metrics.or_zero("skuld_store_failovers_total", &[]) >= 1.0,
        "no failover counted:\n{}",
        metrics.0
    );
    assert_eq!(
        metrics.value("skuld_shards_owned", &[]),
        Some(0.0),
        "{}",
        metrics.0
    );

    cluster.links(cut).postgres.heal();
    let back = until_serving_again(&cluster, cut, Duration::from_secs(30)).await;
    eprintln!("PostgreSQL link healed: the node serves shards again after {back:?}");
    assert_eq!(on_hand(&mut client, &probe).await, 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    workload
        .finish(cluster.addresses(), "an owner cut off from PostgreSQL", 100)
        .await
        .unwrap();
}

/// The environment that runs a node with its wall clock a day ahead (the
/// monotonic clock stays true).
fn a_day_ahead(options: NodeOptions) -> NodeOptions {
    options
        .env("LD_PRELOAD", libfaketime().unwrap().display())
        .env("FAKETIME", "+1d")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", 1)
}

/// A node whose wall clock runs a day ahead joins a cluster under load. It
/// sees its clock is off from PostgreSQL's, says so, and takes no shards
/// (it would expire every reservation it owned); requests sent to it are
/// forwarded, and retries through it replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_a_day_ahead_serves_no_shards_and_forwards() {
    let mut cluster = TestCluster::start(2).await.unwrap();
    let workload = Workload::start(cluster.addresses(), WorkloadConfig::default())
        .await
        .unwrap();
    let position = key("skewed", "sku-1", "dc-1");
    let mut first = cluster.inventory(0).await.unwrap();
    first
        .adjust(receive(&position, "receipt-1", 5))
        .await
        .unwrap();
    let ahead = cluster
        .add_node(a_day_ahead(NodeOptions::default().unready()))
        .await
        .unwrap();
    workload.set_addresses(cluster.addresses()).await;
    // It joins, then reports its clock (the first pings after start).
    let joined = Instant::now();
    let body = loop {
        let (status, body) = cluster.node(ahead).http_get("/readyz").await.unwrap();
        if status == 503 && body.contains("clock") {
            break body;
        }
        assert!(
            joined.elapsed() < Duration::from_secs(10),
            "the skewed node did not notice its clock: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(body.contains("ahead of the store"), "{body}");
    // gRPC health agrees with /readyz: it never said SERVING.
    assert_eq!(health_serving(&cluster, ahead).await, vec![false; 3]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let skewed = cluster.member(0, ahead).await.unwrap();
    assert!(!skewed.store_healthy, "{skewed:?}");
    assert_eq!(skewed.shards_owned, 0, "{skewed:?}");
    let mut through_skewed = cluster.inventory(ahead).await.unwrap();
    let retry = through_skewed
        .adjust(receive(&position, "receipt-1", 5))
        .await;
    assert_ne!(
        owner_in(&retry).as_deref(),
        Some(node_id(ahead).as_str()),
        "served by the skewed node"
    );
    assert!(retry.unwrap().into_inner().replayed);
    assert_eq!(on_hand(&mut first, &position).await, 5);
    workload
        .finish(cluster.addresses(), "a node a day ahead joins", 100)
        .await
        .unwrap();
}

/// With the clock check off, a node a day ahead owns shards and purges
/// idempotency records every second. The purge goes by PostgreSQL's clock
/// and only touches its own shards, so the retry of a write made a moment
/// ago (through the skewed node and through another) is a replay. (No
/// contended workload here: a skewed owner expires reservations early,
/// which is what the clock check prevents.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_a_day_ahead_cannot_purge_a_fresh_idempotency_record() {
    let options = NodeOptions::default()
        .arg("--idempotency-purge-interval-secs", 1)
        .arg("--idempotency-retention-secs", 3_600)
        .arg("--max-clock-offset-ms", 0);
    let mut cluster = TestCluster::start_with(
        1,
        ClusterOptions {
            node: options,
            ..ClusterOptions::default()
        },
    )
    .await
    .unwrap();
    let ahead = cluster
        .add_node(a_day_ahead(NodeOptions::default()))
        .await
        .unwrap();
    cluster.wait_settled(Duration::from_secs(30)).await.unwrap();
    let position = key_owned_by(&cluster, 0, ahead, "skewed").await;
    let mut first = cluster.inventory(0).await.unwrap();
    let mut skewed = cluster.inventory(ahead).await.unwrap();
    first
        .adjust(receive(&position, "receipt-1", 5))
        .await
        .unwrap();
    // Several purges by the skewed owner.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for client in [&mut skewed, &mut first] {
        let retry = client
            .adjust(receive(&position, "receipt-1", 5))
            .await
            .unwrap()
            .into_inner();
        assert!(retry.replayed, "the retry was applied again: {retry:?}");
    }
    assert_eq!(on_hand(&mut first, &position).await, 5);
}

/// The request of the report: a forwarded read whose payload claims a
/// 2^62-byte string. The node refuses it and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_forwarded_request_is_refused_and_the_node_keeps_serving() {
    let cluster = TestCluster::start(1).await.unwrap();
    let mut payload = vec![0xfd];
    payload.extend_from_slice(&(1u64 << 62).to_le_bytes());
    payload.extend_from_slice(&[0; 8]);
    let mut peer = PeerServiceClient::new(cluster.peer_channel(0).await.unwrap());
    for (kind, operation) in [
        ("position", wire::Operation::Read),
        ("position", wire::Operation::Mutate),
        ("return", wire::Operation::Read),
        ("return", wire::Operation::Mutate),
    ] {
        let refused = peer
            .forward(wire::ForwardRequest {
                kind: kind.into(),
                operation: operation.into(),
                payload: payload.clone(),
            })
            .await
            .expect_err("a malformed payload was accepted");
        assert_eq!(refused.code(), Code::InvalidArgument, "{kind}: {refused:?}");
    }
    let mut client = cluster.inventory(0).await.unwrap();
    let position = key("peer", "sku-1", "dc-1");
    client.adjust(receive(&position, "after", 3)).await.unwrap();
    assert_eq!(on_hand(&mut client, &position).await, 3);
    assert!(cluster
        .node(0)
        .log()
        .lines()
        .all(|line| !line.contains("memory allocation")));
}

async fn settled_case(
    returns: &mut pb::returns_service_client::ReturnsServiceClient<tonic::transport::Channel>,
    return_id: &str,
) -> pb::ReturnCase {
    let started = Instant::now();
    loop {
        let case = returns
            .get_return(pb::GetReturnRequest {
                key: Some(pb::ReturnKey {
                    tenant: "returns".into(),
                    return_id: return_id.into(),
                }),
                include_history: true,
            })
            .await
            .map(|reply| reply.into_inner().r#case.unwrap_or_default());
        if let Ok(case) = case {
            if case.pending_steps.is_empty() {
                return case;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the case's inventory steps never completed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A return case on one node receives items into a position owned by
/// another; that owner is killed while the receipt's effect is in its
/// commit (every commit waits 700 ms first). The case retries the step
/// with its key until the position's new owner applies it: once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_return_effect_survives_the_position_owner_dying_mid_step_and_applies_once() {
    let mut cluster = TestCluster::start_with(
        3,
        ClusterOptions {
            node: NodeOptions::default().env("SKULD_FAILPOINT_COMMIT_DELAY_MS", 700),
            ..ClusterOptions::default()
        },
    )
    .await
    .unwrap();
    let workload = Workload::start(
        cluster.addresses(),
        WorkloadConfig {
            callers: 4,
            ..WorkloadConfig::default()
        },
    )
    .await
    .unwrap();
    let position = key("returns", "SHIRT", "DC1");
    let mut inventory = cluster.inventory(0).await.unwrap();
    let stocked = inventory.adjust(receive(&position, "stock", 10)).await;
    let position_owner = owner_in(&stocked).unwrap();
    let victim = cluster
        .live()
        .into_iter()
        .find(|index| node_id(*index) == position_owner)
        .unwrap();
    let survivor = cluster
        .live()
        .into_iter()
        .find(|index| *index != victim)
        .unwrap();
    let mut returns = cluster.returns(survivor).await.unwrap();
    // A case the victim does not own.
    let return_id = open_return_not_on(&mut returns, &position_owner)
        .await
        .unwrap();
    returns
        .receive_items(pb::ReceiveItemsRequest {
            header: return_header(&return_id, "receive"),
            lines: vec![pb::ReceivedLine {
                line_id: "L1".into(),
                quantity: 3,
                location: String::new(),
            }],
            accept_surplus: false,
        })
        .await
        .unwrap();
    // The receipt's effect is now on its way to (or in the commit of) the
    // position's owner.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill9(victim).unwrap();
    let killed = Instant::now();
    workload.set_addresses(cluster.addresses()).await;
    let case = settled_case(&mut returns, &return_id).await;
    eprintln!(
        "the receipt's step completed {:?} after its position's owner was killed",
        killed.elapsed()
    );
    let retried = case
        .history
        .iter()
        .flat_map(|entry| &entry.events)
        .filter(|event| *event == "return.step.failed")
        .count();
    eprintln!("the step failed {retried} time(s) before it was applied");
    assert!(retried >= 1, "the kill did not hit the step in flight");
    let mut inventory = cluster.inventory(survivor).await.unwrap();
    let shirt = inventory
        .get_position(get(&position))
        .await
        .unwrap()
        .into_inner()
        .position
        .unwrap();
    let buckets = shirt.buckets.unwrap();
    assert_eq!(
        (buckets.on_hand, buckets.quality_control, buckets.available),
        (13, 3, 10),
        "{buckets:?}"
    );
    assert_eq!(shirt.version, 2, "stock, then the receipt once");

    // A second step, restocking two units, after the failover.
    returns
        .dispose_items(pb::DisposeItemsRequest {
            header: return_header(&return_id, "restock"),
            line_id: "L1".into(),
            quantity: 2,
            disposition: pb::Disposition::Restock.into(),
        })
        .await
        .unwrap();
    settled_case(&mut returns, &return_id).await;
    let shirt = inventory
        .get_position(get(&position))
        .await
        .unwrap()
        .into_inner()
        .position
        .unwrap();
    let buckets = shirt.buckets.unwrap();
    assert_eq!(
        (buckets.on_hand, buckets.quality_control, buckets.available),
        (13, 1, 12),
        "{buckets:?}"
    );
    assert_eq!(shirt.version, 3);
    workload
        .finish(cluster.addresses(), "a return's effect across a kill", 20)
        .await
        .unwrap();
}
