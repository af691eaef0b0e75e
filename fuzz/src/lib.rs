//! Fuzz targets of what reaches a node from outside, in one place:
//!
//! * [`peer_payload`]: bytes another node (or anyone who reaches the peer
//!   port) sends as a forwarded request, through the one decode the peer
//!   API uses ([`decode_forwarded`], size-limited and validated) for every
//!   entity and operation, and the answers a node decodes from its peers;
//!   [`damaged_peer_payload`] starts from real encodings of every forwarded
//!   command type and damages them, to get past the first field.
//! * [`http_request`]: any method, path, query, headers and body through
//!   the HTTP port's router (`/healthz`, `/readyz`, `/metrics`, `/ops`,
//!   `/ops/cluster.json`), answered by a real single node's runtime.
//!
//! Each target panics on a bug (a panic in the code under it, or an answer
//! that breaks its contract) and returns on anything else. The tests at the
//! bottom run each for a bounded time on stable Rust under `cargo test`
//! (`SKULD_FUZZ_SECS`, default 8, per target) on random inputs; the same
//! functions are libFuzzer targets in `fuzz/fuzz` (coverage-guided, nightly:
//! `cd fuzz && cargo +nightly fuzz run peer_payload`, docs/security.md,
//! "Limits").

use std::sync::{Arc, OnceLock};

use skuld_actors::position::{
    AdjustmentReason, Bucket, Command, MutationReply, Owner, OwnerType, PositionEntity,
    PositionState,
};
use skuld_actors::returns::{
    Grade, InspectedLine, Label, OrderLine, ReceivedLine, RequestedLine, Requester, Resolution,
    ReturnCase, ReturnCommand, ReturnEntity, ReturnPolicy,
};
use skuld_actors::runtime::codec;
use skuld_actors::runtime::routing::Operation;
use skuld_actors::runtime::{decode_forwarded, Entity, Forwarded};
use skuld_actors::{Error, PositionKey, Refusal, ReturnKey};

/// A forwarded payload is served or refused as INVALID_ARGUMENT, never
/// anything else, and what passes is within the public API's limits.
fn forwarded<E: Entity>(operation: Operation, bytes: &[u8]) {
    match decode_forwarded::<E>(operation, bytes) {
        Ok(Forwarded::Mutate(mutation)) => {
            assert!(mutation.validate().is_ok(), "accepted, yet invalid");
        }
        Ok(Forwarded::Read(key)) => assert!(E::validate_key(&key).is_ok()),
        Err(Error::Refused(Refusal::InvalidArgument { .. })) => {}
        Err(other) => panic!("a malformed payload refused as {other:?}"),
    }
}

/// Every decoder of bytes a peer sends.
pub fn peer_payload(bytes: &[u8]) {
    for operation in [Operation::Mutate, Operation::Read] {
        forwarded::<PositionEntity>(operation, bytes);
        forwarded::<ReturnEntity>(operation, bytes);
    }
    // The answers a forwarding node decodes from the owner.
    let _ = codec::decode_limited::<(MutationReply, bool)>(bytes);
    let _ = codec::decode_limited::<PositionState>(bytes);
    let _ = codec::decode_limited::<(ReturnCase, bool)>(bytes);
    let _ = codec::decode_limited::<Error>(bytes);
    // Keys as stored (outbox rows and listings carry them).
    if let Some(key) = PositionKey::decode(bytes) {
        assert_eq!(key.encode(), bytes, "two encodings of one key");
    }
    if let Some(key) = ReturnKey::decode(bytes) {
        assert_eq!(key.encode(), bytes, "two encodings of one key");
    }
}

