//! Orders as an [`Entity`] of the actor runtime, and the driver of their
//! steps.
//!
//! After each durable write of an order, each of its pending steps that is
//! due is run against the position runtime with the idempotency key (and
//! reservation id) `ord:{order}:{line}:{step}`, all at once; each result
//! comes back to the order as an internal `CompleteStep` (results that
//! arrive together are decided in one drain, one write). A step runs once at
//! a time. A crash anywhere leaves its step pending in the order's durable
//! state; the timer scan wakes the order after the restart, the step runs
//! again and the position replays its first answer, so no step is applied
//! twice.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::rest::{RestWaiters, RestWatch};
use super::{
    apply_entry, decide, step_key_for, Action, Order, OrderCommand, OrderEvent, OrderKey,
    OrderStatus, Step, StepResult, TransferSpec, TRANSFER_LINE_ID,
};
use crate::journal::JournalEntry;
use crate::position::{
    AdjustmentReason, Bucket, Command, MutationRequest, Owner, OwnerType, PositionEntity,
};
use crate::runtime::measures::{Labels, Measure, Pending};
use crate::runtime::{Entity, EntityHandle, EntityRuntime, Mutation, RequestMeta};
use crate::{Error, PositionKey, Refusal};

/// A client's mutation of one order.
pub type OrderMutation = Mutation<OrderEntity>;

/// An order's status before and after a change, in its published events.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct OrderFigures {
    pub status: Option<OrderStatus>,
}

/// Orders, with the position runtime their steps act on.
pub struct OrderEntity {
    positions: Arc<EntityRuntime<PositionEntity>>,
    /// Steps running now, by order and step number: each runs once at a time.
    running: Arc<Mutex<HashSet<(OrderKey, u32)>>>,
    /// Callers waiting for an order to come to rest.
    rest: Arc<RestWaiters>,
    failpoint: Option<Failpoint>,
}

/// Crash injection for the crash tests: `SKULD_FAILPOINT_ORDER_STEP` set to
/// `before:N` or `after:N` aborts the process just before or just after a
/// position applies step N of any order. Only in a build with the
/// `failpoints` feature (the test build); any other build ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failpoint {
    before: bool,
    step: u32,
}

impl Failpoint {
    #[cfg(not(feature = "failpoints"))]
    fn from_env() -> Option<Self> {
        None
    }

    #[cfg(feature = "failpoints")]
    fn from_env() -> Option<Self> {
        let value = std::env::var("SKULD_FAILPOINT_ORDER_STEP").ok()?;
        let (when, step) = value.split_once(':')?;
        Some(Self {
            before: when == "before",
            step: step.parse().ok()?,
        })
    }

    fn hit(failpoint: Option<Self>, before: bool, step: u32) {
        if failpoint == Some(Self { before, step }) {
            tracing::error!(step, before, "failpoint: aborting the process");
            std::process::abort();
        }
    }
}

impl OrderEntity {
    pub fn new(positions: Arc<EntityRuntime<PositionEntity>>) -> Self {
        Self {
            positions,
            running: Arc::new(Mutex::new(HashSet::new())),
            rest: Arc::new(RestWaiters::default()),
            failpoint: Failpoint::from_env(),
        }
    }

    /// Hands the caller the order from the first write at rest after
    /// `after_version`, if this node runs the order (see [`RestWaiters`]).
    pub fn watch_rest(&self, key: &OrderKey, after_version: u64) -> RestWatch {
        self.rest.watch(key, after_version)
    }
}

/// A step's "running" mark; cleared when dropped.
struct Running {
    steps: Arc<Mutex<HashSet<(OrderKey, u32)>>>,
    step: (OrderKey, u32),
}

impl Drop for Running {
    fn drop(&mut self) {
        self.steps.lock().remove(&self.step);
    }
}

