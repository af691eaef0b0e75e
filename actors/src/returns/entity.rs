//! Return cases as an [`Entity`] of the actor runtime, and the executor of
//! their inventory effects.
//!
//! After each durable write of a case, the lowest pending effect (if due) is
//! run against the position runtime with the idempotency key
//! `ret:{return_id}:{step}`; its result comes back to the case as an
//! internal `CompleteEffect` command. Effects of one case run one at a time,
//! in step order. A crash anywhere leaves the effect pending in the case's
//! durable state, so it is run again after the restart, and the position's
//! idempotency record makes the second run a replay: each effect is applied
//! exactly once (within the idempotency retention, 24 h by default).

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{
    apply_entry, decide, Effect, EffectKind, EffectOutcome, ExceptionKind, PositionCommand,
    RefundState, ReturnCase, ReturnCommand, ReturnContext, ReturnEvent, ReturnPolicy, ReturnState,
    Team,
};
use crate::journal::JournalEntry;
use crate::position::{MutationRequest, PositionEntity};
use crate::runtime::measures::{Labels, Measure, Pending};
use crate::runtime::{codec, Entity, EntityHandle, EntityRuntime, Mutation, RequestMeta};
use crate::{Error, PositionKey, Refusal, ReturnKey};

/// A client's mutation of one return case.
pub type ReturnMutation = Mutation<ReturnEntity>;

/// One row of a tenant's return listing, also read by the node's census
/// for the returns gauges (backlog, exceptions by team).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnSummary {
    pub state: Option<ReturnState>,
    pub order_ref: String,
    pub open_exceptions: u32,
    pub version: u64,
    /// Refunds decided and waiting for their gate.
    pub refunds_pending: u32,
    /// When the oldest of them was decided (unix ms).
    pub oldest_pending_refund_ms: Option<i64>,
    /// The kind and owning team of each open exception.
    pub open_exception_kinds: Vec<(ExceptionKind, Team)>,
}

/// The summary as versions before the census stored it: decoded when the
/// current form does not fit, so a case not written since still lists.
#[derive(Deserialize)]
struct ReturnSummaryV1 {
    state: Option<ReturnState>,
    order_ref: String,
    open_exceptions: u32,
    version: u64,
}

impl ReturnSummary {
    pub fn of(state: &ReturnCase) -> Self {
        let pending = || {
            state
                .refunds
                .iter()
                .filter(|refund| refund.state == RefundState::PendingGate)
        };
        let open_exception_kinds: Vec<(ExceptionKind, Team)> = state
            .open_exceptions()
            .map(|exception| (exception.kind, exception.owner))
            .collect();
        Self {
            state: state.state,
            order_ref: state.order_ref.clone(),
            open_exceptions: u32::try_from(open_exception_kinds.len()).unwrap_or(u32::MAX),
            version: state.version,
            refunds_pending: u32::try_from(pending().count()).unwrap_or(u32::MAX),
            oldest_pending_refund_ms: pending().map(|refund| refund.decided_at_ms).min(),
            open_exception_kinds,
        }
    }

    /// A stored summary of this version or of the one before.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Self::decode_any(bytes).map(|(summary, _)| summary)
    }

    /// A stored summary, and whether it is of the version before the census
    /// fields (read as no pending refund and no exception kind, until the
    /// case is written again). Either layout refuses trailing bytes, so
    /// neither reads as the other.
    pub fn decode_any(bytes: &[u8]) -> Result<(Self, bool), Error> {
        if let Ok(summary) = codec::decode::<ReturnSummary>(bytes) {
            return Ok((summary, false));
        }
        let old = codec::decode::<ReturnSummaryV1>(bytes)?;
        let summary = Self {
            state: old.state,
            order_ref: old.order_ref,
            open_exceptions: old.open_exceptions,
            version: old.version,
            refunds_pending: 0,
            oldest_pending_refund_ms: None,
            open_exception_kinds: Vec::new(),
        };
        Ok((summary, true))
    }
}

/// A case's state before and after a change, in its published events.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ReturnFigures {
    pub state: Option<ReturnState>,
    pub open_exceptions: u32,
    pub refunds: usize,
}

/// The listing scope of a tenant's returns.
pub fn summary_scope(tenant: &str) -> Vec<u8> {
    let mut scope = b"returns/".to_vec();
    scope.extend_from_slice(tenant.as_bytes());
    scope
}

/// Return cases, with the position runtime their effects act on.
pub struct ReturnEntity {
    positions: Arc<EntityRuntime<PositionEntity>>,
    /// Cases with an effect running now: one at a time per case.
    running: Arc<Mutex<HashSet<ReturnKey>>>,
    failpoint: Option<Failpoint>,
}

