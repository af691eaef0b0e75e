//! Authentication, tenants, roles and the per-tenant quota on the client
//! API, against real nodes: bearer tokens verified with a JWKS file that is
//! rotated on disk, client-certificate identities over TLS, the CLI's
//! token, and one tenant throttled while another is not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skuld_proto::v1 as pb;
use skuld_proto::v1::admin_service_client::AdminServiceClient;
use skuld_proto::v1::event_service_client::EventServiceClient;
use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
use skuld_proto::v1::returns_service_client::ReturnsServiceClient;
use skuld_proto::v1::webhook_service_client::WebhookServiceClient;
use skuld_tests::certs::{CertFiles, Leaf, TestCa};
use skuld_tests::metrics::Scrape;
use skuld_tests::requests::{get, key, receive};
use skuld_tests::tokens::{bearer, write_jwks, Claims, SigningKey, ISSUER};
use skuld_tests::{NodeOptions, TestDir, TestNode};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

/// A node that verifies tokens with `jwks`, re-reading it every second.
async fn node_with_jwks(dir: &TestDir, jwks: &Path, more: NodeOptions) -> TestNode {
    let mut options = more
        .arg("--jwks-file", jwks.display())
        .arg("--jwt-issuers", ISSUER)
        .arg("--tls-reload-interval-secs", 1);
    options.env.push(("SKULD_LOG".into(), "debug".into()));
    TestNode::start(&dir.node_dir("node"), options)
        .await
        .unwrap()
}

struct Setup {
    dir: TestDir,
    jwks: PathBuf,
    signer: SigningKey,
    node: TestNode,
}

async fn setup(more: NodeOptions) -> Setup {
    let dir = TestDir::new().unwrap();
    let jwks = dir.path().join("jwks.json");
    let signer = SigningKey::new("k1").unwrap();
    write_jwks(&jwks, &[&signer]).unwrap();
    let node = node_with_jwks(&dir, &jwks, more).await;
    Setup {
        dir,
        jwks,
        signer,
        node,
    }
}

async fn inventory(node: &TestNode) -> InventoryServiceClient<Channel> {
    InventoryServiceClient::new(node.channel().await.unwrap())
}

async fn scrape(node: &TestNode) -> Scrape {
    let (code, text) = node.http_get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    Scrape(text)
}

/// GetPosition of `position` with `token` (none: no authorization header).
async fn get_position(
    client: &mut InventoryServiceClient<Channel>,
    token: Option<&str>,
    position: &pb::PositionKey,
) -> Result<pb::GetPositionResponse, Status> {
    let request = match token {
        Some(token) => bearer(get(position), token).unwrap(),
        None => tonic::Request::new(get(position)),
    };
    client
        .get_position(request)
        .await
        .map(tonic::Response::into_inner)
}

async fn adjust(
    client: &mut InventoryServiceClient<Channel>,
    token: &str,
    position: &pb::PositionKey,
    idempotency_key: &str,
) -> Result<pb::MutationResponse, Status> {
    client
        .adjust(bearer(receive(position, idempotency_key, 5), token).unwrap())
        .await
        .map(tonic::Response::into_inner)
}

