//! The event stream end to end on one node: every change becomes events in
//! order; a subscriber cut anywhere resumes with its token and gets each
//! event exactly once, across a restart; filters, history, retention and
//! the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use skuld_proto::v1 as pb;
use skuld_tests::events::{self, From};
use skuld_tests::requests::{commit, key, receive, release, reserve};
use skuld_tests::{NodeOptions, TestDir, TestNode};
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

type Inventory = pb::inventory_service_client::InventoryServiceClient<Channel>;

const QUIET: Duration = Duration::from_millis(400);

/// A round of changes on `keys` positions: a receipt, two reservations,
/// a release and a commit each.
async fn write_round(client: &mut Inventory, tenant: &str, keys: usize, round: usize) {
    for index in 0..keys {
        let position = key(tenant, &format!("SKU-{index}"), "DC1");
        let step = |name: &str| format!("r{round}-{index}-{name}");
        client
            .adjust(receive(&position, &step("receive"), 3))
            .await
            .unwrap();
        for hold in ["a", "b"] {
            client
                .reserve(pb::ReserveRequest {
                    reservation_id: step(hold),
                    ..reserve(&position, &step(hold), 1, 600)
                })
                .await
                .unwrap();
        }
        client
            .release_reservation(release(&position, &step("release"), &step("a")))
            .await
            .unwrap();
        client
            .commit_reservation(commit(&position, &step("commit"), &step("b"), 0, "order"))
            .await
            .unwrap();
    }
}

