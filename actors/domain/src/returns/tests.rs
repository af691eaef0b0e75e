#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::*;
use crate::Refusal;

const DAY: i64 = 86_400_000;
const T0: i64 = 100 * DAY;

fn context(now_ms: i64) -> ReturnContext {
    ReturnContext {
        now_ms,
        return_id: "R1".into(),
    }
}

fn order_lines() -> Vec<OrderLine> {
    vec![
        OrderLine {
            line_id: "L1".into(),
            sku: "SHIRT".into(),
            quantity: 3,
            amount_paid_minor: 9_000,
            fulfilled_at_ms: T0 - 3 * DAY,
            delivered_at_ms: T0 - DAY,
            location: "DC1".into(),
        },
        OrderLine {
            line_id: "L2".into(),
            sku: "SHOES".into(),
            quantity: 1,
            amount_paid_minor: 12_000,
            fulfilled_at_ms: T0 - 3 * DAY,
            delivered_at_ms: T0 - DAY,
            location: "DC1".into(),
        },
    ]
}

fn open(policy: ReturnPolicy, pre_approved: bool, exchange: bool) -> ReturnCommand {
    ReturnCommand::Open {
        order_ref: "O1".into(),
        customer_ref: "C1".into(),
        channel: "web".into(),
        requester: if pre_approved {
            Requester::Agent
        } else {
            Requester::Customer
        },
        order_lines: order_lines(),
        lines: vec![
            RequestedLine {
                order_line_id: "L1".into(),
                quantity: 2,
                reason_code: "too_small".into(),
                resolution: Resolution::RefundOriginal,
                exchange_sku: None,
            },
            RequestedLine {
                order_line_id: "L2".into(),
                quantity: 1,
                reason_code: "wrong_color".into(),
                resolution: if exchange {
                    Resolution::Exchange
                } else {
                    Resolution::StoreCredit
                },
                exchange_sku: exchange.then(|| "SHOES-BLUE".to_owned()),
            },
        ],
        pre_approved,
        override_window: false,
        policy,
    }
}

/// Decides and applies, as the actor does; returns the events.
fn run(
    case: &mut ReturnCase,
    command: ReturnCommand,
    now_ms: i64,
) -> Result<Vec<ReturnEvent>, Refusal> {
    let events = decide(case, None, &command, &context(now_ms))?;
    if !events.is_empty() {
        let entry = ReturnEntry {
            version: case.version + 1,
            recorded_at_ms: now_ms,
            idempotency_key: None,
            correlation_id: String::new(),
            events: events.clone(),
        };
        apply_entry(case, &entry);
    }
    Ok(events)
}

/// Completes every pending effect as applied, like the runtime does.
fn settle(case: &mut ReturnCase, now_ms: i64) -> Vec<EffectKind> {
    let pending: Vec<Effect> = case.pending_effects.values().cloned().collect();
    for effect in &pending {
        run(
            case,
            ReturnCommand::CompleteEffect {
                step: effect.step,
                outcome: EffectOutcome::Applied,
                error: String::new(),
            },
            now_ms,
        )
        .unwrap();
    }
    pending.into_iter().map(|e| e.kind).collect()
}

