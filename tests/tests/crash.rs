//! `kill -9` while 32 callers reserve: after a restart on the same data dir
//! every acknowledged reservation is there exactly once, `reserved` equals
//! the reservations held, no bucket is negative, and retries of acknowledged
//! requests are replays that change nothing. Requests whose outcome was
//! unknown (in flight at the kill) may or may not have been applied; retrying
//! them applies each at most once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use skuld_proto::v1 as pb;
use skuld_tests::events;
use skuld_tests::requests::{key, receive, reserve};
use skuld_tests::{check_buckets, position_with_all_reservations, NodeOptions, TestDir, TestNode};
use tokio::sync::Mutex;
use tonic::transport::Channel;

type Inventory = pb::inventory_service_client::InventoryServiceClient<Channel>;

const CALLERS: usize = 32;
const STOCK: i64 = 1_000_000;
const TTL_SECONDS: i64 = 3_600;

/// The reservation id is derived from the idempotency key.
fn reservation_id(idempotency_key: &str) -> String {
    format!("res-{idempotency_key}")
}

fn request(position: &pb::PositionKey, idempotency_key: &str) -> pb::ReserveRequest {
    pb::ReserveRequest {
        reservation_id: reservation_id(idempotency_key),
        ..reserve(position, idempotency_key, 1, TTL_SECONDS)
    }
}

#[derive(Default)]
struct Outcomes {
    /// idempotency key -> the version of the OK reply.
    acknowledged: BTreeMap<String, u64>,
    /// Sent, but no reply: the connection broke or the node refused.
    unknown: BTreeSet<String>,
}

/// Every active reservation as (id, quantity), checking that no id is listed
/// twice and that the buckets add up.
async fn held(
    client: &mut Inventory,
    position: &pb::PositionKey,
) -> (pb::Position, BTreeSet<String>) {
    let (state, reservations) = position_with_all_reservations(client, position)
        .await
        .unwrap();
    let buckets = state.buckets.unwrap();
    check_buckets(&buckets).unwrap();
    let mut ids = BTreeSet::new();
    for reservation in &reservations {
        assert!(
            ids.insert(reservation.reservation_id.clone()),
            "reservation {} listed twice",
            reservation.reservation_id
        );
        assert_eq!(reservation.quantity, 1, "{reservation:?}");
        assert_eq!(reservation.state(), pb::ReservationState::Active);
    }
    assert_eq!(
        buckets.reserved,
        ids.len() as i64,
        "reserved does not match the reservations held"
    );
    assert_eq!(buckets.on_hand, STOCK, "on_hand moved");
    assert_eq!(buckets.available, STOCK - buckets.reserved);
    (state, ids)
}

