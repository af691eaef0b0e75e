//! The order's rules: which client command is allowed, and the saga's plan
//! (the next step, given the results recorded so far).

use serde::{Deserialize, Serialize};

use super::state::*;
use super::transfer::{plan_transfer, transfer_failure, validate_transfer, TransferSpec};
use crate::key::validate_token;
use crate::position::MAX_QUANTITY;
use crate::Refusal;

/// Attempts of a reservation whose answer never came before the order gives
/// it up (and releases it, since it may have been taken). Releases and
/// commits are retried without end: they must finish.
pub const RESERVE_ATTEMPTS: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderCommand {
    /// Opens the order and holds every line, or none.
    Reserve {
        lines: Vec<LineSpec>,
        /// 0: the positions' default TTL.
        ttl_ms: i64,
        channel: String,
    },
    /// Turns every hold into a commitment.
    Commit,
    /// Gives back everything held (also mid-reservation).
    Release,
    /// A step's result, from the runtime.
    CompleteStep { number: u32, result: StepResult },
    /// The durable timer: a pending step is due (it is run after the write).
    Tick,
    /// Opens a transfer: out of `from`, into `to`'s incoming.
    Transfer { spec: TransferSpec },
    /// Moves an in-transit transfer from `to`'s incoming into its available.
    ReceiveTransfer,
}

impl OrderCommand {
    pub fn name(&self) -> &'static str {
        match self {
            OrderCommand::Reserve { .. } => "ReserveOrder",
            OrderCommand::Commit => "CommitOrder",
            OrderCommand::Release => "ReleaseOrder",
            OrderCommand::CompleteStep { .. } => "CompleteStep",
            OrderCommand::Tick => "Tick",
            OrderCommand::Transfer { .. } => "TransferStock",
            OrderCommand::ReceiveTransfer => "ReceiveTransfer",
        }
    }
}

/// Checks the lines of a reservation; needs no state.
pub fn validate_lines(lines: &[LineSpec], ttl_ms: i64, channel: &str) -> Result<(), Refusal> {
    if lines.is_empty() {
        return Err(Refusal::invalid("lines", "must not be empty"));
    }
    if lines.len() > MAX_ORDER_LINES {
        return Err(Refusal::invalid(
            "lines",
            format!("{} lines; at most {MAX_ORDER_LINES} allowed", lines.len()),
        ));
    }
    if ttl_ms < 0 {
        return Err(Refusal::invalid("ttl_seconds", "must not be negative"));
    }
    if !channel.is_empty() {
        validate_token("channel", channel)?;
    }
    for (index, line) in lines.iter().enumerate() {
        validate_token("lines.line_id", &line.line_id)?;
        if line.line_id.len() > MAX_LINE_ID_BYTES {
            return Err(Refusal::invalid(
                "lines.line_id",
                format!("at most {MAX_LINE_ID_BYTES} bytes"),
            ));
        }
        if lines[..index].iter().any(|l| l.line_id == line.line_id) {
            return Err(Refusal::invalid(
                "lines.line_id",
                format!("{:?} appears twice", line.line_id),
            ));
        }
        validate_token("lines.sku", &line.sku)?;
        if line.quantity <= 0 || line.quantity > MAX_QUANTITY {
            return Err(Refusal::invalid(
                "lines.quantity",
                format!("must be in 1..={MAX_QUANTITY}, got {}", line.quantity),
            ));
        }
        if line.locations.is_empty() || line.locations.len() > MAX_LINE_LOCATIONS {
            return Err(Refusal::invalid(
                "lines.locations",
                format!(
                    "1 to {MAX_LINE_LOCATIONS} locations, got {}",
                    line.locations.len()
                ),
            ));
        }
        for (at, location) in line.locations.iter().enumerate() {
            validate_token("lines.locations", location)?;
            if line.locations[..at].contains(location) {
                return Err(Refusal::invalid(
                    "lines.locations",
                    format!("{location:?} appears twice"),
                ));
            }
        }
    }
    Ok(())
}

/// Builds the events of one decision while folding them into a copy of the
/// order, so each rule sees what the ones before it did.
struct Builder {
    order: Order,
    events: Vec<OrderEvent>,
    now_ms: i64,
}

impl Builder {
    fn push(&mut self, event: OrderEvent) {
        apply(&mut self.order, &event);
        self.events.push(event);
    }

    fn status(&mut self, to: OrderStatus, failure: Option<Failure>) {
        self.push(OrderEvent::StatusChanged {
            to,
            failure,
            at_ms: self.now_ms,
        });
    }