/// Real encodings of a forwarded request of every command type.
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let position = PositionKey {
            tenant: "acme".into(),
            sku: "SKU-1".into(),
            location: "DC1".into(),
        };
        let owner = Owner {
            kind: OwnerType::Cart,
            id: "cart-9".into(),
            line_id: String::new(),
        };
        let commands = [
            Command::Adjust {
                bucket: Bucket::Available,
                delta: 100,
                reason: AdjustmentReason::Receipt,
                change_from: Some(0),
                reference: "asn-1".into(),
            },
            Command::SetOnHand {
                on_hand: 5,
                reason: AdjustmentReason::CycleCount,
                counted_at_ms: 1,
                change_from: None,
                reference: String::new(),
            },
            Command::Move {
                from: Bucket::Available,
                to: Bucket::Damaged,
                quantity: 2,
                reason: AdjustmentReason::Damage,
                from_change_from: None,
                to_change_from: None,
                reference: String::new(),
            },
            Command::Reserve {
                reservation_id: "r-1".into(),
                quantity: 3,
                owner,
                channel: "web".into(),
                ttl_ms: 60_000,
                allow_partial: true,
            },
            Command::ExtendReservation {
                reservation_id: "r-1".into(),
                ttl_ms: 1_000,
            },
            Command::ReleaseReservation {
                reservation_id: "r-1".into(),
            },
            Command::CommitReservation {
                reservation_id: "r-1".into(),
                quantity: 0,
                order_ref: "o-1".into(),
            },
            Command::Fulfill {
                order_ref: "o-1".into(),
                quantity: 1,
            },
            Command::CancelCommitment {
                order_ref: "o-1".into(),
                quantity: 1,
                restock: true,
            },
        ];
        let mut seeds: Vec<Vec<u8>> = commands
            .iter()
            .filter_map(|command| codec::encode(&(&position, "idem-1", Some(3u64), command)).ok())
            .collect();
        let case = ReturnKey {
            tenant: "acme".into(),
            return_id: "R-1".into(),
        };
        let returns = [
            ReturnCommand::Open {
                order_ref: "O1".into(),
                customer_ref: "C1".into(),
                channel: "web".into(),
                requester: Requester::Customer,
                order_lines: vec![OrderLine {
                    line_id: "L1".into(),
                    sku: "SHIRT".into(),
                    quantity: 3,
                    amount_paid_minor: 9_000,
                    fulfilled_at_ms: 1,
                    delivered_at_ms: 2,
                    location: "DC1".into(),
                }],
                lines: vec![RequestedLine {
                    order_line_id: "L1".into(),
                    quantity: 2,
                    reason_code: "too_small".into(),
                    resolution: Resolution::Exchange,
                    exchange_sku: Some("SHIRT-L".into()),
                }],
                pre_approved: true,
                override_window: false,
                policy: ReturnPolicy::default(),
            },
            ReturnCommand::AttachLabel {
                label: Label {
                    carrier: "ups".into(),
                    tracking_number: "1Z".into(),
                    label_url: "http://labels/1".into(),
                },
            },
            ReturnCommand::Receive {
                lines: vec![ReceivedLine {
                    line_id: "L1".into(),
                    quantity: 1,
                    location: "DC2".into(),
                }],
                accept_surplus: true,
            },
            ReturnCommand::Inspect {
                lines: vec![InspectedLine {
                    line_id: "L1".into(),
                    quantity: 1,
                    grade: Grade::B,
                }],
            },
            ReturnCommand::ResolveException {
                exception_id: 1,
                resolved_by: "ops".into(),
                note: "ok".into(),
            },
        ];
        seeds.extend(
            returns
                .iter()
                .filter_map(|command| codec::encode(&(&case, "idem-1", None::<u64>, command)).ok()),
        );
        seeds.extend(codec::encode(&position).ok());
        seeds.extend(codec::encode(&case).ok());
        seeds.push(position.encode());
        seeds.push(case.encode());
        seeds
    })
}

/// A real encoding (`seed` picks which), overwritten at the given offsets
/// and cut to `keep` bytes (0: whole), then every decoder of
/// [`peer_payload`].
pub fn damaged_peer_payload(seed: u8, edits: &[(u16, u8)], keep: u16) {
    let seeds = seeds();
    let mut bytes = seeds[usize::from(seed) % seeds.len()].clone();
    for (at, value) in edits {
        let len = bytes.len().max(1);
        if let Some(byte) = bytes.get_mut(usize::from(*at) % len) {
            *byte = *value;
        }
    }
    if keep > 0 {
        bytes.truncate(usize::from(keep));
    }
    peer_payload(&bytes);
}

