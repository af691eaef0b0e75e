//! The event stream in cluster mode: any node serves any subscription, and
//! a subscriber that keeps moving between nodes (one of them killed, a new
//! one taking shards over) resumes with its token and gets every event
//! exactly once, in per-shard and per-key order, and every applied
//! operation of the workload has its events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use skuld_proto::v1 as pb;
use skuld_tests::cluster::TestCluster;
use skuld_tests::events::{self, From};
use skuld_tests::workload::{self, Outcome, Workload, WorkloadConfig};
use skuld_tests::NodeOptions;
use tokio::sync::RwLock;

const QUIET: Duration = Duration::from_millis(600);

/// Reads in cuts of a few messages, each cut from the next node of
/// `addresses`, resuming with the last token; after `stop`, until a cut
/// finds nothing new. A cut that fails (its node died) is dropped whole,
/// token included, and read again elsewhere.
async fn roam(
    addresses: Arc<RwLock<Vec<String>>>,
    stop: Arc<AtomicBool>,
) -> (Vec<pb::Event>, usize) {
    let mut from = From::Start;
    let mut delivered = Vec::new();
    let mut failed_cuts = 0;
    for round in 0usize.. {
        let stopping = stop.load(Ordering::Acquire);
        let address = {
            let addresses = addresses.read().await;
            addresses[round % addresses.len()].clone()
        };
        let read = match workload::channel(&address).await {
            Ok(channel) => {
                events::read(
                    channel,
                    from.clone(),
                    pb::EventFilter::default(),
                    (round % 7 + 1) as u32,
                    round % 4 + 1,
                    QUIET,
                )
                .await
            }
            Err(error) => Err(error),
        };
        match read {
            Ok(cut) => {
                let got = cut.events.len();
                delivered.extend(cut.events);
                if let Some(token) = cut.token {
                    from = From::After(token);
                }
                if stopping && got == 0 {
                    break;
                }
            }
            Err(_) => {
                failed_cuts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    (delivered, failed_cuts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roaming_subscriber_gets_every_event_once_across_shard_moves_and_a_killed_node() {
    let mut cluster = TestCluster::start(2).await.unwrap();
    let config = WorkloadConfig {
        positions: 48,
        ..WorkloadConfig::default()
    };
    let workload = Workload::start(cluster.addresses(), config).await.unwrap();
    let addresses = Arc::new(RwLock::new(cluster.addresses()));
    let stop = Arc::new(AtomicBool::new(false));
    let subscriber = tokio::spawn(roam(Arc::clone(&addresses), Arc::clone(&stop)));

    tokio::time::sleep(Duration::from_secs(2)).await;
    // A third node takes shards over.
    cluster.add_node(NodeOptions::default()).await.unwrap();
    *addresses.write().await = cluster.addresses();
    workload.set_addresses(cluster.addresses()).await;
    cluster.wait_settled(Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The first node dies; its shards move to the others.
    let survivors: Vec<String> = [1, 2]
        .iter()
        .map(|index| cluster.node(*index).grpc_addr.clone())
        .collect();
    workload.set_addresses(survivors.clone()).await;
    // Killed while the subscriber still reads from it: cuts in progress there
    // break, and are read again elsewhere from their token.
    cluster.kill9(0).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    *addresses.write().await = survivors.clone();
    cluster.wait_settled(Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let history = workload
        .finish(survivors.clone(), "cluster events", 200)
        .await
        .unwrap();
    stop.store(true, Ordering::Release);
    let (delivered, failed_cuts) = subscriber.await.unwrap();

    events::check_order(&delivered).unwrap();
    let everything = events::read_all(
        workload::channel(&survivors[0]).await.unwrap(),
        From::Start,
        QUIET,
    )
    .await
    .unwrap();
    let ids = |events: &[pb::Event]| events.iter().map(|e| e.id.clone()).collect::<BTreeSet<_>>();
    assert_eq!(
        ids(&delivered).len(),
        delivered.len(),
        "an event was delivered twice"
    );
    assert_eq!(
        ids(&delivered),
        ids(&everything.events),
        "the roaming subscriber missed events or got ones not in the stream"
    );
    // Every applied operation has its events; a refused one has none.
    let keys: BTreeSet<&str> = delivered
        .iter()
        .map(|e| e.idempotency_key.as_str())
        .collect();
    let mut applied = 0;
    for record in &history.records {
        match record.outcome {
            Outcome::Applied => {
                applied += 1;
                assert!(
                    keys.contains(record.op.idempotency_key.as_str()),
                    "applied {record:?} has no event"
                );
            }
            Outcome::Refused { .. } => assert!(
                !keys.contains(record.op.idempotency_key.as_str()),
                "refused {record:?} has an event"
            ),
            Outcome::Unknown => {}
        }
    }
    let shards: BTreeSet<u32> = delivered.iter().map(|e| e.shard).collect();
    eprintln!(
        "{} events over {} shards delivered to a roaming subscriber ({failed_cuts} cuts failed and were read again); {applied} operations applied",
        delivered.len(),
        shards.len()
    );
    assert!(
        failed_cuts > 0 || delivered.len() > 500,
        "the test did not exercise a failure"
    );
}
