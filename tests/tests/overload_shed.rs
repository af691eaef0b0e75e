//! Load shedding by queue time (`node/src/shed.rs`): with every store
//! commit slowed to 300 ms, 64 reservations sent faster than one position
//! commits them queue in the node; the node then lets fewer calls in at
//! once and refuses most of a burst of 128 at once, RESOURCE_EXHAUSTED with
//! the retry hint, although no mailbox is full and nothing is near
//! `max_in_flight` (so neither the mailbox nor admission refused them). A
//! refused reservation changed nothing: retried with its idempotency key
//! it is applied once, as a first attempt.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
use skuld_proto::v1::{MutationResponse, PositionKey};
use skuld_tests::requests::{get, key, receive, reserve};
use skuld_tests::{check_buckets, NodeOptions, TestDir, TestNode};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

const COMMIT_DELAY_MS: u64 = 300;
/// Calls of the burst that finds the node shedding.
const BURST: usize = 128;
/// Calls of each of the two bursts that make a queue.
const QUEUED: usize = 32;
/// A refusal must come at once: well before a commit could have finished.
const PROMPT: Duration = Duration::from_millis(250);

type Answer = (String, Result<MutationResponse, Status>, Duration);

/// `calls` reservations of one unit at `hot`, sent together.
async fn burst(
    client: &InventoryServiceClient<Channel>,
    hot: &PositionKey,
    prefix: &str,
    calls: usize,
) -> Vec<Answer> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(calls));
    let calls: Vec<_> = (0..calls)
        .map(|index| {
            let (mut client, hot) = (client.clone(), hot.clone());
            let barrier = std::sync::Arc::clone(&barrier);
            let idempotency_key = format!("{prefix}-{index}");
            tokio::spawn(async move {
                barrier.wait().await;
                let started = Instant::now();
                let mut request = tonic::Request::new(reserve(&hot, &idempotency_key, 1, 600));
                request.set_timeout(Duration::from_secs(20));
                let result = client.reserve(request).await;
                (
                    idempotency_key,
                    result.map(tonic::Response::into_inner),
                    started.elapsed(),
                )
            })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    answers
}

fn assert_prompt_refusal(idempotency_key: &str, status: &Status, elapsed: Duration) {
    assert!(
        elapsed < PROMPT,
        "{idempotency_key} refused only after {elapsed:?}: {status:?}"
    );
    let hint: u64 = status
        .metadata()
        .get("retry-after-ms")
        .unwrap_or_else(|| panic!("refusal without retry-after-ms: {status:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(hint > 0, "retry-after-ms 0");
    let retry_info = status
        .get_details_retry_info()
        .unwrap_or_else(|| panic!("refusal without google.rpc.RetryInfo: {status:?}"));
    assert!(retry_info.retry_delay.is_some_and(|delay| !delay.is_zero()));
}

/// Reserves with `idempotency_key` until it is not refused for overload,
/// waiting the hint between attempts.
async fn reserve_until_admitted(
    mut client: InventoryServiceClient<Channel>,
    hot: PositionKey,
    idempotency_key: String,
) -> Result<MutationResponse, Status> {
    for _ in 0..100 {
        let mut request = tonic::Request::new(reserve(&hot, &idempotency_key, 1, 600));
        request.set_timeout(Duration::from_secs(20));
        match client.reserve(request).await {
            Err(status) if status.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other.map(tonic::Response::into_inner),
        }
    }
    Err(Status::deadline_exceeded(
        "still refused after 100 attempts",
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_in_the_node_sheds_the_next_burst_before_it_queues() {
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(
        &dir.node_dir("node"),
        NodeOptions::default()
            .arg("--max-in-flight", 512)
            .arg("--shed-target-ms", 5)
            .env("SKULD_FAILPOINT_COMMIT_DELAY_MS", COMMIT_DELAY_MS),
    )
    .await
    .unwrap();
    let client = node.client().await.unwrap();
    let hot = key("acme", "SHED", "DC1");
    let stocked = client
        .clone()
        .adjust(receive(&hot, "stock", 1_000_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stocked.version, 1);

    // Two bursts 100 ms apart: the second waits for the first one's commit,
    // a queue of a commit's length. Far below every bound, so all are
    // admitted.
    let first = {
        let client = client.clone();
        let hot = hot.clone();
        tokio::spawn(async move { burst(&client, &hot, "queued-a", QUEUED).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut queued = burst(&client, &hot, "queued-b", QUEUED).await;
    queued.extend(first.await.unwrap());
    let mut accepted = 0usize;
    for (idempotency_key, result, _) in &queued {
        match result {
            Ok(reply) => {
                assert!(!reply.replayed);
                accepted += 1;
            }
            Err(status) => panic!("{idempotency_key} failed while nothing was full: {status:?}"),
        }
    }

    // The next burst: most refused at once, before queueing.
    let shed = burst(&client, &hot, "shed", BURST).await;
    let mut refused = Vec::new();
    for (idempotency_key, result, elapsed) in shed {
        match result {
            Ok(reply) => {
                assert!(!reply.replayed);
                accepted += 1;
            }
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert_prompt_refusal(&idempotency_key, &status, elapsed);
                refused.push(idempotency_key);
            }
            Err(status) => panic!("{idempotency_key}: {status:?}"),
        }
    }
    eprintln!(
        "after a queue of one commit: {} of {BURST} refused at once",
        refused.len()
    );
    assert!(
        refused.len() >= BURST / 4,
        "only {} of {BURST} refused after calls queued in the node: nothing sheds by queue time",
        refused.len()
    );
    let (_, metrics) = node.http_get("/metrics").await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("skuld_rejections_total{queue=\"shed\"}")),
        "refused, but not by the shedding in front of the API:\n{metrics}"
    );

    // Refused reservations changed nothing.
    let mut reader = client.clone();
    let position = reader
        .get_position(get(&hot))
        .await
        .unwrap()
        .into_inner()
        .position
        .unwrap();
    let buckets = position.buckets.unwrap();
    check_buckets(&buckets).unwrap();
    assert_eq!(
        buckets.reserved, accepted as i64,
        "exactly the accepted ones"
    );
    assert_eq!(position.version, 1 + accepted as u64);

    // Retried with their keys, the refused ones are applied once each, as
    // first attempts; an accepted one retried is a replay.
    let retries: Vec<_> = refused
        .iter()
        .map(|idempotency_key| {
            tokio::spawn(reserve_until_admitted(
                client.clone(),
                hot.clone(),
                idempotency_key.clone(),
            ))
        })
        .collect();
    for retry in retries {
        let reply = retry.await.unwrap().unwrap();
        assert!(!reply.replayed, "a refused call had been applied");
    }
    let replay = reserve_until_admitted(client.clone(), hot.clone(), "queued-a-0".into())
        .await
        .unwrap();
    assert!(replay.replayed);
    let position = reader
        .get_position(get(&hot))
        .await
        .unwrap()
        .into_inner()
        .position
        .unwrap();
    assert_eq!(
        position.buckets.unwrap().reserved,
        (accepted + refused.len()) as i64
    );
}