/// Reads from `token` in cuts of `cut_messages` messages of `max_batch`
/// events, resuming each time with the last token, until nothing is left.
async fn read_in_cuts(
    node: &TestNode,
    mut from: From,
    max_batch: u32,
    cut_messages: usize,
) -> (Vec<pb::Event>, From) {
    let mut all = Vec::new();
    loop {
        let delivered = events::read(
            node.channel().await.unwrap(),
            from.clone(),
            pb::EventFilter::default(),
            max_batch,
            cut_messages,
            QUIET,
        )
        .await
        .unwrap();
        let Some(token) = delivered.token else {
            return (all, from);
        };
        let got = delivered.events.len();
        all.extend(delivered.events);
        from = From::After(token);
        if got == 0 {
            return (all, from);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_cut_anywhere_resumes_exactly_once_across_a_restart() {
    let dir = TestDir::new().unwrap();
    let mut node = TestNode::start(&dir.node_dir("node"), NodeOptions::default())
        .await
        .unwrap();
    let mut client = node.client().await.unwrap();
    write_round(&mut client, "acme", 4, 1).await;

    // Cut after every 1..4 messages of 1..5 events.
    let mut delivered = Vec::new();
    let mut from = From::Start;
    for (max_batch, cut) in [(1, 3), (3, 1), (5, 2), (2, 4)] {
        let (events, next) = read_in_cuts(&node, from, max_batch, cut).await;
        delivered.extend(events);
        from = next;
        if max_batch == 3 {
            // More changes while the subscriber is away.
            write_round(&mut client, "acme", 2, 2).await;
        }
    }

    // A restart in between: the token still resumes exactly after itself.
    node.terminate().await.unwrap();
    node.restart().await.unwrap();
    let mut client = node.client().await.unwrap();
    write_round(&mut client, "acme", 3, 3).await;
    let (events, _) = read_in_cuts(&node, from, 4, 2).await;
    delivered.extend(events);

    events::check_order(&delivered).unwrap();
    let everything = events::read_all(node.channel().await.unwrap(), From::Start, QUIET)
        .await
        .unwrap();
    let ids = |events: &[pb::Event]| events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&delivered),
        ids(&everything.events),
        "the cut and resumed subscriber did not get every event exactly once, in order"
    );
    // 4 + 2 + 3 positions of 5 changes each; one shard on one node,
    // numbered from 1.
    let changes: std::collections::BTreeSet<(String, u64)> = delivered
        .iter()
        .map(|e| (e.aggregate_key.clone(), e.aggregate_version))
        .collect();
    assert_eq!(changes.len(), (4 + 2 + 3) * 5);
    assert_eq!(delivered.first().map(|e| e.shard_sequence), Some(1));

    // Each position's history is its part of the stream.
    let position = key("acme", "SKU-0", "DC1");
    let history = events::history(node.channel().await.unwrap(), &position)
        .await
        .unwrap();
    let of_position: Vec<_> = delivered
        .iter()
        .filter(|e| e.aggregate_key == "acme/SKU-0@DC1")
        .cloned()
        .collect();
    assert_eq!(ids(&history), ids(&of_position));
    let first = &history[0];
    assert_eq!(first.r#type, "skuld.inventory.quantities.changed.v1");
    assert_eq!(first.idempotency_key, "r1-0-receive");
    assert_eq!(first.causation_id, "r1-0-receive");
    assert_eq!(first.tenant, "acme");
    assert_eq!(first.aggregate_kind, "position");
    let data: serde_json::Value = serde_json::from_str(&first.data_json).unwrap();
    assert_eq!(data["before"]["available"], 0);
    assert_eq!(data["after"]["available"], 3);
    assert!(data["change"].is_object(), "{data}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_from_now_and_the_cli_tail() {
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(&dir.node_dir("node"), NodeOptions::default())
        .await
        .unwrap();
    let mut client = node.client().await.unwrap();
    write_round(&mut client, "acme", 1, 1).await;
    write_round(&mut client, "other", 1, 1).await;

    let reservations = events::read(
        node.channel().await.unwrap(),
        From::Start,
        pb::EventFilter {
            type_prefixes: vec!["skuld.inventory.reservation.".into()],
            tenant: "acme".into(),
            aggregate_key: String::new(),
        },
        0,
        usize::MAX,
        QUIET,
    )
    .await
    .unwrap();
    let types: Vec<&str> = reservations
        .events
        .iter()
        .map(|e| e.r#type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "skuld.inventory.reservation.created.v1",
            "skuld.inventory.reservation.created.v1",
            "skuld.inventory.reservation.released.v1",
            "skuld.inventory.reservation.committed.v1",
        ]
    );
    assert!(reservations.events.iter().all(|e| e.tenant == "acme"));

    // From now: only what is committed after the subscription starts.
    let channel = node.channel().await.unwrap();
    let later = tokio::spawn(events::read(
        channel,
        From::Now,
        pb::EventFilter::default(),
        0,
        usize::MAX,
        Duration::from_secs(2),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    client
        .adjust(receive(&key("acme", "LATE", "DC1"), "late", 1))
        .await
        .unwrap();
    let later = later.await.unwrap().unwrap();
    let keys: Vec<&str> = later
        .events
        .iter()
        .map(|e| e.aggregate_key.as_str())
        .collect();
    assert_eq!(keys, ["acme/LATE@DC1", "acme/LATE@DC1"], "{later:?}");
    // The second is derived: the position came into stock.
    assert_eq!(
        later.events[1].r#type,
        "skuld.inventory.stock_status.back_in_stock.v1"
    );

    // The CLI: a count of events from the start, JSON lines, and the token
    // to continue on stderr.
    let output = std::process::Command::new(skuld_tests::skuld_binary().unwrap())
        .args(["--endpoint", &format!("http://{}", node.grpc_addr())])
        .args([
            "--json", "events", "tail", "--from", "start", "--count", "3",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let shown: usize = stdout
        .lines()
        .map(|line| {
            let message: serde_json::Value = serde_json::from_str(line).unwrap();
            message["events"].as_array().unwrap().len()
        })
        .sum();
    assert_eq!(shown, 3, "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let token = stderr
        .lines()
        .find_map(|line| line.strip_prefix("resume token: "))
        .unwrap_or_else(|| panic!("no resume token in {stderr}"));
    let rest = events::read_all(
        node.channel().await.unwrap(),
        From::After(token.into()),
        QUIET,
    )
    .await
    .unwrap();
    let everything = events::read_all(node.channel().await.unwrap(), From::Start, QUIET)
        .await
        .unwrap();
    assert_eq!(rest.events.len() + 3, everything.events.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_older_than_retention_is_out_of_range_and_bad_input_is_refused() {
    let dir = TestDir::new().unwrap();
    let options = NodeOptions::default()
        .env("SKULD_EVENT_RETENTION_SECS", 1)
        .env("SKULD_IDEMPOTENCY_PURGE_INTERVAL_SECS", 1);
    let node = TestNode::start(&dir.node_dir("node"), options)
        .await
        .unwrap();
    let mut client = node.client().await.unwrap();
    write_round(&mut client, "acme", 1, 1).await;
    let first = events::read(
        node.channel().await.unwrap(),
        From::Start,
        pb::EventFilter::default(),
        1,
        1,
        QUIET,
    )
    .await
    .unwrap();
    let early = first.token.unwrap();

    // Retention deletes the events; the early token now points before them.
    let mut subscriptions =
        pb::event_service_client::EventServiceClient::new(node.channel().await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        let request = pb::SubscribeRequest {
            from: Some(pb::subscribe_request::From::After(early.clone())),
            ..pb::SubscribeRequest::default()
        };
        match subscriptions.subscribe(request).await {
            Err(status) => break status,
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "retention never deleted the events"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "EVENTS_EXPIRED");
    let oldest = info.metadata["oldest_resume_token"].clone();
    // The oldest token works, and sees what is written next.
    client
        .adjust(receive(&key("acme", "NEW", "DC1"), "new", 1))
        .await
        .unwrap();
    let resumed = events::read_all(node.channel().await.unwrap(), From::After(oldest), QUIET)
        .await
        .unwrap();
    assert!(
        resumed
            .events
            .iter()
            .any(|e| e.aggregate_key == "acme/NEW@DC1"),
        "{resumed:?}"
    );
    // The rest of the old events go too (one purge may have cut between them).
    loop {
        let history = events::history(node.channel().await.unwrap(), &key("acme", "SKU-0", "DC1"))
            .await
            .unwrap();
        if history.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention left {history:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    for request in [
        pb::SubscribeRequest {
            from: Some(pb::subscribe_request::From::After("not a token".into())),
            ..pb::SubscribeRequest::default()
        },
        pb::SubscribeRequest {
            max_batch: 100_000,
            ..pb::SubscribeRequest::default()
        },
        pb::SubscribeRequest {
            subscriber: "no spaces allowed".into(),
            ..pb::SubscribeRequest::default()
        },
    ] {
        let status = subscriptions.subscribe(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
}