fn denied(result: Result<impl std::fmt::Debug, Status>) -> (Code, String) {
    let status = result.expect_err("allowed");
    (status.code(), status.message().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authentication_failure_looks_the_same_and_health_stays_open() {
    let Setup {
        dir: _dir,
        signer,
        node,
        ..
    } = setup(NodeOptions::default()).await;
    let mut client = inventory(&node).await;
    let acme = key("acme", "SKU-1", "DC1");

    let good = signer.token("svc-pos", &["acme"], &["reader"]).unwrap();
    // The right token gets through: the position simply does not exist.
    let found = get_position(&mut client, Some(&good), &acme).await;
    assert_eq!(found.unwrap_err().code(), Code::NotFound);

    let impostor = SigningKey::new("k1").unwrap();
    let stranger = SigningKey::new("k9").unwrap();
    let with = |change: fn(&mut Claims)| {
        let mut claims = Claims::new("svc-pos", &["acme"], &["reader"]);
        change(&mut claims);
        signer.sign(&claims.into_json()).unwrap()
    };
    let tokens = [
        ("no token", None),
        (
            "another key, same kid",
            Some(impostor.token("svc-pos", &["acme"], &["reader"]).unwrap()),
        ),
        (
            "an unknown kid",
            Some(stranger.token("svc-pos", &["acme"], &["reader"]).unwrap()),
        ),
        ("expired", Some(with(|claims| claims.expires_in = -600))),
        (
            "wrong audience",
            Some(with(|claims| claims.aud = "someone-else".into())),
        ),
        (
            "wrong issuer",
            Some(with(|claims| claims.iss = "evil-issuer".into())),
        ),
        ("malformed", Some("not-a-jwt".to_owned())),
    ];
    let mut messages = Vec::new();
    for (case, token) in &tokens {
        let status = get_position(&mut client, token.as_deref(), &acme)
            .await
            .expect_err(case);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        messages.push(status.message().to_owned());
    }
    messages.dedup();
    assert_eq!(
        messages.len(),
        1,
        "the answers tell causes apart: {messages:?}"
    );
    // Another scheme than Bearer is no token either.
    let mut basic = tonic::Request::new(get(&acme));
    basic
        .metadata_mut()
        .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    let status = client.get_position(basic).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, messages[0].as_str())
    );

    // Health (and reflection, the same kind of separate service) needs no
    // token: probes and grpcurl keep working.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(node.channel().await.unwrap());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let metrics = scrape(&node).await;
    for reason in ["missing", "invalid", "expired"] {
        assert!(
            metrics.or_zero("skuld_auth_failures_total", &[("reason", reason)]) >= 1.0,
            "{reason}: {}",
            metrics.0
        );
    }
    // Even at debug, the log says why without quoting any token.
    let log = node.log();
    assert!(
        log.contains("unknown kid") && log.contains("bad signature"),
        "{log}"
    );
    for (_, token) in &tokens {
        if let Some(token) = token {
            assert!(!log.contains(token.as_str()), "a token is in the log");
        }
    }
    assert!(!log.contains(&good));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_read_or_touch_another_tenants_data() {
    let Setup {
        dir: _dir,
        signer,
        node,
        ..
    } = setup(NodeOptions::default()).await;
    let mut client = inventory(&node).await;
    let acme = signer.token("svc-acme", &["acme"], &["writer"]).unwrap();
    let globex = signer
        .token("svc-globex", &["globex"], &["writer"])
        .unwrap();
    let theirs = key("globex", "SKU-1", "DC1");
    let missing = key("globex", "SKU-NEVER", "DC1");

    let stored = adjust(&mut client, &globex, &theirs, "globex-1")
        .await
        .unwrap();
    assert_eq!(stored.version, 1);
    adjust(&mut client, &acme, &key("acme", "SKU-1", "DC1"), "acme-1")
        .await
        .unwrap();

    // acme's token on globex's key: refused before anything is looked up,
    // with the same answer whether the position exists or not.
    let write = denied(adjust(&mut client, &acme, &theirs, "acme-on-globex").await);
    assert_eq!(write.0, Code::PermissionDenied);
    let existing = denied(get_position(&mut client, Some(&acme), &theirs).await);
    let absent = denied(get_position(&mut client, Some(&acme), &missing).await);
    assert_eq!(existing, absent);
    assert_eq!(existing, write);
    // The other reads that name a tenant.
    let availability = client
        .get_availability(
            bearer(
                pb::GetAvailabilityRequest {
                    tenant: "globex".into(),
                    sku: "SKU-1".into(),
                    locations: vec!["DC1".into()],
                },
                &acme,
            )
            .unwrap(),
        )
        .await;
    assert_eq!(denied(availability), write);
    let mut returns = ReturnsServiceClient::new(node.channel().await.unwrap());
    let listed = returns
        .list_returns(
            bearer(
                pb::ListReturnsRequest {
                    tenant: "globex".into(),
                    ..Default::default()
                },
                &acme,
            )
            .unwrap(),
        )
        .await;
    assert_eq!(denied(listed), write);
    let mut events = EventServiceClient::new(node.channel().await.unwrap());
    let history = events
        .get_history(
            bearer(
                pb::GetHistoryRequest {
                    aggregate: Some(pb::get_history_request::Aggregate::Position(theirs.clone())),
                    ..Default::default()
                },
                &acme,
            )
            .unwrap(),
        )
        .await;
    assert_eq!(denied(history), write);
    // Every tenant's events need "*"; one's own are fine.
    let everything = pb::SubscribeRequest {
        from: Some(pb::subscribe_request::From::Start(true)),
        ..Default::default()
    };
    let all = events
        .subscribe(bearer(everything.clone(), &acme).unwrap())
        .await;
    assert_eq!(denied(all.map(|_| ())), write);
    let own = pb::SubscribeRequest {
        filter: Some(pb::EventFilter {
            tenant: "acme".into(),
            ..Default::default()
        }),
        ..everything.clone()
    };
    events.subscribe(bearer(own, &acme).unwrap()).await.unwrap();
    let every = signer.token("svc-audit", &["*"], &["reader"]).unwrap();
    events
        .subscribe(bearer(everything, &every).unwrap())
        .await
        .unwrap();

    // globex's position is as globex left it.
    let after = get_position(&mut client, Some(&globex), &theirs)
        .await
        .unwrap()
        .position
        .unwrap();
    assert_eq!(after.version, 1);
    assert_eq!(after.buckets.unwrap().available, 5);
    let metrics = scrape(&node).await;
    assert!(metrics.or_zero("skuld_auth_failures_total", &[("reason", "forbidden")]) >= 7.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_who_reads_writes_and_administers() {
    let Setup {
        dir: _dir,
        signer,
        node,
        ..
    } = setup(NodeOptions::default()).await;
    let mut client = inventory(&node).await;
    let acme = key("acme", "SKU-1", "DC1");
    let reader = signer.token("svc-pos", &["acme"], &["reader"]).unwrap();
    let writer = signer.token("svc-oms", &["acme"], &["writer"]).unwrap();

    // A reader reads and cannot write; a writer may read too.
    assert_eq!(
        denied(adjust(&mut client, &reader, &acme, "reader-1").await).0,
        Code::PermissionDenied
    );
    adjust(&mut client, &writer, &acme, "writer-1")
        .await
        .unwrap();
    get_position(&mut client, Some(&reader), &acme)
        .await
        .unwrap();
    get_position(&mut client, Some(&writer), &acme)
        .await
        .unwrap();

    // Node operations: admin only; the status: anyone authenticated.
    let mut admin = AdminServiceClient::new(node.channel().await.unwrap());
    let drain = |token: &str| {
        bearer(
            pb::DrainNodeRequest {
                node_id: "node".into(),
            },
            token,
        )
        .unwrap()
    };
    let refused = admin.drain_node(drain(&writer)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let sre = signer.token("sre", &["*"], &["admin"]).unwrap();
    // Past authorization: a single node has no cluster to drain from.
    let single = admin.drain_node(drain(&sre)).await.unwrap_err();
    assert_eq!(single.code(), Code::FailedPrecondition, "{single:?}");
    admin
        .node_status(bearer(pb::NodeStatusRequest {}, &reader).unwrap())
        .await
        .unwrap();
    // An admin does not write stock.
    assert_eq!(
        denied(adjust(&mut client, &sre, &acme, "sre-1").await).0,
        Code::PermissionDenied
    );

    // Webhooks: admins of the endpoint's tenant. Another tenant's id and
    // an id that does not exist get the same answer.
    let mut webhooks = WebhookServiceClient::new(node.channel().await.unwrap());
    let add = |tenant: &str, token: &str| {
        bearer(
            pb::AddWebhookRequest {
                tenant: tenant.into(),
                url: "http://127.0.0.1:9/hook".into(),
                ..Default::default()
            },
            token,
        )
        .unwrap()
    };
    let acme_admin = signer.token("acme-ops", &["acme"], &["admin"]).unwrap();
    let globex_admin = signer.token("globex-ops", &["globex"], &["admin"]).unwrap();
    let refused = webhooks
        .add_webhook(add("acme", &writer))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = webhooks
        .add_webhook(add("globex", &acme_admin))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let ours = webhooks
        .add_webhook(add("acme", &acme_admin))
        .await
        .unwrap()
        .into_inner()
        .webhook
        .unwrap();
    let theirs = webhooks
        .add_webhook(add("globex", &globex_admin))
        .await
        .unwrap()
        .into_inner()
        .webhook
        .unwrap();
    let remove =
        |id: &str, token: &str| bearer(pb::RemoveWebhookRequest { id: id.into() }, token).unwrap();
    let other = denied(
        webhooks
            .remove_webhook(remove(&theirs.id, &acme_admin))
            .await,
    );
    let nowhere = denied(
        webhooks
            .remove_webhook(remove("wh_00000000000000000000000000000000", &acme_admin))
            .await,
    );
    assert_eq!(other.0, Code::PermissionDenied);
    assert_eq!(other, nowhere);
    let rotate = webhooks
        .rotate_webhook_secret(
            bearer(
                pb::RotateWebhookSecretRequest {
                    id: theirs.id.clone(),
                },
                &acme_admin,
            )
            .unwrap(),
        )
        .await;
    assert_eq!(denied(rotate), other);
    let letters = webhooks
        .list_dead_letters(
            bearer(
                pb::ListDeadLettersRequest {
                    webhook_id: theirs.id.clone(),
                    ..Default::default()
                },
                &acme_admin,
            )
            .unwrap(),
        )
        .await;
    assert_eq!(denied(letters), other);
    // Every tenant's list needs "*"; one's own lists only one's own.
    let list = |tenant: &str, token: &str| {
        bearer(
            pb::ListWebhooksRequest {
                tenant: tenant.into(),
            },
            token,
        )
        .unwrap()
    };
    assert_eq!(
        denied(webhooks.list_webhooks(list("", &acme_admin)).await),
        other
    );
    let listed = webhooks
        .list_webhooks(list("acme", &acme_admin))
        .await
        .unwrap()
        .into_inner()
        .webhooks;
    assert_eq!(
        listed.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        [ours.id.as_str()]
    );
    // The endpoint is still there for its own tenant's admin.
    webhooks
        .remove_webhook(remove(&theirs.id, &globex_admin))
        .await
        .unwrap();
    // A caller of every tenant learns that an id does not exist.
    let gone = webhooks
        .remove_webhook(remove(&theirs.id, &sre))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::FailedPrecondition, "{gone:?}");
}

/// The node and the cluster are every tenant's: an admin of one tenant
/// (what managing its webhooks needs) cannot drain a node, list the members
/// or the shards; an admin of `"*"` can. A cluster of one open node and one
/// that verifies tokens: the open one shows the drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_admin_cannot_drain_nodes_and_an_admin_of_every_tenant_can() {
    let mut cluster = skuld_tests::cluster::TestCluster::start(1).await.unwrap();
    let jwks = cluster.dir.path().join("jwks.json");
    let signer = SigningKey::new("k1").unwrap();
    write_jwks(&jwks, &[&signer]).unwrap();
    let guarded = cluster
        .add_node(
            NodeOptions::default()
                .arg("--jwks-file", jwks.display())
                .arg("--jwt-issuers", ISSUER),
        )
        .await
        .unwrap();
    let mut admin = cluster.admin(guarded).await.unwrap();
    let acme_admin = signer.token("acme-ops", &["acme"], &["admin"]).unwrap();
    let sre = signer.token("sre", &["*"], &["admin"]).unwrap();
    let target = skuld_tests::cluster::node_id(0);
    let drain = |token: &str| {
        bearer(
            pb::DrainNodeRequest {
                node_id: target.clone(),
            },
            token,
        )
        .unwrap()
    };
    let undrain = |token: &str| {
        bearer(
            pb::UndrainNodeRequest {
                node_id: target.clone(),
            },
            token,
        )
        .unwrap()
    };

    let refused = admin.drain_node(drain(&acme_admin)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = admin.undrain_node(undrain(&acme_admin)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = admin
        .list_members(bearer(pb::ListMembersRequest {}, &acme_admin).unwrap())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = admin
        .list_shards(bearer(pb::ListShardsRequest {}, &acme_admin).unwrap())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // Its own tenant's webhooks, and the status, it still may.
    WebhookServiceClient::new(cluster.node(guarded).channel().await.unwrap())
        .list_webhooks(
            bearer(
                pb::ListWebhooksRequest {
                    tenant: "acme".into(),
                },
                &acme_admin,
            )
            .unwrap(),
        )
        .await
        .unwrap();
    admin
        .node_status(bearer(pb::NodeStatusRequest {}, &acme_admin).unwrap())
        .await
        .unwrap();
    assert!(
        !cluster.member(0, 0).await.unwrap().drain_requested,
        "a tenant's admin drained a node"
    );

    admin.drain_node(drain(&sre)).await.unwrap();
    assert!(cluster.member(0, 0).await.unwrap().drain_requested);
    let members = admin
        .list_members(bearer(pb::ListMembersRequest {}, &sre).unwrap())
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(members.len(), 2, "{members:?}");
    let undrained = admin
        .undrain_node(undrain(&sre))
        .await
        .unwrap()
        .into_inner();
    assert!(undrained.was_drained);
}

/// `"*"` grants every tenant in a credential and names none in a request;
/// the webhook service is held to `max_message_bytes` like the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_every_tenant_name_is_no_tenant_and_webhook_messages_are_bounded() {
    let Setup {
        dir: _dir,
        signer,
        node,
        ..
    } = setup(NodeOptions::default().arg("--max-message-bytes", 16 * 1024)).await;
    let sre = signer.token("sre", &["*"], &["admin", "writer"]).unwrap();
    let mut webhooks = WebhookServiceClient::new(node.channel().await.unwrap());
    let add = |tenant: &str, url: String| {
        bearer(
            pb::AddWebhookRequest {
                tenant: tenant.into(),
                url,
                ..Default::default()
            },
            &sre,
        )
        .unwrap()
    };
    let reserved = webhooks
        .add_webhook(add("*", "http://hooks.example.com/x".into()))
        .await
        .unwrap_err();
    assert_eq!(reserved.code(), Code::InvalidArgument, "{reserved:?}");
    assert!(reserved.message().contains("reserved"), "{reserved:?}");
    let stock = adjust(
        &mut inventory(&node).await,
        &sre,
        &key("*", "SKU-1", "DC1"),
        "star-1",
    )
    .await
    .unwrap_err();
    assert_eq!(stock.code(), Code::InvalidArgument, "{stock:?}");

    // Past max_message_bytes, refused by the decoder before any handler.
    let long = format!("https://hooks.example.com/{}", "x".repeat(32 * 1024));
    let oversized = webhooks.add_webhook(add("acme", long)).await.unwrap_err();
    assert_eq!(oversized.code(), Code::OutOfRange, "{oversized:?}");
}

/// How long a change of the JWKS file may take to be seen (the node looks
/// every second).
const RELOAD_WITHIN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_set_is_used_without_a_restart_and_a_broken_one_is_not() {
    let Setup {
        dir: _dir,
        jwks,
        signer,
        node,
    } = setup(NodeOptions::default()).await;
    let mut client = inventory(&node).await;
    let acme = key("acme", "SKU-1", "DC1");
    let pid = node.pid();
    let old = signer.token("svc-pos", &["acme"], &["reader"]).unwrap();
    let new_key = SigningKey::new("k2").unwrap();
    let new = new_key.token("svc-pos", &["acme"], &["reader"]).unwrap();
    let works = |status: Result<pb::GetPositionResponse, Status>| {
        status.map_or_else(|status| status.code() == Code::NotFound, |_| true)
    };
    assert!(works(get_position(&mut client, Some(&old), &acme).await));
    assert!(!works(get_position(&mut client, Some(&new), &acme).await));

    // The new key added, the old one removed, as a rotation does it.
    write_jwks(&jwks, &[&new_key]).unwrap();
    let deadline = Instant::now() + RELOAD_WITHIN;
    while !works(get_position(&mut client, Some(&new), &acme).await) {
        assert!(Instant::now() < deadline, "the new key was not taken");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = get_position(&mut client, Some(&old), &acme)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // A broken file keeps the last good set, and says so without quoting it.
    skuld_tests::certs::write_replacing(&jwks, "{\"keys\": \"s3cret-key-material\"").unwrap();
    let deadline = Instant::now() + RELOAD_WITHIN;
    while !node.log().contains("keeping the last good key set") {
        assert!(
            Instant::now() < deadline,
            "the broken file was not reported"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(works(get_position(&mut client, Some(&new), &acme).await));
    assert!(!node.log().contains("s3cret-key-material"));
    assert_eq!(node.pid(), pid, "restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_over_its_quota_is_throttled_and_another_is_not() {
    let Setup {
        dir: _dir,
        signer,
        node,
        ..
    } = setup(
        NodeOptions::default()
            .arg("--tenant-requests-per-sec", 5)
            .arg("--tenant-burst", 5),
    )
    .await;
    let mut client = inventory(&node).await;
    let token = signer
        .token("svc-pos", &["acme", "globex"], &["reader"])
        .unwrap();
    let availability = |tenant: &str| {
        bearer(
            pb::GetAvailabilityRequest {
                tenant: tenant.into(),
                sku: "SKU-1".into(),
                locations: vec!["DC1".into()],
            },
            &token,
        )
        .unwrap()
    };
    let mut throttled = None;
    for _ in 0..40 {
        match client.get_availability(availability("acme")).await {
            Ok(_) => {}
            Err(status) => {
                throttled = Some(status);
                break;
            }
        }
    }
    let status = throttled.expect("40 calls in a row were never throttled");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let hint: u64 = status
        .metadata()
        .get("retry-after-ms")
        .expect("no retry-after-ms")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1_000).contains(&hint), "{hint}");
    let retry = status.get_details_retry_info().expect("no RetryInfo");
    assert_eq!(retry.retry_delay, Some(Duration::from_millis(hint)));
    // The other tenant is not held back by the first one's burst.
    client
        .get_availability(availability("globex"))
        .await
        .unwrap();
    // And acme's budget comes back after the hint.
    tokio::time::sleep(Duration::from_millis(hint + 50)).await;
    client.get_availability(availability("acme")).await.unwrap();
    let metrics = scrape(&node).await;
    assert!(metrics.or_zero("skuld_tenant_throttled_total", &[("tenant", "acme")]) >= 1.0);
    assert_eq!(
        metrics.or_zero("skuld_tenant_throttled_total", &[("tenant", "globex")]),
        0.0
    );
}

fn cli(node: &TestNode) -> std::process::Command {
    let mut command = std::process::Command::new(skuld_tests::skuld_binary().unwrap());
    command
        .args(["--endpoint", &format!("http://{}", node.grpc_addr())])
        .env_remove("SKULD_TOKEN")
        .env_remove("SKULD_TOKEN_FILE");
    command
}

fn adjust_args(idempotency_key: &str) -> [&str; 14] {
    [
        "adjust",
        "--tenant",
        "acme",
        "--sku",
        "SKU-CLI",
        "--location",
        "DC1",
        "--bucket",
        "available",
        "--delta",
        "1",
        "--reason",
        "receipt",
        idempotency_key,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_its_token_from_a_flag_the_environment_or_a_file() {
    let Setup {
        dir, signer, node, ..
    } = setup(NodeOptions::default()).await;
    let token = signer.token("ops-cli", &["acme"], &["writer"]).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();

    let run = |command: &mut std::process::Command| {
        let output = command.output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(!text.contains(&token), "the token was printed: {text}");
        (output.status.success(), text)
    };
    let (ok, text) = run(cli(&node)
        .args(adjust_args("--idempotency-key=none"))
        .arg("--json"));
    assert!(!ok && text.contains("UNAUTHENTICATED"), "{text}");
    let (ok, text) = run(cli(&node)
        .args(["--token", &token])
        .args(adjust_args("--idempotency-key=flag")));
    assert!(ok, "{text}");
    let (ok, text) = run(cli(&node)
        .env("SKULD_TOKEN", &token)
        .args(adjust_args("--idempotency-key=env")));
    assert!(ok, "{text}");
    let (ok, text) = run(cli(&node)
        .arg("--token-file")
        .arg(&token_file)
        .args(adjust_args("--idempotency-key=file")));
    assert!(ok, "{text}");
    // --help shows the variable, never its value.
    let (_, help) = run(cli(&node).env("SKULD_TOKEN", &token).arg("--help"));
    assert!(help.contains("SKULD_TOKEN"), "{help}");

    let mut client = inventory(&node).await;
    let position = get_position(&mut client, Some(&token), &key("acme", "SKU-CLI", "DC1"))
        .await
        .unwrap()
        .position
        .unwrap();
    assert_eq!(position.version, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_set_or_identities_every_call_is_allowed() {
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(&dir.node_dir("node"), NodeOptions::default())
        .await
        .unwrap();
    let mut client = inventory(&node).await;
    client
        .adjust(receive(&key("anyone", "SKU-1", "DC1"), "open-1", 1))
        .await
        .unwrap();
    let mut admin = AdminServiceClient::new(node.channel().await.unwrap());
    let single = admin
        .drain_node(pb::DrainNodeRequest {
            node_id: "node".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(single.code(), Code::FailedPrecondition);
}

/// A TLS channel to `node` trusting `ca`, presenting `identity`.
async fn tls_channel(node: &TestNode, ca: &TestCa, identity: Option<&CertFiles>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("127.0.0.1");
    if let Some(files) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&files.cert).unwrap(),
            std::fs::read(&files.key).unwrap(),
        ));
    }
    Channel::from_shared(format!("https://{}", node.grpc_addr()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_the_identity_configured_for_its_name() {
    let dir = TestDir::new().unwrap();
    let ca = TestCa::new("client API CA").unwrap();
    let server = ca
        .issue(
            &Leaf::new("skuld", &["127.0.0.1", "localhost"]),
            dir.path(),
            "server",
        )
        .unwrap();
    let wms = ca
        .issue(
            &Leaf::new("svc-wms", &["svc-wms.acme.internal"]),
            dir.path(),
            "wms",
        )
        .unwrap();
    let unknown = ca
        .issue(
            &Leaf::new("svc-unknown", &["unknown.internal"]),
            dir.path(),
            "unknown",
        )
        .unwrap();
    let jwks = dir.path().join("jwks.json");
    let signer = SigningKey::new("k1").unwrap();
    write_jwks(&jwks, &[&signer]).unwrap();
    let config = dir.path().join("skuld.toml");
    std::fs::write(
        &config,
        "[identities.\"svc-wms.acme.internal\"]\ntenants = [\"acme\"]\nroles = [\"reader\"]\n",
    )
    .unwrap();
    let node = node_with_jwks(
        &dir,
        &jwks,
        NodeOptions::default()
            .arg("--config", config.display())
            .arg("--tls-cert-file", server.cert.display())
            .arg("--tls-key-file", server.key.display())
            .arg("--tls-client-ca-file", server.ca.display()),
    )
    .await;
    let acme = key("acme", "SKU-1", "DC1");

    let mut as_wms = InventoryServiceClient::new(tls_channel(&node, &ca, Some(&wms)).await);
    // A reader of acme: reads, cannot write, cannot read globex.
    let read = as_wms.get_position(get(&acme)).await.unwrap_err();
    assert_eq!(read.code(), Code::NotFound, "{read:?}");
    let write = as_wms.adjust(receive(&acme, "wms-1", 1)).await.unwrap_err();
    assert_eq!(write.code(), Code::PermissionDenied);
    let other = as_wms
        .get_position(get(&key("globex", "SKU-1", "DC1")))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    // A token sent over the same connection decides instead.
    let writer = signer.token("svc-oms", &["acme"], &["writer"]).unwrap();
    as_wms
        .adjust(bearer(receive(&acme, "oms-1", 1), &writer).unwrap())
        .await
        .unwrap();
    let bad = as_wms
        .get_position(bearer(get(&acme), "not-a-jwt").unwrap())
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::Unauthenticated);

    // A certificate of the CA that maps to no identity, or none at all.
    for identity in [Some(&unknown), None] {
        let mut client = InventoryServiceClient::new(tls_channel(&node, &ca, identity).await);
        let status = client.get_position(get(&acme)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{identity:?}");
    }
}