/// A single node's runtime behind the HTTP router, built once.
struct HttpApp {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

fn http_app() -> &'static HttpApp {
    static APP: OnceLock<HttpApp> = OnceLock::new();
    APP.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|error| panic!("no runtime: {error}"));
        let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("no temp dir: {error}"));
        let router = runtime.block_on(async {
            let config = skuld_node::config::Config::default();
            let store: Arc<dyn skuld_cluster::Store> = Arc::new(
                skuld_cluster::EmbeddedStore::open(dir.path())
                    .unwrap_or_else(|error| panic!("no store: {error}")),
            );
            let (writer, _task) =
                skuld_cluster::GroupCommitWriter::start(Arc::clone(&store), config.writer());
            let admission = Arc::new(config.admission());
            let positions = Arc::new(skuld_actors::runtime::EntityRuntime::new(
                config.positions(),
                Arc::clone(&store),
                writer.clone(),
                Arc::clone(&admission),
                config.runtime(skuld_cluster::WallClock::system()),
            ));
            let returns = Arc::new(skuld_actors::runtime::EntityRuntime::new(
                ReturnEntity::new(Arc::clone(&positions)),
                store,
                writer,
                Arc::clone(&admission),
                config.runtime(skuld_cluster::WallClock::system()),
            ));
            let readiness = skuld_node::readiness::Readiness {
                started: Arc::new(std::sync::atomic::AtomicBool::new(true)),
                membership: None,
                store_health: None,
            };
            let admin = Arc::new(skuld_node::admin_api::AdminApi {
                node_id: "fuzz".into(),
                cluster: None,
                admission,
                positions,
                returns,
                readiness: readiness.clone(),
            });
            skuld_node::http::router(readiness, None, admin)
        });
        HttpApp {
            runtime,
            router,
            _dir: dir,
        }
    })
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "BREW",
];
const PATHS: [&str; 8] = [
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/ops",
    "/ops/cluster.json",
    "/ops/",
    "//ops/../metrics",
];

/// One HTTP request through the router: a method (a known one, or a made
/// up one), a path (a known route with arbitrary bytes after it, or
/// arbitrary bytes), a query, headers and a body. Requests `http` cannot
/// represent are skipped: the server's HTTP parser refuses them first.
pub fn http_request(
    method: u8,
    path: &[u8],
    query: &[u8],
    headers: &[(Vec<u8>, Vec<u8>)],
    body: &[u8],
) {
    let app = http_app();
    let method = METHODS[usize::from(method) % METHODS.len()];
    let mut uri = match path.split_first() {
        Some((choice, rest)) if choice % 4 != 0 => {
            let mut uri = PATHS[usize::from(*choice) % PATHS.len()]
                .as_bytes()
                .to_vec();
            if choice % 3 == 0 {
                uri.extend_from_slice(rest);
            }
            uri
        }
        _ => path.to_vec(),
    };
    if !query.is_empty() {
        uri.push(b'?');
        uri.extend_from_slice(query);
    }
    let mut request = axum::http::Request::builder()
        .method(method)
        .uri(uri.as_slice());
    for (name, value) in headers {
        request = request.header(name.as_slice(), value.as_slice());
    }
    let Ok(request) = request.body(axum::body::Body::from(body.to_vec())) else {
        return;
    };
    let path = request.uri().path().to_owned();
    let get = request.method() == axum::http::Method::GET;
    let mut router = app.router.clone();
    let (status, body) = app.runtime.block_on(async move {
        use tower::Service as _;
        let response = match router.call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024).await;
        (status, body)
    });
    let body = body.unwrap_or_else(|error| panic!("{path}: the body did not arrive: {error}"));
    assert!(
        !status.is_server_error() || (path == "/readyz" && status.as_u16() == 503),
        "{method} {path}: {status}"
    );
    if get && path == "/ops/cluster.json" && status.is_success() {
        let snapshot: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|error| panic!("/ops/cluster.json is not JSON: {error}"));
        assert!(snapshot.get("node").is_some(), "{snapshot}");
    }
}

/// [`damaged_peer_payload`] from raw bytes (the libFuzzer harness): the
/// seed, then three bytes per edit (offset, value).
pub fn damaged_peer_payload_bytes(data: &[u8]) {
    let Some((seed, rest)) = data.split_first() else {
        return;
    };
    let edits: Vec<(u16, u8)> = rest
        .chunks_exact(3)
        .map(|edit| (u16::from_le_bytes([edit[0], edit[1]]), edit[2]))
        .collect();
    damaged_peer_payload(*seed, &edits, 0);
}

