//! The JSON door against the real binary: one scripted sequence of
//! inventory calls run over gRPC on one SKU and over HTTP/JSON on
//! another gives the same replies, the same refusals (code, HTTP status,
//! detail types) and the same stored positions; then what only the door
//! can get wrong: malformed or unknown input (400, nothing stored),
//! unknown services and methods (404), a streaming method (501), the
//! content type (415), headers carried as metadata (correlation id, an
//! `Idempotency-Key` header) and a call to each other public service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use skuld_proto::v1 as pb;
use skuld_tests::requests::{get, key, receive, reserve};
use skuld_tests::{NodeOptions, TestDir, TestNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP answer: status, headers (lower-case names) and the body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The reply as the generated type (its pbjson serde reads ProtoJSON).
    fn reply<T: serde::de::DeserializeOwned>(&self) -> T {
        assert_eq!(
            self.status,
            200,
            "expected 200, got {}: {}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// `POST path` with `body` over HTTP/1.1 (the door's clients are curl
/// and REST tools, not a gRPC stack).
async fn post(node: &TestNode, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let addr = node.http_addr();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
    {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut raw),
    )
    .await
    .expect("the door answers within 10 s")
    .unwrap();
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("an HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    assert!(
        !headers
            .iter()
            .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked")),
        "the door's answers have a length"
    );
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

async fn door(node: &TestNode, method: &str, body: &Value) -> Answer {
    post(
        node,
        &format!("/skuld.v1.InventoryService/{method}"),
        &[],
        body.to_string().as_bytes(),
    )
    .await
}

/// The ProtoJSON of a request built for gRPC, as a JSON client would
/// send it.
fn as_json<T: serde::Serialize>(request: &T) -> Value {
    serde_json::to_value(request).unwrap()
}

/// What a refusal is made of, over either door: the code, and the
/// google.rpc detail types it carries.
#[derive(Debug, PartialEq)]
struct Refused {
    code: String,
    details: Vec<String>,
}

fn refused_grpc(status: &tonic::Status) -> Refused {
    use prost::Message as _;
    let details = if status.details().is_empty() {
        Vec::new()
    } else {
        tonic_types::pb::Status::decode(status.details())
            .unwrap()
            .details
            .iter()
            .map(|any| any.type_url.rsplit('/').next().unwrap().to_owned())
            .collect()
    };
    Refused {
        code: skuld_proto::code_name(status.code()).to_ascii_lowercase(),
        details,
    }
}

/// Checks the door's error body and HTTP status; returns its parts.
fn refused_json(answer: &Answer, http: u16) -> Refused {
    let body = answer.json();
    assert_eq!(answer.status, http, "HTTP status of {body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|text| !text.is_empty()),
        "{body}"
    );
    let details = body["details"].as_array().expect("details").clone();
    for detail in &details {
        assert!(
            detail["value"].as_str().is_some() && detail["debug"].is_object(),
            "detail without value or debug: {detail}"
        );
    }
    Refused {
        code: body["code"].as_str().unwrap().to_owned(),
        details: details
            .iter()
            .map(|detail| detail["type"].as_str().unwrap().to_owned())
            .collect(),
    }
}

/// The parts of a reply both doors must agree on, apart from the key.
fn same_outcome(grpc: &pb::MutationResponse, json: &pb::MutationResponse) {
    assert_eq!(grpc.version, json.version, "version");
    assert_eq!(grpc.buckets, json.buckets, "buckets");
    assert_eq!(grpc.granted_quantity, json.granted_quantity, "granted");
    assert_eq!(grpc.replayed, json.replayed, "replayed");
    let held = |reply: &pb::MutationResponse| {
        reply
            .reservation
            .as_ref()
            .map(|r| (r.reservation_id.clone(), r.quantity, r.state))
    };
    assert_eq!(held(grpc), held(json), "reservation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_door_answers_as_grpc_does() {
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(&dir.node_dir("node"), NodeOptions::default())
        .await
        .unwrap();
    let mut grpc = node.client().await.unwrap();
    let by_grpc = key("acme", "SKU-GRPC", "DC1");
    let by_json = key("acme", "SKU-JSON", "DC1");

    // 1. Goods received.
    let g = grpc
        .adjust(receive(&by_grpc, "receive-1", 10))
        .await
        .unwrap()
        .into_inner();
    let answer = door(
        &node,
        "Adjust",
        &as_json(&receive(&by_json, "receive-1", 10)),
    )
    .await;
    let j: pb::MutationResponse = answer.reply();
    same_outcome(&g, &j);
    assert_eq!(j.key.as_ref(), Some(&by_json));
    // Fields at their default are printed, int64 as strings, enums by name.
    let body = answer.json();
    assert_eq!(body["replayed"], json!(false), "{body}");
    assert_eq!(body["buckets"]["onHand"], json!("10"), "{body}");
    assert_eq!(body["buckets"]["reserved"], json!("0"), "{body}");

    // 2. A reservation with an idempotency key, 3. its retry (a replay),
    // 4. the key reused for another request.
    for (step, quantity) in [("reserve", 4), ("retry", 4)] {
        let g = grpc
            .reserve(reserve(&by_grpc, "cart-1", quantity, 900))
            .await
            .unwrap()
            .into_inner();
        let j: pb::MutationResponse = door(
            &node,
            "Reserve",
            &as_json(&reserve(&by_json, "cart-1", quantity, 900)),
        )
        .await
        .reply();
        same_outcome(&g, &j);
        assert_eq!(j.replayed, step == "retry", "{step}");
    }
    let g = grpc
        .reserve(reserve(&by_grpc, "cart-1", 5, 900))
        .await
        .unwrap_err();
    let j = door(
        &node,
        "Reserve",
        &as_json(&reserve(&by_json, "cart-1", 5, 900)),
    )
    .await;
    assert_eq!(refused_grpc(&g), refused_json(&j, 409));
    assert_eq!(refused_json(&j, 409).code, "already_exists");

    // 5. Beyond the stock: refused with the quantity available.
    let g = grpc
        .reserve(reserve(&by_grpc, "cart-2", 100, 900))
        .await
        .unwrap_err();
    let j = door(
        &node,
        "Reserve",
        &as_json(&reserve(&by_json, "cart-2", 100, 900)),
    )
    .await;
    let refusal = refused_json(&j, 400);
    assert_eq!(refused_grpc(&g), refusal);
    assert_eq!(refusal.code, "failed_precondition");
    assert_eq!(refusal.details, ["google.rpc.PreconditionFailure"]);
    assert_eq!(g.message(), j.json()["message"].as_str().unwrap());
    // And its retry gets the same recorded refusal.
    let again = door(
        &node,
        "Reserve",
        &as_json(&reserve(&by_json, "cart-2", 100, 900)),
    )
    .await;
    assert_eq!(refused_json(&again, 400), refusal);

    // 6. Bad input: a zero quantity.
    let g = grpc
        .reserve(reserve(&by_grpc, "cart-3", 0, 900))
        .await
        .unwrap_err();
    let j = door(
        &node,
        "Reserve",
        &as_json(&reserve(&by_json, "cart-3", 0, 900)),
    )
    .await;
    let refusal = refused_json(&j, 400);
    assert_eq!(refused_grpc(&g), refusal);
    assert_eq!(refusal.code, "invalid_argument");
    assert_eq!(refusal.details, ["google.rpc.BadRequest"]);

    // 7. A position never written.
    let unknown = key("acme", "SKU-NONE", "DC1");
    let g = grpc.get_position(get(&unknown)).await.unwrap_err();
    let j = door(&node, "GetPosition", &as_json(&get(&unknown))).await;
    assert_eq!(refused_grpc(&g), refused_json(&j, 404));

    // 8. The stored positions agree.
    let g = grpc
        .get_position(get(&by_grpc))
        .await
        .unwrap()
        .into_inner()
        .position
        .unwrap();
    let j: pb::GetPositionResponse = door(&node, "GetPosition", &as_json(&get(&by_json)))
        .await
        .reply();
    let j = j.position.unwrap();
    assert_eq!((g.version, &g.buckets), (j.version, &j.buckets));
    assert_eq!(j.version, 2, "receive and one reservation, nothing else");

    // Malformed JSON, an unknown field, a string for a number: 400
    // INVALID_ARGUMENT, and nothing stored.
    let reserve_json = as_json(&reserve(&by_json, "cart-9", 1, 900));
    let mut unknown_field = reserve_json.clone();
    unknown_field["quantitty"] = json!(1);
    let mut wrong_type = reserve_json.clone();
    wrong_type["quantity"] = json!("one");
    for body in [
        b"{\"header\": ".to_vec(),
        b"[1, 2]".to_vec(),
        format!("{reserve_json} trailing").into_bytes(),
        unknown_field.to_string().into_bytes(),
        wrong_type.to_string().into_bytes(),
    ] {
        let answer = post(&node, "/skuld.v1.InventoryService/Reserve", &[], &body).await;
        let refusal = refused_json(&answer, 400);
        assert_eq!(
            refusal.code,
            "invalid_argument",
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    let after: pb::GetPositionResponse = door(&node, "GetPosition", &as_json(&get(&by_json)))
        .await
        .reply();
    assert_eq!(
        after.position.unwrap().version,
        2,
        "a refused body stored nothing"
    );

    // Size: a body past the door's bound (4 x max_message_bytes) is
    // refused unread; one under it whose message is past the gRPC side's
    // max_message_bytes meets that limit, as a gRPC client would.
    let tenant = |len: usize| format!("{{\"tenant\": \"{}\"}}", "a".repeat(len));
    let answer = post(
        &node,
        "/skuld.v1.ReturnsService/ListReturns",
        &[],
        tenant(5 << 20).as_bytes(),
    )
    .await;
    assert_eq!(answer.status, 413);
    let answer = post(
        &node,
        "/skuld.v1.ReturnsService/ListReturns",
        &[],
        tenant(2 << 20).as_bytes(),
    )
    .await;
    assert_eq!(refused_json(&answer, 400).code, "out_of_range");

    // Routing: unknown service or method 404, the internal peer API is not
    // reachable, a streaming method 501, a non-JSON body 415.
    for path in [
        "/skuld.v1.NoSuchService/Reserve",
        "/skuld.v1.InventoryService/NoSuchMethod",
        "/skuld.internal.v1.PeerService/Forward",
        "/grpc.health.v1.Health/Check",
    ] {
        let answer = post(&node, path, &[], b"{}").await;
        assert_eq!(refused_json(&answer, 404).code, "not_found", "{path}");
    }
    let answer = post(&node, "/skuld.v1.EventService/Subscribe", &[], b"{}").await;
    assert_eq!(refused_json(&answer, 501).code, "unimplemented");
    let answer = post(
        &node,
        "/skuld.v1.InventoryService/GetPosition",
        &[("Content-Type", "application/grpc")],
        b"{}",
    )
    .await;
    assert_eq!(answer.status, 415);

    // Headers: the correlation id goes in as metadata and comes back;
    // an Idempotency-Key header stands in for the body's key (its retry
    // replays).
    let mut keyless = as_json(&receive(&by_json, "", 5));
    keyless["header"]
        .as_object_mut()
        .unwrap()
        .remove("idempotencyKey");
    let headers = [
        ("Idempotency-Key", "receive-by-header"),
        ("X-Correlation-Id", "pos-till-7"),
    ];
    let first = post(
        &node,
        "/skuld.v1.InventoryService/Adjust",
        &headers,
        keyless.to_string().as_bytes(),
    )
    .await;
    assert_eq!(first.header("x-correlation-id"), Some("pos-till-7"));
    let first: pb::MutationResponse = first.reply();
    let retry: pb::MutationResponse = post(
        &node,
        "/skuld.v1.InventoryService/Adjust",
        &headers,
        keyless.to_string().as_bytes(),
    )
    .await
    .reply();
    assert_eq!((first.version, first.replayed), (3, false));
    assert_eq!((retry.version, retry.replayed), (3, true));
    // Without any key, the service's own validation refuses it.
    let answer = post(
        &node,
        "/skuld.v1.InventoryService/Adjust",
        &[],
        keyless.to_string().as_bytes(),
    )
    .await;
    assert_eq!(refused_json(&answer, 400).code, "invalid_argument");

    // Every other public service answers through the door.
    let answer = post(&node, "/skuld.v1.RoutingService/GetShardMap", &[], b"").await;
    let map: pb::GetShardMapResponse = answer.reply();
    assert_eq!(map.shard_count, 1);
    let answer = post(
        &node,
        "/skuld.v1.ReturnsService/ListReturns",
        &[],
        br#"{"tenant": "acme"}"#,
    )
    .await;
    let _: pb::ListReturnsResponse = answer.reply();
    let answer = post(
        &node,
        "/skuld.v1.ReturnsService/GetReturn",
        &[],
        br#"{"key": {"tenant": "acme", "returnId": "RMA-NONE"}}"#,
    )
    .await;
    assert_eq!(refused_json(&answer, 404).code, "not_found");
}

/// Authorization travels as the `authorization` metadata: the door
/// passes no caller of its own, so the gRPC side's authentication and
/// role checks decide, with the same codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_door_authenticates_as_grpc_does() {
    use skuld_tests::tokens::{write_jwks, SigningKey, ISSUER};
    let dir = TestDir::new().unwrap();
    let jwks = dir.path().join("jwks.json");
    let signer = SigningKey::new("k1").unwrap();
    write_jwks(&jwks, &[&signer]).unwrap();
    let node = TestNode::start(
        &dir.node_dir("node"),
        NodeOptions::default()
            .arg("--jwks-file", jwks.display())
            .arg("--jwt-issuers", ISSUER),
    )
    .await
    .unwrap();
    let acme = key("acme", "SKU-1", "DC1");
    let receive_body = as_json(&receive(&acme, "receive-1", 5)).to_string();
    let adjust = "/skuld.v1.InventoryService/Adjust";

    let answer = post(&node, adjust, &[], receive_body.as_bytes()).await;
    assert_eq!(refused_json(&answer, 401).code, "unauthenticated");
    assert!(answer.header("www-authenticate").is_some());

    let reader = format!(
        "Bearer {}",
        signer.token("svc-pos", &["acme"], &["reader"]).unwrap()
    );
    let answer = post(
        &node,
        adjust,
        &[("Authorization", &reader)],
        receive_body.as_bytes(),
    )
    .await;
    assert_eq!(refused_json(&answer, 403).code, "permission_denied");

    let stranger = format!(
        "Bearer {}",
        signer
            .token("svc-globex", &["globex"], &["writer"])
            .unwrap()
    );
    let answer = post(
        &node,
        adjust,
        &[("Authorization", &stranger)],
        receive_body.as_bytes(),
    )
    .await;
    assert_eq!(refused_json(&answer, 403).code, "permission_denied");

    let writer = format!(
        "Bearer {}",
        signer.token("svc-oms", &["acme"], &["writer"]).unwrap()
    );
    let reply: pb::MutationResponse = post(
        &node,
        adjust,
        &[("Authorization", &writer)],
        receive_body.as_bytes(),
    )
    .await
    .reply();
    assert_eq!(reply.version, 1);
}
