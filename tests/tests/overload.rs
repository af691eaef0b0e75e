//! Back-pressure: with a 4-deep mailbox and every store commit slowed to
//! 300 ms, 200 concurrent writes at one position are mostly refused at once
//! with RESOURCE_EXHAUSTED and a retry hint, none time out, exactly the
//! accepted ones are applied, and the node keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use skuld_tests::requests::{get, key, receive, reserve};
use skuld_tests::{check_buckets, NodeOptions, TestDir, TestNode};
use tonic::Code;
use tonic_types::StatusExt as _;

const CALLS: usize = 200;
const STOCK: i64 = 1_000;
/// A refusal must come at once, not after queueing or a timeout.
const PROMPT: Duration = Duration::from_millis(250);

#[derive(Debug)]
enum Kind {
    Adjust,
    Reserve,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mailbox_refuses_at_once_with_a_retry_hint() {
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(
        &dir.node_dir("node"),
        NodeOptions::default()
            .arg("--mailbox-capacity", 4)
            .env("SKULD_FAILPOINT_COMMIT_DELAY_MS", 300),
    )
    .await
    .unwrap();
    let mut client = node.client().await.unwrap();
    let hot = key("acme", "HOT", "DC1");
    let stocked = client
        .adjust(receive(&hot, "stock", STOCK))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stocked.version, 1);

    // All callers start together.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CALLS));
    let mut calls = Vec::new();
    for index in 0..CALLS {
        let mut client = client.clone();
        let hot = hot.clone();
        let barrier = std::sync::Arc::clone(&barrier);
        calls.push(tokio::spawn(async move {
            barrier.wait().await;
            let kind = if index % 2 == 0 {
                Kind::Adjust
            } else {
                Kind::Reserve
            };
            let started = Instant::now();
            let result = match kind {
                Kind::Adjust => {
                    let mut request = tonic::Request::new(receive(&hot, &format!("a{index}"), 1));
                    request.set_timeout(Duration::from_secs(10));
                    client.adjust(request).await
                }
                Kind::Reserve => {
                    let mut request =
                        tonic::Request::new(reserve(&hot, &format!("r{index}"), 1, 600));
                    request.set_timeout(Duration::from_secs(10));
                    client.reserve(request).await
                }
            };
            (
                kind,
                result.map(tonic::Response::into_inner),
                started.elapsed(),
            )
        }));
    }

    let (mut adjusted, mut reserved, mut refused) = (0i64, 0i64, 0usize);
    let mut slowest_refusal = Duration::ZERO;
    let mut slowest_ok = Duration::ZERO;
    let mut other_errors = Vec::new();
    for call in calls {
        let (kind, result, elapsed) = call.await.unwrap();
        match result {
            Ok(reply) => {
                assert!(!reply.replayed);
                slowest_ok = slowest_ok.max(elapsed);
                match kind {
                    Kind::Adjust => adjusted += 1,
                    Kind::Reserve => reserved += 1,
                }
            }
            Err(status) if status.code() == Code::ResourceExhausted => {
                refused += 1;
                slowest_refusal = slowest_refusal.max(elapsed);
                assert!(
                    elapsed < PROMPT,
                    "{kind:?} refused only after {elapsed:?}: {status:?}"
                );
                let hint = status
                    .metadata()
                    .get("retry-after-ms")
                    .unwrap_or_else(|| panic!("refusal without retry-after-ms: {status:?}"));
                let hint: u64 = hint
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap_or_else(|_| panic!("retry-after-ms not a number: {hint:?}"));
                assert!(hint > 0, "retry-after-ms 0");
                let retry_info = status
                    .get_details_retry_info()
                    .unwrap_or_else(|| panic!("refusal without google.rpc.RetryInfo: {status:?}"));
                assert!(
                    retry_info.retry_delay.is_some_and(|d| !d.is_zero()),
                    "RetryInfo without a delay: {retry_info:?}"
                );
            }
            Err(status) => other_errors.push((kind, status.code(), elapsed, status)),
        }
    }
    let ok = adjusted + reserved;
    eprintln!(
        "{CALLS} calls: {ok} ok ({adjusted} adjust, {reserved} reserve, slowest {slowest_ok:?}), \
         {refused} refused (slowest {slowest_refusal:?}), {} other",
        other_errors.len()
    );
    assert!(
        !other_errors
            .iter()
            .any(|(_, code, _, _)| *code == Code::DeadlineExceeded),
        "calls timed out instead of being refused: {other_errors:?}"
    );
    assert!(
        other_errors.is_empty(),
        "unexpected errors: {other_errors:?}"
    );
    assert!(
        refused >= CALLS / 2,
        "only {refused} of {CALLS} refused ({ok} ok): the mailbox bound does not hold"
    );
    assert!(ok >= 1, "nothing was accepted");

    // Still serving, and exactly the acknowledged writes were applied.
    assert_eq!(node.http_get("/readyz").await.unwrap().0, 200);
    let mut client = node.client().await.unwrap();
    let mut read = tonic::Request::new(get(&hot));
    read.set_timeout(Duration::from_secs(5));
    let after = client
        .get_position(read)
        .await
        .unwrap()
        .into_inner()
        .position
        .unwrap();
    let buckets = after.buckets.unwrap();
    check_buckets(&buckets).unwrap();
    assert_eq!(buckets.on_hand, STOCK + adjusted, "adjustments applied");
    assert_eq!(buckets.reserved, reserved, "reservations applied");
    assert_eq!(
        after.version,
        1 + ok as u64,
        "one version per accepted write"
    );
    assert_eq!(after.active_reservations, reserved as u64);

    // And it accepts writes again once the burst is over.
    let mut write = tonic::Request::new(receive(&hot, "after-the-burst", 1));
    write.set_timeout(Duration::from_secs(5));
    let reply = client.adjust(write).await.unwrap().into_inner();
    assert_eq!(reply.version, after.version + 1);
}
