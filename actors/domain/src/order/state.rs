//! An order's state, the events that change it, and how each one folds in.

use serde::{Deserialize, Serialize};

use crate::journal::JournalEntry;
use crate::key::{decode_parts, encode_parts, validate_tenant, validate_token};
use crate::Refusal;

use super::transfer::{apply_transfer_result, Transfer, TransferSpec};

/// Longest order id, in bytes: the step keys `ord:{order}:{line}:{step}`
/// built from it must stay within a token's 128 bytes.
pub const MAX_ORDER_ID_BYTES: usize = 64;
/// Longest line id, in bytes (same reason).
pub const MAX_LINE_ID_BYTES: usize = 32;
/// Lines an order may have at most.
pub const MAX_ORDER_LINES: usize = 100;
/// Candidate locations a line may name at most.
pub const MAX_LINE_LOCATIONS: usize = 16;

/// An order of one tenant: the key of an order actor.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OrderKey {
    pub tenant: String,
    pub order_id: String,
}

const ORDER_TAG: u8 = b'O';

impl OrderKey {
    pub fn new(tenant: impl Into<String>, order_id: impl Into<String>) -> Result<Self, Refusal> {
        let key = Self {
            tenant: tenant.into(),
            order_id: order_id.into(),
        };
        key.validate()?;
        Ok(key)
    }

    pub fn validate(&self) -> Result<(), Refusal> {
        validate_tenant("tenant", &self.tenant)?;
        validate_token("order_id", &self.order_id)?;
        if self.order_id.len() > MAX_ORDER_ID_BYTES {
            return Err(Refusal::invalid(
                "order_id",
                format!(
                    "is {} bytes; at most {MAX_ORDER_ID_BYTES} allowed",
                    self.order_id.len()
                ),
            ));
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_parts(ORDER_TAG, &[&self.tenant, &self.order_id])
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let [tenant, order_id] = decode_parts(ORDER_TAG, bytes)?;
        Some(Self { tenant, order_id })
    }
}

impl std::fmt::Display for OrderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tenant, self.order_id)
    }
}

/// What the client asked for one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineSpec {
    pub line_id: String,
    pub sku: String,
    pub quantity: i64,
    /// Candidate locations in preference order (one for a fixed location).
    pub locations: Vec<String>,
    /// Whether the quantity may be split across the candidates.
    pub split: bool,
}

/// Where an order is in its life. `Held`, `Released` and `Committed` are at
/// rest: no step is pending and the positions agree with the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    Reserving,
    Held,
    Committing,
    Committed,
    Releasing,
    Released,
}

impl OrderStatus {
    pub fn name(self) -> &'static str {
        match self {
            OrderStatus::Reserving => "reserving",
            OrderStatus::Held => "held",
            OrderStatus::Committing => "committing",
            OrderStatus::Committed => "committed",
            OrderStatus::Releasing => "releasing",
            OrderStatus::Released => "released",
        }
    }

    /// No step will run until a client asks for one.
    pub fn at_rest(self) -> bool {
        matches!(
            self,
            OrderStatus::Held | OrderStatus::Committed | OrderStatus::Released
        )
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldState {
    Held,
    Committed,
    Released,
}

/// Units of a line held at one location: one reservation there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub location: String,
    pub quantity: i64,
    /// The reserve step that took it; its reservation id is
    /// [`step_key_for`] of that step.
    pub step: u32,
    pub state: HoldState,
    /// A reservation whose answer never came (the position could not be
    /// reached): it may exist, so it is released like a hold.
    pub in_doubt: bool,
}

/// A candidate location that could not give what was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortfall {
    pub location: String,
    /// What the location had available, when it said.
    pub available: Option<i64>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub spec: LineSpec,
    pub holds: Vec<Hold>,
    pub shortfalls: Vec<Shortfall>,
    /// The candidate the next reservation goes to.
    pub next_candidate: usize,
}

impl Line {
    /// Units held or committed (not in doubt).
    pub fn held(&self) -> i64 {
        self.holds
            .iter()
            .filter(|hold| hold.state != HoldState::Released && !hold.in_doubt)
            .map(|hold| hold.quantity)
            .sum()
    }

    pub fn remaining(&self) -> i64 {
        self.spec.quantity - self.held()
    }
}

