//! Start-up refuses, with one clear line, a cluster that would leave shards
//! silently unservable: an etcd behind the fences stored in PostgreSQL (a
//! restored or rebuilt etcd), or a shard count other than the one the store
//! was written with.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use skuld_tests::cluster::{node_id, TestCluster, TEST_SHARDS};
use skuld_tests::services::Etcd;
use skuld_tests::{NodeOptions, TestNode};

/// A node of a cluster whose etcd is `etcd` (a new, empty one), on the
/// cluster's PostgreSQL, with `shard_count` shards; its start must fail
/// naming `expected`.
async fn refused(
    cluster: &TestCluster,
    etcd: &Etcd,
    shard_count: u32,
    extra: NodeOptions,
    expected: &str,
) {
    let index = 9;
    let mut options = cluster.node_options(index, &extra);
    let flag = options
        .args
        .iter()
        .position(|arg| arg == "--etcd-endpoints")
        .unwrap();
    options.args[flag + 1] = etcd.endpoint();
    let count = options
        .args
        .iter()
        .position(|arg| arg == "--shard-count")
        .unwrap();
    options.args[count + 1] = shard_count.to_string();
    let dir = cluster
        .dir
        .node_dir(&format!("{}-{shard_count}", node_id(index)));
    let error = match TestNode::start(&dir, options).await {
        Ok(_) => panic!("a node started against an etcd that cannot serve this store"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("exited with"), "{error}");
    let line = error
        .lines()
        .find(|line| line.contains(expected))
        .unwrap_or_else(|| panic!("no line says {expected:?}:\n{error}"));
    eprintln!("refused: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_an_etcd_behind_the_store_or_another_shard_count() {
    let mut cluster = TestCluster::start(2).await.unwrap();
    // Epochs up to etcd's revision are fenced in PostgreSQL by now.
    cluster.terminate(1).await.unwrap();
    cluster.terminate(0).await.unwrap();
    let rebuilt = Etcd::start(&cluster.dir.path().join("rebuilt-etcd")).unwrap();
    refused(
        &cluster,
        &rebuilt,
        TEST_SHARDS,
        NodeOptions::default(),
        "behind the epoch",
    )
    .await;
    // A new cluster namespace in that etcd, created with another count.
    refused(
        &cluster,
        &rebuilt,
        TEST_SHARDS * 2,
        NodeOptions::default().arg("--cluster-name", "rebuilt"),
        "written by a cluster of 64 shards",
    )
    .await;
}