/// [`http_request`] from raw bytes (the libFuzzer harness): the method,
/// then path, query, header names and values and the body, split at 0xff
/// (a byte no header or URI may hold).
pub fn http_request_bytes(data: &[u8]) {
    let Some((method, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|byte| *byte == 0xff);
    let path = parts.next().unwrap_or_default();
    let query = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let rest: Vec<&[u8]> = parts.collect();
    let headers: Vec<(Vec<u8>, Vec<u8>)> = rest
        .chunks_exact(2)
        .map(|pair| (pair[0].to_vec(), pair[1].to_vec()))
        .collect();
    http_request(*method, path, query, &headers, body);
}

#[cfg(test)]
mod tests {
    //! Each target under `cargo test`, for a bounded time: random inputs
    //! from a seeded generator (bolero would do this and drive libFuzzer
    //! too, but its derive crate pins `indexmap` to one exact version for
    //! the whole workspace). A failing input is named by its case seed:
    //! `SKULD_FUZZ_CASE=<seed> cargo test -p skuld-fuzz <target>` runs it
    //! alone.

    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::time::{Duration, Instant};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Each target's time: `SKULD_FUZZ_SECS`, default 8.
    fn budget() -> Duration {
        let secs = std::env::var("SKULD_FUZZ_SECS")
            .ok()
            .and_then(|secs| secs.parse().ok())
            .unwrap_or(8);
        Duration::from_secs(secs)
    }

    /// Runs `one` on fresh random cases until the budget is spent.
    fn fuzz(target: &str, one: impl Fn(&mut StdRng)) {
        if let Some(case) = std::env::var("SKULD_FUZZ_CASE")
            .ok()
            .and_then(|case| case.parse::<u64>().ok())
        {
            one(&mut StdRng::seed_from_u64(case));
            return;
        }
        let mut seeds = StdRng::from_os_rng();
        let started = Instant::now();
        let mut inputs = 0u64;
        while started.elapsed() < budget() {
            let case: u64 = seeds.random();
            let result = catch_unwind(AssertUnwindSafe(|| one(&mut StdRng::seed_from_u64(case))));
            if result.is_err() {
                panic!("{target}: input {inputs} failed; run it alone with SKULD_FUZZ_CASE={case}");
            }
            inputs += 1;
        }
        eprintln!(
            "fuzz target {target}: {inputs} inputs in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    /// Random bytes, mostly short (where decoders branch most), with the
    /// varint markers of long lengths (0xfb..=0xfd) over-represented.
    fn bytes(rng: &mut StdRng) -> Vec<u8> {
        let len = match rng.random_range(0..10) {
            0..=4 => rng.random_range(0..32),
            5..=7 => rng.random_range(32..512),
            _ => rng.random_range(512..8_192),
        };
        (0..len)
            .map(|_| {
                if rng.random_ratio(1, 16) {
                    rng.random_range(0xfb..=0xfd)
                } else {
                    rng.random()
                }
            })
            .collect()
    }

    #[test]
    fn peer_payloads() {
        fuzz("peer_payloads", |rng| super::peer_payload(&bytes(rng)));
    }

    #[test]
    fn damaged_peer_payloads() {
        fuzz("damaged_peer_payloads", |rng| {
            let edits: Vec<(u16, u8)> = (0..rng.random_range(1..6))
                .map(|_| (rng.random(), rng.random()))
                .collect();
            let keep = if rng.random_ratio(1, 3) {
                rng.random_range(0..512)
            } else {
                0
            };
            super::damaged_peer_payload(rng.random(), &edits, keep);
        });
    }

    #[test]
    fn http_requests() {
        fuzz("http_requests", |rng| {
            let short = |rng: &mut StdRng| {
                let mut text = bytes(rng);
                text.truncate(rng.random_range(0..64));
                text
            };
            let headers: Vec<(Vec<u8>, Vec<u8>)> = (0..rng.random_range(0..4))
                .map(|_| (short(rng), short(rng)))
                .collect();
            let (path, query) = (short(rng), short(rng));
            super::http_request(rng.random(), &path, &query, &headers, &bytes(rng));
        });
    }
}
