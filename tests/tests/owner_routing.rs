//! `skuld-client` against a real 3-node cluster: with owner routing no
//! request is forwarded, with any-node routing most are; after a drain
//! moves shards, requests keep succeeding and reach the new owners once the
//! map is fetched again. The forward count is the nodes' own
//! `skuld_forwarded_total`, so a client that ignored the map would fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use skuld_client::{RouteKey, Router, RouterOptions, Routing};
use skuld_proto::v1 as pb;
use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
use skuld_tests::cluster::{node_id, owner_in, TestCluster};
use skuld_tests::metrics::Scrape;
use skuld_tests::requests::{key, receive};

const POSITIONS: usize = 48;

/// Requests forwarded by every live node so far.
async fn forwards(cluster: &TestCluster) -> f64 {
    let mut total = 0.0;
    for index in cluster.live() {
        let (_, metrics) = cluster.node(index).http_get("/metrics").await.unwrap();
        total += Scrape(metrics).or_zero("skuld_forwarded_total", &[]);
    }
    total
}

fn positions(run: &str) -> Vec<pb::PositionKey> {
    (0..POSITIONS)
        .map(|i| key("acme", &format!("{run}-sku-{i}"), "DC1"))
        .collect()
}

/// One stock receipt per position through `router`; every one must
/// succeed. Returns how many replies named the node the router sent to
/// as their owner.
async fn receive_all(router: &Router, keys: &[pb::PositionKey], round: &str) -> usize {
    let mut served_where_sent = 0;
    for (index, position) in keys.iter().enumerate() {
        let route = router.route(RouteKey::Position(position));
        let request = receive(position, &format!("{round}-{index}"), 1);
        let result = InventoryServiceClient::new(route.channel.clone())
            .adjust(request)
            .await;
        let owner = owner_in(&result);
        router.observe(&route, &result);
        result.unwrap_or_else(|status| panic!("{round}: {position:?}: {status:?}"));
        if owner.is_some() && owner.as_deref() == route.owner() {
            served_where_sent += 1;
        }
    }
    served_where_sent
}

fn options(cluster: &TestCluster, routing: Routing) -> RouterOptions {
    // One node to start from: the others are learned from its map.
    let mut options = RouterOptions::new([format!("http://{}", cluster.node(0).grpc_addr)]);
    options.routing = routing;
    options.refresh_interval = Duration::from_millis(100);
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_routing_skips_the_forward_and_follows_a_drain() {
    let cluster = TestCluster::start(3).await.unwrap();
    let keys = positions("owner");

    // The map names every node with the client endpoint it listens on.
    let owner = Router::connect(options(&cluster, Routing::Owner))
        .await
        .unwrap();
    let map = owner.map();
    assert_eq!(map.shard_count(), skuld_tests::cluster::TEST_SHARDS);
    let mut endpoints: Vec<String> = map.endpoints().map(|e| e.to_string()).collect();
    endpoints.sort();
    let mut expected: Vec<String> = cluster
        .addresses()
        .iter()
        .map(|addr| format!("http://{addr}"))
        .collect();
    expected.sort();
    assert_eq!(endpoints, expected);
    let member = cluster.member(0, 1).await.unwrap();
    assert_eq!(
        member.client_endpoint,
        format!("http://{}", cluster.node(1).grpc_addr)
    );

    // Any-node routing through node 0: about two thirds are forwarded.
    let any = Router::connect(options(&cluster, Routing::Any))
        .await
        .unwrap();
    let before = forwards(&cluster).await;
    receive_all(&any, &keys, "any").await;
    let forwarded_any = forwards(&cluster).await - before;
    assert!(
        forwarded_any >= (POSITIONS / 3) as f64,
        "any-node routing forwarded only {forwarded_any} of {POSITIONS}"
    );

    // Owner routing: none is, and each reply names the node it was sent to.
    let before = forwards(&cluster).await;
    let served_where_sent = receive_all(&owner, &keys, "owner").await;
    let forwarded_owner = forwards(&cluster).await - before;
    eprintln!("forwarded: any-node {forwarded_any}, owner {forwarded_owner} of {POSITIONS}");
    assert_eq!(forwarded_owner, 0.0, "owner routing forwarded requests");
    assert_eq!(served_where_sent, POSITIONS);
    assert_eq!(owner.stats().misses, 0);

    // A drain moves node 2's shards; the router's map still names it.
    let drained = node_id(2);
    let on_drained = keys
        .iter()
        .filter(|position| {
            owner
                .route(RouteKey::Position(position))
                .owner()
                .is_some_and(|node| node == drained)
        })
        .count();
    assert!(on_drained > 0, "no test position on {drained}");
    cluster
        .admin(0)
        .await
        .unwrap()
        .drain_node(pb::DrainNodeRequest {
            node_id: drained.clone(),
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let owners = cluster.shard_owners(0).await.unwrap();
        if owners
            .iter()
            .all(|owner| !owner.is_empty() && *owner != drained)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{drained} still owns shards");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every request succeeds (the drained node forwards); the misses
    // refresh the map, and then every request goes to its new owner.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut round = 0;
    loop {
        round += 1;
        let misses = owner.stats().misses;
        let served_where_sent = receive_all(&owner, &keys, &format!("after-drain-{round}")).await;
        if served_where_sent == POSITIONS && owner.stats().misses == misses {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {round} rounds only {served_where_sent} of {POSITIONS} went to their owner"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let stats = owner.stats();
    eprintln!("after the drain: {round} rounds, {stats:?}");
    assert!(stats.misses > 0, "the stale map was never noticed");
    assert!(stats.refreshes >= 2, "{stats:?}");
    for position in &keys {
        assert_ne!(
            owner.route(RouteKey::Position(position)).owner(),
            Some(drained.as_str())
        );
    }
}