/// Crash injection for the exactly-once tests: `SKULD_FAILPOINT_EFFECT` set
/// to `before:N` or `after:N` aborts the process just before or just after
/// the position applies effect step N. Only in a build with the
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
        let value = std::env::var("SKULD_FAILPOINT_EFFECT").ok()?;
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

impl ReturnEntity {
    pub fn new(positions: Arc<EntityRuntime<PositionEntity>>) -> Self {
        Self {
            positions,
            running: Arc::new(Mutex::new(HashSet::new())),
            failpoint: Failpoint::from_env(),
        }
    }
}

/// A case's "effect running" mark; cleared when dropped.
struct Running {
    cases: Arc<Mutex<HashSet<ReturnKey>>>,
    key: ReturnKey,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cases.lock().remove(&self.key);
    }
}

/// The position mutation an effect stands for. Deterministic: a retry sends
/// the same request, so the position replays it instead of applying it again.
pub fn effect_mutation(key: &ReturnKey, effect: &Effect) -> Result<MutationRequest, Error> {
    let Some(PositionCommand {
        sku,
        location,
        command,
    }) = effect.kind.position_command(&key.return_id)
    else {
        return Err(Error::Refused(Refusal::FailedPrecondition(format!(
            "effect {:?} has no inventory change",
            effect.kind
        ))));
    };
    Ok(MutationRequest {
        key: PositionKey::new(key.tenant.clone(), sku.to_owned(), location.to_owned())?,
        idempotency_key: format!("ret:{}:{}", key.return_id, effect.step),
        expected_version: None,
        command,
    })
}

/// Runs one effect; transient failures ask for a retry.
async fn run_effect(
    positions: &EntityRuntime<PositionEntity>,
    key: &ReturnKey,
    effect: &Effect,
) -> (EffectOutcome, String) {
    let mutation = match effect_mutation(key, effect) {
        Ok(mutation) => mutation,
        Err(error) => return (EffectOutcome::Refused, error.to_string()),
    };
    let meta = RequestMeta {
        correlation_id: format!("return:{}:{}", key.return_id, effect.step),
        ..RequestMeta::default()
    };
    match positions.mutate(mutation, meta).await {
        Ok(_) => (EffectOutcome::Applied, String::new()),
        // Releasing a hold that no longer exists leaves nothing to do.
        Err(Error::Refused(Refusal::ReservationNotFound(_)))
            if matches!(effect.kind, EffectKind::ReleaseExchange { .. }) =>
        {
            (EffectOutcome::Applied, String::new())
        }
        Err(error) if error.is_retryable() => (EffectOutcome::Retry, error.to_string()),
        Err(error) => (EffectOutcome::Refused, error.to_string()),
    }
}

impl Entity for ReturnEntity {
    type Key = ReturnKey;
    type State = ReturnCase;
    type Command = ReturnCommand;
    type Event = ReturnEvent;
    type Outcome = ();
    type Reply = ReturnCase;

    const KIND: &'static str = "return";

    fn encode_key(key: &ReturnKey) -> Vec<u8> {
        key.encode()
    }

    fn decode_key(bytes: &[u8]) -> Option<ReturnKey> {
        ReturnKey::decode(bytes)
    }

