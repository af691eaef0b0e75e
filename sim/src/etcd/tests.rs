//! The faults, through the real etcd client over loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, PutOptions, WatchOptions};
use tonic::Code;

use super::{SimEtcd, SimEtcdConfig};

struct Served {
    etcd: SimEtcd,
    endpoint: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(config: SimEtcdConfig) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let etcd = SimEtcd::new(config);
    let served = etcd.clone();
    let server = tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        served.serve(incoming).await.unwrap();
    });
    Served {
        etcd,
        endpoint,
        server,
    }
}

async fn client(served: &Served, require_leader: bool) -> Client {
    let options = ConnectOptions::new().with_require_leader(require_leader);
    Client::connect([served.endpoint.as_str()], Some(options))
        .await
        .unwrap()
}

fn status(error: etcd_client::Error) -> (Code, String) {
    match error {
        etcd_client::Error::GRpcStatus(status) => (status.code(), status.message().to_owned()),
        other => panic!("not a gRPC status: {other}"),
    }
}

fn no_leader() -> (Code, String) {
    (Code::Unavailable, "etcdserver: no leader".to_owned())
}

#[tokio::test]
async fn without_a_leader_writes_and_leader_requiring_calls_fail_and_streams_end() {
    let served = serve(SimEtcdConfig::default()).await;
    let mut strict = client(&served, true).await;
    let mut lenient = client(&served, false).await;
    lenient.put("k", "v", None).await.unwrap();
    let mut watch = strict
        .watch("k", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(watch.message().await.unwrap().unwrap().created());

    served.etcd.faults().set_leaderless(true);
    assert_eq!(
        status(strict.get("k", None).await.unwrap_err()),
        no_leader()
    );
    assert_eq!(
        status(lenient.put("k", "w", None).await.unwrap_err()),
        no_leader()
    );
    assert_eq!(
        status(lenient.lease_grant(5, None).await.unwrap_err()),
        no_leader()
    );
    // A read that does not ask for a leader is served.
    let got = lenient.get("k", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v");
    let ended = watch.message().await.unwrap_err();
    assert_eq!(status(ended), no_leader());

    served.etcd.faults().set_leaderless(false);
    strict.put("k", "w", None).await.unwrap();
}

#[tokio::test]
async fn no_lease_expires_without_a_leader_and_a_new_leader_gives_full_ttls() {
    let served = serve(SimEtcdConfig::default()).await;
    let mut client = client(&served, false).await;
    let lease = client.lease_grant(2, None).await.unwrap().id();
    client
        .put("held", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    served.etcd.faults().set_leaderless(true);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(client.get("held", None).await.unwrap().count(), 1);
    served.etcd.faults().set_leaderless(false);
    let left = client.lease_time_to_live(lease, None).await.unwrap();
    assert!(left.ttl() >= 2, "ttl {} after the new leader", left.ttl());
    // And it does expire once a leader is there.
    let mut waited = Duration::ZERO;
    while client.get("held", None).await.unwrap().count() == 1 {
        assert!(waited < Duration::from_secs(10), "the lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
}

#[tokio::test]
async fn a_leader_change_gives_every_lease_its_full_ttl_again() {
    let served = serve(SimEtcdConfig::default()).await;
    let mut client = client(&served, false).await;
    let lease = client.lease_grant(5, None).await.unwrap().id();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = client.lease_time_to_live(lease, None).await.unwrap().ttl();
    assert!(before <= 3, "ttl {before} 1.2 s after a grant of 5");
    served.etcd.faults().change_leader();
    let after = client.lease_time_to_live(lease, None).await.unwrap().ttl();
    assert!(after >= 5, "ttl {after} after the leader change");
}

#[tokio::test]
async fn a_dropped_reply_hides_a_write_that_applied() {
    let served = serve(SimEtcdConfig::default()).await;
    let mut client = client(&served, false).await;
    served.etcd.faults().drop_replies_after_apply(1);
    let lost = client.put("k", "v", None).await.unwrap_err();
    assert_eq!(
        status(lost),
        (
            Code::Unavailable,
            "etcdserver: request timed out".to_owned()
        )
    );
    let got = client.get("k", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v");
    // Only the one: the next write answers.
    client.put("k", "w", None).await.unwrap();
}

#[tokio::test]
async fn slow_answers_keep_the_caller_waiting() {
    let served = serve(SimEtcdConfig::default()).await;
    let mut client = client(&served, false).await;
    served.etcd.faults().set_delay(Duration::from_secs(2));
    let waited = tokio::time::timeout(Duration::from_millis(300), client.get("k", None)).await;
    assert!(waited.is_err(), "answered despite a 2 s delay");
    served.etcd.faults().set_delay(Duration::ZERO);
    client.get("k", None).await.unwrap();
}

#[tokio::test]
async fn a_cut_ends_every_open_watch_and_new_ones_work() {
    let served = serve(SimEtcdConfig::default()).await;
    let mut client = client(&served, false).await;
    let mut first = client.watch("a", None).await.unwrap();
    let mut second = client
        .watch("b", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(first.message().await.unwrap().unwrap().created());
    assert!(second.message().await.unwrap().unwrap().created());
    served.etcd.faults().cut_watches();
    assert!(first.message().await.is_err());
    assert!(second.message().await.is_err());
    let mut again = client.watch("a", None).await.unwrap();
    assert!(again.message().await.unwrap().unwrap().created());
    client.put("a", "v", None).await.unwrap();
    let event = again.message().await.unwrap().unwrap();
    assert_eq!(event.events()[0].kv().unwrap().value(), b"v");
}

#[tokio::test]
async fn compaction_cancels_a_watch_that_needs_the_lost_history() {
    let served = serve(SimEtcdConfig::default()).await;
    let mut client = client(&served, false).await;
    for value in ["1", "2", "3"] {
        client.put("k", value, None).await.unwrap();
    }
    served.etcd.faults().compact(3).unwrap();
    let mut watch = client
        .watch("k", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .unwrap();
    assert!(watch.message().await.unwrap().unwrap().created());
    let cancelled = watch.message().await.unwrap().unwrap();
    assert!(cancelled.canceled());
    assert_eq!(cancelled.compact_revision(), 3);
    let old = client
        .get("k", Some(GetOptions::new().with_revision(2)))
        .await
        .unwrap_err();
    assert_eq!(status(old).0, Code::OutOfRange);
}