    fn schedule(&mut self, line: usize, action: Action) {
        let step = Step {
            number: self.order.next_step.max(1),
            line,
            action,
            attempts: 0,
            retry_at_ms: self.now_ms,
            last_error: String::new(),
        };
        self.push(OrderEvent::StepScheduled { step });
    }
}

/// The next thing the saga does when no step is pending, as a pure function
/// of the recorded results: steps to schedule (one round, run concurrently),
/// or a status to move to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// One round of steps, each `(line, action)`: all recorded in one write
    /// and run at once; the next round is planned when all are answered.
    Run(Vec<(usize, Action)>),
    Settle(OrderStatus, Option<Failure>),
    Nothing,
}

/// Plans the next round. The saga moves in rounds so that its steps, their
/// numbers and the line it names as failed follow from the recorded results
/// alone, whatever order the concurrent answers of a round came back in.
pub fn plan(order: &Order) -> Next {
    if !order.pending.is_empty() {
        return Next::Nothing;
    }
    if let Some(transfer) = &order.transfer {
        return plan_transfer(order.status, transfer);
    }
    match order.status {
        Some(OrderStatus::Reserving) => plan_reserving(order),
        Some(OrderStatus::Releasing) => {
            let releases = every_hold(order, |state, at| match state {
                HoldState::Held => Some(Action::Release { hold: at }),
                HoldState::Committed => Some(Action::CancelCommit { hold: at }),
                HoldState::Released => None,
            });
            run_or_settle(releases, OrderStatus::Released)
        }
        Some(OrderStatus::Committing) => {
            let commits = every_hold(order, |state, at| {
                (state == HoldState::Held).then_some(Action::Commit { hold: at })
            });
            run_or_settle(commits, OrderStatus::Committed)
        }
        _ => Next::Nothing,
    }
}

/// Every line still short reserves at its next candidate, all at once; a
/// line with no candidate left fails the order (the first such line is
/// named), and with no line short the order is held.
fn plan_reserving(order: &Order) -> Next {
    let short: Vec<(usize, &Line)> = order
        .lines
        .iter()
        .enumerate()
        .filter(|(_, line)| line.remaining() > 0)
        .collect();
    if short.is_empty() {
        return Next::Settle(OrderStatus::Held, None);
    }
    if let Some((_, line)) = short
        .iter()
        .find(|(_, line)| line.next_candidate >= line.spec.locations.len())
    {
        return Next::Settle(
            OrderStatus::Releasing,
            Some(Failure {
                line_id: line.spec.line_id.clone(),
                sku: line.spec.sku.clone(),
                requested: line.spec.quantity,
                shortfalls: line.shortfalls.clone(),
                reason: if line.holds.iter().any(|h| h.in_doubt) {
                    "a location did not answer".into()
                } else {
                    "insufficient available quantity".into()
                },
            }),
        );
    }
    Next::Run(
        short
            .into_iter()
            .filter_map(|(index, line)| {
                let location = line.spec.locations.get(line.next_candidate)?;
                Some((
                    index,
                    Action::Reserve {
                        location: location.clone(),
                        quantity: line.remaining(),
                        allow_partial: line.spec.split,
                    },
                ))
            })
            .collect(),
    )
}

/// The action `step_for` gives each hold of each line, as `(line, action)`.
fn every_hold(
    order: &Order,
    step_for: impl Fn(HoldState, usize) -> Option<Action>,
) -> Vec<(usize, Action)> {
    order
        .lines
        .iter()
        .enumerate()
        .flat_map(|(index, line)| {
            let step_for = &step_for;
            line.holds
                .iter()
                .enumerate()
                .filter_map(move |(at, hold)| Some((index, step_for(hold.state, at)?)))
        })
        .collect()
}

fn run_or_settle(steps: Vec<(usize, Action)>, settled: OrderStatus) -> Next {
    if steps.is_empty() {
        Next::Settle(settled, None)
    } else {
        Next::Run(steps)
    }
}

fn advance(b: &mut Builder) {
    // Each round settles a status or schedules one round of steps; bounded
    // by the number of statuses a decision can pass through.
    for _ in 0..8 {
        match plan(&b.order) {
            Next::Run(steps) => {
                for (line, action) in steps {
                    b.schedule(line, action);
                }
                return;
            }
            Next::Settle(to, failure) => b.status(to, failure),
            Next::Nothing => return,
        }
    }
}

/// Backoff of a failing step: 200 ms doubling to at most 5 s, so a client
/// waiting for its order is not kept long after the position is back.
pub fn retry_delay_ms(attempts: u32) -> i64 {
    (200i64 << attempts.min(6)).min(5_000)
}

