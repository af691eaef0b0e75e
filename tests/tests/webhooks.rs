//! Outbound webhooks against a local receiver that fails, delays, throttles
//! with Retry-After and answers 410: every event is delivered at least
//! once, each key's events in order, every signature verifies with an
//! independent HMAC implementation (the `hmac-sha256` crate, not the one
//! skuld signs with), a 410 disables its endpoint, and events given up on
//! become dead letters that replay with their original webhook-id.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use skuld_proto::v1 as pb;
use skuld_proto::v1::webhook_service_client::WebhookServiceClient;
use skuld_tests::events::{self, From};
use skuld_tests::requests::{key, receive, reserve};
use skuld_tests::{NodeOptions, TestDir, TestNode};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    mode: String,
    id: String,
    at: Instant,
    verified: bool,
    subject: String,
    version: u64,
    index: u64,
    delivered: bool,
    /// Received after the down endpoint recovered (the replay).
    replay: bool,
}

#[derive(Default)]
struct Receiver {
    received: Mutex<Vec<Received>>,
    /// whsec_ secret of each mode's endpoint.
    secrets: Mutex<BTreeMap<String, String>>,
    /// The "down" endpoint answers 200 from now on.
    recovered: AtomicBool,
}

/// Standard Webhooks verification, written here with another HMAC crate.
fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let mut signed =
        format!("{}.{}.", header("webhook-id"), header("webhook-timestamp")).into_bytes();
    signed.extend_from_slice(body);
    let expected = format!(
        "v1,{}",
        STANDARD.encode(hmac_sha256::HMAC::mac(&signed, &key))
    );
    let timestamp: i64 = header("webhook-timestamp").parse().unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (now - timestamp).abs() < 300
        && header("webhook-signature")
            .split(' ')
            .any(|candidate| candidate == expected)
}

async fn hook(
    State(receiver): State<Arc<Receiver>>,
    Path(mode): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let secret = receiver.secrets.lock().unwrap().get(&mode).cloned();
    let verified = secret.is_some_and(|secret| verify(&secret, &headers, &body));
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let attempts = receiver
        .received
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.mode == mode && r.id == id)
        .count();
    let (status, retry_after) = match mode.as_str() {
        "flaky" if attempts < 2 => (StatusCode::INTERNAL_SERVER_ERROR, None),
        "throttle" if attempts == 0 => (StatusCode::TOO_MANY_REQUESTS, Some("1")),
        "gone" => (StatusCode::GONE, None),
        "down" if !receiver.recovered.load(Ordering::Acquire) => {
            (StatusCode::SERVICE_UNAVAILABLE, None)
        }
        _ => (StatusCode::OK, None),
    };
    if mode == "flaky" {
        tokio::time::sleep(Duration::from_millis(u64::from(body.len() as u8 % 40))).await;
    }
    receiver.received.lock().unwrap().push(Received {
        mode,
        id,
        at: Instant::now(),
        verified,
        subject: event["subject"].as_str().unwrap_or("").to_owned(),
        version: event["skuldversion"].as_u64().unwrap_or(0),
        index: event["skuldindex"].as_u64().unwrap_or(0),
        delivered: status.is_success(),
        replay: receiver.recovered.load(Ordering::Acquire),
    });
    let mut response = status.into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", seconds.parse().unwrap());
    }
    response
}

async fn start_receiver() -> (Arc<Receiver>, String) {
    let receiver = Arc::new(Receiver::default());
    let app = axum::Router::new()
        .route("/hook/{mode}", axum::routing::post(hook))
        .with_state(Arc::clone(&receiver));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (receiver, format!("http://{address}"))
}

