//! Orders through real gRPC against the real binary: all lines held or
//! none, candidate fallback and splits, idempotent retries, orders competing
//! for the last units, and a crash just before and just after every saga
//! step, after which every order is all held or all released and no unit
//! leaked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use skuld_proto::v1 as pb;
use skuld_tests::requests::{get, key, receive};
use skuld_tests::{check_buckets, NodeOptions, TestNode};
use tonic::transport::Channel;
use tonic::Code;

type Orders = pb::order_service_client::OrderServiceClient<Channel>;
type Inventory = pb::inventory_service_client::InventoryServiceClient<Channel>;

const TENANT: &str = "default";

/// A timer scan often enough that a restarted node resumes its sagas at once.
fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("skuld.toml");
    std::fs::write(&path, "[runtime]\ntimer_scan_interval_ms = 100\n").unwrap();
    path
}

fn okey(order_id: &str) -> Option<pb::OrderKey> {
    Some(pb::OrderKey {
        tenant: TENANT.into(),
        order_id: order_id.into(),
    })
}

fn line(id: &str, sku: &str, quantity: i64, locations: &[&str], split: bool) -> pb::OrderLineSpec {
    pb::OrderLineSpec {
        line_id: id.into(),
        sku: sku.into(),
        quantity,
        locations: locations.iter().map(|l| (*l).to_owned()).collect(),
        allow_split: split,
    }
}

fn reserve_request(order_id: &str, lines: Vec<pb::OrderLineSpec>) -> pb::ReserveOrderRequest {
    pb::ReserveOrderRequest {
        key: okey(order_id),
        idempotency_key: format!("reserve-{order_id}"),
        lines,
        ttl_seconds: 3_600,
        channel: String::new(),
    }
}

async fn clients(node: &TestNode) -> (Orders, Inventory) {
    let channel = node.channel().await.unwrap();
    (Orders::new(channel.clone()), Inventory::new(channel))
}

async fn stock(inventory: &mut Inventory, entries: &[(&str, &str, i64)]) {
    for (sku, location, quantity) in entries.iter().filter(|e| e.2 > 0) {
        inventory
            .adjust(receive(
                &key(TENANT, sku, location),
                &format!("stock-{sku}-{location}"),
                *quantity,
            ))
            .await
            .unwrap();
    }
}

async fn buckets(inventory: &mut Inventory, sku: &str, location: &str) -> pb::Buckets {
    let reply = inventory
        .get_position(get(&key(TENANT, sku, location)))
        .await
        .unwrap()
        .into_inner();
    let buckets = reply
        .position
        .and_then(|position| position.buckets)
        .unwrap_or_default();
    check_buckets(&buckets).unwrap();
    buckets
}

fn status(order: &pb::Order) -> pb::OrderStatus {
    pb::OrderStatus::try_from(order.status).unwrap()
}

/// (location, quantity) of each line's live holds.
fn holds(order: &pb::Order) -> Vec<Vec<(String, i64)>> {
    order
        .lines
        .iter()
        .map(|line| {
            line.holds
                .iter()
                .filter(|h| h.state != pb::OrderHoldState::Released as i32)
                .map(|h| (h.location.clone(), h.quantity))
                .collect()
        })
        .collect()
}

