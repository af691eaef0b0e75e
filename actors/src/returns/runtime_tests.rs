//! Return cases driving real position actors over the embedded store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use skuld_cluster::store::memory::MemoryStore;
use skuld_cluster::{GroupCommitWriter, Store, WriterConfig};

use super::*;
use crate::position::{
    AdjustmentReason, Bucket, Command, MutationRequest, PositionEntity, PositionState,
};
use crate::runtime::{
    Admission, Background, BackgroundTiming, EntityRuntime, RequestMeta, RuntimeConfig, TimerTarget,
};
use crate::{Error, PositionKey, Refusal, ReturnKey};

struct Node {
    positions: Arc<EntityRuntime<PositionEntity>>,
    returns: Arc<EntityRuntime<ReturnEntity>>,
    _background: Background,
}

fn start() -> Node {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let (writer, _) = GroupCommitWriter::start(Arc::clone(&store), WriterConfig::default());
    let admission = Arc::new(Admission::new(10_000, 80, Duration::from_millis(50)));
    let positions = Arc::new(EntityRuntime::new(
        PositionEntity::default(),
        Arc::clone(&store),
        writer.clone(),
        Arc::clone(&admission),
        RuntimeConfig::default(),
    ));
    let returns = Arc::new(EntityRuntime::new(
        ReturnEntity::new(Arc::clone(&positions)),
        Arc::clone(&store),
        writer,
        admission,
        RuntimeConfig::default(),
    ));
    let background = Background::start(
        store,
        vec![
            Arc::clone(&positions) as Arc<dyn TimerTarget>,
            Arc::clone(&returns) as Arc<dyn TimerTarget>,
        ],
        None,
        BackgroundTiming {
            timer_scan_interval: Duration::from_millis(50),
            idempotency_retention: Duration::from_secs(86_400),
            event_retention: Duration::from_secs(7 * 86_400),
            purge_interval: Duration::from_secs(60),
        },
        skuld_cluster::WallClock::system(),
    );
    Node {
        positions,
        returns,
        _background: background,
    }
}

fn position(sku: &str) -> PositionKey {
    PositionKey::new("acme", sku, "DC1").unwrap()
}

async fn read(node: &Node, sku: &str) -> PositionState {
    node.positions
        .read(&position(sku), RequestMeta::default())
        .await
        .unwrap()
}

async fn send(node: &Node, idempotency_key: &str, command: ReturnCommand) -> ReturnCase {
    node.returns
        .mutate(
            ReturnMutation {
                key: ReturnKey::new("acme", "R-1").unwrap(),
                idempotency_key: idempotency_key.into(),
                expected_version: None,
                command,
            },
            RequestMeta::default(),
        )
        .await
        .unwrap()
        .reply
}

