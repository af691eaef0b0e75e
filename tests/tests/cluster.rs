//! Cluster mode against real etcd and real PostgreSQL: routing, scale-out and
//! scale-in under load, `kill -9`, a zombie owner, and etcd / PostgreSQL
//! restarts. Every fault test ends with the client-history check of
//! `skuld_tests::cluster::verify`, and fails when too few operations
//! succeeded, so it cannot pass by doing nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use skuld_proto::v1 as pb;
use skuld_tests::cluster::{
    node_id, open_return_not_on, owner_in, return_header, shard_of, ClusterOptions, TestCluster,
    TEST_LEASE_TTL_SECS,
};
use skuld_tests::requests::{commit, fulfill, key, receive, release, reserve};
use skuld_tests::workload::{Workload, WorkloadConfig};
use skuld_tests::{NodeOptions, TestNode};
use tonic::transport::Channel;
use tonic::Code;

type Inventory = pb::inventory_service_client::InventoryServiceClient<Channel>;

/// The same script of operations, position by position; returns the status
/// code of every call (in order) so two deployments can be compared.
async fn run_script(clients: &mut [Inventory], keys: &[pb::PositionKey]) -> Vec<Code> {
    let mut codes = Vec::new();
    for (index, position) in keys.iter().enumerate() {
        let count = clients.len();
        let client = |step: usize| clients[(index + step) % count].clone();
        let results = [
            client(0)
                .adjust(receive(position, &format!("{index}-stock"), 100))
                .await
                .map(|_| ()),
            client(1)
                .reserve(pb::ReserveRequest {
                    reservation_id: "r-a".into(),
                    ..reserve(position, &format!("{index}-ra"), 10, 600)
                })
                .await
                .map(|_| ()),
            client(2)
                .reserve(pb::ReserveRequest {
                    reservation_id: "r-b".into(),
                    ..reserve(position, &format!("{index}-rb"), 5, 600)
                })
                .await
                .map(|_| ()),
            client(0)
                .commit_reservation(commit(position, &format!("{index}-c"), "r-a", 0, "o-1"))
                .await
                .map(|_| ()),
            client(1)
                .release_reservation(release(position, &format!("{index}-rel"), "r-b"))
                .await
                .map(|_| ()),
            // More than available: refused with FAILED_PRECONDITION.
            client(2)
                .reserve(reserve(position, &format!("{index}-big"), 1_000, 600))
                .await
                .map(|_| ()),
            client(0)
                .fulfill(fulfill(position, &format!("{index}-f"), "o-1", 4))
                .await
                .map(|_| ()),
            // A retry of the first reservation: a replay, nothing changes.
            client(2)
                .reserve(pb::ReserveRequest {
                    reservation_id: "r-a".into(),
                    ..reserve(position, &format!("{index}-ra"), 10, 600)
                })
                .await
                .map(|_| ()),
        ];
        codes.extend(results.iter().map(|result| match result {
            Ok(()) => Code::Ok,
            Err(status) => status.code(),
        }));
    }
    codes
}

