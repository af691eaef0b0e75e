//! Every bad input gets its documented status code, and the stored position
//! is exactly as it was before the refused request (same version, buckets,
//! reservations and commitments).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use skuld_proto::v1 as pb;
use skuld_tests::requests::{
    adjust, commit, fulfill, get, header, header_at, key, receive, release, reserve,
};
use skuld_tests::{NodeOptions, TestDir, TestNode};
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

/// One request of any kind.
#[derive(Clone, Debug)]
enum Call {
    Adjust(pb::AdjustRequest),
    Move(pb::MoveRequest),
    Reserve(pb::ReserveRequest),
    Release(pb::ReleaseReservationRequest),
    Commit(pb::CommitReservationRequest),
    Fulfill(pb::FulfillRequest),
    Get(pb::GetPositionRequest),
}

async fn send(client: &mut Inventory, call: Call) -> Result<(), tonic::Status> {
    match call {
        Call::Adjust(request) => client.adjust(request).await.map(drop),
        Call::Move(request) => client.r#move(request).await.map(drop),
        Call::Reserve(request) => client.reserve(request).await.map(drop),
        Call::Release(request) => client.release_reservation(request).await.map(drop),
        Call::Commit(request) => client.commit_reservation(request).await.map(drop),
        Call::Fulfill(request) => client.fulfill(request).await.map(drop),
        Call::Get(request) => client.get_position(request).await.map(drop),
    }
}

/// Sends `call`, expects `code`, and checks that `watched` did not change.
async fn expect_refused(
    client: &mut Inventory,
    watched: &pb::PositionKey,
    what: &str,
    code: Code,
    call: Call,
) {
    let before = position(client, watched).await;
    let result = send(client, call.clone()).await;
    let status = match result {
        Ok(()) => panic!("{what}: accepted, expected {code:?}; request {call:?}"),
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        code,
        "{what}: got {status:?}; request {call:?}"
    );
    assert!(
        !status.message().is_empty(),
        "{what}: {code:?} without a message"
    );
    let after = position(client, watched).await;
    assert_eq!(
        after, before,
        "{what}: the refused request changed the position"
    );
}