fn refuse_in(command: &OrderCommand, status: OrderStatus) -> Refusal {
    Refusal::FailedPrecondition(format!(
        "{} is not allowed while the order is {status}",
        command.name()
    ))
}

/// Decides a command against the order: the events, or a refusal.
pub fn decide(
    order: &Order,
    order_id: &str,
    expected_version: Option<u64>,
    command: &OrderCommand,
    now_ms: i64,
) -> Result<Vec<OrderEvent>, Refusal> {
    if let Some(expected) = expected_version {
        if expected != order.version {
            return Err(Refusal::VersionMismatch {
                expected,
                current: order.version,
            });
        }
    }
    let mut b = Builder {
        order: order.clone(),
        events: Vec::new(),
        now_ms,
    };
    match (command, order.status) {
        (OrderCommand::Transfer { spec }, None) => {
            validate_transfer(spec)?;
            b.push(OrderEvent::TransferOpened {
                spec: spec.clone(),
                at_ms: now_ms,
            });
            advance(&mut b);
        }
        // The same transfer asked again changes nothing.
        (OrderCommand::Transfer { spec }, Some(_)) => {
            if order.transfer.as_ref().map(|t| &t.spec) != Some(spec) {
                return Err(Refusal::OrderExists(order_id.to_owned()));
            }
        }
        (OrderCommand::Reserve { .. }, Some(_)) if order.transfer.is_some() => {
            return Err(Refusal::OrderExists(order_id.to_owned()));
        }
        (OrderCommand::CompleteStep { .. } | OrderCommand::Tick, Some(_)) => {}
        // A client's order commands do not apply to a transfer, nor a
        // transfer's to an order.
        (OrderCommand::Commit | OrderCommand::Release, Some(_)) if order.transfer.is_some() => {
            return Err(Refusal::FailedPrecondition(format!(
                "{order_id} is a transfer; use ReceiveTransfer"
            )));
        }
        (OrderCommand::ReceiveTransfer, Some(_)) if order.transfer.is_none() => {
            return Err(Refusal::FailedPrecondition(format!(
                "{order_id} is an order, not a transfer"
            )));
        }
        (OrderCommand::ReceiveTransfer, Some(OrderStatus::Held)) => {
            b.status(OrderStatus::Committing, None);
            advance(&mut b);
        }
        (OrderCommand::ReceiveTransfer, Some(OrderStatus::Committing | OrderStatus::Committed)) => {
        }
        (OrderCommand::ReceiveTransfer, Some(status)) => {
            return Err(Refusal::FailedPrecondition(format!(
                "ReceiveTransfer is not allowed while the transfer is {}",
                transfer_status_name(status)
            )))
        }
        (
            OrderCommand::Reserve {
                lines,
                ttl_ms,
                channel,
            },
            None,
        ) => {
            validate_lines(lines, *ttl_ms, channel)?;
            b.push(OrderEvent::Opened {
                lines: lines.clone(),
                ttl_ms: *ttl_ms,
                channel: channel.clone(),
                at_ms: now_ms,
            });
            advance(&mut b);
        }
        // The same order asked again (a retry under another key) changes
        // nothing and is answered with the order as it is.
        (
            OrderCommand::Reserve {
                lines,
                ttl_ms,
                channel,
            },
            Some(_),
        ) => {
            if *lines != order.specs() || *ttl_ms != order.ttl_ms || *channel != order.channel {
                return Err(Refusal::OrderExists(order_id.to_owned()));
            }
        }
        (_, None) => return Err(Refusal::OrderNotFound(order_id.to_owned())),
        (OrderCommand::Commit, Some(OrderStatus::Held)) => {
            b.status(OrderStatus::Committing, None);
            advance(&mut b);
        }
        (OrderCommand::Commit, Some(OrderStatus::Committing | OrderStatus::Committed)) => {}
        (OrderCommand::Commit, Some(status)) => return Err(refuse_in(command, status)),
        (OrderCommand::Release, Some(OrderStatus::Held | OrderStatus::Reserving)) => {
            b.status(
                OrderStatus::Releasing,
                Some(Failure {
                    line_id: String::new(),
                    sku: String::new(),
                    requested: 0,
                    shortfalls: Vec::new(),
                    reason: "released on request".into(),
                }),
            );
            advance(&mut b);
        }
        (OrderCommand::Release, Some(OrderStatus::Releasing | OrderStatus::Released)) => {}
        (OrderCommand::Release, Some(status)) => return Err(refuse_in(command, status)),
    }
    match (command, order.status) {
        (OrderCommand::CompleteStep { number, result }, Some(status)) => {
            complete(&mut b, *number, result, status);
        }
        (OrderCommand::Tick, Some(_)) => advance(&mut b),
        _ => {}
    }
    Ok(b.events)
}