    /// The policy of an `Open` is resolved by the receiving node, whose
    /// policy table may differ from the one that took the first attempt;
    /// the case keeps the policy it opened with.
    fn client_part(command: &ReturnCommand) -> std::borrow::Cow<'_, ReturnCommand> {
        match command {
            ReturnCommand::Open { .. } => {
                let mut sent = command.clone();
                if let ReturnCommand::Open { policy, .. } = &mut sent {
                    *policy = ReturnPolicy::default();
                }
                std::borrow::Cow::Owned(sent)
            }
            _ => std::borrow::Cow::Borrowed(command),
        }
    }

    fn validate_key(key: &ReturnKey) -> Result<(), Error> {
        Ok(key.validate()?)
    }

    fn validate(key: &ReturnKey, command: &ReturnCommand) -> Result<(), Error> {
        key.validate()?;
        match command {
            ReturnCommand::CompleteEffect { .. }
            | ReturnCommand::Tick
            | ReturnCommand::ErpReport { .. } => {
                Err(Error::invalid("command", "reserved for the node"))
            }
            // Before it is queued or forwarded: an oversized command holds
            // no mailbox slot (decide checks the same bounds again).
            _ => Ok(super::check_bounds(command)?),
        }
    }

    fn version(state: &ReturnCase) -> u64 {
        state.version
    }

    fn next_timer_ms(state: &ReturnCase) -> Option<i64> {
        state.next_timer_ms()
    }

    fn timer_command() -> ReturnCommand {
        ReturnCommand::Tick
    }

    fn decide(
        &self,
        key: &ReturnKey,
        state: &ReturnCase,
        expected_version: Option<u64>,
        command: &ReturnCommand,
        now_ms: i64,
    ) -> Result<(Vec<ReturnEvent>, ()), Error> {
        let context = ReturnContext {
            now_ms,
            return_id: key.return_id.clone(),
        };
        Ok((decide(state, expected_version, command, &context)?, ()))
    }

    fn apply_entry(state: &mut ReturnCase, entry: &JournalEntry<ReturnEvent>) {
        apply_entry(state, entry);
    }

    type Figures = ReturnFigures;

    fn figures(state: &ReturnCase) -> ReturnFigures {
        ReturnFigures {
            state: state.state,
            open_exceptions: u32::try_from(state.open_exceptions().count()).unwrap_or(u32::MAX),
            refunds: state.refunds.len(),
        }
    }

    fn tenant(key: &ReturnKey) -> &str {
        &key.tenant
    }

    fn event_name(event: &ReturnEvent) -> &'static str {
        event.name()
    }

    fn reply(state: &ReturnCase, _outcome: ()) -> ReturnCase {
        state.clone()
    }

    fn summary(key: &ReturnKey, state: &ReturnCase) -> Option<(Vec<u8>, Vec<u8>)> {
        codec::encode(&ReturnSummary::of(state))
            .ok()
            .map(|bytes| (summary_scope(&key.tenant), bytes))
    }

    fn measure(entry: &JournalEntry<ReturnEvent>, state: &ReturnCase, measures: &mut Pending) {
        for event in &entry.events {
            match event {
                ReturnEvent::Opened { state: to, .. } | ReturnEvent::StateChanged { to, .. } => {
                    measures.push(Measure::count(
                        "skuld_return_transitions_total",
                        Labels::one("to", to.name()),
                    ));
                }
                ReturnEvent::RefundReleased { at_ms, .. } => {
                    measures.push(Measure::count(
                        "skuld_refunds_released_total",
                        Labels::default(),
                    ));
                    // Request to refund: what the customer waited.
                    let waited_ms = at_ms.saturating_sub(state.opened_at_ms).max(0);
                    measures.push(Measure::observe(
                        "skuld_return_cycle_seconds",
                        Labels::default(),
                        waited_ms as f64 / 1_000.0,
                    ));
                }
                ReturnEvent::ExceptionRaised { exception } => {
                    measures.push(Measure::count(
                        "skuld_return_exceptions_raised_total",
                        Labels::two(
                            ("type", exception.kind.name()),
                            ("team", exception.owner.name()),
                        ),
                    ));
                }
                _ => {}
            }
        }
    }

    fn after_commit(&self, key: &ReturnKey, state: &ReturnCase, handle: &EntityHandle<Self>) {
        let Some(effect) = state.pending_effects.values().next() else {
            return;
        };
        if effect.retry_at_ms > handle.now_ms() {
            // The durable timer wakes the case when the retry is due.
            return;
        }
        if !self.running.lock().insert(key.clone()) {
            return;
        }
        let positions = Arc::clone(&self.positions);
        let running = Arc::clone(&self.running);
        let handle = handle.clone();
        let key = key.clone();
        let effect = effect.clone();
        let failpoint = self.failpoint;
        tokio::spawn(async move {
            // The case stays marked as running this step until its result
            // has been decided by the case's actor (or could not be queued):
            // a drain of the case in between must not start it again.
            let mark = Running {
                cases: running,
                key: key.clone(),
            };
            Failpoint::hit(failpoint, true, effect.step);
            let (outcome, error) = run_effect(&positions, &key, &effect).await;
            Failpoint::hit(failpoint, false, effect.step);
            metrics::counter!("skuld_return_effects_total", "outcome" => match outcome {
                EffectOutcome::Applied => "applied",
                EffectOutcome::Refused => "refused",
                EffectOutcome::Retry => "retry",
            })
            .increment(1);
            let report = ReturnCommand::CompleteEffect {
                step: effect.step,
                outcome,
                error,
            };
            if let Err(error) = handle.send_internal_holding(&key, report, "effect", mark) {
                // The effect stays pending; the timer runs it again and the
                // position replays it.
                tracing::warn!(%key, step = effect.step, %error, "effect result not delivered");
            }
        });
    }
}
