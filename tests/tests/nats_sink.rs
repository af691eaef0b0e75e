//! The NATS JetStream sink against a real nats-server: with the node killed
//! mid-stream and restarted, and nats-server killed and restarted, the
//! stream holds every event exactly once (Nats-Msg-Id = event id), on its
//! subject, each key's events in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use skuld_tests::events::{self, From};
use skuld_tests::requests::{key, receive};
use skuld_tests::services::Nats;
use skuld_tests::{NodeOptions, TestDir, TestNode};

const STREAM: &str = "SKULD_EVENTS";

/// Receipts on a few positions until told to stop; returns how many were
/// acknowledged.
fn write_until(
    node: &TestNode,
    stop: Arc<AtomicBool>,
    tag: &'static str,
) -> tokio::task::JoinHandle<u64> {
    let address = node.grpc_addr().to_owned();
    tokio::spawn(async move {
        let mut client = match skuld_tests::workload::channel(&address).await {
            Ok(channel) => pb_client(channel),
            Err(_) => return 0,
        };
        let mut acknowledged = 0;
        for sequence in 0u64.. {
            if stop.load(Ordering::Acquire) {
                break;
            }
            let position = key("acme", &format!("SKU-{}", sequence % 4), "DC1");
            let mut request =
                tonic::Request::new(receive(&position, &format!("{tag}-{sequence}"), 1));
            request.set_timeout(Duration::from_secs(2));
            match client.adjust(request).await {
                Ok(_) => acknowledged += 1,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        acknowledged
    })
}

fn pb_client(
    channel: tonic::transport::Channel,
) -> skuld_proto::v1::inventory_service_client::InventoryServiceClient<tonic::transport::Channel> {
    skuld_proto::v1::inventory_service_client::InventoryServiceClient::new(channel)
}

async fn stream_messages(url: &str) -> u64 {
    let Ok(client) = async_nats::connect(url).await else {
        return 0;
    };
    let jetstream = async_nats::jetstream::new(client);
    match jetstream.get_stream(STREAM).await {
        Ok(mut stream) => stream.info().await.map_or(0, |info| info.state.messages),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_holds_every_event_once_across_node_and_nats_restarts() {
    let dir = TestDir::new().unwrap();
    let mut nats = Nats::start(&dir.path().join("nats")).unwrap();
    // Each delivered window waits 300 ms before its cursor is recorded, so
    // the kill below lands between publishing and recording: the restarted
    // sink publishes that window again, and only JetStream's deduplication
    // on Nats-Msg-Id keeps it from being in the stream twice.
    let options = NodeOptions::default()
        .env("SKULD_NATS_URL", nats.url())
        .env("SKULD_FAILPOINT_SINK_PAUSE_BEFORE_CURSOR_MS", 300);
    let mut node = TestNode::start(&dir.node_dir("node"), options)
        .await
        .unwrap();

    // The node killed mid-stream: the window it had published but not yet
    // recorded as delivered is published again after the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = write_until(&node, Arc::clone(&stop), "a");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    node.kill9().unwrap();
    stop.store(true, Ordering::Release);
    let first = writer.await.unwrap();
    node.restart().await.unwrap();

    // nats-server killed and restarted while changes keep coming.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = write_until(&node, Arc::clone(&stop), "b");
    tokio::time::sleep(Duration::from_millis(800)).await;
    nats.restart().unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.store(true, Ordering::Release);
    let second = writer.await.unwrap();
    assert!(
        first > 20 && second > 20,
        "acknowledged {first} and {second}"
    );

    let expected = events::read_all(
        node.channel().await.unwrap(),
        From::Start,
        Duration::from_millis(400),
    )
    .await
    .unwrap()
    .events;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = stream_messages(&nats.url()).await;
        if held >= expected.len() as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stream holds {held} of {} events",
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Settle: nothing more may arrive (a duplicate would).
    tokio::time::sleep(Duration::from_secs(1)).await;

    let client = async_nats::connect(nats.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let stream = jetstream.get_stream(STREAM).await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: None,
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut seen: Vec<(String, String, serde_json::Value)> = Vec::new();
    while seen.len() < expected.len() + 50 {
        match tokio::time::timeout(Duration::from_secs(2), messages.next()).await {
            Ok(Some(message)) => {
                let message = message.unwrap();
                let header = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get("Nats-Msg-Id"))
                    .map(|value| value.as_str().to_owned())
                    .unwrap_or_default();
                let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
                let id = body["id"].as_str().unwrap_or_default().to_owned();
                assert_eq!(header, id, "Nats-Msg-Id is not the event id");
                seen.push((id, message.subject.to_string(), body));
            }
            _ => break,
        }
    }
    let ids: Vec<&str> = seen.iter().map(|(id, _, _)| id.as_str()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an event is in the stream twice");
    let expected_ids: BTreeSet<&str> = expected.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(unique, expected_ids, "the stream and skuld's events differ");
    let mut last: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (id, subject, body) in &seen {
        let event = expected.iter().find(|e| &e.id == id).unwrap();
        let kind = event.r#type.trim_start_matches("skuld.");
        assert_eq!(subject, &format!("skuld.acme.{kind}"));
        assert_eq!(body["id"], serde_json::json!(id));
        let place = (event.aggregate_version, u64::from(event.index));
        if let Some(previous) = last.insert(event.aggregate_key.clone(), place) {
            assert!(
                place > previous,
                "{}: {place:?} after {previous:?}",
                event.aggregate_key
            );
        }
    }
    eprintln!(
        "{} events in the stream, each once ({first} + {second} receipts acknowledged)",
        seen.len()
    );
}