/// The position mutation a step stands for. Deterministic: a rerun sends
/// the same request, so the position replays it instead of applying it again.
pub fn step_mutation(key: &OrderKey, order: &Order, step: &Step) -> Result<MutationRequest, Error> {
    if let Some(transfer) = &order.transfer {
        return transfer_step_mutation(key, &transfer.spec, step);
    }
    let line = order
        .lines
        .get(step.line)
        .ok_or_else(|| Error::Unavailable(format!("step {} names no line", step.number)))?;
    let line_id = &line.spec.line_id;
    let hold = |at: usize| {
        line.holds
            .get(at)
            .ok_or_else(|| Error::Unavailable(format!("step {} names no hold", step.number)))
    };
    let (location, command) = match &step.action {
        Action::Reserve {
            location,
            quantity,
            allow_partial,
        } => (
            location.clone(),
            Command::Reserve {
                reservation_id: step_key_for(&key.order_id, line_id, step.number),
                quantity: *quantity,
                owner: Owner {
                    kind: OwnerType::Order,
                    id: key.order_id.clone(),
                    line_id: line_id.clone(),
                },
                channel: order.channel.clone(),
                ttl_ms: order.ttl_ms,
                allow_partial: *allow_partial,
            },
        ),
        Action::Release { hold: at } => {
            let hold = hold(*at)?;
            (
                hold.location.clone(),
                Command::ReleaseReservation {
                    reservation_id: step_key_for(&key.order_id, line_id, hold.step),
                },
            )
        }
        Action::Commit { hold: at } => {
            let hold = hold(*at)?;
            (
                hold.location.clone(),
                Command::CommitReservation {
                    reservation_id: step_key_for(&key.order_id, line_id, hold.step),
                    quantity: 0,
                    order_ref: key.order_id.clone(),
                },
            )
        }
        Action::CancelCommit { hold: at } => {
            let hold = hold(*at)?;
            (
                hold.location.clone(),
                Command::CancelCommitment {
                    order_ref: key.order_id.clone(),
                    quantity: hold.quantity,
                    restock: true,
                },
            )
        }
        transfer => {
            return Err(Error::Unavailable(format!(
                "step {} ({transfer:?}) is a transfer's, of an order",
                step.number
            )))
        }
    };
    Ok(MutationRequest {
        key: PositionKey::new(key.tenant.clone(), line.spec.sku.clone(), location)?,
        idempotency_key: step_key_for(&key.order_id, line_id, step.number),
        expected_version: None,
        command,
    })
}

/// The position mutation of a transfer's step: adjustments of `from`'s
/// available and `to`'s incoming, and the receipt's move at `to`, each under
/// the step's key so a rerun is replayed.
fn transfer_step_mutation(
    key: &OrderKey,
    spec: &TransferSpec,
    step: &Step,
) -> Result<MutationRequest, Error> {
    let reference = format!("transfer:{}", key.order_id);
    let adjust = |bucket, delta| Command::Adjust {
        bucket,
        delta,
        reason: AdjustmentReason::Transfer,
        change_from: None,
        reference: reference.clone(),
    };
    let (location, command) = match &step.action {
        Action::TransferOut => (&spec.from, adjust(Bucket::Available, -spec.quantity)),
        Action::TransferIn => (&spec.to, adjust(Bucket::Incoming, spec.quantity)),
        Action::TransferReceive => (
            &spec.to,
            Command::Move {
                from: Bucket::Incoming,
                to: Bucket::Available,
                quantity: spec.quantity,
                reason: AdjustmentReason::Transfer,
                from_change_from: None,
                to_change_from: None,
                reference: reference.clone(),
            },
        ),
        Action::TransferReturn => (&spec.from, adjust(Bucket::Available, spec.quantity)),
        other => {
            return Err(Error::Unavailable(format!(
                "step {} ({other:?}) is not a transfer step",
                step.number
            )))
        }
    };
    Ok(MutationRequest {
        key: PositionKey::new(key.tenant.clone(), spec.sku.clone(), location.clone())?,
        idempotency_key: step_key_for(&key.order_id, TRANSFER_LINE_ID, step.number),
        expected_version: None,
        command,
    })
}

/// Runs one step; what the order records of it.
async fn run_step(
    positions: &EntityRuntime<PositionEntity>,
    key: &OrderKey,
    order: &Order,
    step: &Step,
) -> StepResult {
    let mutation = match step_mutation(key, order, step) {
        Ok(mutation) => mutation,
        Err(error) => {
            return StepResult::Refused {
                error: error.to_string(),
            }
        }
    };
    let meta = RequestMeta {
        correlation_id: format!("order:{}:{}", key.order_id, step.number),
        ..RequestMeta::default()
    };
    let releasing = matches!(
        step.action,
        Action::Release { .. } | Action::CancelCommit { .. }
    );
    match positions.mutate(mutation, meta).await {
        Ok(mutated) => match step.action {
            Action::Reserve { .. } => StepResult::Reserved {
                granted: mutated.reply.granted_quantity,
            },
            _ => StepResult::Done,
        },

        Err(error) if error.is_retryable() => StepResult::Retry {
            error: error.to_string(),
        },
        Err(Error::Refused(Refusal::Insufficient { available, .. })) => {
            StepResult::Insufficient { available }
        }
        // A hold that no longer exists (expired, released) or a commitment
        // already undone leaves nothing to give back.
        Err(error) if releasing => {
            tracing::info!(%key, step = step.number, %error, "nothing left to release");
            StepResult::Done
        }
        Err(error) => StepResult::Refused {
            error: error.to_string(),
        },
    }
}