/// Reads the order until it is at rest.
async fn at_rest(orders: &mut Orders, order_id: &str) -> pb::Order {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = orders
            .get_order(pb::GetOrderRequest {
                key: okey(order_id),
            })
            .await;
        if let Ok(reply) = reply {
            let order = reply.into_inner().order.unwrap();
            if matches!(
                status(&order),
                pb::OrderStatus::Held | pb::OrderStatus::Committed | pb::OrderStatus::Released
            ) {
                return order;
            }
        }
        assert!(
            Instant::now() < deadline,
            "order {order_id} never came to rest"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_without_stock_holds_nothing_and_names_what_was_available() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("node"), NodeOptions::default())
        .await
        .unwrap();
    let (mut orders, mut inventory) = clients(&node).await;
    stock(
        &mut inventory,
        &[("A", "DC1", 5), ("B", "DC1", 1), ("B", "DC2", 0)],
    )
    .await;
    let reply = orders
        .reserve_order(reserve_request(
            "short",
            vec![
                line("1", "A", 3, &["DC1"], false),
                line("2", "B", 2, &["DC1", "DC2"], false),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    let order = reply.order.unwrap();
    assert_eq!(status(&order), pb::OrderStatus::Released, "{order:?}");
    let failure = order.failure.clone().unwrap();
    assert_eq!((failure.line_id.as_str(), failure.requested), ("2", 2));
    let available: Vec<(String, Option<i64>)> = failure
        .shortfalls
        .iter()
        .map(|s| (s.location.clone(), s.available))
        .collect();
    assert_eq!(
        available,
        vec![("DC1".to_owned(), Some(1)), ("DC2".to_owned(), Some(0))]
    );
    // Line 1 was held, then given back.
    assert!(holds(&order).iter().all(Vec::is_empty), "{order:?}");
    let a = buckets(&mut inventory, "A", "DC1").await;
    assert_eq!((a.available, a.reserved), (5, 0));
    let b = buckets(&mut inventory, "B", "DC1").await;
    assert_eq!((b.available, b.reserved), (1, 0));
    // A released order cannot be committed.
    let refused = orders
        .commit_order(pb::CommitOrderRequest {
            key: okey("short"),
            idempotency_key: "commit-short".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_fall_back_a_split_shares_and_commit_takes_every_hold() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("node"), NodeOptions::default())
        .await
        .unwrap();
    let (mut orders, mut inventory) = clients(&node).await;
    stock(
        &mut inventory,
        &[
            ("A", "S1", 1),
            ("A", "S2", 4),
            ("B", "S1", 2),
            ("B", "S2", 3),
        ],
    )
    .await;
    let order = orders
        .reserve_order(reserve_request(
            "o1",
            vec![
                line("1", "A", 3, &["S1", "S2"], false),
                line("2", "B", 4, &["S1", "S2"], true),
            ],
        ))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(status(&order), pb::OrderStatus::Held, "{order:?}");
    assert_eq!(
        holds(&order),
        vec![
            vec![("S2".to_owned(), 3)],
            vec![("S1".to_owned(), 2), ("S2".to_owned(), 2)]
        ]
    );
    assert_eq!(buckets(&mut inventory, "A", "S1").await.reserved, 0);
    assert_eq!(buckets(&mut inventory, "A", "S2").await.reserved, 3);
    assert_eq!(buckets(&mut inventory, "B", "S1").await.reserved, 2);
    assert_eq!(buckets(&mut inventory, "B", "S2").await.reserved, 2);
    let committed = orders
        .commit_order(pb::CommitOrderRequest {
            key: okey("o1"),
            idempotency_key: "commit-o1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(status(&committed), pb::OrderStatus::Committed);
    for (sku, location, quantity) in [("A", "S2", 3), ("B", "S1", 2), ("B", "S2", 2)] {
        let b = buckets(&mut inventory, sku, location).await;
        assert_eq!((b.reserved, b.committed), (0, quantity), "{sku}@{location}");
    }
    let refused = orders
        .release_order(pb::ReleaseOrderRequest {
            key: okey("o1"),
            idempotency_key: "release-o1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_reserve_order_holds_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("node"), NodeOptions::default())
        .await
        .unwrap();
    let (mut orders, mut inventory) = clients(&node).await;
    stock(&mut inventory, &[("A", "DC1", 10)]).await;
    let request = reserve_request("retry", vec![line("1", "A", 4, &["DC1"], false)]);
    let first = orders
        .reserve_order(request.clone())
        .await
        .unwrap()
        .into_inner();
    let again = orders
        .reserve_order(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed && again.replayed);
    assert_eq!(
        holds(first.order.as_ref().unwrap()),
        holds(again.order.as_ref().unwrap())
    );
    // The same order under another key changes nothing either.
    let other_key = orders
        .reserve_order(pb::ReserveOrderRequest {
            idempotency_key: "another-key".into(),
            ..request.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status(other_key.order.as_ref().unwrap()),
        pb::OrderStatus::Held
    );
    let a = buckets(&mut inventory, "A", "DC1").await;
    assert_eq!((a.reserved, a.available), (4, 6));
    // Other lines for the same order id are refused.
    let refused = orders
        .reserve_order(pb::ReserveOrderRequest {
            idempotency_key: "other-lines".into(),
            lines: vec![line("1", "A", 5, &["DC1"], false)],
            ..request.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);
    // Released: the units come back, and a retried release changes nothing.
    for _ in 0..2 {
        let released = orders
            .release_order(pb::ReleaseOrderRequest {
                key: okey("retry"),
                idempotency_key: "release-retry".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            status(released.order.as_ref().unwrap()),
            pb::OrderStatus::Released
        );
    }
    let a = buckets(&mut inventory, "A", "DC1").await;
    assert_eq!((a.reserved, a.available), (0, 10));
    let missing = orders
        .get_order(pb::GetOrderRequest { key: okey("nope") })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

/// 40 two-line orders race for 15 units of X (at two locations) and 12 of Y:
/// every order ends all held or all released, the holds add up to what the
/// positions have reserved, nothing is oversold, and every call returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_orders_never_oversell_and_never_deadlock() {
    const ORDERS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("node"), NodeOptions::default())
        .await
        .unwrap();
    let (orders, mut inventory) = clients(&node).await;
    stock(
        &mut inventory,
        &[("X", "DC1", 10), ("X", "DC2", 5), ("Y", "DC1", 12)],
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..ORDERS {
        let mut orders = orders.clone();
        tasks.push(tokio::spawn(async move {
            // Half the orders list Y first, so they lock nothing in any
            // order that two of them could wait on each other with.
            let mut lines = vec![
                line("x", "X", 1, &["DC1", "DC2"], false),
                line("y", "Y", 1, &["DC1"], false),
            ];
            if i % 2 == 1 {
                lines.reverse();
            }
            let call = orders.reserve_order(reserve_request(&format!("race-{i}"), lines));
            tokio::time::timeout(Duration::from_secs(30), call)
                .await
                .expect("ReserveOrder did not return: a deadlock?")
                .unwrap()
                .into_inner()
                .order
                .unwrap()
        }));
    }
    let mut held = 0i64;
    let mut orders = orders;
    for (i, task) in tasks.into_iter().enumerate() {
        let mut order = task.await.unwrap();
        if !matches!(
            status(&order),
            pb::OrderStatus::Held | pb::OrderStatus::Released
        ) {
            order = at_rest(&mut orders, &format!("race-{i}")).await;
        }
        let lines = holds(&order);
        match status(&order) {
            pb::OrderStatus::Held => {
                held += 1;
                assert!(lines
                    .iter()
                    .all(|l| l.iter().map(|h| h.1).sum::<i64>() == 1));
            }
            pb::OrderStatus::Released => {
                assert!(lines.iter().all(Vec::is_empty), "{order:?}");
            }
            other => panic!("race-{i} is {other:?}"),
        }
    }
    let x1 = buckets(&mut inventory, "X", "DC1").await;
    let x2 = buckets(&mut inventory, "X", "DC2").await;
    let y = buckets(&mut inventory, "Y", "DC1").await;
    // Two orders may each take what the other needs and both be released
    // (all or none, with no lock across positions), so fewer than 12 may
    // be held; never more, and whatever is not held is available again.
    assert!((1..=12).contains(&held), "{held} orders held");
    assert_eq!(y.reserved, held);
    assert_eq!(x1.reserved + x2.reserved, held);
    assert_eq!((x1.on_hand, x2.on_hand, y.on_hand), (10, 5, 12));
    assert_eq!(y.available, 12 - held);
    assert_eq!(x1.available + x2.available, 15 - held);
}

/// What an order does before the crash and what it must end as.
struct Scenario {
    name: &'static str,
    lines: Vec<pb::OrderLineSpec>,
    commit: bool,
    steps: u32,
}

/// The node aborts just before and just after each step of an order (a
/// failpoint of the test build); after the restart the order resumes and
/// ends all held or all released, and every unit is where it should be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_step_ends_all_held_or_all_released() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let initial = [
        ("A", "DC1", 5),
        ("B", "DC1", 1),
        ("B", "DC2", 5),
        ("C", "DC1", 1),
    ];
    let scenarios = [
        // Steps (concurrent within a round): reserve A@DC1, B@DC1 (short)
        // and C@DC1 (short); line 3 has no candidate left, so line 1 is
        // released without line 2 trying DC2.
        Scenario {
            name: "fails",
            lines: vec![
                line("1", "A", 2, &["DC1"], false),
                line("2", "B", 2, &["DC1", "DC2"], false),
                line("3", "C", 5, &["DC1"], false),
            ],
            commit: false,
            steps: 4,
        },
        // Steps: reserve A@DC1 and B@DC1 (short), then B@DC2, then commit
        // both at once.
        Scenario {
            name: "commits",
            lines: vec![
                line("1", "A", 2, &["DC1"], false),
                line("2", "B", 2, &["DC1", "DC2"], false),
            ],
            commit: true,
            steps: 5,
        },
    ];
    for scenario in &scenarios {
        for step in 1..=scenario.steps {
            for when in ["before", "after"] {
                let name = format!("{}-{when}-{step}", scenario.name);
                let failing = NodeOptions::default()
                    .arg("--config", config.display())
                    .env("SKULD_FAILPOINT_ORDER_STEP", format!("{when}:{step}"));
                let mut node = TestNode::start(&dir.path().join(&name), failing)
                    .await
                    .unwrap();
                let (mut orders, mut inventory) = clients(&node).await;
                stock(&mut inventory, &initial).await;
                let reserve = reserve_request(&name, scenario.lines.clone());
                let commit = pb::CommitOrderRequest {
                    key: okey(&name),
                    idempotency_key: format!("commit-{name}"),
                };
                // The abort may beat the reply out of the process.
                let reserved = orders.reserve_order(reserve.clone()).await;
                if scenario.commit && reserved.is_ok() {
                    let _ = orders.commit_order(commit.clone()).await;
                }
                let crashed = node.wait_exit(Duration::from_secs(10)).await.is_ok();
                assert!(crashed, "{name}: the failpoint never fired");
                node.restart_with(NodeOptions::default().arg("--config", config.display()))
                    .await
                    .unwrap();
                let (mut orders, mut inventory) = clients(&node).await;
                // The client retries what it sent (replays, or the first
                // attempt if the crash came before it was recorded).
                let order = orders
                    .reserve_order(reserve)
                    .await
                    .unwrap()
                    .into_inner()
                    .order;
                let mut order = match order {
                    Some(order) if status(&order) != pb::OrderStatus::Reserving => order,
                    _ => at_rest(&mut orders, &name).await,
                };
                if scenario.commit {
                    // Held, or committed already when the crash came after
                    // the commit was recorded: a retry is answered the same.
                    assert!(
                        matches!(
                            status(&order),
                            pb::OrderStatus::Held
                                | pb::OrderStatus::Committing
                                | pb::OrderStatus::Committed
                        ),
                        "{name}: {order:?}"
                    );
                    orders.commit_order(commit).await.unwrap();
                    order = at_rest(&mut orders, &name).await;
                }
                let order = if matches!(
                    status(&order),
                    pb::OrderStatus::Reserving
                        | pb::OrderStatus::Releasing
                        | pb::OrderStatus::Committing
                ) {
                    at_rest(&mut orders, &name).await
                } else {
                    order
                };
                let mut committed = std::collections::HashMap::new();
                match (scenario.commit, status(&order)) {
                    (false, pb::OrderStatus::Released) => {
                        assert_eq!(order.failure.unwrap().line_id, "3", "{name}");
                    }
                    (true, pb::OrderStatus::Committed) => {
                        committed.insert(("A", "DC1"), 2);
                        committed.insert(("B", "DC2"), 2);
                    }
                    (_, other) => panic!("{name}: ended {other:?}"),
                }
                // No unit leaked and none is held twice.
                for (sku, location, quantity) in initial {
                    let b = buckets(&mut inventory, sku, location).await;
                    let taken = committed.get(&(sku, location)).copied().unwrap_or(0);
                    assert_eq!(
                        (b.on_hand, b.reserved, b.committed, b.available),
                        (quantity, 0, taken, quantity - taken),
                        "{name}: {sku}@{location}"
                    );
                }
                node.kill9().unwrap();
            }
        }
    }
}

/// Cluster mode: orders asked of any node are run by their owner (the call
/// is forwarded), whose steps reach positions owned by other nodes; every
/// node reads the same order, and a short order releases across nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_orders_are_run_by_their_owner_against_positions_anywhere() {
    use skuld_tests::cluster::TestCluster;
    use skuld_tests::metrics::Scrape;

    let cluster = TestCluster::start(3).await.unwrap();
    let locations: Vec<String> = (0..6).map(|n| format!("DC{n}")).collect();
    let mut inventory = cluster.inventory(0).await.unwrap();
    for location in &locations {
        inventory
            .adjust(receive(
                &key(TENANT, "SKU-1", location),
                &format!("rcv-{location}"),
                2,
            ))
            .await
            .unwrap();
    }
    let forwarded = |metrics: String| Scrape(metrics).or_zero("skuld_forwarded_total", &[]);
    let mut before = 0.0;
    for index in 0..3 {
        before += forwarded(cluster.node(index).http_get("/metrics").await.unwrap().1);
    }
    // Six orders, each taking 2 units at two of the locations, asked of
    // the nodes in turn: all 12 units are held.
    for n in 0..6usize {
        let via = n % 3;
        let mut orders = Orders::new(cluster.node(via).channel().await.unwrap());
        let lines = vec![
            line("a", "SKU-1", 1, &[&locations[n]], false),
            line("b", "SKU-1", 1, &[&locations[(n + 1) % 6]], false),
        ];
        let order = orders
            .reserve_order(reserve_request(&format!("c-{n}"), lines))
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap();
        assert_eq!(status(&order), pb::OrderStatus::Held, "c-{n}: {order:?}");
    }
    // A seventh finds nothing left and holds nothing.
    let mut orders = Orders::new(cluster.node(1).channel().await.unwrap());
    let short = orders
        .reserve_order(reserve_request(
            "c-short",
            vec![line("a", "SKU-1", 1, &["DC0", "DC3", "DC5"], false)],
        ))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(status(&short), pb::OrderStatus::Released);
    // Committed through another node than the one that reserved; read
    // back through every node.
    for n in 0..6usize {
        let mut orders = Orders::new(cluster.node((n + 1) % 3).channel().await.unwrap());
        orders
            .commit_order(pb::CommitOrderRequest {
                key: okey(&format!("c-{n}")),
                idempotency_key: format!("commit-c-{n}"),
            })
            .await
            .unwrap();
        for index in 0..3 {
            let mut reader = Orders::new(cluster.node(index).channel().await.unwrap());
            let order = reader
                .get_order(pb::GetOrderRequest {
                    key: okey(&format!("c-{n}")),
                })
                .await
                .unwrap()
                .into_inner()
                .order
                .unwrap();
            assert_eq!(status(&order), pb::OrderStatus::Committed);
        }
    }
    for location in &locations {
        let b = buckets(&mut inventory, "SKU-1", location).await;
        assert_eq!(
            (b.committed, b.reserved, b.available),
            (2, 0, 0),
            "{location}"
        );
    }
    let mut after = 0.0;
    for index in 0..3 {
        after += forwarded(cluster.node(index).http_get("/metrics").await.unwrap().1);
    }
    assert!(after > before, "nothing was forwarded");
}

fn tkey(transfer_id: &str) -> Option<pb::TransferKey> {
    Some(pb::TransferKey {
        tenant: TENANT.into(),
        transfer_id: transfer_id.into(),
    })
}

fn transfer_request(transfer_id: &str, quantity: i64) -> pb::TransferStockRequest {
    pb::TransferStockRequest {
        key: tkey(transfer_id),
        idempotency_key: format!("transfer-{transfer_id}"),
        sku: "T".into(),
        from_location: "DC1".into(),
        to_location: "ST1".into(),
        quantity,
    }
}

fn transfer_status(transfer: &pb::Transfer) -> pb::TransferStatus {
    pb::TransferStatus::try_from(transfer.status).unwrap()
}

/// Reads the transfer until its steps are done.
async fn transfer_at_rest(orders: &mut Orders, transfer_id: &str) -> pb::Transfer {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = orders
            .get_transfer(pb::GetTransferRequest {
                key: tkey(transfer_id),
            })
            .await;
        if let Ok(reply) = reply {
            let transfer = reply.into_inner().transfer.unwrap();
            if matches!(
                transfer_status(&transfer),
                pb::TransferStatus::InTransit
                    | pb::TransferStatus::Received
                    | pb::TransferStatus::NotTransferred
            ) {
                return transfer;
            }
        }
        assert!(
            Instant::now() < deadline,
            "transfer {transfer_id} never came to rest"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (available at DC1, incoming and available at ST1) of SKU T.
async fn transfer_buckets(inventory: &mut Inventory) -> (i64, i64, i64) {
    let from = buckets(inventory, "T", "DC1").await;
    let to = buckets(inventory, "T", "ST1").await;
    (from.available, to.incoming, to.available)
}

/// A transfer takes units out of DC1's available into ST1's incoming, a
/// retry applies it once, receiving moves them into ST1's available; a
/// short transfer is refused with what DC1 had and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_moves_units_once_and_a_short_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("node"), NodeOptions::default())
        .await
        .unwrap();
    let (mut orders, mut inventory) = clients(&node).await;
    stock(&mut inventory, &[("T", "DC1", 10)]).await;

    let request = transfer_request("t1", 4);
    let first = orders
        .transfer_stock(request.clone())
        .await
        .unwrap()
        .into_inner();
    let transfer = first.transfer.unwrap();
    assert_eq!(
        transfer_status(&transfer),
        pb::TransferStatus::InTransit,
        "{transfer:?}"
    );
    assert_eq!(transfer_buckets(&mut inventory).await, (6, 4, 0));
    // A retry under the same key is replayed; under another key the same
    // transfer changes nothing either.
    let again = orders
        .transfer_stock(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed && again.replayed);
    orders
        .transfer_stock(pb::TransferStockRequest {
            idempotency_key: "another-key".into(),
            ..request.clone()
        })
        .await
        .unwrap();
    assert_eq!(transfer_buckets(&mut inventory).await, (6, 4, 0));
    // Another transfer under the same id, or an order's command, is refused.
    let other = orders
        .transfer_stock(pb::TransferStockRequest {
            idempotency_key: "other-quantity".into(),
            ..transfer_request("t1", 5)
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists);
    let commit = orders
        .commit_order(pb::CommitOrderRequest {
            key: okey("t1"),
            idempotency_key: "commit-t1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(commit.code(), Code::FailedPrecondition);

    for _ in 0..2 {
        let received = orders
            .receive_transfer(pb::ReceiveTransferRequest {
                key: tkey("t1"),
                idempotency_key: "receive-t1".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .transfer
            .unwrap();
        assert_eq!(transfer_status(&received), pb::TransferStatus::Received);
    }
    assert_eq!(transfer_buckets(&mut inventory).await, (6, 0, 4));
    let st1 = buckets(&mut inventory, "T", "ST1").await;
    assert_eq!(st1.on_hand, 4);

    // 7 asked, 6 available: refused, nothing changes.
    let short = orders
        .transfer_stock(transfer_request("t2", 7))
        .await
        .unwrap()
        .into_inner()
        .transfer
        .unwrap();
    assert_eq!(transfer_status(&short), pb::TransferStatus::NotTransferred);
    let failure = short.failure.unwrap();
    assert_eq!(failure.shortfalls[0].location, "DC1");
    assert_eq!(failure.shortfalls[0].available, Some(6));
    assert_eq!(transfer_buckets(&mut inventory).await, (6, 0, 4));
    let dc1 = buckets(&mut inventory, "T", "DC1").await;
    assert_eq!(dc1.on_hand, 6);
    let not_in_transit = orders
        .receive_transfer(pb::ReceiveTransferRequest {
            key: tkey("t2"),
            idempotency_key: "receive-t2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(not_in_transit.code(), Code::FailedPrecondition);

    let bad = orders
        .transfer_stock(pb::TransferStockRequest {
            to_location: "DC1".into(),
            ..transfer_request("t3", 1)
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let missing = orders
        .get_transfer(pb::GetTransferRequest { key: tkey("t3") })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

/// The node aborts just before and just after each step of a transfer
/// (out of DC1, into ST1's incoming, the receipt); after the restart the
/// transfer resumes, and the units are at ST1 or at DC1, never both or
/// neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_transfer_step_ends_at_one_location() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    for step in 1..=3u32 {
        for when in ["before", "after"] {
            let name = format!("transfer-{when}-{step}");
            let failing = NodeOptions::default()
                .arg("--config", config.display())
                .env("SKULD_FAILPOINT_ORDER_STEP", format!("{when}:{step}"));
            let mut node = TestNode::start(&dir.path().join(&name), failing)
                .await
                .unwrap();
            let (mut orders, mut inventory) = clients(&node).await;
            stock(&mut inventory, &[("T", "DC1", 10)]).await;
            let request = transfer_request(&name, 4);
            let receive = pb::ReceiveTransferRequest {
                key: tkey(&name),
                idempotency_key: format!("receive-{name}"),
            };
            // The abort may beat the reply out of the process.
            if orders.transfer_stock(request.clone()).await.is_ok() {
                let _ = orders.receive_transfer(receive.clone()).await;
            }
            let crashed = node.wait_exit(Duration::from_secs(10)).await.is_ok();
            assert!(crashed, "{name}: the failpoint never fired");
            node.restart_with(NodeOptions::default().arg("--config", config.display()))
                .await
                .unwrap();
            let (mut orders, mut inventory) = clients(&node).await;
            // Before the receipt, the units are in exactly one place.
            orders.transfer_stock(request).await.unwrap();
            let transfer = transfer_at_rest(&mut orders, &name).await;
            let now = transfer_buckets(&mut inventory).await;
            match transfer_status(&transfer) {
                pb::TransferStatus::InTransit => assert_eq!(now, (6, 4, 0), "{name}"),
                pb::TransferStatus::Received => assert_eq!(now, (6, 0, 4), "{name}"),
                other => panic!("{name}: ended {other:?} with {now:?}"),
            }
            orders.receive_transfer(receive).await.unwrap();
            let transfer = transfer_at_rest(&mut orders, &name).await;
            assert_eq!(
                transfer_status(&transfer),
                pb::TransferStatus::Received,
                "{name}"
            );
            assert_eq!(transfer_buckets(&mut inventory).await, (6, 0, 4), "{name}");
            node.kill9().unwrap();
        }
    }
}