/// The outbox after the kill: every committed change has its events, in
/// the same commit, and no event exists for a change that was not
/// committed. The position's versions 1..=version each have their events,
/// each acknowledged reservation has exactly one `reservation.created`
/// event at its version, and no event names a request that did not apply.
async fn check_outbox(
    node: &TestNode,
    position: &pb::PositionKey,
    after: &pb::Position,
    acknowledged: &BTreeMap<String, u64>,
    unknown: &BTreeSet<String>,
    held: &BTreeSet<String>,
) {
    let delivered = events::read_all(
        node.channel().await.unwrap(),
        events::From::Start,
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    events::check_order(&delivered.events).unwrap();
    let versions: BTreeSet<u64> = delivered
        .events
        .iter()
        .map(|event| event.aggregate_version)
        .collect();
    assert_eq!(
        versions,
        (1..=after.version).collect::<BTreeSet<u64>>(),
        "the events' versions are not exactly the position's committed changes"
    );
    let mut created: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for event in &delivered.events {
        let applied = event.idempotency_key == "stock"
            || acknowledged.contains_key(&event.idempotency_key)
            || (unknown.contains(&event.idempotency_key)
                && held.contains(&reservation_id(&event.idempotency_key)));
        assert!(
            applied,
            "an event of a change that did not apply: {event:?}"
        );
        if event.r#type == "skuld.inventory.reservation.created.v1" {
            created
                .entry(event.idempotency_key.as_str())
                .or_default()
                .push(event.aggregate_version);
        }
    }
    for (idempotency_key, version) in acknowledged {
        assert_eq!(
            created.get(idempotency_key.as_str()),
            Some(&vec![*version]),
            "acknowledged {idempotency_key} has not exactly one creation event at its version"
        );
    }
    assert_eq!(
        events::history(node.channel().await.unwrap(), position)
            .await
            .unwrap()
            .len(),
        delivered.events.len(),
        "the position's history and the stream disagree"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_reservations_survive_kill_9_exactly_once() {
    let dir = TestDir::new().unwrap();
    let mut node = TestNode::start(&dir.node_dir("node"), NodeOptions::default())
        .await
        .unwrap();
    let position = key("acme", "FLASH-1", "DC1");
    let client = node.client().await.unwrap();
    client
        .clone()
        .adjust(receive(&position, "stock", STOCK))
        .await
        .unwrap();

    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for caller in 0..CALLERS {
        let mut client = client.clone();
        let position = position.clone();
        let (outcomes, stop) = (Arc::clone(&outcomes), Arc::clone(&stop));
        callers.push(tokio::spawn(async move {
            let mut sequence = 0u64;
            while !stop.load(Ordering::Relaxed) {
                sequence += 1;
                let idempotency_key = format!("c{caller}-{sequence}");
                let mut call = tonic::Request::new(request(&position, &idempotency_key));
                call.set_timeout(Duration::from_secs(5));
                match client.reserve(call).await {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        assert_eq!(reply.granted_quantity, 1);
                        assert!(!reply.replayed, "a fresh key was replayed");
                        assert_eq!(
                            reply.reservation.map(|r| r.reservation_id),
                            Some(reservation_id(&idempotency_key))
                        );
                        outcomes
                            .lock()
                            .await
                            .acknowledged
                            .insert(idempotency_key, reply.version);
                    }
                    Err(_) => {
                        outcomes.lock().await.unknown.insert(idempotency_key);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    node.kill9().unwrap();
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    drop(client);
    let Outcomes {
        acknowledged,
        unknown,
    } = std::mem::take(&mut *outcomes.lock().await);
    assert!(
        acknowledged.len() >= 100,
        "only {} reservations acknowledged in 2 s before the kill",
        acknowledged.len()
    );
    let mut versions: Vec<u64> = acknowledged.values().copied().collect();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(
        versions.len(),
        acknowledged.len(),
        "two acknowledged reservations got the same version"
    );

    node.restart().await.unwrap();
    let mut client = node.client().await.unwrap();
    let (after, ids) = held(&mut client, &position).await;
    let acknowledged_ids: BTreeSet<String> =
        acknowledged.keys().map(|k| reservation_id(k)).collect();
    let unknown_ids: BTreeSet<String> = unknown.iter().map(|k| reservation_id(k)).collect();
    let lost: Vec<_> = acknowledged_ids.difference(&ids).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged reservations lost after kill -9, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    let phantom: Vec<_> = ids
        .iter()
        .filter(|id| !acknowledged_ids.contains(*id) && !unknown_ids.contains(*id))
        .collect();
    assert!(
        phantom.is_empty(),
        "reservations nobody asked for: {phantom:?}"
    );
    let max_acknowledged = acknowledged.values().copied().max().unwrap_or(0);
    assert!(
        after.version >= max_acknowledged,
        "version went back from {max_acknowledged} to {}",
        after.version
    );
    check_outbox(&node, &position, &after, &acknowledged, &unknown, &ids).await;
    let unknown_applied = unknown_ids.intersection(&ids).count();
    eprintln!(
        "acknowledged {}, unknown outcome {} (of which {} applied, {} not), held {}, version {}",
        acknowledged.len(),
        unknown.len(),
        unknown_applied,
        unknown.len() - unknown_applied,
        ids.len(),
        after.version
    );

    // Retrying every acknowledged request is a replay with its first
    // version, and changes nothing.
    let replays: Vec<(String, Result<pb::MutationResponse, tonic::Status>)> =
        futures::stream::iter(acknowledged.keys().cloned())
            .map(|idempotency_key| {
                let mut client = client.clone();
                let position = position.clone();
                async move {
                    let reply = client
                        .reserve(request(&position, &idempotency_key))
                        .await
                        .map(tonic::Response::into_inner);
                    (idempotency_key, reply)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
    for (idempotency_key, reply) in replays {
        let reply = reply.unwrap_or_else(|status| {
            panic!("retry of acknowledged {idempotency_key} failed: {status:?}")
        });
        assert!(
            reply.replayed,
            "retry of acknowledged {idempotency_key} was applied again: {reply:?}"
        );
        assert_eq!(
            reply.version, acknowledged[&idempotency_key],
            "retry of {idempotency_key} replayed another version"
        );
    }
    let (after_retries, ids_after_retries) = held(&mut client, &position).await;
    assert_eq!(
        after_retries.version, after.version,
        "a replay changed the version"
    );
    assert_eq!(ids_after_retries, ids);

    // Retrying the requests of unknown outcome applies each at most once:
    // a replay if it was applied before the kill, a new reservation if not.
    let mut replayed = 0;
    for idempotency_key in &unknown {
        let reply = client
            .reserve(request(&position, idempotency_key))
            .await
            .unwrap_or_else(|status| panic!("retry of {idempotency_key}: {status:?}"))
            .into_inner();
        let was_applied = ids.contains(&reservation_id(idempotency_key));
        assert_eq!(
            reply.replayed, was_applied,
            "retry of {idempotency_key} (applied before the kill: {was_applied})"
        );
        replayed += usize::from(reply.replayed);
    }
    let (_, ids_final) = held(&mut client, &position).await;
    let all_ids: BTreeSet<String> = acknowledged_ids.union(&unknown_ids).cloned().collect();
    assert_eq!(
        ids_final, all_ids,
        "after retrying everything, each request holds exactly one reservation"
    );
    eprintln!(
        "retried {} unknown: {replayed} replayed, {} applied now",
        unknown.len(),
        unknown.len() - replayed
    );
}
