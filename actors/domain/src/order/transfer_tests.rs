//! Table tests of the transfer saga, and a property test against simulated
//! positions that fail and crash between steps.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::journal::JournalEntry;
use crate::Refusal;

fn spec(quantity: i64) -> TransferSpec {
    TransferSpec {
        sku: "sku-1".into(),
        from: "dc".into(),
        to: "store".into(),
        quantity,
    }
}

fn run(order: &mut Order, command: &OrderCommand) -> Result<Vec<OrderEvent>, Refusal> {
    let events = decide(order, "t1", None, command, 1_000)?;
    if !events.is_empty() {
        apply_entry(
            order,
            &JournalEntry {
                version: order.version + 1,
                recorded_at_ms: 1_000,
                idempotency_key: None,
                correlation_id: String::new(),
                events: events.clone(),
            },
        );
    }
    Ok(events)
}

/// The two positions: `from`'s available, `to`'s incoming and available,
/// and the answer kept per step key (a rerun replays it).
#[derive(Debug, Default, Clone)]
struct Positions {
    from_available: i64,
    to_incoming: i64,
    to_available: i64,
    answers: HashMap<String, StepResult>,
}

impl Positions {
    fn run(&mut self, order: &Order, step: &Step) -> StepResult {
        let key = step_key_for("t1", TRANSFER_LINE_ID, step.number);
        if let Some(answer) = self.answers.get(&key) {
            return answer.clone();
        }
        let quantity = order.transfer.as_ref().unwrap().spec.quantity;
        let result = match step.action {
            Action::TransferOut if self.from_available < quantity => StepResult::Insufficient {
                available: self.from_available,
            },
            Action::TransferOut => {
                self.from_available -= quantity;
                StepResult::Done
            }
            Action::TransferIn => {
                self.to_incoming += quantity;
                StepResult::Done
            }
            Action::TransferReceive => {
                self.to_incoming -= quantity;
                self.to_available += quantity;
                StepResult::Done
            }
            Action::TransferReturn => {
                self.from_available += quantity;
                StepResult::Done
            }
            ref other => panic!("not a transfer step: {other:?}"),
        };
        self.answers.insert(key, result.clone());
        result
    }
}

/// Runs pending steps until the transfer is at rest.
fn drive(order: &mut Order, positions: &mut Positions) {
    for _ in 0..20 {
        let Some(step) = order.pending.first().cloned() else {
            return;
        };
        let result = positions.run(order, &step);
        run(
            order,
            &OrderCommand::CompleteStep {
                number: step.number,
                result,
            },
        )
        .unwrap();
    }
    panic!("the transfer did not come to rest");
}

#[test]
fn a_transfer_takes_from_one_location_and_delivers_to_the_others_incoming() {
    let mut order = Order::default();
    let mut positions = Positions {
        from_available: 10,
        ..Positions::default()
    };
    let events = run(&mut order, &OrderCommand::Transfer { spec: spec(4) }).unwrap();
    // The first step is recorded in the same write that opens the transfer.
    assert!(matches!(
        events.last(),
        Some(OrderEvent::StepScheduled { step }) if step.action == Action::TransferOut
    ));
    drive(&mut order, &mut positions);
    assert_eq!(order.status, Some(OrderStatus::Held));
    assert_eq!((positions.from_available, positions.to_incoming), (6, 4));

    run(&mut order, &OrderCommand::ReceiveTransfer).unwrap();
    drive(&mut order, &mut positions);
    assert_eq!(order.status, Some(OrderStatus::Committed));
    assert_eq!((positions.to_incoming, positions.to_available), (0, 4));
    // Receiving again changes nothing.
    assert_eq!(
        run(&mut order, &OrderCommand::ReceiveTransfer).unwrap(),
        vec![]
    );
}

#[test]
fn a_short_transfer_is_refused_with_what_was_available_and_changes_nothing() {
    let mut order = Order::default();
    let mut positions = Positions {
        from_available: 3,
        ..Positions::default()
    };
    run(&mut order, &OrderCommand::Transfer { spec: spec(4) }).unwrap();
    drive(&mut order, &mut positions);
    assert_eq!(order.status, Some(OrderStatus::Released));
    let failure = order.failure.clone().unwrap();
    assert_eq!(failure.shortfalls[0].available, Some(3));
    assert_eq!(failure.shortfalls[0].location, "dc");
    // Nothing was taken, so nothing is put back.
    assert_eq!((positions.from_available, positions.to_incoming), (3, 0));
    assert!(!order.transfer.unwrap().taken);
}

#[test]
fn a_refused_delivery_puts_the_units_back() {
    let mut order = Order::default();
    let mut positions = Positions {
        from_available: 5,
        ..Positions::default()
    };
    run(&mut order, &OrderCommand::Transfer { spec: spec(5) }).unwrap();
    let out = order.pending[0].clone();
    let result = positions.run(&order, &out);
    run(
        &mut order,
        &OrderCommand::CompleteStep {
            number: out.number,
            result,
        },
    )
    .unwrap();
    let delivery = order.pending[0].clone();
    assert_eq!(delivery.action, Action::TransferIn);
    let refused = StepResult::Refused {
        error: "no such location".into(),
    };
    run(
        &mut order,
        &OrderCommand::CompleteStep {
            number: delivery.number,
            result: refused,
        },
    )
    .unwrap();
    assert_eq!(order.pending[0].action, Action::TransferReturn);
    drive(&mut order, &mut positions);
    assert_eq!(order.status, Some(OrderStatus::Released));
    assert_eq!((positions.from_available, positions.to_incoming), (5, 0));
}

