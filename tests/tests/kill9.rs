//! `kill -9` during concurrent reservations: after a restart every
//! acknowledged reservation is there exactly once, nothing is applied twice,
//! and no bucket is negative.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use skuld_proto::v1 as pb;
use skuld_tests::requests::{get, key, receive, reserve};
use skuld_tests::{NodeOptions, TestNode};
use tokio::sync::Mutex;

const CALLERS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_reservations_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(&dir.path().join("node"), NodeOptions::default())
        .await
        .unwrap();
    let position = key("acme", "FLASH-1", "DC1");
    let mut client = node.inventory().await.unwrap();
    client
        .adjust(receive(&position, "stock", 1_000_000))
        .await
        .unwrap();

    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let unknown = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for caller in 0..CALLERS {
        let mut client = client.clone();
        let position = position.clone();
        let (acknowledged, unknown, stop) = (
            Arc::clone(&acknowledged),
            Arc::clone(&unknown),
            Arc::clone(&stop),
        );
        callers.push(tokio::spawn(async move {
            let mut sequence = 0u64;
            while !stop.load(Ordering::Relaxed) {
                sequence += 1;
                let id = format!("c{caller}-{sequence}");
                let mut request = tonic::Request::new(reserve(&position, &id, 1, 3_600));
                request.set_timeout(Duration::from_secs(5));
                match client.reserve(request).await {
                    Ok(reply) => {
                        assert_eq!(reply.get_ref().granted_quantity, 1);
                        acknowledged.lock().await.insert(id);
                    }
                    Err(_) => {
                        // Connection lost mid-flight: the outcome is unknown.
                        unknown.lock().await.insert(id);
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
    let acknowledged = acknowledged.lock().await.clone();
    let unknown = unknown.lock().await.clone();
    assert!(
        acknowledged.len() >= 100,
        "only {} reservations acknowledged before the kill",
        acknowledged.len()
    );

    node.restart().await.unwrap();
    let mut client = node.inventory().await.unwrap();
    // Page through every active reservation.
    let mut held = BTreeSet::new();
    let mut listed = 0;
    let mut page_token = String::new();
    let position_after = loop {
        let request = pb::GetPositionRequest {
            key: Some(position.clone()),
            reservations_page_size: 1_000,
            reservations_page_token: page_token.clone(),
        };
        let page = client
            .get_position(request)
            .await
            .unwrap()
            .into_inner()
            .position
            .unwrap();
        listed += page.reservations.len();
        held.extend(page.reservations.iter().map(|r| r.reservation_id.clone()));
        if page.next_reservations_page_token.is_empty() {
            assert_eq!(page.active_reservations as usize, listed);
            break page;
        }
        page_token = page.next_reservations_page_token.clone();
    };
    assert_eq!(held.len(), listed, "a reservation id appears twice");
    let missing: Vec<_> = acknowledged.difference(&held).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged reservations lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let phantom: Vec<_> = held
        .iter()
        .filter(|id| !acknowledged.contains(*id) && !unknown.contains(*id))
        .collect();
    assert!(
        phantom.is_empty(),
        "reservations nobody asked for: {phantom:?}"
    );
    let buckets = position_after.buckets.unwrap();
    assert_eq!(buckets.reserved, held.len() as i64);
    assert_eq!(buckets.on_hand, 1_000_000);
    assert_eq!(buckets.available, 1_000_000 - buckets.reserved);
    assert!(buckets.available >= 0 && buckets.reserved >= 0);
    eprintln!(
        "acknowledged {}, unknown outcome {} (of which {} applied), held {}",
        acknowledged.len(),
        unknown.len(),
        unknown.intersection(&held).count(),
        held.len()
    );

    // Retrying acknowledged requests replays them and changes nothing.
    let version = position_after.version;
    for id in acknowledged.iter().take(20) {
        let reply = client
            .reserve(reserve(&position, id, 1, 3_600))
            .await
            .unwrap()
            .into_inner();
        assert!(reply.replayed, "retry of {id} was applied again");
    }
    let after_retries = client
        .get_position(get(&position))
        .await
        .unwrap()
        .into_inner()
        .position
        .unwrap();
    assert_eq!(after_retries.version, version);
    let _: pb::Position = after_retries;
}
