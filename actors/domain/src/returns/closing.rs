//! Ending a case: close, reopen, cancel.

use super::builder::Builder;
use super::state::*;
use super::validation::{free_text, refuse};
use crate::key::validate_token;
use crate::Refusal;

/// Closed: nothing is pending, no refund waits for its gate.
pub(super) fn close(b: &mut Builder<'_>, now: i64) -> Result<(), Refusal> {
    if b.case
        .refunds
        .iter()
        .any(|r| r.state == RefundState::PendingGate)
    {
        return Err(refuse("a refund is still waiting for its gate"));
    }
    if !b.case.pending_effects.is_empty() {
        return Err(refuse("inventory steps are still in progress"));
    }
    b.push(ReturnEvent::Closed { at_ms: now });
    b.transition(ReturnState::Closed);
    Ok(())
}

/// Reopened: back to where it was before processing.
pub(super) fn reopen(b: &mut Builder<'_>, reason: &str) -> Result<(), Refusal> {
    validate_token("reason", reason)?;
    let to = b
        .case
        .state_before_processing
        .unwrap_or(ReturnState::Received);
    b.push(ReturnEvent::Reopened {
        to,
        reason: reason.to_owned(),
    });
    b.transition(to);
    Ok(())
}

/// Canceled: only before any receipt, inspection or refund.
pub(super) fn cancel(b: &mut Builder<'_>, reason: &str) -> Result<(), Refusal> {
    free_text("reason", reason)?;
    let work_done = b
        .case
        .lines
        .values()
        .any(|l| l.received > 0 || l.inspected > 0 || l.disposed > 0)
        || !b.case.refunds.is_empty();
    if work_done {
        return Err(refuse(
            "a return can be canceled only before any receipt, inspection or refund",
        ));
    }
    b.push(ReturnEvent::Canceled {
        reason: reason.to_owned(),
    });
    b.transition(ReturnState::Canceled);
    b.release_exchange_holds();
    Ok(())
}
