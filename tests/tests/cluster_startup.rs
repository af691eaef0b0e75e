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

/// SIGTERM while the node is still joining stops it cleanly (exit code 0),
/// rather than by the signal's default action. Here etcd is a socket that
/// accepts connections and never answers, so the join cannot finish. In a
/// container the node is PID 1, and the kernel drops a SIGTERM that PID 1
/// has no handler for: without handlers from the start, a pod stopped while
/// starting would wait out its grace period and be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_still_joining_stops_cleanly_on_sigterm() {
    let silent_etcd = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let etcd = format!("http://{}", silent_etcd.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let ca = skuld_tests::certs::TestCa::new("test CA").unwrap();
    let peer = skuld_tests::cluster::peer_tls_options(&ca, dir.path(), "node-0").unwrap();
    let mut node = std::process::Command::new(skuld_tests::skuld_binary().unwrap())
        .args(["serve", "--etcd-endpoints", &etcd])
        .args(&peer.args)
        .args(["--postgres-url", "postgres://skuld@127.0.0.1:1/skuld"])
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(
        node.try_wait().unwrap().is_none(),
        "the node should still be joining an etcd that never answers"
    );
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = node.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = node.kill();
            panic!("the node did not stop within 10 s of SIGTERM while joining");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut log = String::new();
    if let Some(mut stderr) = node.stderr.take() {
        use std::io::Read;
        let _ = stderr.read_to_string(&mut log);
    }
    assert_eq!(status.code(), Some(0), "status {status:?}, log:\n{log}");
    assert!(log.contains("shutdown requested while joining"), "{log}");
}

/// A node id is one process at a time: a second process started under the
/// id of a running node (two pods given one name, a replacement while a
/// zombie still holds its lease) waits, says why, and takes the id only
/// once the first is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_under_a_node_id_in_use_waits_for_the_first() {
    let mut cluster = TestCluster::start(1).await.unwrap();
    let first = cluster.member(0, 0).await.unwrap();
    // The cluster's command line for node 0, as a second process.
    let options = cluster.node_options(0, &NodeOptions::default());
    let dir = cluster.dir.node_dir("node-0-again");
    let log = dir.with_extension("log");
    let second = tokio::spawn(async move { TestNode::start(&dir, options).await });

    let ttl = std::time::Duration::from_secs(skuld_tests::cluster::TEST_LEASE_TTL_SECS);
    tokio::time::sleep(2 * ttl).await;
    assert!(
        !second.is_finished(),
        "a second node-0 joined while the first runs"
    );
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        said.contains("is in use by another process"),
        "the second process does not say why it waits:\n{said}"
    );
    let now = cluster.member(0, 0).await.unwrap();
    assert_eq!(
        (now.endpoint.as_str(), now.started_at_ms),
        (first.endpoint.as_str(), first.started_at_ms),
        "the first's member record was taken over"
    );

    // The first stops: the second takes the id and serves.
    cluster.terminate(0).await.unwrap();
    let second = second.await.unwrap().unwrap();
    let members = skuld_proto::v1::admin_service_client::AdminServiceClient::new(
        second.channel().await.unwrap(),
    )
    .list_members(skuld_proto::v1::ListMembersRequest {})
    .await
    .unwrap()
    .into_inner()
    .members;
    assert_eq!(members.len(), 1, "{members:?}");
    assert_ne!(members[0].endpoint, first.endpoint, "{members:?}");
    assert!(
        members[0].started_at_ms > first.started_at_ms,
        "{members:?}"
    );
}

/// A node paused past its lease finds, when it wakes, that another process
/// took its node id meanwhile: it stops at once with an error, without a
/// handoff (the claims under the id are the other's), and the other keeps
/// its member record and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_wakes_to_find_its_id_taken_stops_and_leaves_the_other_serving() {
    let mut cluster = TestCluster::start(1).await.unwrap();
    let ttl = std::time::Duration::from_secs(skuld_tests::cluster::TEST_LEASE_TTL_SECS);
    cluster.signal(0, true).unwrap();
    // The paused node's lease expires; a second node-0 takes the id.
    let options = cluster.node_options(0, &NodeOptions::default());
    let dir = cluster.dir.node_dir("node-0-again");
    let second = tokio::time::timeout(
        ttl + skuld_tests::START_TIMEOUT,
        TestNode::start(&dir, options),
    )
    .await
    .unwrap()
    .unwrap();
    cluster.signal(0, false).unwrap();
    let status = cluster
        .node_mut(0)
        .wait_exit(std::time::Duration::from_secs(15))
        .await
        .unwrap();
    assert!(!status.success(), "the displaced node exited with {status}");
    let said = cluster.node(0).log();
    assert!(
        said.contains("another process's now: stopping without a handoff"),
        "{said}"
    );
    let mut admin = skuld_proto::v1::admin_service_client::AdminServiceClient::new(
        second.channel().await.unwrap(),
    );
    let members = admin
        .list_members(skuld_proto::v1::ListMembersRequest {})
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(members.len(), 1, "{members:?}");
    // Members advertise their peer port (mTLS), not the client port.
    assert_eq!(members[0].endpoint, format!("https://{}", second.peer_addr));
    let (status, body) = second.http_get("/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");
}
