//! TLS on the client API, certificate rotation without a restart, and the
//! peer API: its own port, mTLS with the cluster's CA only, and only for a
//! certificate that names a current member. Real nodes, real handshakes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use skuld_proto::internal::v1 as wire;
use skuld_proto::internal::v1::peer_service_client::PeerServiceClient;
use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
use skuld_tests::certs::{write_replacing, CertFiles, Leaf, TestCa};
use skuld_tests::cluster::{ClusterOptions, TestCluster};
use skuld_tests::requests::{get, key, receive};
use skuld_tests::{NodeOptions, TestDir, TestNode};
use tonic::transport::Channel;

/// A new TLS connection to `addr` that trusts `ca_pem` and presents
/// `identity` when given.
async fn connect(
    addr: &str,
    ca_pem: &str,
    identity: Option<&CertFiles>,
) -> anyhow::Result<Channel> {
    skuld_tests::certs::tls_channel(addr, ca_pem, identity).await
}

/// A plaintext connection, which a TLS port must refuse.
async fn connect_plain(addr: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

/// Receives one unit on `sku` over `channel`.
async fn receive_one(channel: Channel, sku: &str, idempotency_key: &str) -> Result<(), String> {
    let mut client = InventoryServiceClient::new(channel);
    client
        .adjust(receive(&key("acme", sku, "store-1"), idempotency_key, 1))
        .await
        .map(|_| ())
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
}

/// The version of position `sku` as a trusted client sees it (0: never
/// written).
async fn version_of(channel: Channel, sku: &str) -> u64 {
    let mut client = InventoryServiceClient::new(channel);
    client
        .get_position(get(&key("acme", sku, "store-1")))
        .await
        .ok()
        .and_then(|reply| reply.into_inner().position)
        .map_or(0, |position| position.version)
}

fn tls_node_options(server: &CertFiles) -> NodeOptions {
    NodeOptions::default()
        .arg("--tls-cert-file", server.cert.display())
        .arg("--tls-key-file", server.key.display())
}

fn server_leaf() -> Leaf {
    Leaf::new("skuld", &["127.0.0.1", "localhost"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_api_over_tls_refuses_plaintext_and_an_untrusted_server() {
    let dir = TestDir::new().unwrap();
    let ca = TestCa::new("client API CA").unwrap();
    let other_ca = TestCa::new("another CA").unwrap();
    let server = ca.issue(&server_leaf(), dir.path(), "server").unwrap();
    let node = TestNode::start(&dir.node_dir("node"), tls_node_options(&server))
        .await
        .unwrap();
    let addr = node.grpc_addr();

    let trusted = connect(addr, ca.pem(), None).await.unwrap();
    receive_one(trusted.clone(), "sku-1", "ok-1").await.unwrap();

    // Plaintext never reaches a handler: the connection or the call fails.
    let plain = match connect_plain(addr).await {
        Ok(channel) => receive_one(channel, "sku-2", "plain-1").await.err(),
        Err(error) => Some(error.to_string()),
    };
    assert!(plain.is_some(), "a plaintext call went through");
    // A client that trusts another CA does not talk to this server.
    assert!(
        connect(addr, other_ca.pem(), None).await.is_err(),
        "a client trusting another CA connected"
    );
    assert_eq!(
        version_of(trusted.clone(), "sku-2").await,
        0,
        "something was stored"
    );
    assert_eq!(version_of(trusted, "sku-1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_client_certificate_must_be_current_and_of_the_clients_ca() {
    let dir = TestDir::new().unwrap();
    let server_ca = TestCa::new("server CA").unwrap();
    let client_ca = TestCa::new("client CA").unwrap();
    let rogue_ca = TestCa::new("rogue CA").unwrap();
    let server = server_ca
        .issue(&server_leaf(), dir.path(), "server")
        .unwrap();
    let good = client_ca
        .issue(&Leaf::new("svc-oms", &["svc-oms"]), dir.path(), "good")
        .unwrap();
    let expired = client_ca
        .issue(
            &Leaf::new("svc-oms", &["svc-oms"]).expired(),
            dir.path(),
            "expired",
        )
        .unwrap();
    let rogue = rogue_ca
        .issue(&Leaf::new("svc-oms", &["svc-oms"]), dir.path(), "rogue")
        .unwrap();
    let options = tls_node_options(&server)
        .arg("--tls-client-ca-file", good.ca.display())
        .arg("--tls-require-client-cert", "true");
    let node = TestNode::start(&dir.node_dir("node"), options)
        .await
        .unwrap();
    let addr = node.grpc_addr();

    for (case, identity) in [
        ("no client certificate", None),
        ("a certificate of another CA", Some(&rogue)),
        ("an expired certificate", Some(&expired)),
    ] {
        // rustls may finish the client's side of the handshake before the
        // server's verdict arrives: the refusal shows at connect or at the
        // first call.
        let refused = match connect(addr, server_ca.pem(), identity).await {
            Ok(channel) => receive_one(channel, "sku-1", case).await.err(),
            Err(error) => Some(format!("{error:#}")),
        };
        assert!(refused.is_some(), "{case}: the call went through");
    }
    let trusted = connect(addr, server_ca.pem(), Some(&good)).await.unwrap();
    assert_eq!(
        version_of(trusted.clone(), "sku-1").await,
        0,
        "a refused connection stored something"
    );
    receive_one(trusted.clone(), "sku-1", "good-1")
        .await
        .unwrap();
    assert_eq!(version_of(trusted, "sku-1").await, 1);
}

/// cert-manager rewrites the mounted secret in place: a new connection gets
/// the new certificate, calls on connections already open go on, and a
/// rotation seen half-way (the new key beside the old certificate) keeps
/// the old pair rather than breaking the port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_rotated_on_disk_is_served_without_a_restart_or_a_failed_call() {
    let dir = TestDir::new().unwrap();
    let old_ca = TestCa::new("old CA").unwrap();
    let new_ca = TestCa::new("new CA").unwrap();
    let served = old_ca.issue(&server_leaf(), dir.path(), "server").unwrap();
    let options = tls_node_options(&served).arg("--tls-reload-interval-secs", 1);
    let node = TestNode::start(&dir.node_dir("node"), options)
        .await
        .unwrap();
    let addr = node.grpc_addr().to_owned();

    // A client on a connection of the old certificate, calling all along.
    let open = connect(&addr, old_ca.pem(), None).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let caller = tokio::spawn({
        let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match receive_one(open.clone(), "sku-open", &format!("open-{n}")).await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(error) => {
                        eprintln!("call in flight failed: {error}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    // Half a rotation: a new key, the old certificate. Not usable: the
    // port keeps serving the old pair.
    let next = new_ca
        .issue(&server_leaf(), &dir.path().join("next"), "server")
        .unwrap();
    let next_key = std::fs::read_to_string(&next.key).unwrap();
    write_replacing(&served.key, &next_key).unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    connect(&addr, old_ca.pem(), None)
        .await
        .expect("after half a rotation the old certificate should still be served");
    assert!(
        node.log()
            .contains("cannot be used; keeping the previous ones"),
        "the half rotation was not reported"
    );

    // The other half: now the new certificate is served to new connections.
    let next_cert = std::fs::read_to_string(&next.cert).unwrap();
    write_replacing(&served.cert, &next_cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if connect(&addr, new_ca.pem(), None).await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        connect(&addr, old_ca.pem(), None).await.is_err(),
        "a new connection still got the old certificate"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    caller.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "calls in flight failed across the rotation"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "the open connection made too few calls"
    );
}

/// Sends one forwarded command to `addr`'s peer API over `channel`.
async fn forward(channel: Channel) -> Result<(), tonic::Status> {
    PeerServiceClient::new(channel)
        .forward(wire::ForwardRequest {
            kind: "position".into(),
            operation: wire::Operation::Mutate.into(),
            // Not a command: what a caller that passed the checks gets back
            // is INVALID_ARGUMENT, which tells the checks apart.
            payload: vec![0xff; 16],
        })
        .await
        .map(|_| ())
}

/// The services reflection lists, and whether it describes the peer
/// service when asked by name.
async fn reflect(channel: Channel) -> (Vec<String>, bool) {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("skuld.internal.v1.PeerService".into()),
    ]
    .map(|request| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    });
    let mut replies = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut services = Vec::new();
    let mut described = false;
    // tonic's reflection ends the stream with NOT_FOUND for an unknown
    // symbol (rather than an error message in it).
    loop {
        let reply = match replies.message().await {
            Ok(Some(reply)) => reply,
            Ok(None) => break,
            Err(status) if status.code() == tonic::Code::NotFound => break,
            Err(status) => panic!("reflection failed: {status:?}"),
        };
        match reply.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                services = list
                    .service
                    .into_iter()
                    .map(|service| service.name)
                    .collect();
            }
            Some(MessageResponse::FileDescriptorResponse(_)) => described = true,
            _ => {}
        }
    }
    (services, described)
}

fn issue(ca: &TestCa, dir: &Path, name: &str, names: &[&str]) -> CertFiles {
    ca.issue(&Leaf::new(name, names), dir, name).unwrap()
}

/// Whether a peer call failed before any handler saw it (a refused
/// connection or handshake), as opposed to a handler's refusal.
fn refused_before_any_handler(outcome: &Result<(), tonic::Status>) -> bool {
    match outcome {
        Ok(()) => false,
        Err(status) => !matches!(
            status.code(),
            tonic::Code::InvalidArgument
                | tonic::Code::Unauthenticated
                | tonic::Code::PermissionDenied
                | tonic::Code::Unimplemented
        ),
    }
}

/// Connects (TLS when `ca` is given) and forwards; a failed connection is a
/// refusal before any handler.
async fn try_forward(
    addr: &str,
    ca: Option<&str>,
    identity: Option<&CertFiles>,
) -> Result<(), tonic::Status> {
    let channel = match ca {
        Some(ca) => connect(addr, ca, identity).await,
        None => connect_plain(addr).await,
    };
    match channel {
        Ok(channel) => forward(channel).await,
        Err(error) => Err(tonic::Status::unavailable(format!("{error:#}"))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_api_is_on_its_own_port_and_only_for_certificates_of_members() {
    // The node advertises the name `localhost` (its certificate names both
    // `localhost` and 127.0.0.1), so a caller's certificate that names only
    // the address is a certificate for a host no member advertises.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let options = ClusterOptions {
        node: NodeOptions::default()
            .arg("--peer-addr", format!("127.0.0.1:{port}"))
            .arg("--advertise-endpoint", format!("https://localhost:{port}")),
        ..ClusterOptions::default()
    };
    let cluster = TestCluster::start_with(1, options).await.unwrap();
    let node = cluster.node(0);
    let peer_addr = node.peer_addr.clone();
    assert!(
        !peer_addr.is_empty(),
        "the ports file names no peer listener"
    );
    let certs = cluster.dir.path().join("callers");

    // The client port does not serve it at all, and its reflection neither
    // lists nor describes it.
    let client_port = connect_plain(node.grpc_addr()).await.unwrap();
    let status = forward(client_port.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    let (services, internal) = reflect(client_port).await;
    assert!(
        services
            .iter()
            .any(|name| name == "skuld.v1.InventoryService"),
        "{services:?}"
    );
    assert!(
        !services
            .iter()
            .any(|name| name.starts_with("skuld.internal")),
        "reflection lists the peer API: {services:?}"
    );
    assert!(
        !internal,
        "reflection describes skuld.internal.v1.PeerService"
    );

    // Plaintext, no certificate, a certificate of another CA: no TLS
    // session, so no handler ever sees the call.
    let cluster_ca = cluster.peer_ca.pem();
    let rogue_ca = TestCa::new("rogue CA").unwrap();
    let rogue = issue(&rogue_ca, &certs, "rogue", &["localhost", "127.0.0.1"]);
    for (case, outcome) in [
        ("plaintext", try_forward(&peer_addr, None, None).await),
        (
            "no certificate",
            try_forward(&peer_addr, Some(cluster_ca), None).await,
        ),
        (
            "a certificate of another CA",
            try_forward(&peer_addr, Some(cluster_ca), Some(&rogue)).await,
        ),
    ] {
        assert!(
            refused_before_any_handler(&outcome),
            "{case}: not refused at the connection: {outcome:?}"
        );
    }

    // The cluster's CA also signed these, but they name no host a member
    // advertises: a service's certificate, and one for the bare address
    // while the member advertises `localhost`.
    for (name, names) in [
        ("svc-oms", &["svc-oms.example"][..]),
        ("by-address", &["127.0.0.1"][..]),
    ] {
        let files = issue(&cluster.peer_ca, &certs, name, names);
        let status = try_forward(&peer_addr, Some(cluster_ca), Some(&files))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{name}: {status:?}"
        );
    }

    // A certificate naming the host the member advertises passes the checks
    // (and its garbage payload is refused as such, nothing applied).
    let member = issue(&cluster.peer_ca, &certs, "node-x", &["localhost"]);
    let status = try_forward(&peer_addr, Some(cluster_ca), Some(&member))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
}
