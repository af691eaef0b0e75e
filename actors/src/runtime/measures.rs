//! Business measures of committed changes: reservations created, returns
//! moved, refunds released and how long the case took.
//!
//! An entity names what each journal entry counts for
//! ([`crate::runtime::Entity::measure`]); the actor collects the measures of a
//! drain and records them only once its write is durable, so a failed or
//! abandoned write counts for nothing and a replayed retry is not counted
//! twice (its entry is not decided again).
//!
//! Label values are `&'static str`: each is one of a fixed set (an event
//! kind, a state, a team), never a key, a tenant or an id.

/// A measure's labels: one or two fixed `(name, value)` pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Labels {
    pairs: [(&'static str, &'static str); 2],
    len: usize,
}

impl Default for Labels {
    /// No labels.
    fn default() -> Self {
        Self {
            pairs: [("", ""); 2],
            len: 0,
        }
    }
}

impl Labels {
    pub fn one(name: &'static str, value: &'static str) -> Self {
        Self {
            pairs: [(name, value), ("", "")],
            len: 1,
        }
    }

    pub fn two(first: (&'static str, &'static str), second: (&'static str, &'static str)) -> Self {
        Self {
            pairs: [first, second],
            len: 2,
        }
    }

    pub fn as_slice(&self) -> &[(&'static str, &'static str)] {
        self.pairs.get(..self.len).unwrap_or_default()
    }
}

/// What a committed change adds to one Prometheus series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Measure {
    /// One more on the counter `name` (ends in `_total`).
    Count { name: &'static str, labels: Labels },
    /// One observation on the histogram `name` (base units: `_seconds`).
    Observe {
        name: &'static str,
        labels: Labels,
        value: f64,
    },
    /// One more refusal the entity decided (the answer its idempotency key
    /// keeps), by entity kind and [`crate::Refusal::reason`].
    Refused {
        kind: &'static str,
        reason: &'static str,
    },
}

impl Measure {
    pub fn count(name: &'static str, labels: Labels) -> Self {
        Measure::Count { name, labels }
    }

    pub fn observe(name: &'static str, labels: Labels, value: f64) -> Self {
        Measure::Observe {
            name,
            labels,
            value,
        }
    }

    /// Records the measure with the installed metrics recorder.
    pub fn record(&self) {
        match *self {
            Measure::Count { name, labels } => {
                metrics::counter!(name, labels.as_slice()).increment(1)
            }
            Measure::Observe {
                name,
                labels,
                value,
            } => metrics::histogram!(name, labels.as_slice()).record(value),
            Measure::Refused { kind, reason } => {
                metrics::counter!("skuld_refusals_total", "kind" => kind, "reason" => reason)
                    .increment(1)
            }
        }
    }
}

/// The measures of one drain, waiting for its write to be durable.
#[derive(Debug, Default)]
pub struct Pending(Vec<Measure>);

impl Pending {
    pub fn push(&mut self, measure: Measure) {
        self.0.push(measure);
    }

    pub fn extend(&mut self, measures: impl IntoIterator<Item = Measure>) {
        self.0.extend(measures);
    }

    /// The write is durable: every measure counts.
    pub fn record(self) {
        for measure in &self.0 {
            measure.record();
        }
    }
}