/// Runs one step and reports its result to the order.
async fn run_and_report(
    positions: Arc<EntityRuntime<PositionEntity>>,
    handle: EntityHandle<OrderEntity>,
    key: OrderKey,
    order: Arc<Order>,
    step: Step,
    mark: Running,
    failpoint: Option<Failpoint>,
) {
    Failpoint::hit(failpoint, true, step.number);
    let result = run_step(&positions, &key, &order, &step).await;
    Failpoint::hit(failpoint, false, step.number);
    metrics::counter!("skuld_order_steps_total", "outcome" => match result {
        StepResult::Reserved { .. } => "reserved",
        StepResult::Insufficient { .. } => "insufficient",
        StepResult::Refused { .. } => "refused",
        StepResult::Done => "done",
        StepResult::Retry { .. } => "retry",
    })
    .increment(1);
    let report = OrderCommand::CompleteStep {
        number: step.number,
        result,
    };
    if let Err(error) = handle.send_internal_holding(&key, report, "order-step", mark) {
        // The step stays pending; the timer runs it again and the
        // position replays it.
        tracing::warn!(%key, step = step.number, %error, "step result not delivered");
    }
}

impl Entity for OrderEntity {
    type Key = OrderKey;
    type State = Order;
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Outcome = ();
    type Reply = Order;

    const KIND: &'static str = "order";

    fn encode_key(key: &OrderKey) -> Vec<u8> {
        key.encode()
    }

    fn decode_key(bytes: &[u8]) -> Option<OrderKey> {
        OrderKey::decode(bytes)
    }

    fn validate_key(key: &OrderKey) -> Result<(), Error> {
        Ok(key.validate()?)
    }

    fn validate(key: &OrderKey, command: &OrderCommand) -> Result<(), Error> {
        key.validate()?;
        match command {
            OrderCommand::CompleteStep { .. } | OrderCommand::Tick => {
                Err(Error::invalid("command", "reserved for the node"))
            }
            // Before it is queued or forwarded (decide checks again).
            OrderCommand::Reserve {
                lines,
                ttl_ms,
                channel,
            } => Ok(super::validate_lines(lines, *ttl_ms, channel)?),
            OrderCommand::Transfer { spec } => Ok(super::validate_transfer(spec)?),
            OrderCommand::Commit | OrderCommand::Release | OrderCommand::ReceiveTransfer => Ok(()),
        }
    }

    fn version(state: &Order) -> u64 {
        state.version
    }

    fn next_timer_ms(state: &Order) -> Option<i64> {
        state.next_timer_ms()
    }

    fn timer_command() -> OrderCommand {
        OrderCommand::Tick
    }

    fn decide(
        &self,
        key: &OrderKey,
        state: &Order,
        expected_version: Option<u64>,
        command: &OrderCommand,
        now_ms: i64,
    ) -> Result<(Vec<OrderEvent>, ()), Error> {
        Ok((
            decide(state, &key.order_id, expected_version, command, now_ms)?,
            (),
        ))
    }

    fn apply_entry(state: &mut Order, entry: &JournalEntry<OrderEvent>) {
        apply_entry(state, entry);
    }

    fn reply(state: &Order, _outcome: ()) -> Order {
        state.clone()
    }

    type Figures = OrderFigures;

    fn figures(state: &Order) -> OrderFigures {
        OrderFigures {
            status: state.status,
        }
    }

    fn tenant(key: &OrderKey) -> &str {
        &key.tenant
    }

    fn event_name(event: &OrderEvent) -> &'static str {
        event.name()
    }

    fn measure(entry: &JournalEntry<OrderEvent>, _state: &Order, measures: &mut Pending) {
        for event in &entry.events {
            if let OrderEvent::StatusChanged { to, .. } = event {
                if to.at_rest() {
                    measures.push(Measure::count(
                        "skuld_orders_settled_total",
                        Labels::one("status", to.name()),
                    ));
                }
            }
        }
    }

    fn after_commit(&self, key: &OrderKey, state: &Order, handle: &EntityHandle<Self>) {
        self.rest.offer(key, state);
        if state.pending.is_empty() {
            return;
        }
        let now = handle.now_ms();
        // Shared by this write's steps: the order as they were recorded.
        let order = Arc::new(state.clone());
        for step in &state.pending {
            if step.retry_at_ms > now {
                // The durable timer wakes the order when the retry is due.
                continue;
            }
            let mark = (key.clone(), step.number);
            if !self.running.lock().insert(mark.clone()) {
                continue;
            }
            // Marked running until its result is decided by the order's
            // actor: a drain in between must not start the step again.
            let mark = Running {
                steps: Arc::clone(&self.running),
                step: mark,
            };
            tokio::spawn(run_and_report(
                Arc::clone(&self.positions),
                handle.clone(),
                key.clone(),
                Arc::clone(&order),
                step.clone(),
                mark,
                self.failpoint,
            ));
        }
    }
}
