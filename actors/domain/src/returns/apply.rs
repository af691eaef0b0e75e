//! Folding events into the case: the one place its state changes.

use super::state::*;

/// Folds one event into the case.
pub fn apply(case: &mut ReturnCase, event: &ReturnEvent) {
    match event {
        ReturnEvent::Opened { .. } => open(case, event),
        ReturnEvent::FlaggedForReview { .. } | ReturnEvent::LabelAttached { .. } => {
            if let ReturnEvent::LabelAttached { label, .. } = event {
                case.label = Some(label.clone());
            }
        }
        ReturnEvent::Approved { ship_by_ms, .. } => {
            case.ship_by_ms = Some(*ship_by_ms);
            for line in case.lines.values_mut() {
                line.approved = line.requested;
            }
        }
        ReturnEvent::Declined { reason, note } => {
            case.decline_reason = Some(format!("{reason:?}: {note}"));
        }
        ReturnEvent::MilestoneReached { milestone, at_ms } => {
            case.milestones
                .insert(milestone_name(*milestone).to_owned(), *at_ms);
        }
        ReturnEvent::ItemsReceived { .. }
        | ReturnEvent::ItemsInspected { .. }
        | ReturnEvent::ItemsDisposed { .. } => apply_to_line(case, event),
        ReturnEvent::StateChanged { from, to } => {
            if *to == ReturnState::Processed && *from != ReturnState::Processed {
                case.state_before_processing = Some(*from);
            }
            case.state = Some(*to);
        }
        ReturnEvent::RefundDecided { refund } => {
            for refund_line in &refund.lines {
                if let Some(line) = case.lines.get_mut(&refund_line.line_id) {
                    line.refunded_quantity += refund_line.quantity;
                    line.refunded_minor += refund_line.gross_minor;
                }
            }
            case.processed_at_ms = Some(refund.decided_at_ms);
            case.refunds.push(refund.clone());
        }
        ReturnEvent::RefundReleased { refund_id, at_ms } => {
            if let Some(refund) = case.refunds.iter_mut().find(|r| r.refund_id == *refund_id) {
                refund.state = RefundState::Released;
                refund.released_at_ms = Some(*at_ms);
            }
        }
        ReturnEvent::RefundManuallyApproved { approved_by } => {
            case.manual_refund_approved_by = Some(approved_by.clone());
        }
        ReturnEvent::ErpConfirmed { credit_memo } => {
            case.erp_credit_memo = Some(credit_memo.clone())
        }
        ReturnEvent::Closed { at_ms } => case.closed_at_ms = Some(*at_ms),
        ReturnEvent::Reopened { .. } => case.closed_at_ms = None,
        ReturnEvent::Canceled { .. } | ReturnEvent::Expired { .. } => {}
        ReturnEvent::ExceptionRaised { exception } => case.exceptions.push(exception.clone()),
        ReturnEvent::ExceptionResolved {
            exception_id,
            resolved_by,
            note,
            at_ms,
        } => {
            if let Some(exception) = case
                .exceptions
                .iter_mut()
                .find(|e| e.exception_id == *exception_id)
            {
                exception.resolved_by = Some(resolved_by.clone());
                exception.resolved_at_ms = Some(*at_ms);
                exception.resolution_note = note.clone();
            }
        }
        ReturnEvent::ExchangeUpdated { line_id, state } => {
            if let Some(hold) = case.exchanges.iter_mut().find(|h| h.line_id == *line_id) {
                hold.state = *state;
            }
        }
        ReturnEvent::EffectScheduled { effect } => {
            case.next_step = effect.step + 1;
            case.pending_effects.insert(effect.step, effect.clone());
        }
        ReturnEvent::EffectCompleted { step, .. } => {
            case.pending_effects.remove(step);
        }
        ReturnEvent::EffectFailed {
            step,
            error,
            retry_at_ms,
        } => {
            if let Some(effect) = case.pending_effects.get_mut(step) {
                effect.attempts += 1;
                effect.last_error = error.clone();
                effect.retry_at_ms = *retry_at_ms;
            }
        }
    }
}

/// Applies a journal entry: its events, then its version.
pub fn apply_entry(case: &mut ReturnCase, entry: &ReturnEntry) {
    for event in &entry.events {
        apply(case, event);
    }
    case.version = entry.version;
}

/// A case opens: everything it was asked and the policy in force.
fn open(case: &mut ReturnCase, event: &ReturnEvent) {
    let ReturnEvent::Opened {
        return_id,
        order_ref,
        customer_ref,
        channel,
        requester,
        order_lines,
        lines,
        exchanges,
        policy,
        state,
        at_ms,
    } = event
    else {
        return;
    };
    case.return_id = return_id.clone();
    case.order_ref = order_ref.clone();
    case.customer_ref = customer_ref.clone();
    case.channel = channel.clone();
    case.requester = Some(*requester);
    case.order_lines = order_lines
        .iter()
        .map(|l| (l.line_id.clone(), l.clone()))
        .collect();
    case.lines = lines
        .iter()
        .map(|l| (l.line_id.clone(), l.clone()))
        .collect();
    case.exchanges = exchanges.clone();
    case.policy = policy.clone();
    case.state = Some(*state);
    case.opened_at_ms = *at_ms;
}

/// Units of a line received, inspected or disposed of.
fn apply_to_line(case: &mut ReturnCase, event: &ReturnEvent) {
    match event {
        ReturnEvent::ItemsReceived {
            line_id,
            quantity,
            location,
        } => {
            if let Some(line) = case.lines.get_mut(line_id) {
                line.received += quantity;
                line.receiving_location = location.clone();
            }
        }
        ReturnEvent::ItemsInspected {
            line_id,
            quantity,
            grade,
        } => {
            if let Some(line) = case.lines.get_mut(line_id) {
                line.inspected += quantity;
                if *grade == Grade::Unsellable {
                    line.unsellable += quantity;
                }
            }
        }
        ReturnEvent::ItemsDisposed {
            line_id,
            quantity,
            disposition,
        } => {
            if let Some(line) = case.lines.get_mut(line_id) {
                match disposition {
                    Disposition::Missing | Disposition::KeepItem => line.not_returned += quantity,
                    Disposition::RestockAfterProcessing => line.awaiting_processing += quantity,
                    _ => {
                        // Parked units are disposed of first.
                        let from_parked = (*quantity).min(line.awaiting_processing);
                        line.awaiting_processing -= from_parked;
                        line.disposed += quantity;
                    }
                }
            }
        }
        _ => {}
    }
}
