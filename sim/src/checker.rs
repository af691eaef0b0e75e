//! The checks a simulation must pass, after healing and after the unknown
//! outcomes were resolved: each turns what the clients, the prober and the
//! store saw into a list of violations (empty: passed).
//!
//! Safety: every acknowledged operation applied exactly once (the
//! positions hold exactly what the history says), nothing refused that
//! could not be, no bucket negative, no oversell (the epochs of a shard's
//! commits are the store's check: `store::interleaved_epochs`). Liveness: every node answers again
//! within the lease TTL + 5 s of its last cut healing, and enough
//! operations are applied in every phase (a run that refuses everything
//! passes nothing).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tonic::Code;

use crate::history::{Ask, History, Outcome};
use crate::trace::stamp;
use crate::workload::{Observed, Probes};

/// Which refusals an operation may legitimately get: stock short for a
/// reservation or a write-off; nothing for a release or a commit of a
/// reservation the client holds, or for a receipt.
fn refusal_allowed(ask: &Ask, code: Code) -> bool {
    match ask {
        Ask::Reserve { .. } => code == Code::FailedPrecondition,
        Ask::Adjust { delta } if *delta < 0 => code == Code::FailedPrecondition,
        Ask::Adjust { .. } | Ask::Release { .. } | Ask::Commit { .. } => false,
    }
}

/// What a position must hold after the history.
#[derive(Debug, Default, PartialEq, Eq)]
struct Expected {
    on_hand: i64,
    committed: i64,
    held: BTreeMap<String, i64>,
    commitments: BTreeMap<String, i64>,
}

/// The history against the positions read back. `stock` is what every
/// position was stocked with before the history (its own adjustment,
/// outside the history).
pub fn check_history(history: &History, stock: i64, observed: &[Observed]) -> Vec<String> {
    let mut violations = Vec::new();
    let mut expected: Vec<Expected> = observed
        .iter()
        .map(|_| Expected {
            on_hand: stock,
            ..Expected::default()
        })
        .collect();
    let mut keys = BTreeSet::new();
    for record in &history.records {
        let op = &record.op;
        if !keys.insert(op.idempotency_key.as_str()) {
            violations.push(format!(
                "the workload used the key {} twice",
                op.idempotency_key
            ));
        }
        match &record.outcome {
            Outcome::Applied => {}
            Outcome::Refused { code, message } => {
                if !refusal_allowed(&op.ask, *code) {
                    violations.push(format!(
                        "{op} refused with {code:?} at {}: {message}",
                        stamp(record.answered_at)
                    ));
                }
                continue;
            }
            Outcome::Unknown => {
                violations.push(format!("{op}: outcome still unknown after resending"));
                continue;
            }
        }
        let Some(position) = expected.get_mut(op.position) else {
            violations.push(format!("{op}: no such position was read back"));
            continue;
        };
        match &op.ask {
            Ask::Reserve {
                reservation_id,
                quantity,
            } => {
                position.held.insert(reservation_id.clone(), *quantity);
            }
            Ask::Release { reservation_id, .. } => {
                position.held.remove(reservation_id);
            }
            Ask::Commit {
                reservation_id,
                quantity,
            } => {
                position.held.remove(reservation_id);
                position.committed += quantity;
                position
                    .commitments
                    .insert(reservation_id.clone(), *quantity);
            }
            Ask::Adjust { delta } => position.on_hand += delta,
        }
    }
    for (index, (want, found)) in expected.iter().zip(observed).enumerate() {
        violations.extend(check_position(index, want, found));
    }
    violations
}

