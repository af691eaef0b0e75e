//! Returns through real gRPC against the real binary: the lifecycle under
//! every refund gate with the inventory buckets checked at each step, a
//! crash before and after every inventory step, expiry across a restart, and
//! bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use skuld_proto::v1 as pb;
use skuld_tests::requests::{get, key, receive};
use skuld_tests::returns::{rkey, Case};
use skuld_tests::{NodeOptions, TestNode};
use tonic::transport::Channel;
use tonic::Code;

type Returns = pb::returns_service_client::ReturnsServiceClient<Channel>;
type Inventory = pb::inventory_service_client::InventoryServiceClient<Channel>;

const GATES: [&str; 9] = [
    "IMMEDIATE",
    "ON_LABEL_CREATED",
    "ON_FIRST_SCAN",
    "ON_OUT_FOR_DELIVERY",
    "ON_DELIVERED",
    "ON_RECEIPT",
    "ON_INSPECTION_PASS",
    "MANUAL",
    "ERP_VALIDATION",
];

/// One tenant per gate, plus `expiring` whose returns must ship at once.
fn write_config(dir: &Path) -> std::path::PathBuf {
    let mut toml = String::from("[runtime]\ntimer_scan_interval_ms = 100\n");
    for gate in GATES {
        toml.push_str(&format!(
            "[returns.policies.{}]\nrefund_gate = \"{gate}\"\nrestocking_fee_bps = 1000\nreturn_shipping_fee_minor = 500\n",
            gate.to_lowercase()
        ));
    }
    toml.push_str("[returns.policies.expiring]\nship_by_days = 0\n");
    let path = dir.join("skuld.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

async fn buckets(inventory: &mut Inventory, tenant: &str, sku: &str) -> pb::Buckets {
    match inventory.get_position(get(&key(tenant, sku, "DC1"))).await {
        Ok(reply) => reply.into_inner().position.unwrap().buckets.unwrap(),
        Err(status) if status.code() == Code::NotFound => pb::Buckets::default(),
        Err(status) => panic!("{status}"),
    }
}

/// Waits until the case has no pending inventory step and returns it.
async fn settled(returns: &mut Returns, tenant: &str, return_id: &str) -> pb::ReturnCase {
    for _ in 0..300 {
        let case = returns
            .get_return(pb::GetReturnRequest {
                key: rkey(tenant, return_id),
                include_history: false,
            })
            .await
            .unwrap()
            .into_inner()
            .r#case
            .unwrap();
        if case.pending_steps.is_empty() {
            return case;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("inventory steps of {return_id} did not settle");
}

fn state(case: &pb::ReturnCase) -> pb::ReturnState {
    pb::ReturnState::try_from(case.state).unwrap()
}

/// Drives one return through its whole lifecycle, checking buckets.
async fn lifecycle(returns: &mut Returns, inventory: &mut Inventory, gate: &str) {
    let tenant = gate.to_lowercase();
    let mut case = Case::new(&tenant, &format!("R-{tenant}"));
    inventory
        .adjust(receive(&key(&tenant, "SHOE-RED", "DC1"), "stock-red", 5))
        .await
        .unwrap();

    let opened = returns
        .request_return(case.open(true))
        .await
        .unwrap()
        .into_inner()
        .r#case
        .unwrap();
    assert_eq!(state(&opened), pb::ReturnState::Requested);
    returns.approve_return(case.approve()).await.unwrap();
    settled(returns, &tenant, &case.return_id).await;
    let red = buckets(inventory, &tenant, "SHOE-RED").await;
    assert_eq!(
        (red.reserved, red.available),
        (1, 4),
        "{gate}: exchange hold"
    );

    returns.attach_label(case.label()).await.unwrap();
    for milestone in [
        pb::CarrierMilestone::InTransit,
        pb::CarrierMilestone::OutForDelivery,
        pb::CarrierMilestone::Delivered,
    ] {
        returns
            .record_carrier_event(case.milestone(milestone))
            .await
            .unwrap();
    }
    let received = returns
        .receive_items(case.receive(1))
        .await
        .unwrap()
        .into_inner()
        .r#case
        .unwrap();
    assert_eq!(state(&received), pb::ReturnState::Received);
    settled(returns, &tenant, &case.return_id).await;
    let shirt = buckets(inventory, &tenant, "SHIRT").await;
    assert_eq!(
        (shirt.quality_control, shirt.on_hand, shirt.available),
        (1, 1, 0),
        "{gate}: partial receipt"
    );
    returns.receive_items(case.receive(2)).await.unwrap();
    settled(returns, &tenant, &case.return_id).await;
    let shirt = buckets(inventory, &tenant, "SHIRT").await;
    assert_eq!(shirt.quality_control, 3, "{gate}: full receipt");

    returns.inspect_items(case.inspect(2, 1)).await.unwrap();
    returns
        .dispose_items(case.dispose(2, pb::Disposition::Restock))
        .await
        .unwrap();
    returns
        .dispose_items(case.dispose(1, pb::Disposition::DamagedHold))
        .await
        .unwrap();
    settled(returns, &tenant, &case.return_id).await;
    let shirt = buckets(inventory, &tenant, "SHIRT").await;
    assert_eq!(
        (
            shirt.quality_control,
            shirt.available,
            shirt.damaged,
            shirt.on_hand
        ),
        (0, 2, 1, 3),
        "{gate}: dispositions"
    );

    let processed = returns
        .process_return(case.process())
        .await
        .unwrap()
        .into_inner()
        .r#case
        .unwrap();
    assert_eq!(state(&processed), pb::ReturnState::Processed);
    let refund = &processed.refunds[0];
    // ON_INSPECTION_PASS refunds the 2 sellable units; the others all 3.
    let (gross, fee) = if gate == "ON_INSPECTION_PASS" {
        (6_000, 600)
    } else {
        (9_000, 900)
    };
    assert_eq!(
        refund.total_minor,
        gross - fee - 500,
        "{gate}: refund amount"
    );
    let pending = refund.state == "PENDING_GATE";
    assert_eq!(
        pending,
        matches!(gate, "MANUAL" | "ERP_VALIDATION"),
        "{gate}: refund state {}",
        refund.state
    );
    if pending {
        let early = returns
            .close_return(pb::CloseReturnRequest {
                header: case.header(),
            })
            .await
            .unwrap_err();
        assert_eq!(early.code(), Code::FailedPrecondition);
        if gate == "MANUAL" {
            returns
                .approve_refund(pb::ApproveRefundRequest {
                    header: case.header(),
                    approved_by: "lead".into(),
                })
                .await
                .unwrap();
        } else {
            returns
                .confirm_erp(pb::ConfirmErpRequest {
                    header: case.header(),
                    credit_memo: "CM-1".into(),
                })
                .await
                .unwrap();
        }
    }
    let done = settled(returns, &tenant, &case.return_id).await;
    assert!(done.refunds.iter().all(|r| r.state == "RELEASED"), "{gate}");
    let red = buckets(inventory, &tenant, "SHOE-RED").await;
    assert_eq!(
        (red.reserved, red.committed, red.available),
        (0, 1, 4),
        "{gate}: exchange confirmed"
    );
    let closed = returns
        .close_return(pb::CloseReturnRequest {
            header: case.header(),
        })
        .await
        .unwrap()
        .into_inner()
        .r#case
        .unwrap();
    assert_eq!(state(&closed), pb::ReturnState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_under_every_refund_gate() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let node = TestNode::start(
        &dir.path().join("node"),
        NodeOptions::default().arg("--config", config.display()),
    )
    .await
    .unwrap();
    let mut returns = node.returns().await.unwrap();
    let mut inventory = node.inventory().await.unwrap();
    for gate in GATES {
        lifecycle(&mut returns, &mut inventory, gate).await;
    }
    let listed = returns
        .list_returns(pb::ListReturnsRequest {
            tenant: "manual".into(),
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.returns.len(), 1);
    let history = returns
        .get_return(pb::GetReturnRequest {
            key: rkey("manual", "R-manual"),
            include_history: true,
        })
        .await
        .unwrap()
        .into_inner()
        .r#case
        .unwrap()
        .history;
    let names: Vec<&str> = history
        .iter()
        .flat_map(|h| h.events.iter().map(String::as_str))
        .collect();
    for expected in [
        "return.requested",
        "return.approved",
        "return.items.received",
        "return.refund.released",
        "return.closed",
    ] {
        assert!(
            names.contains(&expected),
            "history lacks {expected}: {names:?}"
        );
    }
}

/// Kills the node (a failpoint aborts it) just before and just after each
/// inventory step of a return, restarts it, finishes the return, and checks
/// that every inventory effect was applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_or_after_any_step_applies_each_effect_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    // Steps: 0 exchange hold, 1 receipt, 2 restock, 3 exchange commit.
    for step in 0..4u32 {
        for when in ["before", "after"] {
            let tenant = "immediate";
            let return_id = format!("crash-{when}-{step}");
            let data = dir.path().join(&return_id);
            let failing = NodeOptions::default()
                .arg("--config", config.display())
                .env("SKULD_FAILPOINT_EFFECT", format!("{when}:{step}"));
            let mut node = TestNode::start(&data, failing).await.unwrap();
            let mut inventory = node.inventory().await.unwrap();
            inventory
                .adjust(receive(&key(tenant, "SHOE-RED", "DC1"), "stock-red", 5))
                .await
                .unwrap();
            let mut returns = node.returns().await.unwrap();
            let mut case = Case::new(tenant, &return_id);
            // Drive the case until the failpoint kills the node.
            let calls: [fn(&mut Case) -> Call; 4] = [
                |c| Call::Create(c.open(true)),
                |c| {
                    Call::Receive(pb::ReceiveItemsRequest {
                        header: c.header(),
                        lines: vec![pb::ReceivedLine {
                            line_id: "L1".into(),
                            quantity: 3,
                            location: String::new(),
                        }],
                        accept_surplus: false,
                    })
                },
                |c| {
                    Call::Dispose(pb::DisposeItemsRequest {
                        header: c.header(),
                        line_id: "L1".into(),
                        quantity: 3,
                        disposition: pb::Disposition::Restock.into(),
                    })
                },
                |c| {
                    Call::Process(pb::ProcessReturnRequest {
                        header: c.header(),
                        method: pb::RefundMethod::StoreCredit.into(),
                    })
                },
            ];
            let mut next = 0;
            let mut crashed = false;
            while next < calls.len() {
                let call = calls[next](&mut case);
                // The abort may beat the reply out of the process.
                let sent = call.send(&mut returns).await;
                next += 1;
                if sent.is_err() {
                    crashed = node.wait_exit(Duration::from_secs(5)).await.is_ok();
                    break;
                }
                // Let the step run (or the failpoint fire).
                for _ in 0..50 {
                    if node.wait_exit(Duration::from_millis(20)).await.is_ok() {
                        crashed = true;
                        break;
                    }
                }
                if crashed {
                    break;
                }
            }
            assert!(crashed, "failpoint {when}:{step} never fired");
            node.restart_with(NodeOptions::default().arg("--config", config.display()))
                .await
                .unwrap();
            let mut returns = node.returns().await.unwrap();
            let mut inventory = node.inventory().await.unwrap();
            settled(&mut returns, tenant, &return_id).await;
            // Finish the calls the crash interrupted (retries replay).
            case.step = 0;
            for call in calls {
                call(&mut case).send(&mut returns).await.unwrap();
                settled(&mut returns, tenant, &return_id).await;
            }
            let shirt = buckets(&mut inventory, tenant, "SHIRT").await;
            assert_eq!(
                (shirt.quality_control, shirt.available, shirt.on_hand),
                (0, 3, 3),
                "{when}:{step}: receipt and restock once"
            );
            let red = buckets(&mut inventory, tenant, "SHOE-RED").await;
            assert_eq!(
                (red.reserved, red.committed, red.available),
                (0, 1, 4),
                "{when}:{step}: exchange held and committed once"
            );
            node.terminate().await.unwrap();
        }
    }
}

enum Call {
    Create(pb::OpenReturnRequest),
    Receive(pb::ReceiveItemsRequest),
    Dispose(pb::DisposeItemsRequest),
    Process(pb::ProcessReturnRequest),
}

impl Call {
    async fn send(self, returns: &mut Returns) -> Result<(), tonic::Status> {
        match self {
            Call::Create(request) => returns.create_return(request).await.map(drop),
            Call::Receive(request) => returns.receive_items(request).await.map(drop),
            Call::Dispose(request) => returns.dispose_items(request).await.map(drop),
            Call::Process(request) => returns.process_return(request).await.map(drop),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_releases_the_exchange_hold_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    // Abort before the hold is even placed: the restarted node must place it,
    // expire the unscanned return and release the hold, by its timers alone.
    let failing = NodeOptions::default()
        .arg("--config", config.display())
        .env("SKULD_FAILPOINT_EFFECT", "before:0");
    let mut node = TestNode::start(&dir.path().join("node"), failing)
        .await
        .unwrap();
    let mut inventory = node.inventory().await.unwrap();
    inventory
        .adjust(receive(&key("expiring", "SHOE-RED", "DC1"), "stock-red", 5))
        .await
        .unwrap();
    let mut returns = node.returns().await.unwrap();
    let mut case = Case::new("expiring", "R-exp");
    // The abort may beat the reply out of the process; the case was durable
    // before the step ran either way.
    let _ = returns.create_return(case.open(true)).await;
    node.wait_exit(Duration::from_secs(5)).await.unwrap();
    node.restart_with(NodeOptions::default().arg("--config", config.display()))
        .await
        .unwrap();
    let mut returns = node.returns().await.unwrap();
    let mut inventory = node.inventory().await.unwrap();
    let mut expired = None;
    for _ in 0..100 {
        let case = settled(&mut returns, "expiring", "R-exp").await;
        if state(&case) == pb::ReturnState::Expired {
            expired = Some(case);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expired = expired.expect("the return did not expire");
    assert_eq!(expired.exchanges[0].state, "RELEASED");
    let red = buckets(&mut inventory, "expiring", "SHOE-RED").await;
    assert_eq!((red.reserved, red.available), (0, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_return_input_gets_a_clear_status_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let node = TestNode::start(
        &dir.path().join("node"),
        NodeOptions::default().arg("--config", config.display()),
    )
    .await
    .unwrap();
    let mut returns = node.returns().await.unwrap();
    let mut case = Case::new("on_receipt", "R-bad");

    let unknown = returns
        .get_return(pb::GetReturnRequest {
            key: rkey("on_receipt", "nope"),
            include_history: false,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let mut not_in_order = case.open(false);
    not_in_order.lines[0].order_line_id = "L9".into();
    assert_eq!(
        returns
            .request_return(not_in_order)
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let mut too_many = case.open(false);
    too_many.lines[0].quantity = 5;
    assert_eq!(
        returns.request_return(too_many).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    returns.create_return(case.open(false)).await.unwrap();
    let before = settled(&mut returns, "on_receipt", "R-bad").await;
    let over = returns
        .receive_items(pb::ReceiveItemsRequest {
            header: case.header(),
            lines: vec![pb::ReceivedLine {
                line_id: "L1".into(),
                quantity: 4,
                location: String::new(),
            }],
            accept_surplus: false,
        })
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::FailedPrecondition);
    let illegal = returns
        .close_return(pb::CloseReturnRequest {
            header: case.header(),
        })
        .await
        .unwrap_err();
    assert_eq!(illegal.code(), Code::FailedPrecondition);
    assert!(
        illegal.message().contains("APPROVED"),
        "{}",
        illegal.message()
    );
    returns
        .receive_items(pb::ReceiveItemsRequest {
            header: case.header(),
            lines: vec![pb::ReceivedLine {
                line_id: "L1".into(),
                quantity: 1,
                location: String::new(),
            }],
            accept_surplus: false,
        })
        .await
        .unwrap();
    let received = settled(&mut returns, "on_receipt", "R-bad").await;
    let cancel = returns
        .cancel_return(pb::CancelReturnRequest {
            header: case.header(),
            reason: "late".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(cancel.code(), Code::FailedPrecondition);
    let after = settled(&mut returns, "on_receipt", "R-bad").await;
    assert_eq!(
        after.version, received.version,
        "a refused command changed the case"
    );
    assert_eq!(before.version + 2, received.version);
}

/// Amounts near the limits of an i64 are refused at the edge as
/// INVALID_ARGUMENT, nothing is stored, and a sane case beside them works:
/// two lines paid near i64::MAX used to overflow the refund total (a
/// negative refund in release builds, an actor panic in debug builds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amounts_beyond_the_limits_are_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("node"), NodeOptions::default())
        .await
        .unwrap();
    let mut returns = node.returns().await.unwrap();
    let mut case = Case::new("limits", "R-huge");
    let mut open = case.open(false);
    for line in &mut open.order_lines {
        line.amount_paid_minor = i64::MAX - 1;
    }
    open.lines.push(pb::RequestedLine {
        order_line_id: "L2".into(),
        quantity: 1,
        reason_code: "too_small".into(),
        resolution: pb::Resolution::RefundOriginal.into(),
        exchange_sku: String::new(),
    });
    let refused = returns.create_return(open).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("amount_paid_minor"),
        "{refused:?}"
    );
    let mut huge_quantity = case.open(false);
    huge_quantity.order_lines[0].quantity = i64::MAX;
    huge_quantity.lines[0].quantity = i64::MAX - 3;
    let refused = returns.create_return(huge_quantity).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let missing = returns
        .get_return(pb::GetReturnRequest {
            key: rkey("limits", "R-huge"),
            include_history: false,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "nothing was stored");
    // The node is alive and a sane case of the same order opens.
    let opened = returns.create_return(case.open(false)).await.unwrap();
    assert!(opened.into_inner().r#case.is_some());
}
