//! One node run in this test's own process (`server::run`), on the embedded
//! store in a temporary directory: it answers a mutation and a read, says it
//! is ready on both probes, and stops in order when told to.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use skuld_node::config::Config;
use skuld_node::server::{self, Listeners};
use skuld_proto::v1 as pb;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_in_process_and_stops_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.data_dir = dir.path().join("data");
    config.server.drain_timeout_secs = 2;
    let listeners = Listeners {
        grpc: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        peer: None,
        http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let grpc: SocketAddr = listeners.grpc.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(server::run(config, listeners, None, async move {
        let _ = stopped.await;
    }));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let mut ready = false;
    for _ in 0..100 {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "skuld.v1.InventoryService".into(),
            })
            .await
            .map(|reply| reply.into_inner().status);
        if status.is_ok_and(|status| status == serving) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the node never reported SERVING");

    let mut inventory = pb::inventory_service_client::InventoryServiceClient::new(channel);
    let key = pb::PositionKey {
        tenant: "acme".into(),
        sku: "SKU-1".into(),
        location: "DC1".into(),
    };
    inventory
        .adjust(pb::AdjustRequest {
            header: Some(pb::MutationHeader {
                key: Some(key.clone()),
                idempotency_key: "receipt-1".into(),
                expected_version: None,
            }),
            bucket: pb::Bucket::Available.into(),
            delta: 7,
            reason: pb::AdjustmentReason::Receipt.into(),
            change_from: None,
            reference_document_uri: String::new(),
        })
        .await
        .unwrap();
    let position = inventory
        .get_position(pb::GetPositionRequest {
            key: Some(key),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .position
        .unwrap();
    assert_eq!(position.buckets.unwrap().on_hand, 7);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), node)
        .await
        .expect("the node did not stop within its drain")
        .unwrap()
        .unwrap();
}