fn check_position(index: usize, want: &Expected, found: &Observed) -> Vec<String> {
    let buckets = &found.buckets;
    let mut violations = Vec::new();
    let mut say = |text: String| violations.push(format!("position {index}: {text}"));
    for (name, value) in buckets.named() {
        if value < 0 {
            say(format!("{name} is negative ({value})"));
        }
    }
    let physical = buckets.available
        + buckets.reserved
        + buckets.committed
        + buckets.damaged
        + buckets.quality_control
        + buckets.safety_stock;
    if buckets.on_hand != physical {
        say(format!(
            "on_hand {} is not the sum of the physical buckets {physical}",
            buckets.on_hand
        ));
    }
    if buckets.reserved + buckets.committed > buckets.on_hand {
        say(format!(
            "oversold: reserved {} + committed {} > on_hand {}",
            buckets.reserved, buckets.committed, buckets.on_hand
        ));
    }
    if buckets.on_hand != want.on_hand {
        say(format!(
            "on_hand {} but the history says {}: an adjustment lost or applied twice",
            buckets.on_hand, want.on_hand
        ));
    }
    let held: i64 = want.held.values().sum();
    if buckets.reserved != held {
        say(format!(
            "reserved {} but the acknowledged reservations hold {held}",
            buckets.reserved
        ));
    }
    if buckets.committed != want.committed {
        say(format!(
            "committed {} but the history says {}",
            buckets.committed, want.committed
        ));
    }
    if found.held != want.held {
        let lost: Vec<_> = want
            .held
            .keys()
            .filter(|id| !found.held.contains_key(*id))
            .take(5)
            .collect();
        let extra: Vec<_> = found
            .held
            .keys()
            .filter(|id| !want.held.contains_key(*id))
            .take(5)
            .collect();
        say(format!(
            "{} reservations held, {} acknowledged; lost e.g. {lost:?}, never acknowledged e.g. {extra:?}",
            found.held.len(),
            want.held.len()
        ));
    }
    if found.commitments != want.commitments {
        say(format!(
            "{} commitments stored, {} acknowledged",
            found.commitments.len(),
            want.commitments.len()
        ));
    }
    violations
}

/// Every node answers the prober again within `allowed` of `healed[node]`,
/// its last cut's healing (for a node never cut: the time faults began).
pub fn check_liveness(
    probes: &BTreeMap<String, Probes>,
    healed: &BTreeMap<String, Duration>,
    allowed: Duration,
) -> Vec<String> {
    let mut violations = Vec::new();
    for (node, healed_at) in healed {
        let first_answer = probes.get(node).and_then(|probes| {
            probes
                .answered
                .iter()
                .find(|(at, answered)| *answered && at >= healed_at)
                .map(|(at, _)| *at)
        });
        match first_answer {
            Some(at) if at - *healed_at <= allowed => {}
            Some(at) => violations.push(format!(
                "{node} answered only at {}, {:.1?} after its last cut healed at {} (allowed {allowed:?})",
                stamp(at),
                at - *healed_at,
                stamp(*healed_at)
            )),
            None => violations.push(format!(
                "{node} never answered after its last cut healed at {}",
                stamp(*healed_at)
            )),
        }
    }
    violations
}

/// A stretch of simulated time that must see at least `minimum` applied
/// operations.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: String,
    pub from: Duration,
    pub to: Duration,
    pub minimum: usize,
}

