//! Table tests of the order's rules, and a property test of the saga
//! against simulated positions with failures and crashes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::journal::JournalEntry;

fn line(id: &str, sku: &str, quantity: i64, locations: &[&str], split: bool) -> LineSpec {
    LineSpec {
        line_id: id.into(),
        sku: sku.into(),
        quantity,
        locations: locations.iter().map(|l| (*l).to_owned()).collect(),
        split,
    }
}

fn run(order: &mut Order, command: &OrderCommand) -> Result<Vec<OrderEvent>, crate::Refusal> {
    let events = decide(order, "o1", None, command, 1_000)?;
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

/// Positions as the saga sees them: available per (sku, location), active
/// reservations and commitments by id, and the answer kept per step key.
#[derive(Default, Clone)]
struct Positions {
    available: HashMap<(String, String), i64>,
    reserved: HashMap<String, ((String, String), i64)>,
    committed: HashMap<String, ((String, String), i64)>,
    answers: HashMap<String, StepResult>,
}

impl Positions {
    fn total(&self) -> i64 {
        self.available.values().sum::<i64>()
            + self.reserved.values().map(|(_, q)| q).sum::<i64>()
            + self.committed.values().map(|(_, q)| q).sum::<i64>()
    }

    /// Runs a step with its idempotency key: a second run replays.
    fn run(&mut self, order: &Order, step: &Step) -> StepResult {
        let line = &order.lines[step.line];
        let key = step_key_for("o1", &line.spec.line_id, step.number);
        if let Some(answer) = self.answers.get(&key) {
            return answer.clone();
        }
        let result = match &step.action {
            Action::Reserve {
                location,
                quantity,
                allow_partial,
            } => {
                let position = (line.spec.sku.clone(), location.clone());
                let available = self.available.entry(position.clone()).or_default();
                let granted = if *quantity <= *available {
                    *quantity
                } else if *allow_partial && *available > 0 {
                    *available
                } else {
                    0
                };
                if granted == 0 {
                    StepResult::Insufficient {
                        available: *available,
                    }
                } else {
                    *available -= granted;
                    self.reserved.insert(key.clone(), (position, granted));
                    StepResult::Reserved { granted }
                }
            }
            Action::Release { hold } => {
                let hold = &line.holds[*hold];
                let id = step_key_for("o1", &line.spec.line_id, hold.step);
                if let Some((position, quantity)) = self.reserved.remove(&id) {
                    *self.available.entry(position).or_default() += quantity;
                }
                StepResult::Done
            }
            Action::Commit { hold } => {
                let hold = &line.holds[*hold];
                let id = step_key_for("o1", &line.spec.line_id, hold.step);
                match self.reserved.remove(&id) {
                    Some(held) => {
                        self.committed.insert(id, held);
                        StepResult::Done
                    }
                    None => StepResult::Refused {
                        error: "reservation not found".into(),
                    },
                }
            }
            Action::CancelCommit { hold } => {
                let hold = &line.holds[*hold];
                let id = step_key_for("o1", &line.spec.line_id, hold.step);
                if let Some((position, quantity)) = self.committed.remove(&id) {
                    *self.available.entry(position).or_default() += quantity;
                }
                StepResult::Done
            }
            other => panic!("not an order step: {other:?}"),
        };
        self.answers.insert(key, result.clone());
        result
    }

    fn held_by(&self, line_id: &str) -> i64 {
        let prefix = format!("ord:o1:{line_id}:");
        self.reserved
            .iter()
            .filter(|(id, _)| id.starts_with(&prefix))
            .map(|(_, (_, q))| q)
            .sum()
    }
}

fn stock(entries: &[(&str, &str, i64)]) -> Positions {
    let mut positions = Positions::default();
    for (sku, location, quantity) in entries {
        positions
            .available
            .insert(((*sku).into(), (*location).into()), *quantity);
    }
    positions
}

/// Runs the saga to rest with every step succeeding.
fn settle(order: &mut Order, positions: &mut Positions) {
    for _ in 0..1_000 {
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
    panic!("the saga did not settle");
}

fn reserve(lines: Vec<LineSpec>) -> OrderCommand {
    OrderCommand::Reserve {
        lines,
        ttl_ms: 0,
        channel: String::new(),
    }
}

#[test]
fn a_line_without_stock_releases_the_others_and_names_what_was_available() {
    let mut positions = stock(&[("A", "DC1", 5), ("B", "DC1", 1)]);
    let mut order = Order::default();
    run(
        &mut order,
        &reserve(vec![
            line("1", "A", 3, &["DC1"], false),
            line("2", "B", 2, &["DC1"], false),
        ]),
    )
    .unwrap();
    settle(&mut order, &mut positions);
    assert_eq!(order.status, Some(OrderStatus::Released));
    let failure = order.failure.clone().unwrap();
    assert_eq!(failure.line_id, "2");
    assert_eq!(failure.shortfalls[0].available, Some(1));
    assert_eq!(positions.available[&("A".into(), "DC1".into())], 5);
    assert!(positions.reserved.is_empty());
}

#[test]
fn candidates_are_tried_in_order_and_a_split_takes_from_several() {
    let mut positions = stock(&[
        ("A", "S1", 1),
        ("A", "S2", 4),
        ("B", "S1", 2),
        ("B", "S2", 3),
    ]);
    let mut order = Order::default();
    run(
        &mut order,
        &reserve(vec![
            line("1", "A", 3, &["S1", "S2"], false),
            line("2", "B", 4, &["S1", "S2"], true),
        ]),
    )
    .unwrap();
    settle(&mut order, &mut positions);
    assert_eq!(order.status, Some(OrderStatus::Held));
    let held: Vec<(String, i64)> = order.lines[0]
        .holds
        .iter()
        .map(|h| (h.location.clone(), h.quantity))
        .collect();
    assert_eq!(held, vec![("S2".to_owned(), 3)]);
    let split: Vec<(String, i64)> = order.lines[1]
        .holds
        .iter()
        .map(|h| (h.location.clone(), h.quantity))
        .collect();
    assert_eq!(split, vec![("S1".to_owned(), 2), ("S2".to_owned(), 2)]);
}

#[test]
fn commit_and_release_follow_the_status() {
    let mut positions = stock(&[("A", "DC1", 5)]);
    let mut order = Order::default();
    assert!(matches!(
        run(&mut order, &OrderCommand::Commit),
        Err(crate::Refusal::OrderNotFound(_))
    ));
    run(
        &mut order,
        &reserve(vec![line("1", "A", 2, &["DC1"], false)]),
    )
    .unwrap();
    assert!(matches!(
        run(&mut order, &OrderCommand::Commit),
        Err(crate::Refusal::FailedPrecondition(_))
    ));
    settle(&mut order, &mut positions);
    // The same reservation again changes nothing; other lines are refused.
    assert!(run(
        &mut order,
        &reserve(vec![line("1", "A", 2, &["DC1"], false)])
    )
    .unwrap()
    .is_empty());
    assert!(matches!(
        run(
            &mut order,
            &reserve(vec![line("1", "A", 3, &["DC1"], false)])
        ),
        Err(crate::Refusal::OrderExists(_))
    ));
    run(&mut order, &OrderCommand::Commit).unwrap();
    settle(&mut order, &mut positions);
    assert_eq!(order.status, Some(OrderStatus::Committed));
    assert_eq!(positions.committed.len(), 1);
    assert!(run(&mut order, &OrderCommand::Commit).unwrap().is_empty());
    assert!(matches!(
        run(&mut order, &OrderCommand::Release),
        Err(crate::Refusal::FailedPrecondition(_))
    ));
}

#[test]
fn a_commit_refused_undoes_the_commitments_made() {
    let mut positions = stock(&[("A", "DC1", 5), ("B", "DC1", 5)]);
    let mut order = Order::default();
    run(
        &mut order,
        &reserve(vec![
            line("1", "A", 2, &["DC1"], false),
            line("2", "B", 2, &["DC1"], false),
        ]),
    )
    .unwrap();
    settle(&mut order, &mut positions);
    // Line 2's hold expired at its position.
    let expired = step_key_for("o1", "2", order.lines[1].holds[0].step);
    let (position, quantity) = positions.reserved.remove(&expired).unwrap();
    *positions.available.get_mut(&position).unwrap() += quantity;
    run(&mut order, &OrderCommand::Commit).unwrap();
    settle(&mut order, &mut positions);
    assert_eq!(order.status, Some(OrderStatus::Released));
    assert_eq!(order.failure.unwrap().line_id, "2");
    assert!(positions.committed.is_empty() && positions.reserved.is_empty());
    assert_eq!(positions.total(), 10);
}

#[test]
fn a_reservation_never_answered_is_released_in_doubt() {
    let mut positions = stock(&[("A", "DC1", 5)]);
    let mut order = Order::default();
    run(
        &mut order,
        &reserve(vec![line("1", "A", 2, &["DC1"], false)]),
    )
    .unwrap();
    // The position took it, but every answer was lost.
    let step = order.pending[0].clone();
    positions.run(&order, &step);
    for _ in 0..RESERVE_ATTEMPTS {
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
    settle(&mut order, &mut positions);
    assert_eq!(order.status, Some(OrderStatus::Released));
    assert!(positions.reserved.is_empty());
    assert_eq!(positions.available[&("A".into(), "DC1".into())], 5);
}

/// Answers the pending steps numbered `numbers`, in that order, each with
/// what the positions say.
fn answer(order: &mut Order, positions: &mut Positions, numbers: &[u32]) {
    for number in numbers {
        let step = order.pending_step(*number).cloned().unwrap();
        let result = positions.run(order, &step);
        run(
            order,
            &OrderCommand::CompleteStep {
                number: *number,
                result,
            },
        )
        .unwrap();
    }
}

fn pending_actions(order: &Order) -> Vec<(u32, usize, Action)> {
    order
        .pending
        .iter()
        .map(|step| (step.number, step.line, step.action.clone()))
        .collect()
}

fn three_lines() -> OrderCommand {
    reserve(vec![
        line("1", "A", 1, &["DC1"], false),
        line("2", "B", 1, &["DC1"], false),
        line("3", "C", 1, &["DC1"], false),
    ])
}

#[test]
fn the_opening_records_every_lines_reserve_and_the_last_answer_holds_the_order() {
    let mut positions = stock(&[("A", "DC1", 1), ("B", "DC1", 1), ("C", "DC1", 1)]);
    let mut order = Order::default();
    let opening = run(&mut order, &three_lines()).unwrap();
    // One write: the opening and the three reserve steps.
    assert_eq!(opening.len(), 4);
    let numbers: Vec<u32> = order.pending.iter().map(|s| s.number).collect();
    assert_eq!(numbers, vec![1, 2, 3]);
    assert_eq!(
        order.pending.iter().map(|s| s.line).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    answer(&mut order, &mut positions, &[3, 1]);
    // Nothing new runs until the round is answered.
    assert_eq!(order.status, Some(OrderStatus::Reserving));
    assert_eq!(pending_actions(&order).len(), 1);
    answer(&mut order, &mut positions, &[2]);
    assert_eq!(order.status, Some(OrderStatus::Held));
    assert!(order.pending.is_empty());
    assert_eq!(positions.reserved.len(), 3);
}

#[test]
fn one_failure_among_concurrent_successes_releases_the_others_whatever_the_answer_order() {
    let mut settled = Vec::new();
    for answers in [[1, 2, 3], [2, 3, 1], [3, 1, 2]] {
        let mut positions = stock(&[("A", "DC1", 1), ("B", "DC1", 0), ("C", "DC1", 1)]);
        let mut order = Order::default();
        run(&mut order, &three_lines()).unwrap();
        answer(&mut order, &mut positions, &answers);
        // The round is answered: line 2 cannot be held, and lines 1 and 3
        // are given back at once.
        assert_eq!(order.status, Some(OrderStatus::Releasing));
        assert_eq!(
            pending_actions(&order),
            vec![
                (4, 0, Action::Release { hold: 0 }),
                (5, 2, Action::Release { hold: 0 }),
            ]
        );
        answer(&mut order, &mut positions, &[5, 4]);
        assert_eq!(order.status, Some(OrderStatus::Released));
        assert_eq!(order.failure.as_ref().unwrap().line_id, "2");
        assert!(positions.reserved.is_empty());
        assert_eq!(positions.total(), 2);
        order.settled_at_ms = None;
        settled.push(order);
    }
    // The same order whatever the order the answers came in.
    assert!(settled.windows(2).all(|pair| pair[0] == pair[1]));
}

#[test]
fn duplicate_and_late_answers_change_nothing_and_a_hold_taken_while_releasing_is_given_back() {
    let mut positions = stock(&[("A", "DC1", 1), ("B", "DC1", 1), ("C", "DC1", 1)]);
    let mut order = Order::default();
    run(&mut order, &three_lines()).unwrap();
    answer(&mut order, &mut positions, &[1]);
    // The same answer again (a rerun after a crash) is already recorded.
    let again = run(
        &mut order,
        &OrderCommand::CompleteStep {
            number: 1,
            result: StepResult::Reserved { granted: 1 },
        },
    )
    .unwrap();
    assert!(again.is_empty());
    assert_eq!(order.lines[0].holds.len(), 1);
    // The client releases while lines 2 and 3 are still being reserved:
    // their holds are recorded when answered, then given back.
    run(&mut order, &OrderCommand::Release).unwrap();
    assert_eq!(order.status, Some(OrderStatus::Releasing));
    assert_eq!(
        pending_actions(&order).len(),
        2,
        "no release before the round ends"
    );
    answer(&mut order, &mut positions, &[3, 2]);
    assert_eq!(pending_actions(&order).len(), 3);
    settle(&mut order, &mut positions);
    assert_eq!(order.status, Some(OrderStatus::Released));
    assert!(positions.reserved.is_empty());
    assert_eq!(positions.total(), 3);
    // A result for the released order (a step answered twice) is ignored.
    let late = run(
        &mut order,
        &OrderCommand::CompleteStep {
            number: 2,
            result: StepResult::Reserved { granted: 1 },
        },
    )
    .unwrap();
    assert!(late.is_empty());
    assert_eq!(order.status, Some(OrderStatus::Released));
}

#[test]
fn malformed_lines_are_refused() {
    let too_long = "x".repeat(MAX_LINE_ID_BYTES + 1);
    for lines in [
        vec![],
        vec![line("1", "A", 0, &["DC1"], false)],
        vec![line("1", "A", 1, &[], false)],
        vec![line("1", "A", 1, &["DC1", "DC1"], false)],
        vec![
            line("1", "A", 1, &["DC1"], false),
            line("1", "B", 1, &["DC1"], false),
        ],
        vec![line(&too_long, "A", 1, &["DC1"], false)],
    ] {
        assert!(matches!(
            run(&mut Order::default(), &reserve(lines)),
            Err(crate::Refusal::InvalidArgument { .. })
        ));
    }
}

#[test]
fn the_key_round_trips() {
    let key = OrderKey::new("t", "o/1").unwrap();
    assert_eq!(OrderKey::decode(&key.encode()), Some(key));
    assert!(OrderKey::new("t", "o".repeat(MAX_ORDER_ID_BYTES + 1)).is_err());
}

/// What happens to one pending step in the property test.
#[derive(Debug, Clone, Copy)]
enum Fate {
    /// Run and reported.
    Ok,
    /// The node died before the position saw it: run again later.
    CrashBefore,
    /// The position applied it, the node died before the result was
    /// recorded: the rerun is replayed by the position.
    CrashAfter,
    /// A transient failure reported as a retry.
    Transient,
    /// The client releases the order now, then the step is run.
    ClientRelease,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        4 => Just(Fate::Ok),
        1 => Just(Fate::CrashBefore),
        1 => Just(Fate::CrashAfter),
        1 => Just(Fate::Transient),
        1 => Just(Fate::ClientRelease),
    ]
}

fn spec() -> impl Strategy<Value = (Vec<LineSpec>, Vec<(String, String, i64)>)> {
    let locations = ["L1", "L2", "L3"];
    let line = (
        1i64..6,
        proptest::sample::subsequence(locations.to_vec(), 1..=3),
        any::<bool>(),
    );
    (
        proptest::collection::vec(line, 1..4),
        proptest::collection::vec(0i64..6, 9),
    )
        .prop_map(move |(lines, stock)| {
            let specs = lines
                .into_iter()
                .enumerate()
                .map(|(i, (quantity, locs, split))| LineSpec {
                    line_id: format!("l{i}"),
                    // Two lines may share a SKU: they compete for it.
                    sku: format!("S{}", i % 2),
                    quantity,
                    locations: locs.iter().map(|l| (*l).to_owned()).collect(),
                    split,
                })
                .collect();
            let mut entries = Vec::new();
            for (i, quantity) in stock.into_iter().enumerate() {
                entries.push((format!("S{}", i % 3), locations[i / 3].to_owned(), quantity));
            }
            (specs, entries)
        })
}

proptest! {
    /// Whatever the interleaving of step results, crashes and a client's
    /// release, an order at rest is all held or all released, and the
    /// positions agree with it: no unit leaked, none held twice.
    #[test]
    fn at_rest_all_held_or_all_released(
        (lines, entries) in spec(),
        fates in proptest::collection::vec((fate(), any::<prop::sample::Index>()), 0..60),
        commit in any::<bool>(),
    ) {
        let mut positions = Positions::default();
        for (sku, location, quantity) in &entries {
            positions.available.insert((sku.clone(), location.clone()), *quantity);
        }
        let total = positions.total();
        let mut order = Order::default();
        run(&mut order, &reserve(lines.clone())).unwrap();
        let mut fates = fates.into_iter();
        let mut committed_asked = false;
        for _ in 0..2_000 {
            if order.pending.is_empty() {
                if commit && !committed_asked && order.status == Some(OrderStatus::Held) {
                    committed_asked = true;
                    run(&mut order, &OrderCommand::Commit).unwrap();
                    continue;
                }
                break;
            }
            // Concurrent steps are answered in any order.
            let (fate, at) = fates
                .next()
                .map_or((Fate::Ok, 0), |(fate, pick)| (fate, pick.index(order.pending.len())));
            let step = order.pending[at].clone();
            let result = match fate {
                Fate::Ok => positions.run(&order, &step),
                Fate::CrashBefore => continue,
                Fate::CrashAfter => {
                    positions.run(&order, &step);
                    continue;
                }
                Fate::Transient => StepResult::Retry { error: "unavailable".into() },
                Fate::ClientRelease => {
                    // Allowed or refused by the status; either is fine.
                    let _ = run(&mut order, &OrderCommand::Release);
                    positions.run(&order, &step)
                }
            };
            run(&mut order, &OrderCommand::CompleteStep { number: step.number, result }).unwrap();
        }
        prop_assert!(order.pending.is_empty(), "the saga did not come to rest");
        let status = order.status.unwrap();
        prop_assert!(status.at_rest());
        prop_assert_eq!(positions.total(), total, "units leaked");
        match status {
            OrderStatus::Held => {
                prop_assert!(positions.committed.is_empty());
                for line in &order.lines {
                    prop_assert_eq!(line.held(), line.spec.quantity);
                    prop_assert_eq!(positions.held_by(&line.spec.line_id), line.spec.quantity);
                }
                prop_assert_eq!(
                    positions.reserved.len(),
                    order.lines.iter().map(|l| l.holds.len()).sum::<usize>()
                );
            }
            OrderStatus::Committed => {
                prop_assert!(positions.reserved.is_empty());
                let committed: i64 = positions.committed.values().map(|(_, q)| q).sum();
                prop_assert_eq!(committed, lines.iter().map(|l| l.quantity).sum::<i64>());
            }
            OrderStatus::Released => {
                prop_assert!(positions.reserved.is_empty(), "a hold was left");
                prop_assert!(positions.committed.is_empty(), "a commitment was left");
                prop_assert!(order.failure.is_some());
            }
            _ => unreachable!(),
        }
    }
}

/// A snapshot written when `pending` was an `Option<Step>` still decodes:
/// bincode writes an option and a sequence of at most one alike.
#[test]
fn a_snapshot_with_one_optional_pending_step_decodes_as_the_list() {
    #[derive(serde::Serialize)]
    struct Before {
        pending: Option<Step>,
    }
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct After {
        pending: Vec<Step>,
    }
    let step = Step {
        number: 7,
        line: 1,
        action: Action::Release { hold: 0 },
        attempts: 2,
        retry_at_ms: 9,
        last_error: "x".into(),
    };
    let config = bincode::config::standard();
    for (before, after) in [(None, vec![]), (Some(step.clone()), vec![step])] {
        let bytes = bincode::serde::encode_to_vec(Before { pending: before }, config).unwrap();
        let (decoded, _): (After, usize) =
            bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(decoded, After { pending: after });
    }
}
