//! What the simulated clients asked and what they were told.
//!
//! The ideas of `tests/src/workload.rs` (one idempotency key per operation,
//! outcomes acknowledged, refused or unknown), in simulated time: every
//! instant is turmoil's logical time since the simulation started, so a
//! history replays exactly with its seed.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use tonic::Code;

/// What one operation asks of a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    Reserve {
        reservation_id: String,
        quantity: i64,
    },
    Release {
        reservation_id: String,
        quantity: i64,
    },
    /// Commits the whole reservation to the order named after it.
    Commit {
        reservation_id: String,
        quantity: i64,
    },
    /// On the available bucket; negative writes stock off.
    Adjust { delta: i64 },
}

impl fmt::Display for Ask {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ask::Reserve {
                reservation_id,
                quantity,
            } => write!(formatter, "reserve {reservation_id} x{quantity}"),
            Ask::Release {
                reservation_id,
                quantity,
            } => write!(formatter, "release {reservation_id} x{quantity}"),
            Ask::Commit {
                reservation_id,
                quantity,
            } => write!(formatter, "commit {reservation_id} x{quantity}"),
            Ask::Adjust { delta } => write!(formatter, "adjust {delta:+}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Index into the workload's positions.
    pub position: usize,
    pub idempotency_key: String,
    pub ask: Ask,
}

impl fmt::Display for Op {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{} p{} key={}",
            self.ask, self.position, self.idempotency_key
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Refused {
        code: Code,
        message: String,
    },
    /// No definitive answer within the retry budget.
    Unknown,
}

impl fmt::Display for Outcome {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Applied => formatter.write_str("applied"),
            Outcome::Refused { code, message } => write!(formatter, "refused {code:?}: {message}"),
            Outcome::Unknown => formatter.write_str("unknown"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Record {
    pub op: Op,
    pub outcome: Outcome,
    /// Simulated time of the first attempt.
    pub sent_at: Duration,
    /// Simulated time of the answer that decided it (or of giving up).
    pub answered_at: Duration,
    pub attempts: u32,
    /// Set when the checker resolved an unknown outcome by resending.
    pub resolved: bool,
}

/// Every client's records, in the order they were decided.
#[derive(Debug, Default, Clone)]
pub struct History {
    pub records: Vec<Record>,
    /// Failed attempts by status code, retried or not.
    pub attempt_errors: BTreeMap<String, u64>,
}

impl History {
    fn count(&self, outcome: impl Fn(&Outcome) -> bool) -> usize {
        self.records
            .iter()
            .filter(|record| outcome(&record.outcome))
            .count()
    }

    pub fn applied(&self) -> usize {
        self.count(|outcome| *outcome == Outcome::Applied)
    }

    pub fn refused(&self) -> usize {
        self.count(|outcome| matches!(outcome, Outcome::Refused { .. }))
    }

    pub fn unknown(&self) -> usize {
        self.count(|outcome| *outcome == Outcome::Unknown)
    }

    /// Applied operations answered within `[from, to)` of simulated time.
    pub fn applied_between(&self, from: Duration, to: Duration) -> usize {
        self.records
            .iter()
            .filter(|record| {
                record.outcome == Outcome::Applied
                    && !record.resolved
                    && record.answered_at >= from
                    && record.answered_at < to
            })
            .count()
    }

    pub fn summary(&self) -> String {
        format!(
            "{} operations: {} applied, {} refused, {} unknown ({} resolved later); failed attempts by code: {:?}",
            self.records.len(),
            self.applied(),
            self.refused(),
            self.unknown(),
            self.records.iter().filter(|record| record.resolved).count(),
            self.attempt_errors
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(outcome: Outcome, answered_ms: u64, resolved: bool) -> Record {
        Record {
            op: Op {
                position: 0,
                idempotency_key: "k".into(),
                ask: Ask::Adjust { delta: 1 },
            },
            outcome,
            sent_at: Duration::ZERO,
            answered_at: Duration::from_millis(answered_ms),
            attempts: 1,
            resolved,
        }
    }

    #[test]
    fn a_phase_counts_only_what_the_workload_saw_applied_in_it() {
        let history = History {
            records: vec![
                record(Outcome::Applied, 999, false),
                record(Outcome::Applied, 1_000, false),
                record(Outcome::Applied, 1_500, true),
                record(Outcome::Unknown, 1_600, false),
                record(
                    Outcome::Refused {
                        code: Code::FailedPrecondition,
                        message: String::new(),
                    },
                    1_700,
                    false,
                ),
                record(Outcome::Applied, 2_000, false),
            ],
            attempt_errors: BTreeMap::new(),
        };
        let between = history.applied_between(Duration::from_secs(1), Duration::from_secs(2));
        assert_eq!(between, 1);
        assert_eq!(
            (history.applied(), history.refused(), history.unknown()),
            (4, 1, 1)
        );
    }
}