pub fn check_phases(history: &History, phases: &[Phase]) -> Vec<String> {
    phases
        .iter()
        .filter_map(|phase| {
            let applied = history.applied_between(phase.from, phase.to);
            (applied < phase.minimum).then(|| {
                format!(
                    "phase {} ({} - {}): {applied} operations applied, at least {} expected",
                    phase.name,
                    stamp(phase.from),
                    stamp(phase.to),
                    phase.minimum
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Op, Record};
    use skuld_proto::v1 as pb;

    fn applied(position: usize, key: &str, ask: Ask) -> Record {
        Record {
            op: Op {
                position,
                idempotency_key: key.into(),
                ask,
            },
            outcome: Outcome::Applied,
            sent_at: Duration::ZERO,
            answered_at: Duration::from_secs(1),
            attempts: 1,
            resolved: false,
        }
    }

    fn reserve(id: &str, quantity: i64) -> Ask {
        Ask::Reserve {
            reservation_id: id.into(),
            quantity,
        }
    }

    /// Stock 10, +2 received, r1 (3) committed, r2 (4) held.
    fn story() -> (History, Vec<Observed>) {
        let history = History {
            records: vec![
                applied(0, "k1", reserve("r1", 3)),
                applied(0, "k2", reserve("r2", 4)),
                applied(0, "k3", Ask::Adjust { delta: 2 }),
                applied(
                    0,
                    "k4",
                    Ask::Commit {
                        reservation_id: "r1".into(),
                        quantity: 3,
                    },
                ),
            ],
            attempt_errors: BTreeMap::new(),
        };
        let observed = Observed {
            buckets: pb::Buckets {
                on_hand: 12,
                available: 5,
                reserved: 4,
                committed: 3,
                ..pb::Buckets::default()
            },
            held: BTreeMap::from([("r2".to_owned(), 4)]),
            commitments: BTreeMap::from([("r1".to_owned(), 3)]),
        };
        (history, vec![observed])
    }

    #[test]
    fn a_store_that_matches_the_history_passes() {
        let (history, observed) = story();
        assert_eq!(check_history(&history, 10, &observed), Vec::<String>::new());
    }

    #[test]
    fn an_adjustment_applied_twice_a_lost_reservation_and_an_oversell_are_found() {
        let (history, mut observed) = story();
        observed[0].buckets.on_hand = 14;
        observed[0].buckets.available = 7;
        let violations = check_history(&history, 10, &observed);
        assert!(
            violations.iter().any(|v| v.contains("applied twice")),
            "{violations:?}"
        );

        let (history, mut observed) = story();
        observed[0].held.clear();
        observed[0].buckets.reserved = 0;
        observed[0].buckets.available = 9;
        let violations = check_history(&history, 10, &observed);
        assert!(
            violations.iter().any(|v| v.contains("lost e.g. [\"r2\"]")),
            "{violations:?}"
        );

        let (history, mut observed) = story();
        observed[0].buckets.available = -1;
        observed[0].buckets.reserved = 10;
        let violations = check_history(&history, 10, &observed);
        assert!(
            violations
                .iter()
                .any(|v| v.contains("available is negative")),
            "{violations:?}"
        );
        assert!(
            violations.iter().any(|v| v.contains("oversold")),
            "{violations:?}"
        );
    }

    #[test]
    fn a_refused_release_and_an_unresolved_outcome_are_violations() {
        let (mut history, observed) = story();
        history.records.push(Record {
            outcome: Outcome::Refused {
                code: Code::NotFound,
                message: "no such reservation".into(),
            },
            ..applied(
                0,
                "k5",
                Ask::Release {
                    reservation_id: "r2".into(),
                    quantity: 4,
                },
            )
        });
        history.records.push(Record {
            outcome: Outcome::Unknown,
            ..applied(0, "k6", reserve("r3", 1))
        });
        history.records.push(Record {
            outcome: Outcome::Refused {
                code: Code::FailedPrecondition,
                message: "insufficient".into(),
            },
            ..applied(0, "k7", reserve("r4", 9))
        });
        let violations = check_history(&history, 10, &observed);
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert!(violations[0].contains("refused with NotFound"));
        assert!(violations[1].contains("still unknown"));
    }

    #[test]
    fn a_node_that_answers_too_late_or_never_fails_liveness() {
        let probes = |answers: &[(u64, bool)]| Probes {
            answered: answers
                .iter()
                .map(|(ms, answered)| (Duration::from_millis(*ms), *answered))
                .collect(),
        };
        let seen = BTreeMap::from([
            (
                "node-1".to_owned(),
                probes(&[(9_000, true), (10_000, false), (12_000, true)]),
            ),
            (
                "node-2".to_owned(),
                probes(&[(10_000, false), (30_000, true)]),
            ),
            (
                "node-3".to_owned(),
                probes(&[(9_000, true), (10_500, false)]),
            ),
        ]);
        let healed = BTreeMap::from([
            ("node-1".to_owned(), Duration::from_secs(10)),
            ("node-2".to_owned(), Duration::from_secs(10)),
            ("node-3".to_owned(), Duration::from_secs(10)),
        ]);
        let violations = check_liveness(&seen, &healed, Duration::from_secs(8));
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert!(violations[0].starts_with("node-2 answered only at"));
        assert!(violations[1].starts_with("node-3 never answered"));
    }

    #[test]
    fn a_phase_with_too_few_applied_operations_fails() {
        let (history, _) = story();
        let phase = |minimum| Phase {
            name: "warm-up".into(),
            from: Duration::ZERO,
            to: Duration::from_secs(2),
            minimum,
        };
        assert!(check_phases(&history, &[phase(4)]).is_empty());
        assert_eq!(check_phases(&history, &[phase(5)]).len(), 1);
    }
}