#[test]
fn full_lifecycle_on_receipt_gate() {
    let mut case = ReturnCase::default();
    let policy = ReturnPolicy {
        restocking_fee_bps: 1_000,
        return_shipping_fee_minor: 500,
        ..ReturnPolicy::default()
    };
    run(&mut case, open(policy, false, false), T0).unwrap();
    assert_eq!(case.state, Some(ReturnState::Requested));
    run(
        &mut case,
        ReturnCommand::Approve {
            approved_by: "agent".into(),
        },
        T0,
    )
    .unwrap();
    run(
        &mut case,
        ReturnCommand::AttachLabel {
            label: Label {
                carrier: "ups".into(),
                tracking_number: "1Z".into(),
                label_url: String::new(),
            },
        },
        T0,
    )
    .unwrap();
    run(
        &mut case,
        ReturnCommand::CarrierMilestone {
            milestone: Milestone::InTransit,
            at_ms: 0,
        },
        T0,
    )
    .unwrap();
    assert_eq!(case.state, Some(ReturnState::InTransit));
    // Processing before anything arrived refunds nothing under ON_RECEIPT.
    assert!(matches!(
        run(
            &mut case,
            ReturnCommand::Process {
                method: RefundMethod::OriginalPayment
            },
            T0
        ),
        Err(Refusal::FailedPrecondition(_))
    ));
    let receive = |line: &str, quantity| ReturnCommand::Receive {
        lines: vec![ReceivedLine {
            line_id: line.into(),
            quantity,
            location: String::new(),
        }],
        accept_surplus: false,
    };
    run(&mut case, receive("L1", 1), T0).unwrap();
    assert_eq!(case.state, Some(ReturnState::Received));
    run(&mut case, receive("L1", 1), T0).unwrap();
    run(&mut case, receive("L2", 1), T0).unwrap();
    assert!(matches!(
        run(&mut case, receive("L1", 1), T0),
        Err(Refusal::FailedPrecondition(_))
    ));
    let effects = settle(&mut case, T0);
    assert_eq!(effects.len(), 3);
    run(
        &mut case,
        ReturnCommand::Inspect {
            lines: vec![
                InspectedLine {
                    line_id: "L1".into(),
                    quantity: 2,
                    grade: Grade::A,
                },
                InspectedLine {
                    line_id: "L2".into(),
                    quantity: 1,
                    grade: Grade::Unsellable,
                },
            ],
        },
        T0,
    )
    .unwrap();
    assert_eq!(case.state, Some(ReturnState::Inspected));
    assert!(case.has_open_exception(ExceptionKind::DamagedOnArrival));
    run(
        &mut case,
        ReturnCommand::Dispose {
            line_id: "L1".into(),
            quantity: 2,
            disposition: Disposition::Restock,
        },
        T0,
    )
    .unwrap();
    run(
        &mut case,
        ReturnCommand::Dispose {
            line_id: "L2".into(),
            quantity: 1,
            disposition: Disposition::DamagedHold,
        },
        T0,
    )
    .unwrap();
    // A unit is restocked once: nothing left to dispose.
    assert!(run(
        &mut case,
        ReturnCommand::Dispose {
            line_id: "L1".into(),
            quantity: 1,
            disposition: Disposition::Restock
        },
        T0
    )
    .is_err());
    run(
        &mut case,
        ReturnCommand::Process {
            method: RefundMethod::OriginalPayment,
        },
        T0,
    )
    .unwrap();
    assert_eq!(case.state, Some(ReturnState::Processed));
    let refund = &case.refunds[0];
    // 2 of 3 shirts (6000) + shoes (12000) = 18000; 10% fee 1800; shipping 500.
    assert_eq!(
        (refund.total_minor, refund.state),
        (15_700, RefundState::Released)
    );
    assert!(
        matches!(
            run(&mut case, ReturnCommand::Close, T0),
            Err(Refusal::FailedPrecondition(_))
        ),
        "effects pending"
    );
    settle(&mut case, T0);
    run(&mut case, ReturnCommand::Close, T0).unwrap();
    assert_eq!(case.state, Some(ReturnState::Closed));
    run(
        &mut case,
        ReturnCommand::Reopen {
            reason: "customer-dispute".into(),
        },
        T0,
    )
    .unwrap();
    assert_eq!(case.state, Some(ReturnState::Inspected));
    // Nothing more to refund after reopening.
    assert!(run(
        &mut case,
        ReturnCommand::Process {
            method: RefundMethod::OriginalPayment
        },
        T0
    )
    .is_err());
}

