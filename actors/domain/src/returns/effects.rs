//! The timer (expiry, overdue exceptions) and the results of inventory
//! steps the runtime reports.

use super::builder::Builder;
use super::state::*;

/// Effect attempts after which an exception is raised (retries go on).
pub const EFFECT_ATTEMPTS_BEFORE_EXCEPTION: u32 = 5;

pub(super) fn tick(b: &mut Builder<'_>, state: ReturnState) {
    let now = b.now_ms;
    if state == ReturnState::Approved
        && b.case.milestone(Milestone::InTransit).is_none()
        && b.case.ship_by_ms.is_some_and(|ship_by| ship_by <= now)
    {
        b.push(ReturnEvent::Expired { at_ms: now });
        b.transition(ReturnState::Expired);
        b.release_exchange_holds();
        return;
    }
    if let Some(delivered) = b.case.milestone(Milestone::Delivered) {
        let overdue_at = delivered + i64::from(b.case.policy.receipt_overdue_hours) * 3_600_000;
        if b.case.lines.values().all(|l| l.received == 0)
            && now >= overdue_at
            && !state.is_terminal()
        {
            b.raise(
                ExceptionKind::ReceiptOverdue,
                format!("delivered at {delivered} ms and not received"),
            );
        }
    }
    if b.case.policy.refund_gate == RefundGate::ErpValidation && b.case.erp_credit_memo.is_none() {
        if let Some(processed) = b.case.processed_at_ms {
            let overdue_at = processed + i64::from(b.case.policy.erp_overdue_hours) * 3_600_000;
            if now >= overdue_at {
                b.raise(
                    ExceptionKind::ErpConfirmationOverdue,
                    format!("processed at {processed} ms; no credit memo confirmed"),
                );
            }
        }
    }
}

/// Backoff of a failing effect: 1 s doubling to at most 5 minutes.
fn retry_delay_ms(attempts: u32) -> i64 {
    (1_000i64 << attempts.min(9)).min(300_000)
}

pub(super) fn complete_effect(b: &mut Builder<'_>, step: u32, outcome: EffectOutcome, error: &str) {
    let Some(effect) = b.case.pending_effects.get(&step).cloned() else {
        // Already completed: a repeated report changes nothing.
        return;
    };
    match outcome {
        EffectOutcome::Retry => {
            let attempts = effect.attempts + 1;
            b.push(ReturnEvent::EffectFailed {
                step,
                error: error.to_owned(),
                retry_at_ms: b.now_ms + retry_delay_ms(attempts),
            });
            if attempts >= EFFECT_ATTEMPTS_BEFORE_EXCEPTION {
                b.raise(
                    ExceptionKind::EffectFailing,
                    format!("inventory step {step} failed {attempts} times: {error}"),
                );
            }
        }
        EffectOutcome::Applied | EffectOutcome::Refused => {
            b.push(ReturnEvent::EffectCompleted { step, outcome });
            match (&effect.kind, outcome) {
                (EffectKind::HoldExchange { .. }, _) => {
                    if let Some(hold) = b.case.exchanges.iter().find(|h| {
                        matches!(&effect.kind, EffectKind::HoldExchange { reservation_id, .. } if *reservation_id == h.reservation_id)
                    }) {
                        // A hold released or confirmed meanwhile keeps that state.
                        if hold.state == ExchangeState::Requested {
                            let state = if outcome == EffectOutcome::Applied {
                                ExchangeState::Held
                            } else {
                                ExchangeState::OutOfStock
                            };
                            let line_id = hold.line_id.clone();
                            b.push(ReturnEvent::ExchangeUpdated { line_id, state });
                        }
                    }
                }
                (_, EffectOutcome::Refused) => {
                    b.raise(
                        ExceptionKind::EffectFailing,
                        format!("inventory step {step} was refused: {error}"),
                    );
                }
                _ => {}
            }
        }
    }
}