/// Waits until the case has no pending inventory step.
async fn settled(node: &Node) -> ReturnCase {
    let key = ReturnKey::new("acme", "R-1").unwrap();
    for _ in 0..200 {
        let case = node
            .returns
            .read(&key, RequestMeta::default())
            .await
            .unwrap();
        if case.pending_effects.is_empty() {
            return case;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("inventory steps did not settle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_return_moves_stock_through_the_position_buckets_exactly_once() {
    let node = start();
    let now = crate::runtime::now_ms();
    node.positions
        .mutate(
            MutationRequest {
                key: position("SHOES-BLUE"),
                idempotency_key: "stock".into(),
                expected_version: None,
                command: Command::Adjust {
                    bucket: Bucket::Available,
                    delta: 5,
                    reason: AdjustmentReason::Receipt,
                    change_from: None,
                    reference: String::new(),
                },
            },
            RequestMeta::default(),
        )
        .await
        .unwrap();
    let order_line = |id: &str, sku: &str| OrderLine {
        line_id: id.into(),
        sku: sku.into(),
        quantity: 2,
        amount_paid_minor: 4_000,
        fulfilled_at_ms: now,
        delivered_at_ms: now,
        location: "DC1".into(),
    };
    let open = ReturnCommand::Open {
        order_ref: "O-1".into(),
        customer_ref: String::new(),
        channel: String::new(),
        requester: Requester::Api,
        order_lines: vec![order_line("L1", "SHIRT"), order_line("L2", "SHOES")],
        lines: vec![
            RequestedLine {
                order_line_id: "L1".into(),
                quantity: 2,
                reason_code: String::new(),
                resolution: Resolution::RefundOriginal,
                exchange_sku: None,
            },
            RequestedLine {
                order_line_id: "L2".into(),
                quantity: 1,
                reason_code: String::new(),
                resolution: Resolution::Exchange,
                exchange_sku: Some("SHOES-BLUE".into()),
            },
        ],
        pre_approved: true,
        override_window: false,
        policy: ReturnPolicy::default(),
    };
    send(&node, "open", open).await;
    settled(&node).await;
    let held = read(&node, "SHOES-BLUE").await;
    assert_eq!((held.buckets.reserved, held.buckets.available()), (1, 4));

    let receive = ReturnCommand::Receive {
        lines: vec![ReceivedLine {
            line_id: "L1".into(),
            quantity: 2,
            location: String::new(),
        }],
        accept_surplus: false,
    };
    send(&node, "receive", receive.clone()).await;
    // A retried receipt replays and changes nothing.
    send(&node, "receive", receive).await;
    settled(&node).await;
    let shirt = read(&node, "SHIRT").await;
    assert_eq!(
        (
            shirt.buckets.quality_control,
            shirt.buckets.on_hand,
            shirt.buckets.available()
        ),
        (2, 2, 0)
    );

    send(
        &node,
        "restock",
        ReturnCommand::Dispose {
            line_id: "L1".into(),
            quantity: 1,
            disposition: Disposition::Restock,
        },
    )
    .await;
    send(
        &node,
        "scrap",
        ReturnCommand::Dispose {
            line_id: "L1".into(),
            quantity: 1,
            disposition: Disposition::Scrap,
        },
    )
    .await;
    send(
        &node,
        "process",
        ReturnCommand::Process {
            method: RefundMethod::OriginalPayment,
        },
    )
    .await;
    let case = settled(&node).await;
    assert_eq!(case.state, Some(ReturnState::Processed));
    assert_eq!(case.refunds[0].total_minor, 4_000);
    let shirt = read(&node, "SHIRT").await;
    assert_eq!(
        (
            shirt.buckets.quality_control,
            shirt.buckets.on_hand,
            shirt.buckets.available()
        ),
        (0, 1, 1)
    );
    let shoes = read(&node, "SHOES-BLUE").await;
    assert_eq!((shoes.buckets.reserved, shoes.buckets.committed), (0, 1));
    // Each effect reached its position once: SHIRT saw receive, restock, scrap.
    assert_eq!(shirt.version, 3);
    send(&node, "close", ReturnCommand::Close).await;
}

/// A retried `Open` that reaches a node whose policy table differs (another
/// restocking fee) is the same client request: it replays the case opened
/// under the first node's policy instead of being refused as a reused key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_open_under_another_nodes_policy_replays() {
    let node = start();
    let now = crate::runtime::now_ms();
    let open = |restocking_fee_bps: u32| ReturnCommand::Open {
        order_ref: "O-1".into(),
        customer_ref: String::new(),
        channel: "web".into(),
        requester: Requester::Api,
        order_lines: vec![OrderLine {
            line_id: "L1".into(),
            sku: "SHIRT".into(),
            quantity: 2,
            amount_paid_minor: 4_000,
            fulfilled_at_ms: now,
            delivered_at_ms: now,
            location: "DC1".into(),
        }],
        lines: vec![RequestedLine {
            order_line_id: "L1".into(),
            quantity: 1,
            reason_code: String::new(),
            resolution: Resolution::RefundOriginal,
            exchange_sku: None,
        }],
        pre_approved: true,
        override_window: false,
        policy: ReturnPolicy {
            restocking_fee_bps,
            ..ReturnPolicy::default()
        },
    };
    let first = send(&node, "open", open(0)).await;
    let retry = node
        .returns
        .mutate(
            ReturnMutation {
                key: ReturnKey::new("acme", "R-1").unwrap(),
                idempotency_key: "open".into(),
                expected_version: None,
                command: open(1_500),
            },
            RequestMeta::default(),
        )
        .await
        .unwrap();
    assert!(retry.replayed);
    assert_eq!(retry.reply, first);
    assert_eq!(
        retry.reply.policy.restocking_fee_bps, 0,
        "the first policy stays"
    );
    // What the client sent still counts: another order is another request.
    let other = node
        .returns
        .mutate(
            ReturnMutation {
                key: ReturnKey::new("acme", "R-1").unwrap(),
                idempotency_key: "open".into(),
                expected_version: None,
                command: match open(0) {
                    ReturnCommand::Open {
                        lines, order_lines, ..
                    } => ReturnCommand::Open {
                        order_ref: "O-2".into(),
                        customer_ref: String::new(),
                        channel: "web".into(),
                        requester: Requester::Api,
                        order_lines,
                        lines,
                        pre_approved: true,
                        override_window: false,
                        policy: ReturnPolicy::default(),
                    },
                    _ => unreachable!(),
                },
            },
            RequestMeta::default(),
        )
        .await;
    assert!(
        matches!(other, Err(Error::Refused(Refusal::IdempotencyKeyReused(_)))),
        "{other:?}"
    );
}

#[test]
fn a_summary_stored_before_the_census_fields_still_reads() {
    #[derive(serde::Serialize)]
    struct Before {
        state: Option<crate::returns::ReturnState>,
        order_ref: String,
        open_exceptions: u32,
        version: u64,
    }
    let stored = crate::runtime::codec::encode(&Before {
        state: Some(crate::returns::ReturnState::Approved),
        order_ref: "O1".into(),
        open_exceptions: 1,
        version: 7,
    })
    .unwrap();
    let summary = crate::returns::ReturnSummary::decode(&stored).unwrap();
    assert_eq!(summary.state, Some(crate::returns::ReturnState::Approved));
    assert_eq!((summary.open_exceptions, summary.version), (1, 7));
    assert_eq!(summary.refunds_pending, 0);
    assert!(summary.open_exception_kinds.is_empty());
    // The current form reads back whole, and garbage is an error.
    let current = crate::returns::ReturnSummary {
        refunds_pending: 2,
        oldest_pending_refund_ms: Some(5),
        open_exception_kinds: vec![(
            crate::returns::ExceptionKind::DamagedOnArrival,
            crate::returns::Team::Warehouse,
        )],
        ..summary
    };
    let bytes = crate::runtime::codec::encode(&current).unwrap();
    assert_eq!(
        crate::returns::ReturnSummary::decode(&bytes).unwrap(),
        current
    );
    assert!(crate::returns::ReturnSummary::decode(&[0xff, 0xfe]).is_err());
}
