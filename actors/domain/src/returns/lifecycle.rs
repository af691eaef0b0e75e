//! Which command each state allows, and when a refund's gate is open.

use super::state::*;
use crate::Refusal;

pub(super) fn command_name(command: &ReturnCommand) -> &'static str {
    match command {
        ReturnCommand::Open { .. } => "Open",
        ReturnCommand::FlagForReview { .. } => "FlagForReview",
        ReturnCommand::Approve { .. } => "Approve",
        ReturnCommand::Decline { .. } => "Decline",
        ReturnCommand::AttachLabel { .. } => "AttachLabel",
        ReturnCommand::CarrierMilestone { .. } => "CarrierMilestone",
        ReturnCommand::Receive { .. } => "Receive",
        ReturnCommand::Inspect { .. } => "Inspect",
        ReturnCommand::Dispose { .. } => "Dispose",
        ReturnCommand::Process { .. } => "Process",
        ReturnCommand::ApproveRefund { .. } => "ApproveRefund",
        ReturnCommand::ConfirmErp { .. } => "ConfirmErp",
        ReturnCommand::Close => "Close",
        ReturnCommand::Reopen { .. } => "Reopen",
        ReturnCommand::Cancel { .. } => "Cancel",
        ReturnCommand::ResolveException { .. } => "ResolveException",
        ReturnCommand::CompleteEffect { .. } => "CompleteEffect",
        ReturnCommand::Tick => "Tick",
        ReturnCommand::ErpReport { .. } => "ErpReport",
    }
}

/// The client commands a state accepts (exception resolution is always allowed).
pub fn allowed_commands(state: ReturnState) -> Vec<&'static str> {
    use ReturnState::*;
    let mut allowed = match state {
        Requested => vec!["FlagForReview", "Approve", "Decline", "Cancel"],
        InReview => vec!["Approve", "Decline", "Cancel"],
        Approved => vec![
            "AttachLabel",
            "CarrierMilestone",
            "Receive",
            "Dispose",
            "Process",
            "ApproveRefund",
            "ConfirmErp",
            "Cancel",
        ],
        InTransit => vec![
            "AttachLabel",
            "CarrierMilestone",
            "Receive",
            "Dispose",
            "Process",
            "ApproveRefund",
            "ConfirmErp",
            "Cancel",
        ],
        Received | Inspected => vec![
            "CarrierMilestone",
            "Receive",
            "Inspect",
            "Dispose",
            "Process",
            "ApproveRefund",
            "ConfirmErp",
        ],
        Processed => vec![
            "CarrierMilestone",
            "Receive",
            "Inspect",
            "Dispose",
            "Process",
            "ApproveRefund",
            "ConfirmErp",
            "Close",
        ],
        Closed => vec!["Reopen"],
        Declined | Canceled | Expired => vec![],
    };
    allowed.push("ResolveException");
    allowed
}

/// Units of a line a refund may cover now, before subtracting what was
/// already refunded: the policy's gate decides whether they must have been
/// received or passed inspection first.
pub fn refundable_quantity(line: &ReturnLine, policy: &ReturnPolicy) -> i64 {
    match line.resolution {
        Some(Resolution::Exchange) | None => 0,
        Some(Resolution::KeepItem) => line.approved - line.canceled,
        Some(Resolution::RefundOriginal | Resolution::StoreCredit) => match policy.refund_gate {
            RefundGate::OnReceipt => line.received,
            RefundGate::OnInspectionPass => line.inspected - line.unsellable,
            _ => line.approved - line.canceled - line.not_returned,
        },
    }
    .max(0)
}

pub(super) fn gate_satisfied(case: &ReturnCase) -> bool {
    match case.policy.refund_gate {
        RefundGate::Immediate | RefundGate::OnReceipt | RefundGate::OnInspectionPass => true,
        RefundGate::OnLabelCreated => case.milestone(Milestone::LabelCreated).is_some(),
        RefundGate::OnFirstScan => case.milestone(Milestone::InTransit).is_some(),
        RefundGate::OnOutForDelivery => case.milestone(Milestone::OutForDelivery).is_some(),
        RefundGate::OnDelivered => case.milestone(Milestone::Delivered).is_some(),
        RefundGate::Manual => case.manual_refund_approved_by.is_some(),
        RefundGate::ErpValidation => case.erp_credit_memo.is_some(),
    }
}

pub(super) fn require_state(command: &ReturnCommand, state: ReturnState) -> Result<(), Refusal> {
    let name = command_name(command);
    let allowed = allowed_commands(state);
    if allowed.contains(&name) {
        Ok(())
    } else {
        Err(Refusal::IllegalTransition {
            command: name.into(),
            state,
            allowed: allowed.into_iter().map(Into::into).collect(),
        })
    }
}
