//! Traces over OTLP against a real OTLP/gRPC receiver in this process: a
//! single node's spans arrive batch after batch and its last ones are
//! flushed when it stops; in a cluster, a request sent to a node that does
//! not own its key is one trace on both nodes, the owner's span a child of
//! the forwarder's, each carrying the correlation id.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use skuld_tests::cluster::{node_id, owner_in, ClusterOptions, TestCluster};
use skuld_tests::otlp::{OtlpReceiver, ReceivedSpan};
use skuld_tests::requests::{key, receive};
use skuld_tests::{NodeOptions, TestDir, TestNode};

const CORRELATION_ID: &str = "skuld.correlation_id";
/// Exports every 200 ms instead of every 5 s, so tests wait less.
const SHORT_EXPORT_DELAY_MS: u64 = 200;
const ARRIVAL: Duration = Duration::from_secs(20);

fn traced(receiver: &OtlpReceiver, export_delay_ms: u64) -> NodeOptions {
    NodeOptions::default()
        .arg("--otlp-endpoint", receiver.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", export_delay_ms)
}

fn with_correlation<T>(message: T, correlation_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-correlation-id", correlation_id.parse().unwrap());
    request
}

fn carrying<'a>(spans: &'a [ReceivedSpan], correlation_id: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|span| span.attribute(CORRELATION_ID) == Some(correlation_id))
        .collect()
}

fn named<'a>(spans: &[&'a ReceivedSpan], name: &str) -> Option<&'a ReceivedSpan> {
    spans.iter().copied().find(|span| span.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_nodes_spans_arrive_batch_after_batch() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(
        &dir.node_dir("single"),
        traced(&receiver, SHORT_EXPORT_DELAY_MS),
    )
    .await
    .unwrap();
    let mut client = node.client().await.unwrap();
    let position = key("acme", "SKU-TRACE", "DC1");
    // A second round after the first batch was exported: an export path
    // that broke on its first use would lose every later span silently.
    for round in ["round-1", "round-2"] {
        client
            .adjust(with_correlation(receive(&position, round, 5), round))
            .await
            .unwrap();
        let spans = receiver
            .wait_for(ARRIVAL, &format!("Adjust span of {round}"), |spans| {
                named(&carrying(spans, round), "Adjust").is_some()
            })
            .await
            .unwrap();
        let span = named(&carrying(&spans, round), "Adjust").unwrap().clone();
        assert_eq!(span.service, "skuld");
        assert_eq!(span.attribute("rpc.method"), Some("Adjust"));
        assert_eq!(span.attribute("rpc.grpc.status_code"), Some("0"));
        assert!(!span.node.is_empty(), "no service.instance.id: {span:?}");
        assert!(span.parent_span_id.is_empty(), "{span:?}");
    }
    assert!(receiver.exports() >= 2, "{} exports", receiver.exports());
}

