//! `server::run_with_io` over injected I/O, the seam the deterministic
//! simulation runs the node through, proven here over ordinary tokio TCP
//! before turmoil: two cluster nodes in this process, their client and
//! peer connections handed in as streams, plaintext peers over an injected
//! dialer, etcd through a client built over a dialed channel (real etcd),
//! and one injected in-memory store instead of PostgreSQL. A reservation
//! sent to the node that does not own its key is forwarded to the owner
//! and lands in the injected store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use skuld_cluster::store::memory::MemoryStore;
use skuld_cluster::Store;
use skuld_node::config::Config;
use skuld_node::node_io::{Dialer, EtcdSource, Incoming, NodeIo, Peers};
use skuld_node::server;
use skuld_proto::v1 as pb;
use skuld_tests::requests::{key, receive, reserve};
use skuld_tests::services::Etcd;
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::{Channel, Endpoint, Uri};

const SHARDS: u32 = 8;

/// A TCP dialer that counts its dials, so the test knows the node used it
/// rather than a connector of its own.
fn counting_dialer(dials: Arc<AtomicUsize>) -> Dialer {
    Dialer::new(tower::service_fn(move |uri: Uri| {
        let dials = Arc::clone(&dials);
        async move {
            dials.fetch_add(1, Ordering::Relaxed);
            let authority = uri
                .authority()
                .map(|authority| authority.as_str().to_owned())
                .unwrap_or_default();
            TcpStream::connect(authority).await.map(TokioIo::new)
        }
    }))
}

/// Connections of `listener` as a stream, as the simulation hands in its
/// own network's.
fn incoming(listener: TcpListener) -> Incoming {
    let local = listener.local_addr().unwrap();
    let connections = futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    });
    Incoming::stream(local, connections)
}

/// Dials through the injected dialers, by what they reach.
#[derive(Default)]
struct Dials {
    etcd: Arc<AtomicUsize>,
    peer: Arc<AtomicUsize>,
}

struct InjectedNode {
    grpc: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_node(
    index: usize,
    etcd_endpoint: &str,
    dir: &std::path::Path,
    store: Arc<dyn Store>,
    dials: &Dials,
) -> InjectedNode {
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc.local_addr().unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut config = Config::default();
    config.server.data_dir = dir.join(format!("node-{index}"));
    config.server.drain_timeout_secs = 2;
    // Cluster mode is on with etcd endpoints; the client below is the one
    // used.
    config.cluster.etcd_endpoints = vec![etcd_endpoint.to_owned()];
    config.cluster.node_id = format!("node-{index}");
    config.cluster.shard_count = SHARDS;
    config.cluster.lease_ttl_secs = 3;
    config.cluster.advertise_endpoint = format!("http://{peer_addr}");

    let etcd_channel = Endpoint::from_shared(etcd_endpoint.to_owned())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(counting_dialer(Arc::clone(&dials.etcd)));
    let etcd = etcd_client::Client::from_channel(
        etcd_client::Channel::Tonic(etcd_channel),
        Some(skuld_cluster::membership::etcd_connect_options()),
    )
    .await
    .unwrap();
    let io = NodeIo {
        grpc: incoming(grpc),
        peers: Some(Peers::plaintext(
            incoming(peer),
            counting_dialer(Arc::clone(&dials.peer)),
        )),
        http: None,
        etcd: EtcdSource::Client(Box::new(etcd)),
        store: Some(store),
        environment: Default::default(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::run_with_io(config, io, None, async move {
        let _ = stopped.await;
    }));
    InjectedNode {
        grpc: grpc_addr,
        stop,
        task,
    }
}

async fn channel(address: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

fn shard_of(position: &pb::PositionKey) -> u32 {
    let encoded =
        skuld_actors::PositionKey::new(&position.tenant, &position.sku, &position.location)
            .unwrap()
            .encode();
    skuld_cluster::placement::shard_of(&encoded, SHARDS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_sent_to_a_non_owner_is_forwarded_over_the_injected_peer_hop() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&dir.path().join("etcd")).unwrap();
    let store: Arc<MemoryStore> = Arc::new(MemoryStore::new());
    let dials = Dials::default();
    let first = start_node(
        1,
        &etcd.endpoint(),
        dir.path(),
        Arc::clone(&store) as Arc<dyn Store>,
        &dials,
    )
    .await;
    let second = start_node(
        2,
        &etcd.endpoint(),
        dir.path(),
        Arc::clone(&store) as Arc<dyn Store>,
        &dials,
    )
    .await;
    let mut admin = pb::admin_service_client::AdminServiceClient::new(channel(first.grpc).await);
    let mut inventory =
        pb::inventory_service_client::InventoryServiceClient::new(channel(first.grpc).await);

    // Once both nodes own shards, a key of a shard node-2 owns, sent to
    // node-1.
    let mut forwarded = None;
    let started = tokio::time::Instant::now();
    while forwarded.is_none() && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(shards) = admin.list_shards(pb::ListShardsRequest {}).await else {
            continue;
        };
        let owners: Vec<String> = shards
            .into_inner()
            .shards
            .into_iter()
            .map(|shard| shard.owner)
            .collect();
        if !owners.iter().any(|owner| owner == "node-1") {
            continue;
        }
        let Some(position) = (0..200)
            .map(|index| key("injected", &format!("sku-{index}"), "dc-1"))
            .find(|position| owners[shard_of(position) as usize] == "node-2")
        else {
            continue;
        };
        if inventory
            .adjust(receive(&position, "stock-1", 10))
            .await
            .is_err()
        {
            continue;
        }
        match inventory
            .reserve(reserve(&position, "hold-1", 3, 600))
            .await
        {
            Ok(reply) => forwarded = Some((position, reply)),
            Err(status) => eprintln!("reserve through node-1: {status:?}"),
        }
    }
    let (position, reply) = forwarded.expect("no reservation was forwarded within 30 s");
    let owner = reply
        .metadata()
        .get("skuld-owner")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    assert_eq!(owner.as_deref(), Some("node-2"), "not served by the owner");
    assert!(
        dials.peer.load(Ordering::Relaxed) > 0,
        "the peer hop did not go through the injected dialer"
    );
    assert!(
        dials.etcd.load(Ordering::Relaxed) > 0,
        "the etcd clients did not go through the injected dialer"
    );
    // The owner wrote it to the injected store: the stock and the hold.
    let encoded =
        skuld_actors::PositionKey::new(&position.tenant, &position.sku, &position.location)
            .unwrap()
            .encode();
    let loaded = store.load(&encoded).await.unwrap();
    let newest = loaded
        .journal_tail
        .last()
        .map(|(sequence, _)| *sequence)
        .or(loaded.snapshot.map(|(sequence, _)| sequence))
        .unwrap_or(0);
    assert!(
        newest >= 2,
        "the injected store holds the position up to entry {newest}"
    );

    for node in [first, second] {
        node.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(15), node.task)
            .await
            .expect("a node did not stop within its drain")
            .unwrap()
            .unwrap();
    }
}
