//! A single node whose wall clock jumps two days forward while it runs, and
//! then restarts under that clock: idempotency records keep their retention
//! (measured by the store's monotonic timeline), so a retry of a write made
//! just before the jump is a replay, not a second application.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use skuld_tests::requests::{get, key, receive};
use skuld_tests::{libfaketime, NodeOptions, TestDir, TestNode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_jump_does_not_purge_fresh_idempotency_records() {
    let dir = TestDir::new().unwrap();
    // The node's wall clock is what this file says (re-read every second).
    let offset = dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let options = NodeOptions::default()
        .arg("--idempotency-retention-secs", 3_600)
        .arg("--idempotency-purge-interval-secs", 1)
        .env("LD_PRELOAD", libfaketime().unwrap().display())
        .env("FAKETIME_TIMESTAMP_FILE", offset.display())
        .env("FAKETIME_CACHE_DURATION", 1)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", 1);
    let mut node = TestNode::start(&dir.node_dir("node"), options)
        .await
        .unwrap();
    let position = key("clock", "sku-1", "dc-1");
    let mut client = node.inventory().await.unwrap();
    client
        .adjust(receive(&position, "receipt-1", 5))
        .await
        .unwrap();

    std::fs::write(&offset, "+2d\n").unwrap();
    // Purges run every second; by the wall clock the record is now two
    // days old.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let retry = client
        .adjust(receive(&position, "receipt-1", 5))
        .await
        .unwrap()
        .into_inner();
    assert!(retry.replayed, "applied again after the jump: {retry:?}");
    assert!(
        node.log().contains("wall clock jumped"),
        "the jump was not reported"
    );

    // Restarted with the clock still two days ahead.
    node.restart().await.unwrap();
    let mut client = node.inventory().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let retry = client
        .adjust(receive(&position, "receipt-1", 5))
        .await
        .unwrap()
        .into_inner();
    assert!(retry.replayed, "applied again after the restart: {retry:?}");
    let on_hand = client
        .get_position(get(&position))
        .await
        .unwrap()
        .into_inner()
        .position
        .unwrap()
        .buckets
        .unwrap()
        .on_hand;
    assert_eq!(on_hand, 5);
}
