//! The inventory API through real gRPC against the real binary: the
//! receive -> reserve -> commit -> fulfil flow with buckets and versions after
//! every step, what GetPosition and GetAvailability list, idempotent replay,
//! correlation ids, health, probes, metrics and a clean SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use skuld_proto::v1 as pb;
use skuld_tests::requests::{commit, fulfill, get, header, key, receive, reserve};
use skuld_tests::{check_buckets, NodeOptions, TestDir, TestNode};
use tonic::transport::Channel;

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

fn buckets(on_hand: i64, available: i64, reserved: i64, committed: i64) -> pb::Buckets {
    pb::Buckets {
        on_hand,
        available,
        reserved,
        committed,
        ..pb::Buckets::default()
    }
}

/// Checks a mutation reply: not a replay, the expected version and buckets,
/// and the bucket invariants.
fn expect_reply(what: &str, reply: &pb::MutationResponse, version: u64, expected: pb::Buckets) {
    assert!(!reply.replayed, "{what}: first reply marked replayed");
    assert_eq!(reply.version, version, "{what}: version");
    let got = reply.buckets.unwrap();
    assert_eq!(got, expected, "{what}: buckets");
    check_buckets(&got).unwrap();
}

async fn start(dir: &TestDir) -> TestNode {
    TestNode::start(&dir.node_dir("node"), NodeOptions::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_reserve_commit_fulfil() {
    let dir = TestDir::new().unwrap();
    let node = start(&dir).await;
    let mut client = node.client().await.unwrap();
    let dc1 = key("acme", "SKU-1", "DC1");

    let reply = client
        .adjust(receive(&dc1, "receive-1", 100))
        .await
        .unwrap()
        .into_inner();
    expect_reply("receive", &reply, 1, buckets(100, 100, 0, 0));
    assert_eq!(reply.key.as_ref(), Some(&dc1));

    // Two reservations; the first one's id defaults to its idempotency key.
    let reply = client
        .reserve(reserve(&dc1, "cart-1-line-1", 10, 900))
        .await
        .unwrap()
        .into_inner();
    expect_reply("reserve r1", &reply, 2, buckets(100, 90, 10, 0));
    assert_eq!(reply.granted_quantity, 10);
    let r1 = reply.reservation.unwrap();
    assert_eq!(r1.reservation_id, "cart-1-line-1");
    assert_eq!(
        (r1.quantity, r1.requested_quantity, r1.committed_quantity),
        (10, 10, 0)
    );
    assert_eq!(r1.state(), pb::ReservationState::Active);

    let reply = client
        .reserve(pb::ReserveRequest {
            reservation_id: "r2".into(),
            channel: "pos".into(),
            ..reserve(&dc1, "cart-2-line-1", 5, 900)
        })
        .await
        .unwrap()
        .into_inner();
    expect_reply("reserve r2", &reply, 3, buckets(100, 85, 15, 0));
    assert_eq!(reply.reservation.unwrap().reservation_id, "r2");

    let listed = position(&mut client, &dc1).await;
    assert_eq!(listed.version, 3);
    assert_eq!(listed.buckets.unwrap(), buckets(100, 85, 15, 0));
    assert_eq!(listed.active_reservations, 2);
    let ids: Vec<_> = listed
        .reservations
        .iter()
        .map(|r| r.reservation_id.as_str())
        .collect();
    assert_eq!(ids, ["cart-1-line-1", "r2"], "ordered by id");
    let r1 = &listed.reservations[0];
    assert_eq!((r1.quantity, r1.channel.as_str()), (10, "web"));
    assert_eq!(r1.owner.as_ref().unwrap().id, "cart");
    assert!(
        r1.expires_at_unix_ms >= r1.created_at_unix_ms + 800_000,
        "ttl 900 s: {r1:?}"
    );
    let r2 = &listed.reservations[1];
    assert_eq!((r2.quantity, r2.channel.as_str()), (5, "pos"));
    assert!(listed.commitments.is_empty());

    // Commit part of r1, then the rest.
    let reply = client
        .commit_reservation(commit(&dc1, "commit-1", "cart-1-line-1", 4, "order-1"))
        .await
        .unwrap()
        .into_inner();
    expect_reply("commit 4 of r1", &reply, 4, buckets(100, 85, 11, 4));
    let r1 = reply.reservation.unwrap();
    assert_eq!((r1.quantity, r1.committed_quantity), (6, 4));
    assert_eq!(r1.state(), pb::ReservationState::Active);

    let reply = client
        .commit_reservation(commit(&dc1, "commit-2", "cart-1-line-1", 0, "order-1"))
        .await
        .unwrap()
        .into_inner();
    expect_reply("commit the rest of r1", &reply, 5, buckets(100, 85, 5, 10));
    let r1 = reply.reservation.unwrap();
    assert_eq!((r1.quantity, r1.committed_quantity), (0, 10));
    assert_eq!(r1.state(), pb::ReservationState::Committed);

    let listed = position(&mut client, &dc1).await;
    assert_eq!(listed.version, 5);
    assert_eq!(listed.active_reservations, 1);
    let ids: Vec<_> = listed
        .reservations
        .iter()
        .map(|r| r.reservation_id.as_str())
        .collect();
    assert_eq!(ids, ["r2"], "a committed reservation is no longer active");
    assert_eq!(
        listed.commitments,
        [pb::Commitment {
            order_ref: "order-1".into(),
            quantity: 10
        }]
    );

    // Ship in two parcels.
    let reply = client
        .fulfill(fulfill(&dc1, "ship-1", "order-1", 6))
        .await
        .unwrap()
        .into_inner();
    expect_reply("ship 6", &reply, 6, buckets(94, 85, 5, 4));
    let reply = client
        .fulfill(fulfill(&dc1, "ship-2", "order-1", 4))
        .await
        .unwrap()
        .into_inner();
    expect_reply("ship 4", &reply, 7, buckets(90, 85, 5, 0));

    let listed = position(&mut client, &dc1).await;
    assert_eq!(listed.version, 7);
    assert_eq!(listed.buckets.unwrap(), buckets(90, 85, 5, 0));
    assert!(
        listed.commitments.iter().all(|c| c.quantity == 0),
        "a shipped commitment still holds units: {:?}",
        listed.commitments
    );
    assert_eq!(listed.active_reservations, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_over_several_locations() {
    let dir = TestDir::new().unwrap();
    let node = start(&dir).await;
    let mut client = node.client().await.unwrap();
    let stock = [("DC1", 10), ("DC2", 5), ("STORE-7", 3)];
    for (location, quantity) in stock {
        client
            .adjust(receive(
                &key("acme", "SKU-9", location),
                &format!("receive-{location}"),
                quantity,
            ))
            .await
            .unwrap();
    }
    client
        .reserve(reserve(&key("acme", "SKU-9", "DC2"), "cart-1", 2, 600))
        .await
        .unwrap();
    // Another SKU and another tenant at the same location do not count.
    client
        .adjust(receive(&key("acme", "SKU-OTHER", "DC1"), "r", 50))
        .await
        .unwrap();
    client
        .adjust(receive(&key("globex", "SKU-9", "DC1"), "r", 70))
        .await
        .unwrap();

    let reply = client
        .get_availability(pb::GetAvailabilityRequest {
            tenant: "acme".into(),
            sku: "SKU-9".into(),
            locations: vec!["DC1".into(), "DC2".into(), "STORE-7".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.total_available, 10 + 3 + 3);
    let mut by_location: Vec<_> = reply
        .locations
        .iter()
        .map(|l| (l.location.as_str(), l.available, l.on_hand, l.version))
        .collect();
    by_location.sort();
    assert_eq!(
        by_location,
        [("DC1", 10, 10, 1), ("DC2", 3, 5, 2), ("STORE-7", 3, 3, 1)]
    );

    // A location that never had stock counts as nothing.
    let reply = client
        .get_availability(pb::GetAvailabilityRequest {
            tenant: "acme".into(),
            sku: "SKU-9".into(),
            locations: vec!["DC1".into(), "NEVER-STOCKED".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.total_available, 10);
    assert_eq!(reply.locations.len(), 2);
    let never = reply
        .locations
        .iter()
        .find(|l| l.location == "NEVER-STOCKED")
        .unwrap();
    assert_eq!((never.available, never.on_hand), (0, 0));
}

/// A retailer with a thousand stores asks where a SKU is: the request is
/// one admission on an idle node, never refused by the in-flight bound its
/// locations alone would exceed (512 in flight, reads below 80 %).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_over_the_most_locations_a_request_may_name() {
    let dir = TestDir::new().unwrap();
    let node = start(&dir).await;
    let mut client = node.client().await.unwrap();
    for store in [7, 500, 999] {
        client
            .adjust(receive(
                &key("acme", "SKU-1", &format!("STORE-{store}")),
                &format!("receive-{store}"),
                2,
            ))
            .await
            .unwrap();
    }
    let locations: Vec<String> = (0..1_000).map(|store| format!("STORE-{store}")).collect();
    let reply = client
        .get_availability(pb::GetAvailabilityRequest {
            tenant: "acme".into(),
            sku: "SKU-1".into(),
            locations: locations.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.locations.len(), 1_000);
    assert_eq!(reply.total_available, 6);
    // Answered in the order asked.
    let answered: Vec<&str> = reply
        .locations
        .iter()
        .map(|l| l.location.as_str())
        .collect();
    assert_eq!(
        answered,
        locations.iter().map(String::as_str).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_replay_the_first_reply_and_change_nothing() {
    let dir = TestDir::new().unwrap();
    let node = start(&dir).await;
    let mut client = node.client().await.unwrap();
    let dc1 = key("acme", "SKU-R", "DC1");

    let received = client
        .adjust(receive(&dc1, "receive-1", 20))
        .await
        .unwrap()
        .into_inner();
    let reserved = client
        .reserve(reserve(&dc1, "cart-1", 3, 900))
        .await
        .unwrap()
        .into_inner();
    let committed = client
        .commit_reservation(commit(&dc1, "commit-1", "cart-1", 0, "order-1"))
        .await
        .unwrap()
        .into_inner();
    let shipped = client
        .fulfill(fulfill(&dc1, "ship-1", "order-1", 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shipped.version, 4);
    let before = position(&mut client, &dc1).await;
    assert_eq!(before.version, 4);

    // Each retry gets the first reply back (the version and buckets of then,
    // not of now), marked replayed, and the position does not move.
    let replay = client
        .adjust(receive(&dc1, "receive-1", 20))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed, "adjust retry: {replay:?}");
    assert_eq!(
        pb::MutationResponse {
            replayed: false,
            ..replay
        },
        received
    );
    let replay = client
        .reserve(reserve(&dc1, "cart-1", 3, 900))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed, "reserve retry: {replay:?}");
    assert_eq!((replay.version, replay.granted_quantity), (2, 3));
    assert_eq!(replay.buckets, reserved.buckets);
    assert_eq!(
        replay.reservation.as_ref().map(|r| &r.reservation_id),
        reserved.reservation.as_ref().map(|r| &r.reservation_id)
    );
    let replay = client
        .commit_reservation(commit(&dc1, "commit-1", "cart-1", 0, "order-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed, "commit retry: {replay:?}");
    assert_eq!(
        (replay.version, replay.buckets),
        (committed.version, committed.buckets)
    );
    let replay = client
        .fulfill(fulfill(&dc1, "ship-1", "order-1", 3))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed, "fulfil retry: {replay:?}");
    assert_eq!(
        (replay.version, replay.buckets),
        (shipped.version, shipped.buckets)
    );

    let after = position(&mut client, &dc1).await;
    assert_eq!(after, before, "a retry changed the position");

    // The idempotency key is scoped to the position: the same key at another
    // location is a new request.
    let other = client
        .adjust(receive(&key("acme", "SKU-R", "DC2"), "receive-1", 20))
        .await
        .unwrap()
        .into_inner();
    assert!(!other.replayed);
    assert_eq!(other.version, 1);

    // Replies survive a restart.
    let mut node = node;
    node.restart().await.unwrap();
    let mut client = node.client().await.unwrap();
    let replay = client
        .reserve(reserve(&dc1, "cart-1", 3, 900))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed, "reserve retry after restart: {replay:?}");
    assert_eq!(replay.version, 2);
    assert_eq!(position(&mut client, &dc1).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlation_id_health_probes_and_metrics() {
    let dir = TestDir::new().unwrap();
    let node = start(&dir).await;
    let mut client = node.client().await.unwrap();
    let dc1 = key("acme", "SKU-C", "DC1");

    // Echoed on success and on failure; made up when absent.
    let mut request = tonic::Request::new(receive(&dc1, "receive-1", 5));
    request
        .metadata_mut()
        .insert("x-correlation-id", "checkout-42".parse().unwrap());
    let reply = client.adjust(request).await.unwrap();
    assert_eq!(
        reply.metadata().get("x-correlation-id").unwrap(),
        "checkout-42"
    );
    let mut request = tonic::Request::new(reserve(&dc1, "too-much", 1_000, 60));
    request
        .metadata_mut()
        .insert("x-correlation-id", "checkout-43".parse().unwrap());
    let refused = client.reserve(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        refused.metadata().get("x-correlation-id").unwrap(),
        "checkout-43"
    );
    let mut request = tonic::Request::new(get(&dc1));
    request
        .metadata_mut()
        .insert("x-correlation-id", "read-1".parse().unwrap());
    let read = client.get_position(request).await.unwrap();
    assert_eq!(read.metadata().get("x-correlation-id").unwrap(), "read-1");
    let generated = client.get_position(get(&dc1)).await.unwrap();
    let generated = generated
        .metadata()
        .get("x-correlation-id")
        .expect("a correlation id is generated when absent")
        .to_str()
        .unwrap();
    assert!(!generated.is_empty());

    let mut health =
        tonic_health::pb::health_client::HealthClient::new(node.channel().await.unwrap());
    for service in ["", "skuld.v1.InventoryService"] {
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            reply.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "health of {service:?}"
        );
    }

    assert_eq!(node.http_get("/healthz").await.unwrap().0, 200);
    assert_eq!(node.http_get("/readyz").await.unwrap().0, 200);
    let (status, metrics) = node.http_get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    let samples: Vec<&str> = metrics
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .collect();
    assert!(
        samples.iter().any(|line| line.starts_with("skuld_")),
        "no skuld_ metric in:\n{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("# TYPE skuld_")),
        "Prometheus text with TYPE lines expected:\n{metrics}"
    );
    for name in [
        "skuld_grpc_requests_total",
        "skuld_grpc_request_duration_seconds_bucket",
        "skuld_store_commit_seconds_bucket",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing (histograms, not summaries):\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_exits_zero_and_keeps_the_data() {
    let dir = TestDir::new().unwrap();
    let mut node = start(&dir).await;
    let mut client = node.client().await.unwrap();
    let dc1 = key("acme", "SKU-T", "DC1");
    client.adjust(receive(&dc1, "receive-1", 7)).await.unwrap();
    client
        .reserve(reserve(&dc1, "cart-1", 2, 900))
        .await
        .unwrap();
    let before = position(&mut client, &dc1).await;
    drop(client);

    let status = node.terminate().await.unwrap();
    assert!(status.success(), "SIGTERM exit: {status}");
    node.restart().await.unwrap();
    let mut client = node.client().await.unwrap();
    assert_eq!(position(&mut client, &dc1).await, before);
    let reply = client
        .adjust(pb::AdjustRequest {
            header: header(&dc1, "receive-2"),
            ..receive(&dc1, "unused", 1)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.version, before.version + 1);
}

/// `skuld config` shows the effective configuration without the password of
/// the PostgreSQL URL, however it was given (flag or environment).
#[test]
fn skuld_config_never_prints_a_password() {
    let binary = skuld_tests::skuld_binary().unwrap();
    // Cluster mode needs its peer certificate files named (not read here).
    let peer_tls = [
        "--peer-tls-cert-file",
        "/tls/tls.crt",
        "--peer-tls-key-file",
        "/tls/tls.key",
        "--peer-tls-ca-file",
        "/tls/ca.crt",
    ];
    let shown = std::process::Command::new(&binary)
        .args(["config", "--etcd-endpoints", "http://etcd:2379"])
        .args(peer_tls)
        .args(["--postgres-url", "postgres://skuld:s3cret@pg/skuld"])
        .output()
        .unwrap();
    let from_env = std::process::Command::new(&binary)
        .args(["config", "--etcd-endpoints", "http://etcd:2379"])
        .args(peer_tls)
        .env(
            "SKULD_POSTGRES_URL",
            "host=pg user=skuld password=s3cret dbname=skuld",
        )
        .output()
        .unwrap();
    for output in [shown, from_env] {
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains("postgres_url") && text.contains("***"),
            "{text}"
        );
    }
}