fn complete(b: &mut Builder, number: u32, result: &StepResult, status: OrderStatus) {
    let Some(step) = b.order.pending_step(number).cloned() else {
        // Already completed: a repeated report changes nothing.
        return;
    };
    if let Some(transfer) = b.order.transfer.clone() {
        complete_transfer(b, &transfer.spec, &step, result, status);
        return;
    }
    let reserve = matches!(step.action, Action::Reserve { .. });
    match result {
        StepResult::Retry { error } => {
            let attempts = step.attempts + 1;
            if reserve && attempts >= RESERVE_ATTEMPTS {
                // Not knowing whether the units were taken, the order keeps
                // the reservation as held in doubt and releases it.
                b.push(OrderEvent::StepCompleted {
                    number,
                    result: result.clone(),
                    in_doubt: true,
                });
                if status == OrderStatus::Reserving {
                    let failure = line_failure(
                        &b.order,
                        step.line,
                        true,
                        format!("a location did not answer: {error}"),
                    );
                    b.status(OrderStatus::Releasing, Some(failure));
                }
            } else {
                b.push(OrderEvent::StepFailed {
                    number,
                    error: error.clone(),
                    retry_at_ms: b.now_ms + retry_delay_ms(attempts),
                });
                return;
            }
        }
        StepResult::Refused { error }
            if matches!(step.action, Action::Commit { .. })
                && status == OrderStatus::Committing =>
        {
            // A hold that cannot be committed (it expired): the order is
            // released as a whole, commitments made so far undone.
            b.push(OrderEvent::StepCompleted {
                number,
                result: result.clone(),
                in_doubt: false,
            });
            let failure = line_failure(
                &b.order,
                step.line,
                false,
                format!("the hold could not be committed: {error}"),
            );
            b.status(OrderStatus::Releasing, Some(failure));
        }
        _ => b.push(OrderEvent::StepCompleted {
            number,
            result: result.clone(),
            in_doubt: false,
        }),
    }
    advance(b);
}

/// A transfer step's result: a transient failure is retried (every
/// transfer step must get an answer, see [`super::transfer`]); a refusal of
/// the step out of `from` ends the transfer with nothing changed, of the
/// step into `to` puts the units back, of the receipt leaves it in transit.
fn complete_transfer(
    b: &mut Builder,
    spec: &TransferSpec,
    step: &Step,
    result: &StepResult,
    status: OrderStatus,
) {
    let number = step.number;
    let refused = match result {
        StepResult::Retry { error } => Some(error.clone()),
        // Putting units back must not be given up: it is retried.
        StepResult::Refused { error } if step.action == Action::TransferReturn => {
            Some(error.clone())
        }
        _ => None,
    };
    if let Some(error) = refused {
        b.push(OrderEvent::StepFailed {
            number,
            error,
            retry_at_ms: b.now_ms + retry_delay_ms(step.attempts + 1),
        });
        return;
    }
    b.push(OrderEvent::StepCompleted {
        number,
        result: result.clone(),
        in_doubt: false,
    });
    if *result != StepResult::Done {
        let failure = transfer_failure(spec, &step.action, result);
        let to = match status {
            OrderStatus::Committing => OrderStatus::Held,
            _ => OrderStatus::Releasing,
        };
        b.status(to, Some(failure));
    }
    advance(b);
}

/// A transfer's status in its own words.
pub fn transfer_status_name(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::Reserving => "moving",
        OrderStatus::Held => "in_transit",
        OrderStatus::Committing => "receiving",
        OrderStatus::Committed => "received",
        OrderStatus::Releasing => "returning",
        OrderStatus::Released => "not_transferred",
    }
}

/// Why the order is released, naming `line` (with what its candidates had).
fn line_failure(order: &Order, line: usize, with_shortfalls: bool, reason: String) -> Failure {
    match order.lines.get(line) {
        Some(line) => Failure {
            line_id: line.spec.line_id.clone(),
            sku: line.spec.sku.clone(),
            requested: line.spec.quantity,
            shortfalls: if with_shortfalls {
                line.shortfalls.clone()
            } else {
                Vec::new()
            },
            reason,
        },
        None => Failure {
            line_id: String::new(),
            sku: String::new(),
            requested: 0,
            shortfalls: Vec::new(),
            reason,
        },
    }
}