/// Why an order ended released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The line that could not be held (empty for a client's release).
    pub line_id: String,
    pub sku: String,
    pub requested: i64,
    /// What each candidate had.
    pub shortfalls: Vec<Shortfall>,
    pub reason: String,
}

/// What a step does to a position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Reserve {
        location: String,
        quantity: i64,
        allow_partial: bool,
    },
    Release {
        hold: usize,
    },
    Commit {
        hold: usize,
    },
    /// Undoes a commitment of a commit that did not finish for every line.
    CancelCommit {
        hold: usize,
    },
    /// A transfer's units out of `from`'s available.
    TransferOut,
    /// A transfer's units into `to`'s incoming.
    TransferIn,
    /// A transfer's units from `to`'s incoming into its available.
    TransferReceive,
    /// A transfer's units back into `from`'s available (its compensation).
    TransferReturn,
}

/// A step recorded before it runs, run with the key `ord:{order}:{line}:{number}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub number: u32,
    pub line: usize,
    pub action: Action,
    pub attempts: u32,
    pub retry_at_ms: i64,
    pub last_error: String,
}

/// What the runtime reports of a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepResult {
    /// A reservation took `granted` units (maybe fewer than asked, when split).
    Reserved { granted: i64 },
    /// The position refused: not enough available.
    Insufficient { available: i64 },
    /// The position refused for another reason.
    Refused { error: String },
    /// A release, commit or cancel was applied (or had nothing left to do).
    Done,
    /// A transient failure: the step runs again later.
    Retry { error: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderEvent {
    Opened {
        lines: Vec<LineSpec>,
        ttl_ms: i64,
        channel: String,
        at_ms: i64,
    },
    StepScheduled {
        step: Step,
    },
    StepFailed {
        number: u32,
        error: String,
        retry_at_ms: i64,
    },
    /// A step's result; `in_doubt` for a reservation given up unanswered.
    StepCompleted {
        number: u32,
        result: StepResult,
        in_doubt: bool,
    },
    StatusChanged {
        to: OrderStatus,
        failure: Option<Failure>,
        at_ms: i64,
    },
    /// A transfer opened (the order saga's second kind, see [`super::transfer`]).
    TransferOpened {
        spec: TransferSpec,
        at_ms: i64,
    },
}

impl OrderEvent {
    pub fn name(&self) -> &'static str {
        match self {
            OrderEvent::Opened { .. } => "order.opened",
            OrderEvent::StepScheduled { .. } => "order.step.scheduled",
            OrderEvent::StepFailed { .. } => "order.step.failed",
            OrderEvent::StepCompleted { .. } => "order.step.completed",
            OrderEvent::StatusChanged { .. } => "order.status.changed",
            OrderEvent::TransferOpened { .. } => "order.transfer.opened",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub version: u64,
    /// `None`: no such order.
    pub status: Option<OrderStatus>,
    pub lines: Vec<Line>,
    pub ttl_ms: i64,
    pub channel: String,
    pub failure: Option<Failure>,
    /// Steps recorded and not yet answered: several at once when the lines
    /// of one round run concurrently (a transfer has at most one). Encoded
    /// like the `Option<Step>` it replaces while it holds at most one step
    /// (bincode writes both as a count, then the step), so older snapshots
    /// still decode.
    pub pending: Vec<Step>,
    /// The number the next step gets.
    pub next_step: u32,
    pub opened_at_ms: i64,
    pub settled_at_ms: Option<i64>,
    /// Set for a transfer: its spec and how far its steps got.
    pub transfer: Option<Transfer>,
}

impl Order {
    /// When the runtime must wake the order: its earliest pending step is due.
    pub fn next_timer_ms(&self) -> Option<i64> {
        self.pending.iter().map(|step| step.retry_at_ms).min()
    }

    /// The pending step numbered `number`, if it is still unanswered.
    pub fn pending_step(&self, number: u32) -> Option<&Step> {
        self.pending.iter().find(|step| step.number == number)
    }

    pub fn specs(&self) -> Vec<LineSpec> {
        self.lines.iter().map(|line| line.spec.clone()).collect()
    }
}

/// Folds one event in.
pub fn apply(order: &mut Order, event: &OrderEvent) {
    match event {
        OrderEvent::Opened {
            lines,
            ttl_ms,
            channel,
            at_ms,
        } => {
            order.status = Some(OrderStatus::Reserving);
            order.lines = lines
                .iter()
                .map(|spec| Line {
                    spec: spec.clone(),
                    holds: Vec::new(),
                    shortfalls: Vec::new(),
                    next_candidate: 0,
                })
                .collect();
            order.ttl_ms = *ttl_ms;
            order.channel = channel.clone();
            order.opened_at_ms = *at_ms;
            order.next_step = 1;
        }
        OrderEvent::StepScheduled { step } => {
            order.next_step = step.number + 1;
            order.pending.push(step.clone());
        }
        OrderEvent::StepFailed {
            number,
            error,
            retry_at_ms,
        } => {
            if let Some(step) = order.pending.iter_mut().find(|s| s.number == *number) {
                step.attempts += 1;
                step.retry_at_ms = *retry_at_ms;
                step.last_error = error.clone();
            }
        }
        OrderEvent::StepCompleted {
            number,
            result,
            in_doubt,
        } => {
            let Some(at) = order.pending.iter().position(|s| s.number == *number) else {
                return;
            };
            let step = order.pending.remove(at);
            if let Some(transfer) = order.transfer.as_mut() {
                apply_transfer_result(transfer, &step.action, result);
                return;
            }
            let Some(line) = order.lines.get_mut(step.line) else {
                return;
            };
            apply_result(line, &step, result, *in_doubt);
        }
        OrderEvent::StatusChanged { to, failure, at_ms } => {
            order.status = Some(*to);
            if failure.is_some() {
                order.failure = failure.clone();
            }
            order.settled_at_ms = to.at_rest().then_some(*at_ms);
        }
        OrderEvent::TransferOpened { spec, at_ms } => {
            order.status = Some(OrderStatus::Reserving);
            order.transfer = Some(Transfer::new(spec.clone()));
            order.opened_at_ms = *at_ms;
            order.next_step = 1;
        }
    }
}

fn apply_result(line: &mut Line, step: &Step, result: &StepResult, in_doubt: bool) {
    match (&step.action, result) {
        (
            Action::Reserve {
                location, quantity, ..
            },
            _,
        ) => {
            line.next_candidate += 1;
            match result {
                StepResult::Reserved { granted } => {
                    if *granted > 0 {
                        line.holds.push(Hold {
                            location: location.clone(),
                            quantity: *granted,
                            step: step.number,
                            state: HoldState::Held,
                            in_doubt: false,
                        });
                    }
                    if granted < quantity {
                        line.shortfalls.push(Shortfall {
                            location: location.clone(),
                            available: Some(*granted),
                            reason: "partly available".into(),
                        });
                    }
                }
                StepResult::Insufficient { available } => line.shortfalls.push(Shortfall {
                    location: location.clone(),
                    available: Some(*available),
                    reason: "insufficient available quantity".into(),
                }),
                StepResult::Refused { error } | StepResult::Retry { error } => {
                    if in_doubt {
                        line.holds.push(Hold {
                            location: location.clone(),
                            quantity: *quantity,
                            step: step.number,
                            state: HoldState::Held,
                            in_doubt: true,
                        });
                    }
                    line.shortfalls.push(Shortfall {
                        location: location.clone(),
                        available: None,
                        reason: error.clone(),
                    });
                }
                StepResult::Done => {}
            }
        }
        (Action::Release { hold } | Action::CancelCommit { hold }, StepResult::Done) => {
            if let Some(hold) = line.holds.get_mut(*hold) {
                hold.state = HoldState::Released;
            }
        }
        (Action::Commit { hold }, StepResult::Done) => {
            if let Some(hold) = line.holds.get_mut(*hold) {
                hold.state = HoldState::Committed;
            }
        }
        // A commit refused leaves its hold as it was; the order is released.
        _ => {}
    }
}

/// The idempotency key (and reservation id) of a step at the position.
pub fn step_key_for(order_id: &str, line_id: &str, number: u32) -> String {
    format!("ord:{order_id}:{line_id}:{number}")
}

/// Rebuilds the order from a journal entry.
pub fn apply_entry(order: &mut Order, entry: &JournalEntry<OrderEvent>) {
    for event in &entry.events {
        apply(order, event);
    }
    order.version = entry.version;
}
