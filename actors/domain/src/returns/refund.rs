//! Refunds: deciding what is owed, and the gates that release it.

use super::builder::Builder;
use super::decide::ReturnContext;
use super::lifecycle::refundable_quantity;
use super::state::*;
use super::validation::refuse;
use crate::key::validate_token;
use crate::Refusal;

pub(super) fn process(
    b: &mut Builder<'_>,
    state: ReturnState,
    method: RefundMethod,
    context: &ReturnContext,
) -> Result<(), Refusal> {
    let policy = b.case.policy.clone();
    let mut refund_lines = Vec::new();
    for line in b.case.lines.values() {
        let quantity = refundable_quantity(line, &policy) - line.refunded_quantity;
        if quantity <= 0 {
            continue;
        }
        let Some(order_line) = b.case.order_lines.get(&line.line_id) else {
            continue;
        };
        // Never above what was paid for the line: price the units refunded
        // so far plus these, and take the difference.
        let paid_through = order_line.paid_for(line.refunded_quantity + quantity);
        let gross_minor = (paid_through - line.refunded_minor).max(0);
        refund_lines.push(RefundLine {
            line_id: line.line_id.clone(),
            quantity,
            gross_minor,
        });
    }
    let exchanges_to_confirm: Vec<ExchangeHold> = b
        .case
        .exchanges
        .iter()
        .filter(|h| h.state == ExchangeState::Held)
        .cloned()
        .collect();
    if refund_lines.is_empty() && exchanges_to_confirm.is_empty() {
        return Err(refuse(format!(
            "nothing to process yet under the {:?} refund gate",
            policy.refund_gate
        )));
    }
    if !refund_lines.is_empty() {
        // Checked: each line's gross is at most what was paid for it, but a
        // total over lines is still a sum, and fees come from configuration.
        let gross = refund_lines
            .iter()
            .try_fold(0i64, |total, line| total.checked_add(line.gross_minor))
            .ok_or_else(|| refuse("the refund total does not fit an amount"))?;
        let restocking_fee_minor =
            i64::try_from(i128::from(gross) * i128::from(policy.restocking_fee_bps) / 10_000)
                .unwrap_or(gross);
        let shipping_fee_minor = if b.case.refunds.is_empty() {
            policy.return_shipping_fee_minor.max(0)
        } else {
            0
        };
        let fees = restocking_fee_minor
            .saturating_add(shipping_fee_minor)
            .min(gross);
        let refund = Refund {
            refund_id: format!("{}-refund-{}", context.return_id, b.case.refunds.len() + 1),
            method,
            lines: refund_lines,
            restocking_fee_minor: restocking_fee_minor.min(gross),
            shipping_fee_minor: (fees - restocking_fee_minor.min(gross)).max(0),
            total_minor: gross - fees,
            state: RefundState::PendingGate,
            decided_at_ms: context.now_ms,
            released_at_ms: None,
        };
        b.push(ReturnEvent::RefundDecided { refund });
    }
    for hold in exchanges_to_confirm {
        b.effect(EffectKind::ConfirmExchange {
            sku: hold.sku.clone(),
            location: hold.location.clone(),
            reservation_id: hold.reservation_id.clone(),
            order_ref: format!("return:{}:exchange", context.return_id),
        });
        b.push(ReturnEvent::ExchangeUpdated {
            line_id: hold.line_id.clone(),
            state: ExchangeState::Confirmed,
        });
    }
    if state != ReturnState::Processed {
        b.transition(ReturnState::Processed);
    }
    b.release_refunds();
    Ok(())
}

/// The manual refund gate: a person approves.
pub(super) fn approve_refund(b: &mut Builder<'_>, approved_by: &str) -> Result<(), Refusal> {
    validate_token("approved_by", approved_by)?;
    if b.case.manual_refund_approved_by.is_none() {
        b.push(ReturnEvent::RefundManuallyApproved {
            approved_by: approved_by.to_owned(),
        });
    }
    Ok(())
}

/// The ERP gate: finance confirmed the credit memo.
pub(super) fn confirm_erp(b: &mut Builder<'_>, credit_memo: &str, now: i64) -> Result<(), Refusal> {
    validate_token("credit_memo", credit_memo)?;
    if b.case.erp_credit_memo.is_none() {
        b.push(ReturnEvent::ErpConfirmed {
            credit_memo: credit_memo.to_owned(),
        });
        // A confirmation (by the ERP worker or by a person overriding it)
        // answers both: the posting is no longer overdue, and a refusal
        // finance settled by hand is settled.
        let overdue: Vec<u32> = b
            .case
            .open_exceptions()
            .filter(|e| {
                matches!(
                    e.kind,
                    ExceptionKind::ErpConfirmationOverdue | ExceptionKind::ErpRefused
                )
            })
            .map(|e| e.exception_id)
            .collect();
        for exception_id in overdue {
            b.push(ReturnEvent::ExceptionResolved {
                exception_id,
                resolved_by: "erp".into(),
                note: format!("credit memo {credit_memo} confirmed"),
                at_ms: now,
            });
        }
    }
    Ok(())
}

/// The ERP worker's report: an exception on a case still waiting for the
/// ERP gate; nothing once a credit memo is confirmed (a late report of a
/// worker that lost the race with a person's `ConfirmErp`).
pub(super) fn erp_report(b: &mut Builder<'_>, report: &ErpReport) {
    if !b.case.awaits_erp() {
        return;
    }
    match report {
        ErpReport::Overdue { note } => b.raise(ExceptionKind::ErpConfirmationOverdue, note.clone()),
        ErpReport::Refused { code, message } => {
            b.raise(ExceptionKind::ErpRefused, format!("{code}: {message}"))
        }
    }
}