#[test]
fn illegal_transitions_name_the_state_and_the_allowed_commands() {
    let mut case = ReturnCase::default();
    run(&mut case, open(ReturnPolicy::default(), false, false), T0).unwrap();
    let refused = run(&mut case, ReturnCommand::Close, T0);
    match refused {
        Err(Refusal::IllegalTransition {
            command,
            state,
            allowed,
        }) => {
            assert_eq!((command.as_ref(), state), ("Close", ReturnState::Requested));
            assert!(allowed.iter().any(|name| name == "Approve"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        decide(
            &ReturnCase::default(),
            None,
            &ReturnCommand::Close,
            &context(T0)
        ),
        Err(Refusal::ReturnNotFound("R1".into()))
    );
}

#[test]
fn cancel_is_refused_after_receipt_and_releases_exchange_holds_before() {
    let mut case = ReturnCase::default();
    run(&mut case, open(ReturnPolicy::default(), true, true), T0).unwrap();
    let holds = settle(&mut case, T0);
    assert!(matches!(
        holds.as_slice(),
        [EffectKind::HoldExchange { quantity: 1, .. }]
    ));
    assert_eq!(case.exchanges[0].state, ExchangeState::Held);
    let mut received = case.clone();
    run(
        &mut received,
        ReturnCommand::Receive {
            lines: vec![ReceivedLine {
                line_id: "L1".into(),
                quantity: 1,
                location: String::new(),
            }],
            accept_surplus: false,
        },
        T0,
    )
    .unwrap();
    assert!(matches!(
        run(
            &mut received,
            ReturnCommand::Cancel {
                reason: "changed mind".into()
            },
            T0
        ),
        Err(Refusal::IllegalTransition {
            state: ReturnState::Received,
            ..
        })
    ));
    run(
        &mut case,
        ReturnCommand::Cancel {
            reason: "changed mind".into(),
        },
        T0,
    )
    .unwrap();
    assert_eq!(case.state, Some(ReturnState::Canceled));
    assert!(matches!(
        settle(&mut case, T0).as_slice(),
        [EffectKind::ReleaseExchange { .. }]
    ));
}

#[test]
fn an_unscanned_return_expires_after_ship_by_and_releases_its_hold() {
    let mut case = ReturnCase::default();
    run(&mut case, open(ReturnPolicy::default(), true, true), T0).unwrap();
    settle(&mut case, T0);
    let ship_by = case.ship_by_ms.unwrap();
    assert_eq!(case.next_timer_ms(), Some(ship_by));
    assert!(run(&mut case, ReturnCommand::Tick, ship_by - 1)
        .unwrap()
        .is_empty());
    run(&mut case, ReturnCommand::Tick, ship_by).unwrap();
    assert_eq!(case.state, Some(ReturnState::Expired));
    assert!(matches!(
        settle(&mut case, ship_by).as_slice(),
        [EffectKind::ReleaseExchange { .. }]
    ));
}

#[test]
fn erp_gate_holds_the_refund_until_finance_confirms() {
    let mut case = ReturnCase::default();
    let policy = ReturnPolicy {
        refund_gate: RefundGate::ErpValidation,
        ..ReturnPolicy::default()
    };
    run(&mut case, open(policy, true, false), T0).unwrap();
    run(
        &mut case,
        ReturnCommand::Process {
            method: RefundMethod::StoreCredit,
        },
        T0,
    )
    .unwrap();
    assert_eq!(case.refunds[0].state, RefundState::PendingGate);
    assert!(matches!(
        run(&mut case, ReturnCommand::Close, T0),
        Err(Refusal::FailedPrecondition(_))
    ));
    let overdue = case.next_timer_ms().unwrap();
    run(&mut case, ReturnCommand::Tick, overdue).unwrap();
    assert!(case.has_open_exception(ExceptionKind::ErpConfirmationOverdue));
    run(
        &mut case,
        ReturnCommand::ConfirmErp {
            credit_memo: "CM-9".into(),
        },
        overdue,
    )
    .unwrap();
    assert_eq!(case.refunds[0].state, RefundState::Released);
    assert!(!case.has_open_exception(ExceptionKind::ErpConfirmationOverdue));
    run(&mut case, ReturnCommand::Close, overdue).unwrap();
}

#[test]
fn erp_reports_raise_exceptions_only_while_the_gate_waits() {
    let mut case = ReturnCase::default();
    let policy = ReturnPolicy {
        refund_gate: RefundGate::ErpValidation,
        ..ReturnPolicy::default()
    };
    run(&mut case, open(policy, true, false), T0).unwrap();
    // Nothing decided yet: nothing to post, a report changes nothing.
    assert!(!case.awaits_erp());
    let refused = ReturnCommand::ErpReport {
        report: ErpReport::Refused {
            code: "V1/310".into(),
            message: "customer blocked".into(),
        },
    };
    run(&mut case, refused.clone(), T0).unwrap();
    assert!(case.exceptions.is_empty());
    run(
        &mut case,
        ReturnCommand::Process {
            method: RefundMethod::StoreCredit,
        },
        T0,
    )
    .unwrap();
    assert!(case.awaits_erp());
    run(&mut case, refused.clone(), T0).unwrap();
    run(&mut case, refused, T0).unwrap();
    let open: Vec<&CaseException> = case.open_exceptions().collect();
    assert_eq!(open.len(), 1, "a repeated report raises once: {open:?}");
    assert_eq!(open[0].kind, ExceptionKind::ErpRefused);
    assert_eq!(open[0].owner, Team::Finance);
    assert!(open[0].note.contains("V1/310"), "{}", open[0].note);
    run(
        &mut case,
        ReturnCommand::ErpReport {
            report: ErpReport::Overdue {
                note: "not posted after 2 s".into(),
            },
        },
        T0,
    )
    .unwrap();
    assert!(case.has_open_exception(ExceptionKind::ErpConfirmationOverdue));
    // A person's ConfirmErp (the override) settles both and releases.
    run(
        &mut case,
        ReturnCommand::ConfirmErp {
            credit_memo: "90000001".into(),
        },
        T0,
    )
    .unwrap();
    assert_eq!(case.refunds[0].state, RefundState::Released);
    assert_eq!(case.open_exceptions().count(), 0);
    assert!(!case.awaits_erp());
    // A worker's late report after the confirmation is a no-op.
    let late = run(
        &mut case,
        ReturnCommand::ErpReport {
            report: ErpReport::Overdue {
                note: "late".into(),
            },
        },
        T0,
    )
    .unwrap();
    assert!(late.is_empty(), "{late:?}");
}

#[test]
fn opening_checks_the_order_lines_window_and_final_sale() {
    let case = ReturnCase::default();
    let late = context(T0 + 60 * DAY);
    assert!(matches!(
        decide(
            &case,
            None,
            &open(ReturnPolicy::default(), false, false),
            &late
        ),
        Err(Refusal::FailedPrecondition(_))
    ));
    let mut final_sale = ReturnPolicy::default();
    final_sale.final_sale_skus.insert("SHOES".into());
    assert!(matches!(
        decide(&case, None, &open(final_sale, false, false), &context(T0)),
        Err(Refusal::FailedPrecondition(_))
    ));
    let mut bad = open(ReturnPolicy::default(), false, false);
    if let ReturnCommand::Open { lines, .. } = &mut bad {
        lines[0].order_line_id = "L9".into();
    }
    assert!(matches!(
        decide(&case, None, &bad, &context(T0)),
        Err(Refusal::InvalidArgument { .. })
    ));
    let review = ReturnPolicy {
        review_threshold_minor: Some(10_000),
        ..ReturnPolicy::default()
    };
    let mut reviewed = ReturnCase::default();
    run(&mut reviewed, open(review, false, false), T0).unwrap();
    assert_eq!(reviewed.state, Some(ReturnState::InReview));
}

// ---- properties -------------------------------------------------------------

fn line_id() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("L1".to_owned()),
        Just("L2".to_owned()),
        Just("L3".to_owned())
    ]
}

fn disposition() -> impl Strategy<Value = Disposition> {
    prop_oneof![
        Just(Disposition::Restock),
        Just(Disposition::RestockAfterProcessing),
        Just(Disposition::DamagedHold),
        Just(Disposition::Scrap),
        Just(Disposition::ReturnToVendor),
        Just(Disposition::Missing),
        Just(Disposition::KeepItem),
    ]
}

fn gate() -> impl Strategy<Value = RefundGate> {
    prop_oneof![
        Just(RefundGate::Immediate),
        Just(RefundGate::OnLabelCreated),
        Just(RefundGate::OnFirstScan),
        Just(RefundGate::OnDelivered),
        Just(RefundGate::OnReceipt),
        Just(RefundGate::OnInspectionPass),
        Just(RefundGate::Manual),
        Just(RefundGate::ErpValidation),
    ]
}

fn command() -> impl Strategy<Value = ReturnCommand> {
    prop_oneof![
        Just(ReturnCommand::Approve {
            approved_by: "a".into()
        }),
        Just(ReturnCommand::FlagForReview {
            reason: "risk".into()
        }),
        Just(ReturnCommand::Decline {
            reason: DeclineReason::Policy,
            note: String::new()
        }),
        Just(ReturnCommand::AttachLabel {
            label: Label {
                carrier: "ups".into(),
                tracking_number: "T".into(),
                label_url: String::new()
            }
        }),
        prop_oneof![
            Just(Milestone::InTransit),
            Just(Milestone::OutForDelivery),
            Just(Milestone::Delivered)
        ]
        .prop_map(|milestone| ReturnCommand::CarrierMilestone {
            milestone,
            at_ms: 0
        }),
        (line_id(), 1i64..4, any::<bool>()).prop_map(|(line_id, quantity, accept_surplus)| {
            ReturnCommand::Receive {
                lines: vec![ReceivedLine {
                    line_id,
                    quantity,
                    location: String::new(),
                }],
                accept_surplus,
            }
        }),
        (line_id(), 1i64..3, any::<bool>()).prop_map(|(line_id, quantity, bad)| {
            ReturnCommand::Inspect {
                lines: vec![InspectedLine {
                    line_id,
                    quantity,
                    grade: if bad { Grade::Unsellable } else { Grade::B },
                }],
            }
        }),
        (line_id(), 1i64..3, disposition()).prop_map(|(line_id, quantity, disposition)| {
            ReturnCommand::Dispose {
                line_id,
                quantity,
                disposition,
            }
        }),
        Just(ReturnCommand::Process {
            method: RefundMethod::OriginalPayment
        }),
        Just(ReturnCommand::ApproveRefund {
            approved_by: "mgr".into()
        }),
        Just(ReturnCommand::ConfirmErp {
            credit_memo: "CM".into()
        }),
        Just(ReturnCommand::Close),
        Just(ReturnCommand::Reopen { reason: "r".into() }),
        Just(ReturnCommand::Cancel {
            reason: String::new()
        }),
        Just(ReturnCommand::Tick),
        (0u32..12, any::<bool>()).prop_map(|(step, ok)| ReturnCommand::CompleteEffect {
            step,
            outcome: if ok {
                EffectOutcome::Applied
            } else {
                EffectOutcome::Retry
            },
            error: String::new(),
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random sequences keep the line-quantity rules, never refund more than
    /// paid, never restock a unit twice, and replay to the same case.
    #[test]
    fn line_rules_hold_and_replay_rebuilds_the_case(
        gate in gate(),
        pre_approved in any::<bool>(),
        fee_bps in 0u32..3_000,
        steps in proptest::collection::vec((command(), 0i64..(3 * DAY)), 1..60),
    ) {
        let policy = ReturnPolicy { refund_gate: gate, restocking_fee_bps: fee_bps, return_shipping_fee_minor: 300, ..ReturnPolicy::default() };
        let mut case = ReturnCase::default();
        let mut journal = Vec::new();
        let mut now = T0;
        let opened = decide(&case, None, &open(policy, pre_approved, true), &context(now)).unwrap();
        let entry = ReturnEntry { version: 1, recorded_at_ms: now, idempotency_key: None, correlation_id: String::new(), events: opened };
        apply_entry(&mut case, &entry);
        journal.push(entry);
        let mut restocked: std::collections::BTreeMap<String, i64> = Default::default();
        for (command, advance) in steps {
            now += advance;
            let before = case.clone();
            match decide(&case, None, &command, &context(now)) {
                Ok(events) => {
                    for event in &events {
                        if let ReturnEvent::EffectScheduled { effect: Effect { kind: EffectKind::Dispose { disposition: Disposition::Restock, quantity, .. }, .. } } = event {
                            if let ReturnCommand::Dispose { line_id, .. } = &command {
                                *restocked.entry(line_id.clone()).or_default() += quantity;
                            }
                        }
                    }
                    if !events.is_empty() {
                        let entry = ReturnEntry { version: case.version + 1, recorded_at_ms: now, idempotency_key: None, correlation_id: String::new(), events };
                        apply_entry(&mut case, &entry);
                        journal.push(entry);
                    }
                }
                Err(_) => prop_assert_eq!(&case, &before),
            }
            for line in case.lines.values() {
                let bought = case.order_lines[&line.line_id].quantity;
                prop_assert!(line.approved <= line.requested && line.requested <= bought);
                prop_assert!(line.received + line.canceled + line.not_returned <= line.approved, "{:?}", line);
                prop_assert!(line.inspected <= line.received);
                prop_assert!(line.disposed + line.awaiting_processing <= line.received, "{:?}", line);
                prop_assert!(line.refunded_quantity <= line.approved);
                let paid = case.order_lines[&line.line_id].amount_paid_minor;
                prop_assert!(line.refunded_minor <= paid);
                prop_assert!(restocked.get(&line.line_id).copied().unwrap_or(0) <= line.received);
            }
            let refunded: i64 = case.refunds.iter().map(|r| r.total_minor).sum();
            let paid: i64 = case.order_lines.values().map(|l| l.amount_paid_minor).sum();
            prop_assert!(refunded <= paid && case.refunds.iter().all(|r| r.total_minor >= 0));
        }
        let mut replayed = ReturnCase::default();
        for entry in &journal {
            apply_entry(&mut replayed, entry);
        }
        prop_assert_eq!(replayed, case);
    }
}