/// Buckets, version and reservation count of a position.
async fn summary(client: &mut Inventory, position: &pb::PositionKey) -> (pb::Buckets, u64, u64) {
    let position = client
        .get_position(pb::GetPositionRequest {
            key: Some(position.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .position
        .unwrap();
    (
        position.buckets.unwrap(),
        position.version,
        position.active_reservations,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_route_every_request_to_its_owner_like_a_single_node() {
    let cluster = TestCluster::start(3).await.unwrap();
    let keys: Vec<_> = (0..12)
        .map(|index| key("routing", &format!("sku-{index}"), "store-7"))
        .collect();
    let mut clients = Vec::new();
    for index in 0..3 {
        clients.push(cluster.inventory(index).await.unwrap());
    }
    let cluster_codes = run_script(&mut clients, &keys).await;

    let single_dir = cluster.dir.node_dir("single");
    let single = TestNode::start(&single_dir, NodeOptions::default())
        .await
        .unwrap();
    let mut single_client = vec![single.inventory().await.unwrap()];
    let single_codes = run_script(&mut single_client, &keys).await;
    assert_eq!(
        cluster_codes, single_codes,
        "the cluster answered differently"
    );
    assert!(cluster_codes.contains(&Code::FailedPrecondition));
    assert_eq!(
        cluster_codes
            .iter()
            .filter(|code| **code == Code::Ok)
            .count(),
        keys.len() * 7
    );

    let mut owners = BTreeSet::new();
    for position in &keys {
        let expected = summary(&mut single_client[0], position).await;
        let mut owner_seen = None;
        for client in clients.iter_mut() {
            assert_eq!(summary(client, position).await, expected, "{position:?}");
            let response = client
                .get_position(pb::GetPositionRequest {
                    key: Some(position.clone()),
                    ..Default::default()
                })
                .await
                .unwrap();
            let owner = response
                .metadata()
                .get("skuld-owner")
                .expect("a cluster reply names its owner")
                .to_str()
                .unwrap()
                .to_owned();
            // Whichever node is asked, the same owner serves the key.
            assert_eq!(*owner_seen.get_or_insert(owner.clone()), owner);
        }
        owners.insert(owner_seen.unwrap());
    }
    assert!(
        owners.len() >= 2,
        "12 keys should spread over several owners, got {owners:?}"
    );
    for owner in &owners {
        assert!(owner.starts_with("node-"), "{owner}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_three_to_five_and_in_to_two_under_load_loses_nothing() {
    let mut cluster = TestCluster::start(3).await.unwrap();
    let workload = Workload::start(cluster.addresses(), WorkloadConfig::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let scale_out = Instant::now();
    cluster.add_node(NodeOptions::default()).await.unwrap();
    cluster.add_node(NodeOptions::default()).await.unwrap();
    workload.set_addresses(cluster.addresses()).await;
    cluster.wait_settled(Duration::from_secs(30)).await.unwrap();
    let settle_out = scale_out.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let scale_in = Instant::now();
    for index in [0, 2, 4] {
        // A load balancer stops sending to a node before it is stopped.
        let remaining: Vec<String> = cluster
            .live()
            .into_iter()
            .filter(|live| *live != index)
            .map(|live| cluster.node(live).grpc_addr.clone())
            .collect();
        workload.set_addresses(remaining).await;
        let drained_in = cluster.terminate(index).await.unwrap();
        eprintln!("{} drained and stopped in {drained_in:?}", node_id(index));
    }
    cluster.wait_settled(Duration::from_secs(30)).await.unwrap();
    let settle_in = scale_in.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let history = workload
        .finish(
            cluster.addresses(),
            &format!(
                "scale-out 3->5 settled in {settle_out:?}; scale-in 5->2 settled in {settle_in:?}"
            ),
            500,
        )
        .await
        .unwrap();
    // Graceful moves with retrying clients: no operation is left without an answer.
    assert!(
        history.unknown() == 0,
        "operations without an answer: {}",
        history.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_shards_are_served_again_within_the_lease_ttl() {
    let mut cluster = TestCluster::start(3).await.unwrap();
    // A probe position (apart from the workload's) owned by the node about to die.
    let victim = 1;
    let mut client = cluster.inventory(0).await.unwrap();
    let mut probe = None;
    for index in 0..64 {
        let position = key("probe", &format!("sku-{index}"), "dc-1");
        let response = client
            .adjust(receive(&position, &format!("probe-{index}"), 1))
            .await
            .unwrap();
        let owner = response
            .metadata()
            .get("skuld-owner")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        if owner == node_id(victim) {
            probe = Some(position);
            break;
        }
    }
    let probe = probe.expect("one of 64 keys is owned by the victim");
    let workload = Workload::start(cluster.addresses(), WorkloadConfig::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let remaining: Vec<String> = [0, 2]
        .iter()
        .map(|index| cluster.node(*index).grpc_addr.clone())
        .collect();
    workload.set_addresses(remaining).await;
    let killed = Instant::now();
    cluster.kill9(victim).unwrap();
    // One receipt, retried with its key until it is answered: however many
    // attempts reached the dying owner or its successor, it applies once.
    let unavailable_for = loop {
        let mut request = tonic::Request::new(receive(&probe, "after-kill", 1));
        request.set_timeout(Duration::from_millis(500));
        if client.adjust(request).await.is_ok() {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the killed node's shards never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("a killed node's key was unavailable for {unavailable_for:?} (lease TTL {TEST_LEASE_TTL_SECS} s)");
    assert!(
        unavailable_for < Duration::from_secs(TEST_LEASE_TTL_SECS + 3),
        "unavailable for {unavailable_for:?}"
    );
    cluster.wait_settled(Duration::from_secs(30)).await.unwrap();
    let (buckets, _, _) = summary(&mut client, &probe).await;
    assert_eq!(
        buckets.on_hand, 2,
        "the retried receipt applied other than once: {buckets:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    workload
        .finish(cluster.addresses(), "kill -9 under load", 200)
        .await
        .unwrap();
}

/// Reads a position through `client`, with a short deadline.
async fn try_read(
    client: &mut Inventory,
    position: &pb::PositionKey,
) -> Result<pb::Position, tonic::Status> {
    let mut request = tonic::Request::new(pb::GetPositionRequest {
        key: Some(position.clone()),
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(1_500));
    client
        .get_position(request)
        .await
        .map(|response| response.into_inner().position.unwrap_or_default())
}

/// A zombie owner: paused (SIGSTOP) *inside* its commit transaction, after
/// the transaction has locked its fence row FOR SHARE and checked the epoch,
/// while its lease runs out and another node claims its shards; then woken.
///
/// The zombie commits one batch at a time and pauses 2 s in every commit
/// between locking and COMMIT (a failpoint), and its PostgreSQL sessions are
/// not ended for being idle in a transaction (a URL option), so the open
/// transaction outlives the pause. Write A (key E1) is in that window when
/// the zombie stops; write A2 (key E2, another shard) waits behind it.
///
/// - The fence waits for A: the new owner of E1's shard cannot raise it
///   while A holds the row, so E1 is not served until A ends. Without the
///   FOR SHARE lock the new owner would serve E1 (from a load without A)
///   and A would commit after it; the reads below would see that.
/// - A2's transaction starts after E2's shard was claimed and fenced: the
///   epoch check refuses it. Without the check it would commit behind the
///   back of the new owner, which has E2 loaded already.
///
/// Whatever the zombie acknowledges must then be visible through the new
/// owners, and nothing is oversold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_paused_inside_its_commit_cannot_write_behind_the_new_owner() {
    let mut cluster = TestCluster::start_with(
        2,
        ClusterOptions {
            proxied: true,
            ..ClusterOptions::default()
        },
    )
    .await
    .unwrap();
    let zombie = cluster
        .add_node_with_postgres_query(
            // The failpoint runs each commit statement in an explicit
            // transaction (not production's autocommit path) held open.
            NodeOptions::default()
                .env("SKULD_FAILPOINT_COMMIT_PAUSE_AFTER_LOCK_MS", 2_000)
                .arg("--postgres-concurrent-commits", 1),
            Some("options=-c%20idle_in_transaction_session_timeout%3D0"),
        )
        .await
        .unwrap();
    cluster.wait_settled(Duration::from_secs(30)).await.unwrap();
    let mut client = cluster.inventory(0).await.unwrap();

    // Two keys the zombie owns, in different shards.
    let mut owned: Vec<pb::PositionKey> = Vec::new();
    for index in 0..500 {
        let position = key("zombie", &format!("sku-{index}"), "dc-1");
        if owned
            .iter()
            .any(|other| shard_of(other) == shard_of(&position))
        {
            continue;
        }
        let answer = client
            .get_position(pb::GetPositionRequest {
                key: Some(position.clone()),
                ..Default::default()
            })
            .await;
        if owner_in(&answer).as_deref() == Some(node_id(zombie).as_str()) {
            owned.push(position);
            if owned.len() == 2 {
                break;
            }
        }
    }
    assert_eq!(owned.len(), 2, "the zombie owns a third of the shards");
    let (e1, e2) = (owned[0].clone(), owned[1].clone());
    for (index, position) in owned.iter().enumerate() {
        client
            .adjust(receive(position, &format!("stock-{index}"), 10))
            .await
            .unwrap();
    }

    let zombie_client = cluster.inventory(zombie).await.unwrap();
    let send = |position: &pb::PositionKey, id: &str| {
        let mut request = tonic::Request::new(pb::ReserveRequest {
            reservation_id: id.to_owned(),
            ..reserve(position, id, 7, 600)
        });
        request.set_timeout(Duration::from_secs(90));
        let mut client = zombie_client.clone();
        tokio::spawn(async move { client.reserve(request).await })
    };
    let a = send(&e1, "zombie-a");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let a2 = send(&e2, "zombie-a2");
    // A is now inside its transaction (2 s pause), A2 queued behind it.
    tokio::time::sleep(Duration::from_millis(350)).await;
    cluster.signal(zombie, true).unwrap();
    let paused = Instant::now();

    // Its lease runs out and the others claim its shards.
    loop {
        let owners = cluster.shard_owners(0).await.unwrap();
        if owners
            .iter()
            .all(|owner| owner != &node_id(zombie) && !owner.is_empty())
        {
            break;
        }
        assert!(
            paused.elapsed() < Duration::from_secs(30),
            "shards never moved: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "the paused node's shards were claimed after {:?}",
        paused.elapsed()
    );
    // E2's new owner serves it (and now has it loaded). E1's new owner
    // cannot fence while A's transaction holds the row: E1 stays unserved.
    let mut e2_served = None;
    let watching = Instant::now();
    while watching.elapsed() < Duration::from_secs(6) {
        if let Ok(position) = try_read(&mut client, &e1).await {
            panic!(
                "E1 was served while the zombie's transaction held its fence row: {:?}",
                position.buckets
            );
        }
        if e2_served.is_none() {
            e2_served = try_read(&mut client, &e2).await.ok();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e2_before = e2_served.expect("E2's new owner serves it during the pause");
    assert_eq!(e2_before.buckets.unwrap().reserved, 0);

    // Once awake it would register again and take shards back; cut off
    // from etcd (not from PostgreSQL) it cannot, so the reads below go to
    // the new owners.
    cluster.links(zombie).etcd.cut();
    cluster.signal(zombie, false).unwrap();
    let a = a.await.unwrap();
    let a2 = a2.await.unwrap();
    eprintln!(
        "after the pause the zombie answered A: {:?}, A2: {:?}",
        a.as_ref().map(|_| "OK").map_err(|status| status.code()),
        a2.as_ref().map(|_| "OK").map_err(|status| status.code())
    );
    // Whatever the zombie acknowledged is visible through the new owners.
    for (position, answer, id) in [(&e1, &a, "zombie-a"), (&e2, &a2, "zombie-a2")] {
        let seen = loop {
            match try_read(&mut client, position).await {
                Ok(seen) => break seen,
                Err(status) if paused.elapsed() < Duration::from_secs(60) => {
                    assert!(
                        skuld_proto::retry::worth_retrying(status.code()),
                        "{status:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => panic!("{position:?} never served again: {status:?}"),
            }
        };
        let held = seen.reservations.iter().any(|r| r.reservation_id == id);
        assert_eq!(
            held,
            answer.is_ok(),
            "{position:?}: acknowledged {} but held {held}: {:?}",
            answer.is_ok(),
            seen.buckets
        );
    }
    // A2 started its transaction after E2 was fenced: refused.
    let refused = a2.expect_err("a write committed after its shard was fenced");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // The new owners go on from the true state: no oversell.
    for (index, position) in [&e1, &e2].into_iter().enumerate() {
        let result = client
            .reserve(pb::ReserveRequest {
                reservation_id: format!("new-owner-{index}"),
                ..reserve(position, &format!("new-owner-{index}"), 5, 600)
            })
            .await;
        let (buckets, _, _) = summary(&mut client, position).await;
        assert!(buckets.available >= 0, "{position:?}: {buckets:?}");
        assert!(buckets.reserved <= 10, "oversold {position:?}: {buckets:?}");
        if let Err(status) = result {
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        }
    }
    let (_, metrics) = cluster.node(zombie).http_get("/metrics").await.unwrap();
    let fenced: f64 = metrics
        .lines()
        .find(|line| line.starts_with("skuld_store_fenced_writes_total"))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0);
    assert!(fenced >= 1.0, "no fenced write counted:\n{metrics}");
    // Back in touch with etcd, it rejoins by itself.
    cluster.links(zombie).etcd.heal();
    cluster.wait_settled(Duration::from_secs(30)).await.unwrap();
}

/// etcd, then PostgreSQL, killed and restarted under load: the cluster
/// carries on by itself and the history holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_recovers_from_etcd_and_postgres_restarts_under_load() {
    let mut cluster = TestCluster::start(3).await.unwrap();
    let workload = Workload::start(cluster.addresses(), WorkloadConfig::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    cluster.etcd.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.etcd.restart().unwrap();
    let etcd_back = Instant::now();
    cluster.wait_settled(Duration::from_secs(30)).await.unwrap();
    eprintln!("settled {:?} after etcd came back", etcd_back.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;

    cluster.postgres.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.postgres.restart().unwrap();
    let postgres_back = Instant::now();
    // Writes succeed again without anyone restarting a node.
    let mut client = cluster.inventory(0).await.unwrap();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut request = tonic::Request::new(receive(
            &key("probe", "after-postgres", "dc-1"),
            &format!("probe-{attempt}"),
            1,
        ));
        request.set_timeout(Duration::from_secs(1));
        if client.adjust(request).await.is_ok() {
            break;
        }
        assert!(
            postgres_back.elapsed() < Duration::from_secs(20),
            "writes did not recover after PostgreSQL restarted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "writes recovered {:?} after PostgreSQL came back",
        postgres_back.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    workload
        .finish(
            cluster.addresses(),
            "etcd and PostgreSQL restarts under load",
            200,
        )
        .await
        .unwrap();
}

/// A return case and the position its receipt moves stock into live on
/// different nodes: the case's inventory effect is forwarded to the
/// position's owner and applied there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_return_on_one_node_moves_stock_of_a_position_on_another() {
    let cluster = TestCluster::start(3).await.unwrap();
    let mut inventory = cluster.inventory(0).await.unwrap();
    let mut returns = cluster.returns(1).await.unwrap();
    let position = key("returns", "SHIRT", "DC1");
    let stocked = inventory.adjust(receive(&position, "stock", 10)).await;
    let position_owner = owner_in(&stocked).expect("a cluster reply names its owner");
    stocked.unwrap();

    let return_id = open_return_not_on(&mut returns, &position_owner)
        .await
        .unwrap();
    for repeat in 0..2 {
        // The second send is a client retry: a replay, not a second receipt.
        let received = returns
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
        assert_ne!(
            owner_in(&Ok(received)).as_deref(),
            Some(position_owner.as_str()),
            "repeat {repeat}"
        );
    }
    // The receipt's effect reaches the position's owner.
    let started = Instant::now();
    let buckets = loop {
        let case = returns
            .get_return(pb::GetReturnRequest {
                key: Some(pb::ReturnKey {
                    tenant: "returns".into(),
                    return_id: return_id.clone(),
                }),
                include_history: false,
            })
            .await
            .unwrap()
            .into_inner()
            .r#case
            .unwrap();
        if case.pending_steps.is_empty() {
            break summary(&mut inventory, &position).await.0;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the receipt never reached the position"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (buckets.on_hand, buckets.quality_control, buckets.available),
        (13, 3, 10),
        "{buckets:?}"
    );
}

/// A refusal answered by the key's owner reaches a client that asked another
/// node with the same status, message and details (google.rpc
/// PreconditionFailure, BadRequest) as a client of the owner gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_through_another_node_carries_the_owners_details() {
    let cluster = TestCluster::start(2).await.unwrap();
    let position = key("refusals", "sku-1", "dc-1");
    let mut first = cluster.inventory(0).await.unwrap();
    let stocked = first.adjust(receive(&position, "stock", 1)).await;
    let owner = owner_in(&stocked).unwrap();
    stocked.unwrap();
    let owner_index = if owner == node_id(0) { 0 } else { 1 };
    let mut at_owner = cluster.inventory(owner_index).await.unwrap();
    let mut elsewhere = cluster.inventory(1 - owner_index).await.unwrap();
    let refusals = [
        // Insufficient stock: FAILED_PRECONDITION with PreconditionFailure.
        (
            reserve(&position, "too-many-a", 5, 600),
            reserve(&position, "too-many-b", 5, 600),
        ),
        // A reservation id taken: ALREADY_EXISTS.
        (
            pb::ReserveRequest {
                reservation_id: "stock".into(),
                ..reserve(&position, "taken-a", 1, 600)
            },
            pb::ReserveRequest {
                reservation_id: "stock".into(),
                ..reserve(&position, "taken-b", 1, 600)
            },
        ),
    ];
    // "stock" is the receipt's key, not a reservation: hold it first.
    at_owner
        .reserve(pb::ReserveRequest {
            reservation_id: "stock".into(),
            ..reserve(&position, "hold", 1, 600)
        })
        .await
        .unwrap();
    for (local, remote) in refusals {
        let here = at_owner.reserve(local).await.unwrap_err();
        let there = elsewhere.reserve(remote).await.unwrap_err();
        assert_eq!(here.code(), there.code(), "{here:?} / {there:?}");
        assert_eq!(here.message(), there.message());
        assert_eq!(here.details(), there.details(), "{here:?} / {there:?}");
        assert_eq!(
            there
                .metadata()
                .get("skuld-owner")
                .and_then(|v| v.to_str().ok()),
            Some(owner.as_str())
        );
    }
}

/// An operator's drain moves a node's shards away while it keeps running;
/// withdrawing it (`skuld undrain`) gives the node its share back, without a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_can_be_withdrawn_without_a_restart() {
    let cluster = TestCluster::start(3).await.unwrap();
    let mut admin = cluster.admin(0).await.unwrap();
    admin
        .drain_node(pb::DrainNodeRequest {
            node_id: node_id(1),
        })
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let member = cluster.member(0, 1).await.unwrap();
        if member.drain_requested && member.shards_owned == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{member:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let undrained = admin
        .undrain_node(pb::UndrainNodeRequest {
            node_id: node_id(1),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(undrained.was_drained);
    cluster.wait_settled(Duration::from_secs(30)).await.unwrap();
    let member = cluster.member(0, 1).await.unwrap();
    assert!(
        !member.drain_requested && member.shards_owned > 0,
        "{member:?}"
    );
    // Withdrawing again changes nothing and says so.
    let again = admin
        .undrain_node(pb::UndrainNodeRequest {
            node_id: node_id(1),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.was_drained);
}
