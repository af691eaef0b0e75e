//! The inventory API through real gRPC against the real binary: the
//! reserve -> commit -> fulfil flow, idempotent replay, operations surface,
//! every bad input's status (with the stored position unchanged), and
//! overload refusals that come at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use skuld_proto::v1 as pb;
use skuld_tests::requests::{get, header, key, receive, reserve};
use skuld_tests::{NodeOptions, TestNode};
use tonic::transport::Channel;
use tonic::Code;

type Inventory = pb::inventory_service_client::InventoryServiceClient<Channel>;

async fn position(client: &mut Inventory, key: &pb::PositionKey) -> pb::Position {
    client
        .get_position(get(key))
        .await
        .unwrap()
        .into_inner()
        .position
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_commit_fulfil_and_operations() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("node"), NodeOptions::default())
        .await
        .unwrap();
    let mut client = node.inventory().await.unwrap();
    let dc1 = key("acme", "SKU-1", "DC1");
    let stocked = client
        .adjust(receive(&dc1, "receive-1", 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (stocked.version, stocked.buckets.unwrap().available),
        (1, 10)
    );

    let mut request = tonic::Request::new(reserve(&dc1, "cart-9-line-1", 3, 900));
    request
        .metadata_mut()
        .insert("x-correlation-id", "checkout-42".parse().unwrap());
    let reserved = client.reserve(request).await.unwrap();
    assert_eq!(
        reserved.metadata().get("x-correlation-id").unwrap(),
        "checkout-42"
    );
    let reserved = reserved.into_inner();
    let buckets = reserved.buckets.unwrap();
    assert_eq!(
        (
            reserved.version,
            reserved.granted_quantity,
            buckets.reserved,
            buckets.available
        ),
        (2, 3, 3, 7)
    );
    let reservation_id = reserved.reservation.unwrap().reservation_id;
    assert_eq!(reservation_id, "cart-9-line-1");

    // A retry replays the first reply and changes nothing.
    let replay = client
        .reserve(reserve(&dc1, "cart-9-line-1", 3, 900))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.version, 2);
    assert_eq!(position(&mut client, &dc1).await.version, 2);

    let committed = client
        .commit_reservation(pb::CommitReservationRequest {
            header: header(&dc1, "commit-1"),
            reservation_id: reservation_id.clone(),
            quantity: 0,
            order_ref: "order-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let buckets = committed.buckets.unwrap();
    assert_eq!(
        (buckets.reserved, buckets.committed, buckets.available),
        (0, 3, 7)
    );
    let fulfilled = client
        .fulfill(pb::FulfillRequest {
            header: header(&dc1, "ship-1"),
            order_ref: "order-1".into(),
            quantity: 3,
        })
        .await
        .unwrap()
        .into_inner();
    let buckets = fulfilled.buckets.unwrap();
    assert_eq!(
        (
            fulfilled.version,
            buckets.on_hand,
            buckets.committed,
            buckets.available
        ),
        (4, 7, 0, 7)
    );

    client
        .adjust(receive(&key("acme", "SKU-1", "DC2"), "receive-2", 5))
        .await
        .unwrap();
    let availability = client
        .get_availability(pb::GetAvailabilityRequest {
            tenant: "acme".into(),
            sku: "SKU-1".into(),
            locations: vec!["DC1".into(), "DC2".into(), "STORE-9".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(availability.total_available, 12);
    assert_eq!(availability.locations.len(), 3);

    let mut health =
        tonic_health::pb::health_client::HealthClient::new(node.channel().await.unwrap());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "skuld.v1.InventoryService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let (status, metrics) = node.http_get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("skuld_grpc_requests_total"), "{metrics}");
    assert!(
        metrics.contains("skuld_store_commit_seconds_bucket"),
        "histograms, not summaries"
    );
    assert_eq!(node.http_get("/healthz").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_status_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(
        &dir.path().join("node"),
        NodeOptions::default().arg("--timer-scan-interval-ms", 100),
    )
    .await
    .unwrap();
    let mut client = node.inventory().await.unwrap();
    let dc1 = key("acme", "SKU-1", "DC1");
    client.adjust(receive(&dc1, "receive", 10)).await.unwrap();
    client
        .reserve(reserve(&dc1, "short-lived", 1, 1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let before = position(&mut client, &dc1).await;

    let mut stale = reserve(&dc1, "k7", 1, 60);
    stale.header.as_mut().unwrap().expected_version = Some(before.version - 1);
    let mut reused = reserve(&dc1, "receive", 1, 60);
    reused.quantity = 2;
    let cases: Vec<(&str, Code, pb::ReserveRequest)> = vec![
        (
            "empty tenant",
            Code::InvalidArgument,
            reserve(&key("", "SKU-1", "DC1"), "k1", 1, 60),
        ),
        (
            "oversized sku",
            Code::InvalidArgument,
            reserve(&key("acme", &"S".repeat(129), "DC1"), "k2", 1, 60),
        ),
        (
            "non-printable sku",
            Code::InvalidArgument,
            reserve(&key("acme", "SKU\u{7}", "DC1"), "k3", 1, 60),
        ),
        (
            "zero quantity",
            Code::InvalidArgument,
            reserve(&dc1, "k4", 0, 60),
        ),
        (
            "negative quantity",
            Code::InvalidArgument,
            reserve(&dc1, "k5", -1, 60),
        ),
        (
            "missing idempotency key",
            Code::InvalidArgument,
            reserve(&dc1, "", 1, 60),
        ),
        (
            "more than available",
            Code::FailedPrecondition,
            reserve(&dc1, "k6", 1_000, 60),
        ),
        ("stale expected_version", Code::FailedPrecondition, stale),
        (
            "idempotency key reused for another request",
            Code::AlreadyExists,
            reused,
        ),
    ];
    for (what, code, request) in cases {
        let status = client.reserve(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{what}: {status:?}");
    }
    let insufficient = client
        .reserve(reserve(&dc1, "k8", 1_000, 60))
        .await
        .unwrap_err();
    assert!(
        insufficient.message().contains("available 10"),
        "{}",
        insufficient.message()
    );

    let unknown = client
        .release_reservation(pb::ReleaseReservationRequest {
            header: header(&dc1, "k9"),
            reservation_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let expired = client
        .commit_reservation(pb::CommitReservationRequest {
            header: header(&dc1, "k10"),
            reservation_id: "short-lived".into(),
            quantity: 0,
            order_ref: "order-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        expired.code(),
        Code::FailedPrecondition,
        "commit after expiry: {expired:?}"
    );
    let cas = client
        .adjust(pb::AdjustRequest {
            change_from: Some(3),
            ..receive(&dc1, "k11", 1)
        })
        .await
        .unwrap_err();
    assert_eq!(cas.code(), Code::FailedPrecondition);
    let unspecified = client
        .adjust(pb::AdjustRequest {
            bucket: pb::Bucket::Unspecified.into(),
            ..receive(&dc1, "k12", 1)
        })
        .await
        .unwrap_err();
    assert_eq!(unspecified.code(), Code::InvalidArgument);
    let missing = client
        .get_position(get(&key("acme", "NEVER", "DC1")))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let after = position(&mut client, &dc1).await;
    assert_eq!(after, before, "a refused request changed the position");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queues_refuse_at_once_with_a_retry_hint() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(
        &dir.path().join("node"),
        NodeOptions::default()
            .arg("--mailbox-capacity", 4)
            .env("SKULD_FAILPOINT_COMMIT_DELAY_MS", 300),
    )
    .await
    .unwrap();
    let client = node.inventory().await.unwrap();
    let dc1 = key("acme", "HOT", "DC1");
    let mut calls = Vec::new();
    for index in 0..200 {
        let mut client = client.clone();
        let dc1 = dc1.clone();
        calls.push(tokio::spawn(async move {
            let mut request = tonic::Request::new(receive(&dc1, &format!("k{index}"), 1));
            request.set_timeout(Duration::from_secs(10));
            let started = Instant::now();
            let result = client.adjust(request).await;
            (result, started.elapsed())
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for call in calls {
        let (result, elapsed) = call.await.unwrap();
        match result {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.metadata().get("retry-after-ms").is_some());
                assert!(
                    elapsed < Duration::from_millis(250),
                    "refusal took {elapsed:?}"
                );
                refused += 1;
            }
        }
    }
    assert!(refused >= 150, "only {refused} of 200 refused ({ok} ok)");
    let mut client = node.inventory().await.unwrap();
    let after = position(&mut client, &dc1).await;
    assert_eq!(
        after.buckets.unwrap().on_hand,
        ok,
        "exactly the acknowledged adjustments applied"
    );
}
