//! The business metrics an SRE watches at a peak, read from the real
//! node's `/metrics` after a short workload of reservations and returns:
//! every series exists and has moved. In cluster mode each node counts the
//! return cases of its own shards, so the sum over nodes is the number of
//! cases (nothing counted twice), and handoffs and lease confirmations are
//! measured.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use skuld_proto::v1 as pb;
use skuld_tests::cluster::TestCluster;
use skuld_tests::metrics::Scrape;
use skuld_tests::requests::{key, receive, release, reserve};
use skuld_tests::returns::Case;
use skuld_tests::{NodeOptions, TestNode};
use tonic::transport::Channel;
use tonic::Code;

type Returns = pb::returns_service_client::ReturnsServiceClient<Channel>;

/// Census every second, timers every 100 ms; tenant `immediate` refunds at
/// once, tenant `erp` waits for the ERP.
fn write_config(dir: &Path) -> std::path::PathBuf {
    let toml = "[runtime]\ntimer_scan_interval_ms = 100\ncensus_interval_secs = 1\n\
        [returns.policies.immediate]\nrefund_gate = \"IMMEDIATE\"\n\
        [returns.policies.erp]\nrefund_gate = \"ERP_VALIDATION\"\n";
    let path = dir.join("skuld.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

async fn scrape(node: &TestNode) -> Scrape {
    let (status, text) = node.http_get("/metrics").await.unwrap();
    assert_eq!(status, 200, "{text}");
    Scrape(text)
}

/// Scrapes until `ready` holds (the census runs every second), or fails
/// with the last scrape.
async fn scrape_until(node: &TestNode, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let scrape = scrape(node).await;
        if ready(&scrape) {
            return scrape;
        }
        if Instant::now() > deadline {
            panic!("{what} never showed on /metrics:\n{}", scrape.0);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Opens `case` (3 shirts of a 4-shirt order, refunded).
async fn open(returns: &mut Returns, case: &mut Case) {
    returns.request_return(case.open(false)).await.unwrap();
}

/// Approved, shipped, received, inspected (one unit unsellable: an
/// exception for the warehouse), disposed and processed.
async fn process(returns: &mut Returns, case: &mut Case) {
    returns.approve_return(case.approve()).await.unwrap();
    returns.attach_label(case.label()).await.unwrap();
    returns
        .record_carrier_event(case.milestone(pb::CarrierMilestone::Delivered))
        .await
        .unwrap();
    returns.receive_items(case.receive(3)).await.unwrap();
    returns.inspect_items(case.inspect(2, 1)).await.unwrap();
    returns
        .dispose_items(case.dispose(2, pb::Disposition::Restock))
        .await
        .unwrap();
    returns
        .dispose_items(case.dispose(1, pb::Disposition::DamagedHold))
        .await
        .unwrap();
    returns.process_return(case.process()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_business_metric_exists_and_moves_after_a_workload() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let node = TestNode::start(
        &dir.path().join("node"),
        NodeOptions::default().arg("--config", config.display()),
    )
    .await
    .unwrap();
    let before = scrape(&node).await;
    // Registered at 0 before anything happened, so rates are defined.
    for outcome in ["created", "released", "expired", "committed"] {
        assert_eq!(
            before.value("skuld_reservations_total", &[("outcome", outcome)]),
            Some(0.0),
            "{outcome}:\n{}",
            before.0
        );
    }
    assert_eq!(
        before.value("skuld_store_commit_errors_total", &[]),
        Some(0.0)
    );

    // Reservations: made and released, made and expired, made and
    // committed, one refused for want of stock, one left active.
    let mut inventory = node.inventory().await.unwrap();
    let position = key("shop", "SKU-1", "DC1");
    inventory
        .adjust(receive(&position, "stock", 10))
        .await
        .unwrap();
    inventory
        .reserve(reserve(&position, "r-released", 2, 600))
        .await
        .unwrap();
    inventory
        .release_reservation(release(&position, "release-1", "r-released"))
        .await
        .unwrap();
    inventory
        .reserve(reserve(&position, "r-expiring", 1, 1))
        .await
        .unwrap();
    inventory
        .reserve(reserve(&position, "r-committed", 1, 600))
        .await
        .unwrap();
    inventory
        .commit_reservation(skuld_tests::requests::commit(
            &position,
            "commit-1",
            "r-committed",
            0,
            "order-1",
        ))
        .await
        .unwrap();
    let refused = inventory
        .reserve(reserve(&position, "r-too-many", 1_000, 600))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    inventory
        .reserve(reserve(&position, "r-active", 1, 3_600))
        .await
        .unwrap();
    // Retries with the same idempotency keys are replays: they count for
    // nothing, accepted or refused.
    inventory
        .reserve(reserve(&position, "r-active", 1, 3_600))
        .await
        .unwrap();
    inventory
        .reserve(reserve(&position, "r-too-many", 1_000, 600))
        .await
        .unwrap_err();

    // Returns: one refunded at once (a cycle time), one waiting for the
    // ERP (the refund backlog), both with an open warehouse exception, one
    // only requested.
    let mut returns = node.returns().await.unwrap();
    let mut refunded = Case::new("immediate", "R-1");
    open(&mut returns, &mut refunded).await;
    process(&mut returns, &mut refunded).await;
    let mut waiting = Case::new("erp", "R-2");
    open(&mut returns, &mut waiting).await;
    process(&mut returns, &mut waiting).await;
    open(&mut returns, &mut Case::new("erp", "R-3")).await;

    let after = scrape_until(&node, "the census and the expiry", |scrape| {
        scrape.or_zero("skuld_refunds_pending", &[]) >= 1.0
            && scrape.or_zero("skuld_reservations_total", &[("outcome", "expired")]) >= 1.0
            && scrape.or_zero("skuld_refund_oldest_pending_seconds", &[]) > 0.0
    })
    .await;
    // Every count exact: the node is its own process, so nothing else
    // counts here, and a double count would show.
    let moved = |name: &str, labels: &[(&str, &str)], expected: f64| {
        let value = after.or_zero(name, labels);
        assert_eq!(value, expected, "{name}{labels:?}:\n{}", after.0);
    };
    for (outcome, expected) in [
        ("created", 4.0),
        ("released", 1.0),
        ("expired", 1.0),
        ("committed", 1.0),
    ] {
        moved(
            "skuld_reservations_total",
            &[("outcome", outcome)],
            expected,
        );
    }
    moved(
        "skuld_refusals_total",
        &[("kind", "position"), ("reason", "insufficient_available")],
        1.0,
    );
    let cart_age = after.or_zero("skuld_reservation_oldest_age_seconds", &[("owner", "cart")]);
    assert!(cart_age > 0.0, "no active cart hold counted:\n{}", after.0);
    // Expiry runs: nothing active is past its expiry.
    assert_eq!(
        after.value("skuld_reservation_expiry_overdue_seconds", &[]),
        Some(0.0),
        "{}",
        after.0
    );
    assert_eq!(after.value("skuld_census_legacy_summaries", &[]), Some(0.0));
    assert_eq!(
        after.value(
            "skuld_reservation_oldest_age_seconds",
            &[("owner", "order")]
        ),
        Some(0.0),
        "no order hold is active:\n{}",
        after.0
    );

    assert_eq!(
        after.value("skuld_returns", &[("state", "PROCESSED")]),
        Some(2.0),
        "{}",
        after.0
    );
    assert_eq!(
        after.value("skuld_returns", &[("state", "REQUESTED")]),
        Some(1.0),
        "{}",
        after.0
    );
    assert_eq!(
        after.value("skuld_returns", &[("state", "CLOSED")]),
        Some(0.0),
        "{}",
        after.0
    );
    assert_eq!(
        after.value("skuld_refunds_pending", &[]),
        Some(1.0),
        "{}",
        after.0
    );
    assert_eq!(
        after.value(
            "skuld_return_exceptions_open",
            &[("type", "damaged_on_arrival"), ("team", "warehouse")]
        ),
        Some(2.0),
        "{}",
        after.0
    );
    assert_eq!(
        after.value(
            "skuld_return_exceptions_open",
            &[("type", "erp_confirmation_overdue"), ("team", "finance")]
        ),
        Some(0.0),
        "{}",
        after.0
    );
    moved(
        "skuld_return_exceptions_raised_total",
        &[("type", "damaged_on_arrival"), ("team", "warehouse")],
        2.0,
    );
    moved(
        "skuld_return_transitions_total",
        &[("to", "REQUESTED")],
        3.0,
    );
    moved(
        "skuld_return_transitions_total",
        &[("to", "PROCESSED")],
        2.0,
    );
    moved("skuld_refunds_released_total", &[], 1.0);
    moved("skuld_return_cycle_seconds_count", &[], 1.0);
    // Cycle times are hours to weeks, and so are their buckets (the
    // latency buckets of other `_seconds` series end at 5 s).
    moved("skuld_return_cycle_seconds_bucket", &[("le", "86400")], 1.0);
    moved("skuld_return_transitions_total", &[("to", "CLOSED")], 0.0);
    assert!(after.or_zero("skuld_census_seconds_count", &[]) >= 1.0);
    assert_eq!(after.value("skuld_census_errors_total", &[]), Some(0.0));
    assert!(
        after.0.contains("# HELP skuld_refunds_pending"),
        "business series carry HELP text:\n{}",
        after.0
    );

    // The ERP confirms: the backlog empties and a second cycle time counts.
    returns
        .confirm_erp(pb::ConfirmErpRequest {
            header: waiting.header(),
            credit_memo: "CM-1".into(),
        })
        .await
        .unwrap();
    let drained = scrape_until(&node, "the refund backlog emptied", |scrape| {
        scrape.value("skuld_refunds_pending", &[]) == Some(0.0)
    })
    .await;
    assert_eq!(
        drained.value("skuld_refund_oldest_pending_seconds", &[]),
        Some(0.0)
    );
    assert_eq!(
        drained.value("skuld_return_cycle_seconds_count", &[]),
        Some(2.0)
    );
    assert_eq!(
        drained.value("skuld_refunds_released_total", &[]),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_each_case_is_counted_once_and_handoffs_are_measured() {
    let census = NodeOptions::default().env("SKULD_CENSUS_INTERVAL_SECS", 1);
    let mut cluster = TestCluster::start_with(
        2,
        skuld_tests::cluster::ClusterOptions {
            node: census,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Cases opened through both nodes land on shards of both.
    const CASES: usize = 12;
    for index in 0..CASES {
        let mut returns = cluster.returns(index % 2).await.unwrap();
        open(&mut returns, &mut Case::new("shop", &format!("R-{index}"))).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let (requested, scrapes) = loop {
        let mut scrapes = Vec::new();
        for index in 0..2 {
            scrapes.push(scrape(cluster.node(index)).await);
        }
        let requested: f64 = scrapes
            .iter()
            .map(|scrape| scrape.or_zero("skuld_returns", &[("state", "REQUESTED")]))
            .sum();
        if requested == CASES as f64 || Instant::now() > deadline {
            break (requested, scrapes);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pages: Vec<&str> = scrapes.iter().map(|scrape| scrape.0.as_str()).collect();
    assert_eq!(
        requested, CASES as f64,
        "the nodes' counts must add up to the cases, each counted by its owner:\n{pages:#?}"
    );
    for (index, scrape) in scrapes.iter().enumerate() {
        assert!(
            scrape.or_zero("skuld_returns", &[("state", "REQUESTED")]) < CASES as f64,
            "node {index} counted cases of shards it does not own"
        );
        assert!(
            scrape.or_zero("skuld_shards_owned", &[]) > 0.0,
            "node {index}"
        );
        assert!(
            scrape.or_zero("skuld_lease_confirmations_total", &[]) > 0.0,
            "node {index}: no lease confirmation counted:\n{}",
            scrape.0
        );
        assert!(
            scrape.or_zero("skuld_handoff_seconds_count", &[("direction", "in")]) > 0.0,
            "node {index}: no shard taken measured:\n{}",
            scrape.0
        );
    }

    // A third node takes shards from the first two: they measure the
    // handoffs out.
    cluster.add_node(NodeOptions::default()).await.unwrap();
    cluster.wait_settled(Duration::from_secs(30)).await.unwrap();
    let mut given = 0.0;
    for index in 0..2 {
        given += scrape(cluster.node(index))
            .await
            .or_zero("skuld_handoff_seconds_count", &[("direction", "out")]);
    }
    assert!(given > 0.0, "no handoff out measured");
}