#[test]
fn a_transient_failure_is_retried_not_given_up() {
    let mut order = Order::default();
    run(&mut order, &OrderCommand::Transfer { spec: spec(1) }).unwrap();
    let step = order.pending[0].clone();
    for _ in 0..(RESERVE_ATTEMPTS + 3) {
        run(
            &mut order,
            &OrderCommand::CompleteStep {
                number: step.number,
                result: StepResult::Retry {
                    error: "unavailable".into(),
                },
            },
        )
        .unwrap();
    }
    assert_eq!(order.pending.first().map(|s| s.number), Some(step.number));
    assert_eq!(order.status, Some(OrderStatus::Reserving));
}

#[test]
fn the_same_transfer_asked_again_changes_nothing_and_another_is_refused() {
    let mut order = Order::default();
    let mut positions = Positions {
        from_available: 10,
        ..Positions::default()
    };
    run(&mut order, &OrderCommand::Transfer { spec: spec(2) }).unwrap();
    drive(&mut order, &mut positions);
    assert_eq!(
        run(&mut order, &OrderCommand::Transfer { spec: spec(2) }).unwrap(),
        vec![]
    );
    assert!(matches!(
        run(&mut order, &OrderCommand::Transfer { spec: spec(3) }),
        Err(Refusal::OrderExists(_))
    ));
    assert!(matches!(
        run(&mut order, &OrderCommand::Commit),
        Err(Refusal::FailedPrecondition(_))
    ));
    assert_eq!((positions.from_available, positions.to_incoming), (8, 2));
}

#[test]
fn bad_transfers_are_refused_before_anything_is_recorded() {
    let order = Order::default();
    for bad in [
        TransferSpec {
            to: "dc".into(),
            ..spec(1)
        },
        spec(0),
        spec(-3),
        TransferSpec {
            sku: String::new(),
            ..spec(1)
        },
    ] {
        let refused = decide(&order, "t1", None, &OrderCommand::Transfer { spec: bad }, 0);
        assert!(
            matches!(refused, Err(Refusal::InvalidArgument { .. })),
            "{refused:?}"
        );
    }
    assert!(matches!(
        decide(&order, "t1", None, &OrderCommand::ReceiveTransfer, 0),
        Err(Refusal::OrderNotFound(_))
    ));
}

#[derive(Debug, Clone)]
enum Fault {
    /// The step runs but its result is lost (the node crashed after it):
    /// the step stays pending and runs again.
    CrashAfter,
    /// The step never reaches the position (crashed before it).
    CrashBefore,
    /// The position could not be reached.
    Transient,
    /// The delivery is refused.
    RefuseDelivery,
    None,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::CrashAfter),
        Just(Fault::CrashBefore),
        Just(Fault::Transient),
        Just(Fault::RefuseDelivery),
        Just(Fault::None),
        Just(Fault::None),
    ]
}

proptest! {
    /// Whatever fails where, at rest the units are either in `to`'s
    /// incoming or back at `from`: never both, never neither.
    #[test]
    fn a_transfer_ends_delivered_or_returned(
        available in 0i64..8,
        quantity in 1i64..6,
        faults in proptest::collection::vec(fault(), 0..24),
    ) {
        let mut order = Order::default();
        let mut positions = Positions { from_available: available, ..Positions::default() };
        run(&mut order, &OrderCommand::Transfer { spec: spec(quantity) }).unwrap();
        let mut faults = faults.into_iter();
        for _ in 0..64 {
            let Some(step) = order.pending.first().cloned() else { break };
            let result = match faults.next().unwrap_or(Fault::None) {
                Fault::CrashBefore => continue,
                Fault::CrashAfter => {
                    positions.run(&order, &step);
                    continue;
                }
                Fault::Transient => StepResult::Retry { error: "down".into() },
                Fault::RefuseDelivery if step.action == Action::TransferIn => {
                    // Refused unless it already ran: the position keeps its first answer.
                    let key = step_key_for("t1", TRANSFER_LINE_ID, step.number);
                    positions
                        .answers
                        .entry(key)
                        .or_insert(StepResult::Refused { error: "refused".into() })
                        .clone()
                }
                _ => positions.run(&order, &step),
            };
            run(&mut order, &OrderCommand::CompleteStep { number: step.number, result }).unwrap();
        }
        prop_assert!(order.pending.is_empty(), "not at rest: {:?}", order.pending);
        let delivered = (available - quantity, quantity);
        let returned = (available, 0);
        let now = (positions.from_available, positions.to_incoming);
        match order.status {
            Some(OrderStatus::Held) => prop_assert_eq!(now, delivered),
            Some(OrderStatus::Released) => prop_assert_eq!(now, returned),
            other => prop_assert!(false, "unexpected status {:?}", other),
        }
        if available < quantity {
            prop_assert_eq!(order.status, Some(OrderStatus::Released));
        }
    }
}