fn with_header(call: Call, header: Option<pb::MutationHeader>) -> Call {
    match call {
        Call::Adjust(r) => Call::Adjust(pb::AdjustRequest { header, ..r }),
        Call::Move(r) => Call::Move(pb::MoveRequest { header, ..r }),
        Call::Reserve(r) => Call::Reserve(pb::ReserveRequest { header, ..r }),
        Call::Release(r) => Call::Release(pb::ReleaseReservationRequest { header, ..r }),
        Call::Commit(r) => Call::Commit(pb::CommitReservationRequest { header, ..r }),
        Call::Fulfill(r) => Call::Fulfill(pb::FulfillRequest { header, ..r }),
        Call::Get(r) => Call::Get(r),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_code_and_changes_nothing() {
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(
        &dir.node_dir("node"),
        NodeOptions::default().arg("--timer-scan-interval-ms", 100),
    )
    .await
    .unwrap();
    let mut client = node.client().await.unwrap();

    // A reservation that expires while the other cases run.
    let expiring = key("acme", "SKU-EXP", "DC1");
    client
        .adjust(receive(&expiring, "receive", 10))
        .await
        .unwrap();
    let short = client
        .reserve(reserve(&expiring, "short-lived", 1, 1))
        .await
        .unwrap()
        .into_inner();
    let short_reserved_at = Instant::now();
    assert_eq!(short.buckets.unwrap().reserved, 1);

    // The position every other case aims at: 10 received, 2 held by an
    // active reservation, 3 committed to order-1.
    let dc1 = key("acme", "SKU-1", "DC1");
    client.adjust(receive(&dc1, "receive", 10)).await.unwrap();
    client
        .reserve(reserve(&dc1, "held", 2, 3_600))
        .await
        .unwrap();
    client
        .reserve(reserve(&dc1, "to-commit", 3, 3_600))
        .await
        .unwrap();
    client
        .commit_reservation(commit(&dc1, "commit", "to-commit", 0, "order-1"))
        .await
        .unwrap();
    let start = position(&mut client, &dc1).await;
    assert_eq!(start.version, 4);
    let b = start.buckets.unwrap();
    assert_eq!(
        (b.on_hand, b.available, b.reserved, b.committed),
        (10, 5, 2, 3)
    );

    let long_sku = "S".repeat(129);
    let ok_reserve = || reserve(&dc1, "fresh", 1, 60);
    let ok_adjust = || receive(&dc1, "fresh", 1);
    let cases: Vec<(&str, Code, Call)> = vec![
        // Keys.
        (
            "reserve, empty tenant",
            Code::InvalidArgument,
            Call::Reserve(reserve(&key("", "SKU-1", "DC1"), "k", 1, 60)),
        ),
        (
            "adjust, empty tenant",
            Code::InvalidArgument,
            Call::Adjust(receive(&key("", "SKU-1", "DC1"), "k", 1)),
        ),
        (
            "get, empty tenant",
            Code::InvalidArgument,
            Call::Get(get(&key("", "SKU-1", "DC1"))),
        ),
        (
            "adjust, empty sku",
            Code::InvalidArgument,
            Call::Adjust(receive(&key("acme", "", "DC1"), "k", 1)),
        ),
        (
            "adjust, empty location",
            Code::InvalidArgument,
            Call::Adjust(receive(&key("acme", "SKU-1", ""), "k", 1)),
        ),
        (
            "reserve, 129-byte sku",
            Code::InvalidArgument,
            Call::Reserve(reserve(&key("acme", &long_sku, "DC1"), "k", 1, 60)),
        ),
        (
            "adjust, 129-byte sku",
            Code::InvalidArgument,
            Call::Adjust(receive(&key("acme", &long_sku, "DC1"), "k", 1)),
        ),
        (
            "get, 129-byte sku",
            Code::InvalidArgument,
            Call::Get(get(&key("acme", &long_sku, "DC1"))),
        ),
        (
            "reserve, sku with BEL",
            Code::InvalidArgument,
            Call::Reserve(reserve(&key("acme", "SKU\u{7}", "DC1"), "k", 1, 60)),
        ),
        (
            "adjust, sku with BEL",
            Code::InvalidArgument,
            Call::Adjust(receive(&key("acme", "SKU\u{7}", "DC1"), "k", 1)),
        ),
        (
            "adjust, location with a newline",
            Code::InvalidArgument,
            Call::Adjust(receive(&key("acme", "SKU-1", "DC\n1"), "k", 1)),
        ),
        (
            "adjust, tenant with NUL",
            Code::InvalidArgument,
            Call::Adjust(receive(&key("ac\u{0}me", "SKU-1", "DC1"), "k", 1)),
        ),
        (
            "adjust, no header",
            Code::InvalidArgument,
            with_header(Call::Adjust(ok_adjust()), None),
        ),
        (
            "adjust, header without a key",
            Code::InvalidArgument,
            with_header(
                Call::Adjust(ok_adjust()),
                Some(pb::MutationHeader {
                    key: None,
                    idempotency_key: "k".into(),
                    expected_version: None,
                }),
            ),
        ),
        (
            "get, no key",
            Code::InvalidArgument,
            Call::Get(pb::GetPositionRequest::default()),
        ),
        // Quantities.
        (
            "reserve, quantity 0",
            Code::InvalidArgument,
            Call::Reserve(reserve(&dc1, "q1", 0, 60)),
        ),
        (
            "reserve, quantity -1",
            Code::InvalidArgument,
            Call::Reserve(reserve(&dc1, "q2", -1, 60)),
        ),
        (
            "adjust, delta 0",
            Code::InvalidArgument,
            Call::Adjust(receive(&dc1, "q3", 0)),
        ),
        (
            "commit, quantity -1",
            Code::InvalidArgument,
            Call::Commit(commit(&dc1, "q4", "held", -1, "order-2")),
        ),
        (
            "fulfil, quantity 0",
            Code::InvalidArgument,
            Call::Fulfill(fulfill(&dc1, "q5", "order-1", 0)),
        ),
        (
            "fulfil, quantity -1",
            Code::InvalidArgument,
            Call::Fulfill(fulfill(&dc1, "q6", "order-1", -1)),
        ),
        (
            "move, quantity 0",
            Code::InvalidArgument,
            Call::Move(pb::MoveRequest {
                header: header(&dc1, "q7"),
                from_bucket: pb::Bucket::Available.into(),
                to_bucket: pb::Bucket::Damaged.into(),
                quantity: 0,
                ..pb::MoveRequest::default()
            }),
        ),
        // Idempotency keys.
        (
            "reserve, missing idempotency key",
            Code::InvalidArgument,
            Call::Reserve(reserve(&dc1, "", 1, 60)),
        ),
        (
            "adjust, missing idempotency key",
            Code::InvalidArgument,
            Call::Adjust(receive(&dc1, "", 1)),
        ),
        (
            "commit, missing idempotency key",
            Code::InvalidArgument,
            Call::Commit(commit(&dc1, "", "held", 1, "order-2")),
        ),
        (
            "adjust, 129-byte idempotency key",
            Code::InvalidArgument,
            Call::Adjust(receive(&dc1, &"i".repeat(129), 1)),
        ),
        (
            "adjust, idempotency key with ESC",
            Code::InvalidArgument,
            Call::Adjust(receive(&dc1, "k\u{1b}1", 1)),
        ),
        // Enums.
        (
            "adjust, BUCKET_UNSPECIFIED",
            Code::InvalidArgument,
            Call::Adjust(adjust(&dc1, "e1", pb::Bucket::Unspecified, 1)),
        ),
        (
            "adjust, unknown bucket 99",
            Code::InvalidArgument,
            Call::Adjust(pb::AdjustRequest {
                bucket: 99,
                ..receive(&dc1, "e2", 1)
            }),
        ),
        (
            "move, from BUCKET_UNSPECIFIED",
            Code::InvalidArgument,
            Call::Move(pb::MoveRequest {
                header: header(&dc1, "e3"),
                from_bucket: pb::Bucket::Unspecified.into(),
                to_bucket: pb::Bucket::Damaged.into(),
                quantity: 1,
                ..pb::MoveRequest::default()
            }),
        ),
        // Unknown things.
        (
            "commit, unknown reservation",
            Code::NotFound,
            Call::Commit(commit(&dc1, "n1", "nope", 1, "order-2")),
        ),
        (
            "release, unknown reservation",
            Code::NotFound,
            Call::Release(release(&dc1, "n2", "nope")),
        ),
        // State refusals.
        (
            "reserve more than available",
            Code::FailedPrecondition,
            Call::Reserve(reserve(&dc1, "p1", 6, 60)),
        ),
        (
            "reserve, stale expected_version",
            Code::FailedPrecondition,
            with_header(
                Call::Reserve(ok_reserve()),
                header_at(&dc1, "p2", start.version - 1),
            ),
        ),
        (
            "adjust, expected_version from the future",
            Code::FailedPrecondition,
            with_header(
                Call::Adjust(ok_adjust()),
                header_at(&dc1, "p3", start.version + 1),
            ),
        ),
        (
            "adjust, change_from mismatch",
            Code::FailedPrecondition,
            Call::Adjust(pb::AdjustRequest {
                change_from: Some(3),
                ..receive(&dc1, "p4", 1)
            }),
        ),
        (
            "fulfil more than committed",
            Code::FailedPrecondition,
            Call::Fulfill(fulfill(&dc1, "p5", "order-1", 4)),
        ),
        // Idempotency keys reused for another request.
        (
            "reserve, key reused with another quantity",
            Code::AlreadyExists,
            Call::Reserve(reserve(&dc1, "held", 1, 3_600)),
        ),
        (
            "adjust, key reused with another delta",
            Code::AlreadyExists,
            Call::Adjust(receive(&dc1, "receive", 11)),
        ),
        (
            "reserve, an adjust's key",
            Code::AlreadyExists,
            Call::Reserve(reserve(&dc1, "receive", 1, 60)),
        ),
    ];
    let count = cases.len();
    for (what, code, call) in cases {
        expect_refused(&mut client, &dc1, what, code, call).await;
    }
    assert_eq!(position(&mut client, &dc1).await, start);

    // A reservation that does not fit is refused with what was available.
    let short_of_stock = client
        .reserve(reserve(&dc1, "p6", 6, 60))
        .await
        .unwrap_err();
    let message = short_of_stock.message();
    assert!(
        message.contains("available") && message.contains('5'),
        "the refusal does not say that 5 were available: {message:?}"
    );

    // GetPosition of a position nobody wrote, and a refused write does not
    // create it.
    let never = key("acme", "NEVER", "DC1");
    let missing = client.get_position(get(&never)).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let refused = client
        .reserve(reserve(&never, "k", 1, 60))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let missing = client.get_position(get(&never)).await.unwrap_err();
    assert_eq!(
        missing.code(),
        Code::NotFound,
        "a refused reserve created the position: {missing:?}"
    );

    // A key whose request was malformed is not used up.
    let reply = client
        .reserve(reserve(&dc1, "q1", 1, 60))
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.replayed);
    assert_eq!(reply.version, start.version + 1);
    // 128 bytes is still a valid key part.
    client
        .adjust(receive(&key("acme", &"S".repeat(128), "DC1"), "k", 1))
        .await
        .unwrap();

    // Commit after expiry: wait until the timer has expired the reservation.
    let wait = Duration::from_millis(2_500).saturating_sub(short_reserved_at.elapsed());
    tokio::time::sleep(wait).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let expired = loop {
        let expired = position(&mut client, &expiring).await;
        if expired.buckets.as_ref().unwrap().reserved == 0 {
            break expired;
        }
        assert!(
            Instant::now() < deadline,
            "the 1 s reservation did not expire: {expired:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(expired.buckets.as_ref().unwrap().available, 10);
    assert!(expired.reservations.is_empty());
    expect_refused(
        &mut client,
        &expiring,
        "commit after expiry",
        Code::FailedPrecondition,
        Call::Commit(commit(&expiring, "late", "short-lived", 0, "order-9")),
    )
    .await;
    eprintln!("{} bad requests refused with their codes", count + 1);
}
