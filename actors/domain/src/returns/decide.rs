//! `decide` for return cases: the entry point that checks the version and
//! the state, then hands each command to the module of its stage.

use super::builder::Builder;
use super::effects::{complete_effect, tick};
use super::lifecycle::require_state;
use super::open::open;
use super::state::*;
use super::validation::{check_bounds, free_text, refuse};
use super::{closing, receiving, refund, review};
use crate::key::validate_token;
use crate::Refusal;

/// Time and identity a decision is made under.
#[derive(Debug, Clone)]
pub struct ReturnContext {
    pub now_ms: i64,
    pub return_id: String,
}

/// Decides a command against a case. Never mutates.
pub fn decide(
    case: &ReturnCase,
    expected_version: Option<u64>,
    command: &ReturnCommand,
    context: &ReturnContext,
) -> Result<Vec<ReturnEvent>, Refusal> {
    check_bounds(command)?;
    if let Some(expected) = expected_version {
        if expected != case.version {
            return Err(Refusal::VersionMismatch {
                expected,
                current: case.version,
            });
        }
    }
    let now = context.now_ms;
    let Some(state) = case.state else {
        return match command {
            ReturnCommand::Open { .. } => open(case, command, context),
            ReturnCommand::Tick
            | ReturnCommand::CompleteEffect { .. }
            | ReturnCommand::ErpReport { .. } => Ok(Vec::new()),
            _ => Err(Refusal::ReturnNotFound(context.return_id.clone())),
        };
    };
    let mut b = Builder::new(case, now);
    match command {
        ReturnCommand::Open { .. } => return Err(Refusal::ReturnExists(context.return_id.clone())),
        ReturnCommand::Tick => tick(&mut b, state),
        ReturnCommand::ErpReport { report } => refund::erp_report(&mut b, report),
        ReturnCommand::CompleteEffect {
            step,
            outcome,
            error,
        } => complete_effect(&mut b, *step, *outcome, error),
        ReturnCommand::ResolveException {
            exception_id,
            resolved_by,
            note,
        } => {
            validate_token("resolved_by", resolved_by)?;
            free_text("note", note)?;
            let exception = case
                .exceptions
                .iter()
                .find(|e| e.exception_id == *exception_id)
                .ok_or(Refusal::ExceptionNotFound(*exception_id))?;
            if exception.resolved_at_ms.is_some() {
                return Err(refuse(format!(
                    "exception {exception_id} is already resolved"
                )));
            }
            b.push(ReturnEvent::ExceptionResolved {
                exception_id: *exception_id,
                resolved_by: resolved_by.clone(),
                note: note.clone(),
                at_ms: now,
            });
        }
        other => {
            require_state(other, state)?;
            client_command(&mut b, state, other, context)?;
        }
    }
    Ok(b.finish())
}

/// A client's command in a state that allows it (checked by the caller).
fn client_command(
    b: &mut Builder<'_>,
    state: ReturnState,
    command: &ReturnCommand,
    context: &ReturnContext,
) -> Result<(), Refusal> {
    let now = context.now_ms;
    match command {
        ReturnCommand::FlagForReview { reason } => review::flag_for_review(b, reason),
        ReturnCommand::Approve { approved_by } => review::approve(b, approved_by),
        ReturnCommand::Decline { reason, note } => review::decline(b, *reason, note),
        ReturnCommand::AttachLabel { label } => review::attach_label(b, label, now),
        ReturnCommand::CarrierMilestone { milestone, at_ms } => {
            review::carrier_milestone(b, state, *milestone, *at_ms, now)
        }
        ReturnCommand::Receive {
            lines,
            accept_surplus,
        } => receiving::receive(b, state, lines, *accept_surplus),
        ReturnCommand::Inspect { lines } => receiving::inspect(b, state, lines),
        ReturnCommand::Dispose {
            line_id,
            quantity,
            disposition,
        } => receiving::dispose(b, line_id, *quantity, *disposition),
        ReturnCommand::Process { method } => refund::process(b, state, *method, context),
        ReturnCommand::ApproveRefund { approved_by } => refund::approve_refund(b, approved_by),
        ReturnCommand::ConfirmErp { credit_memo } => refund::confirm_erp(b, credit_memo, now),
        ReturnCommand::Close => closing::close(b, now),
        ReturnCommand::Reopen { reason } => closing::reopen(b, reason),
        ReturnCommand::Cancel { reason } => closing::cancel(b, reason),
        ReturnCommand::Open { .. }
        | ReturnCommand::ResolveException { .. }
        | ReturnCommand::CompleteEffect { .. }
        | ReturnCommand::ErpReport { .. }
        | ReturnCommand::Tick => Ok(()),
    }
}