/// A client's `traceparent` makes the node's span its child, but its
/// sampled flag does not decide whether the request is traced, and a
/// malformed one is ignored (the span is a root), never an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_traceparent_is_continued_but_cannot_hide_a_request() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(
        &dir.node_dir("single"),
        traced(&receiver, SHORT_EXPORT_DELAY_MS),
    )
    .await
    .unwrap();
    let mut client = node.client().await.unwrap();
    let position = key("acme", "SKU-PARENT", "DC1");
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    for (correlation_id, traceparent) in [
        ("unsampled", format!("00-{trace_id}-00f067aa0ba902b7-00")),
        ("malformed", "00-not-a-trace-01".to_owned()),
    ] {
        let mut request = with_correlation(receive(&position, correlation_id, 1), correlation_id);
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
        client.adjust(request).await.unwrap();
    }
    let spans = receiver
        .wait_for(ARRIVAL, "both clients' Adjust spans", |spans| {
            named(&carrying(spans, "unsampled"), "Adjust").is_some()
                && named(&carrying(spans, "malformed"), "Adjust").is_some()
        })
        .await
        .unwrap();
    let unsampled = named(&carrying(&spans, "unsampled"), "Adjust")
        .unwrap()
        .clone();
    assert_eq!(unsampled.trace_id, trace_id, "{unsampled:?}");
    assert_eq!(
        unsampled.parent_span_id, "00f067aa0ba902b7",
        "{unsampled:?}"
    );
    let malformed = named(&carrying(&spans, "malformed"), "Adjust")
        .unwrap()
        .clone();
    assert!(malformed.parent_span_id.is_empty(), "{malformed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_spans_are_flushed_when_the_node_stops() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let dir = TestDir::new().unwrap();
    // No export on the timer within the test: only the shutdown's flush
    // can deliver.
    let mut node = TestNode::start(&dir.node_dir("single"), traced(&receiver, 600_000))
        .await
        .unwrap();
    let mut client = node.client().await.unwrap();
    let position = key("acme", "SKU-FLUSH", "DC1");
    client
        .adjust(with_correlation(
            receive(&position, "last", 5),
            "last-words",
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.span_count(), 0, "{:#?}", receiver.spans());
    let status = node.terminate().await.unwrap();
    assert!(status.success(), "{status}");
    let spans = receiver.spans();
    assert!(
        named(&carrying(&spans, "last-words"), "Adjust").is_some(),
        "{spans:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_request_is_one_trace_across_both_nodes() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let cluster = TestCluster::start_with(
        2,
        ClusterOptions {
            node: traced(&receiver, SHORT_EXPORT_DELAY_MS),
            ..ClusterOptions::default()
        },
    )
    .await
    .unwrap();
    let position = key("acme", "SKU-HOP", "DC1");
    let stocked = cluster
        .inventory(0)
        .await
        .unwrap()
        .adjust(receive(&position, "stock", 10))
        .await;
    let owner = owner_in(&stocked).expect("a cluster reply names its owner");
    stocked.unwrap();
    let (owner_index, forwarder_index) = if owner == node_id(0) { (0, 1) } else { (1, 0) };

    let correlation_id = "hop-7";
    let forwarded = cluster
        .inventory(forwarder_index)
        .await
        .unwrap()
        .adjust(with_correlation(
            receive(&position, "traced", 5),
            correlation_id,
        ))
        .await;
    assert_eq!(owner_in(&forwarded).as_deref(), Some(owner.as_str()));
    forwarded.unwrap();

    let (forwarder, owner_node) = (node_id(forwarder_index), node_id(owner_index));
    let spans = receiver
        .wait_for(ARRIVAL, "spans of the forwarded request", |spans| {
            let ours = carrying(spans, correlation_id);
            ours.iter()
                .any(|span| span.node == forwarder && span.name == "Adjust")
                && ours
                    .iter()
                    .any(|span| span.node == forwarder && span.name == "forward to owner")
                && ours.iter().any(|span| span.node == owner_node)
        })
        .await
        .unwrap();
    let ours = carrying(&spans, correlation_id);
    let on = |node: &str, name: &str| {
        ours.iter()
            .copied()
            .find(|span| span.node == node && span.name == name)
            .unwrap_or_else(|| panic!("no {name:?} span from {node}: {ours:#?}"))
    };
    let rpc = on(&forwarder, "Adjust");
    let hop = on(&forwarder, "forward to owner");
    let served = on(&owner_node, "PeerService/Forward");
    assert!(rpc.parent_span_id.is_empty(), "{rpc:?}");
    assert_eq!(hop.parent_span_id, rpc.span_id, "{hop:?}");
    assert_eq!(hop.attribute("skuld.owner"), Some(owner_node.as_str()));
    assert_eq!(
        served.parent_span_id, hop.span_id,
        "the owner's span is not the forwarder's child: {ours:#?}"
    );
    for span in [rpc, hop, served] {
        assert_eq!(span.trace_id, rpc.trace_id, "{ours:#?}");
        assert_eq!(span.service, "skuld");
    }
    assert_eq!(served.attribute("skuld.kind"), Some("position"));
}
