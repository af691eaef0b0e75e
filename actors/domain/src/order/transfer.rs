//! A transfer of one SKU between two locations: the order saga's second
//! kind. The same actor, steps and keys run it (`ord:{transfer}:transfer:{step}`);
//! only the plan differs.
//!
//! Step one takes the quantity out of `from`'s available (refused, with
//! what was available, when short: nothing changes); step two adds it to
//! `to`'s `incoming`. A failure of step two puts the units back at `from`,
//! so at rest they are either in `to`'s incoming (`Held`, "in transit") or
//! back at `from` (`Released`). `ReceiveTransfer` later moves them from
//! incoming to available at `to` (`Committed`, "received").
//!
//! Every transfer step is retried until the position answers: an
//! adjustment is replayed under its key, and giving one up unanswered
//! could leave units taken but not delivered, or put back twice.

use serde::{Deserialize, Serialize};

use super::state::*;
use crate::key::validate_token;
use crate::position::MAX_QUANTITY;
use crate::Refusal;

/// The line id a transfer's step keys carry: `ord:{transfer}:transfer:{step}`.
pub const TRANSFER_LINE_ID: &str = "transfer";

/// What the client asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferSpec {
    pub sku: String,
    pub from: String,
    pub to: String,
    pub quantity: i64,
}

/// How far a transfer's steps got, from their recorded results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub spec: TransferSpec,
    /// Taken out of `from`'s available.
    pub taken: bool,
    /// Added to `to`'s incoming.
    pub delivered: bool,
    /// Moved from `to`'s incoming to its available.
    pub received: bool,
    /// Put back into `from`'s available after a failure.
    pub returned: bool,
}

impl Transfer {
    pub fn new(spec: TransferSpec) -> Self {
        Self {
            spec,
            taken: false,
            delivered: false,
            received: false,
            returned: false,
        }
    }
}

/// Checks a transfer request; needs no state.
pub fn validate_transfer(spec: &TransferSpec) -> Result<(), Refusal> {
    validate_token("sku", &spec.sku)?;
    validate_token("from", &spec.from)?;
    validate_token("to", &spec.to)?;
    if spec.from == spec.to {
        return Err(Refusal::invalid("to", "must differ from `from`"));
    }
    if spec.quantity <= 0 || spec.quantity > MAX_QUANTITY {
        return Err(Refusal::invalid(
            "quantity",
            format!("must be in 1..={MAX_QUANTITY}, got {}", spec.quantity),
        ));
    }
    Ok(())
}

/// The next step of a transfer with nothing pending (see [`super::plan`]).
pub(super) fn plan_transfer(status: Option<OrderStatus>, transfer: &Transfer) -> super::Next {
    use super::Next;
    let run = |action| Next::Run(vec![(0, action)]);
    match status {
        Some(OrderStatus::Reserving) if !transfer.taken => run(Action::TransferOut),
        Some(OrderStatus::Reserving) if !transfer.delivered => run(Action::TransferIn),
        Some(OrderStatus::Reserving) => Next::Settle(OrderStatus::Held, None),
        Some(OrderStatus::Committing) if !transfer.received => run(Action::TransferReceive),
        Some(OrderStatus::Committing) => Next::Settle(OrderStatus::Committed, None),
        // Units are put back only if they were taken and not yet returned.
        Some(OrderStatus::Releasing) if transfer.taken && !transfer.returned => {
            run(Action::TransferReturn)
        }
        Some(OrderStatus::Releasing) => Next::Settle(OrderStatus::Released, None),
        _ => Next::Nothing,
    }
}

/// Folds a transfer step's result into its progress.
pub(super) fn apply_transfer_result(transfer: &mut Transfer, action: &Action, result: &StepResult) {
    if *result != StepResult::Done {
        return;
    }
    match action {
        Action::TransferOut => transfer.taken = true,
        Action::TransferIn => transfer.delivered = true,
        Action::TransferReceive => transfer.received = true,
        Action::TransferReturn => transfer.returned = true,
        _ => {}
    }
}

/// Why a transfer step that was refused ends the way it does.
pub(super) fn transfer_failure(
    spec: &TransferSpec,
    action: &Action,
    result: &StepResult,
) -> Failure {
    let (location, available, reason) = match (action, result) {
        (Action::TransferOut, StepResult::Insufficient { available }) => (
            &spec.from,
            Some(*available),
            "insufficient available quantity".to_owned(),
        ),
        (Action::TransferOut, StepResult::Refused { error }) => (&spec.from, None, error.clone()),
        (Action::TransferReceive, StepResult::Refused { error }) => {
            (&spec.to, None, format!("could not be received: {error}"))
        }
        (_, StepResult::Refused { error }) => (&spec.to, None, error.clone()),
        _ => (&spec.to, None, "refused".to_owned()),
    };
    Failure {
        line_id: TRANSFER_LINE_ID.to_owned(),
        sku: spec.sku.clone(),
        requested: spec.quantity,
        shortfalls: vec![Shortfall {
            location: location.clone(),
            available,
            reason: reason.clone(),
        }],
        reason,
    }
}