fn delivered_ids(receiver: &Receiver, mode: &str) -> BTreeSet<String> {
    receiver
        .received
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.mode == mode && r.delivered)
        .map(|r| r.id.clone())
        .collect()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_deliver_in_key_order_signed_through_failures_throttling_gone_and_dead_letters() {
    let (receiver, base) = start_receiver().await;
    let dir = TestDir::new().unwrap();
    let options = NodeOptions::default()
        .env("SKULD_WEBHOOK_RETRY_BASE_MS", 50)
        .env("SKULD_WEBHOOK_RETRY_CAP_SECS", 1)
        .env("SKULD_WEBHOOK_RETRY_HORIZON_SECS", 10);
    let node = TestNode::start(&dir.node_dir("node"), options)
        .await
        .unwrap();
    let mut webhooks = WebhookServiceClient::new(node.channel().await.unwrap());
    let mut ids = BTreeMap::new();
    for (mode, tenant) in [
        ("ok", "acme"),
        ("flaky", "acme"),
        ("throttle", "acme"),
        ("gone", "acme"),
        ("down", "acme"),
        ("other", "other"),
    ] {
        let added = webhooks
            .add_webhook(pb::AddWebhookRequest {
                tenant: tenant.into(),
                url: format!("{base}/hook/{mode}"),
                type_prefixes: Vec::new(),
                rate_per_second: 200,
                secret: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        receiver
            .secrets
            .lock()
            .unwrap()
            .insert(mode.into(), added.secret);
        ids.insert(mode, added.webhook.unwrap().id);
    }
    // Bad input is refused and stores nothing.
    for (url, secret) in [
        ("https://example.com/hook", ""),
        ("not a url", ""),
        ("http://127.0.0.1:1/x", "whsec_short"),
    ] {
        let status = webhooks
            .add_webhook(pb::AddWebhookRequest {
                tenant: "acme".into(),
                url: url.into(),
                secret: secret.into(),
                ..pb::AddWebhookRequest::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{url}: {status:?}"
        );
    }

    // Changes on three positions, several per key.
    let mut inventory = node.client().await.unwrap();
    for index in 0..3 {
        let position = key("acme", &format!("SKU-{index}"), "DC1");
        inventory
            .adjust(receive(&position, &format!("stock-{index}"), 10))
            .await
            .unwrap();
        for hold in 0..3 {
            let id = format!("hold-{index}-{hold}");
            inventory
                .reserve(pb::ReserveRequest {
                    reservation_id: id.clone(),
                    ..reserve(&position, &id, 1, 600)
                })
                .await
                .unwrap();
        }
    }
    let expected: BTreeSet<String> = events::read_all(
        node.channel().await.unwrap(),
        From::Start,
        Duration::from_millis(400),
    )
    .await
    .unwrap()
    .events
    .into_iter()
    .filter(|event| event.tenant == "acme")
    .map(|event| event.id)
    .collect();
    assert!(expected.len() >= 12, "{} events", expected.len());

    for mode in ["ok", "flaky", "throttle"] {
        wait_for(mode, || delivered_ids(&receiver, mode) == expected).await;
    }
    // 410: the endpoint is disabled after its first attempt.
    wait_for("the 410 endpoint disabled", || {
        receiver
            .received
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.mode == "gone")
    })
    .await;
    let mut disabled = false;
    for _ in 0..50 {
        let listed = webhooks
            .list_webhooks(pb::ListWebhooksRequest {
                tenant: "acme".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let gone = listed
            .webhooks
            .iter()
            .find(|w| w.id == ids["gone"])
            .unwrap();
        if !gone.enabled {
            assert!(gone.disabled_reason.contains("410"), "{gone:?}");
            disabled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(disabled, "the endpoint that answered 410 is still enabled");
    // Only the attempts in flight when the first 410 came back (one per
    // key of the window: three), and none after.
    let gone_attempts = || {
        receiver
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.mode == "gone")
            .count()
    };
    let at_disable = gone_attempts();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(at_disable <= 3, "{at_disable} attempts at a 410 endpoint");
    assert_eq!(
        gone_attempts(),
        at_disable,
        "a disabled endpoint kept receiving"
    );

    // Past the retry horizon, the down endpoint's events are dead letters.
    let mut letters = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while letters.len() < expected.len() {
        assert!(
            Instant::now() < deadline,
            "only {} dead letters",
            letters.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        letters = webhooks
            .list_dead_letters(pb::ListDeadLettersRequest {
                webhook_id: ids["down"].clone(),
                page_size: 1000,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .dead_letters;
    }
    // The horizon counts from each event's commit: the first event of a key
    // was retried until then, the ones queued behind it were already past
    // it and got one attempt each.
    assert!(letters
        .iter()
        .all(|l| l.attempts >= 1 && l.last_error == "HTTP 503"));
    assert!(letters.iter().any(|l| l.attempts >= 3), "{letters:?}");
    receiver.recovered.store(true, Ordering::Release);
    let replayed = webhooks
        .replay_dead_letters(pb::ReplayDeadLettersRequest {
            webhook_id: ids["down"].clone(),
            event_ids: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (replayed.delivered, replayed.failed),
        (expected.len() as u32, 0)
    );
    assert_eq!(
        delivered_ids(&receiver, "down"),
        expected,
        "replays keep their webhook-id"
    );
    let after = webhooks
        .list_dead_letters(pb::ListDeadLettersRequest {
            webhook_id: ids["down"].clone(),
            ..pb::ListDeadLettersRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(after.dead_letters.is_empty(), "{after:?}");

    let received = receiver.received.lock().unwrap().clone();
    // Signed, every one; the other tenant's endpoint heard nothing of acme.
    assert!(
        received.iter().all(|r| r.verified),
        "a signature did not verify"
    );
    assert!(received.iter().all(|r| r.mode != "other"));
    // Per key, never an attempt at an event before the one before it was
    // delivered: the (version, index) of attempts never goes back.
    // The down endpoint's replay is a pass of its own, in order again.
    for (mode, replay) in [
        ("ok", false),
        ("flaky", false),
        ("throttle", false),
        ("down", false),
        ("down", true),
    ] {
        let mut last: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for r in received
            .iter()
            .filter(|r| r.mode == mode && r.replay == replay)
        {
            let place = (r.version, r.index);
            if let Some(previous) = last.insert(r.subject.as_str(), place) {
                assert!(
                    place >= previous,
                    "{mode}: {} went from {previous:?} to {place:?}",
                    r.subject
                );
            }
        }
    }
    // Retry-After: 1 was honoured.
    for id in &expected {
        let attempts: Vec<Instant> = received
            .iter()
            .filter(|r| r.mode == "throttle" && &r.id == id)
            .map(|r| r.at)
            .collect();
        assert!(attempts.len() >= 2);
        assert!(
            attempts[1] - attempts[0] >= Duration::from_millis(900),
            "retried after {:?} despite Retry-After: 1",
            attempts[1] - attempts[0]
        );
    }
    let flaky_attempts = received.iter().filter(|r| r.mode == "flaky").count();
    assert_eq!(
        flaky_attempts,
        expected.len() * 3,
        "two failures and a success each"
    );
}
