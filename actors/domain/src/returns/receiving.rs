//! At the warehouse: receipt, inspection and the disposition of each unit.

use super::builder::Builder;
use super::state::*;
use super::validation::{line, optional_token, positive, refuse};
use crate::Refusal;

/// Units arrived at the receiving location: into inspection, once each.
pub(super) fn receive(
    b: &mut Builder<'_>,
    state: ReturnState,
    lines: &[ReceivedLine],
    accept_surplus: bool,
) -> Result<(), Refusal> {
    if lines.is_empty() {
        return Err(Refusal::invalid("lines", "name at least one line"));
    }
    for received in lines {
        positive("lines.quantity", received.quantity)?;
        optional_token("lines.location", &received.location)?;
        let line = line(&b.case, &received.line_id)?.clone();
        let location = if received.location.is_empty() {
            line.receiving_location.clone()
        } else {
            received.location.clone()
        };
        if line.received > 0 && location != line.receiving_location {
            return Err(refuse(format!(
                "line {:?} is being received at {:?}, not {location:?}",
                line.line_id, line.receiving_location
            )));
        }
        let remaining = line.approved - line.received - line.canceled - line.not_returned;
        let mut quantity = received.quantity;
        if quantity > remaining {
            if !accept_surplus {
                return Err(refuse(format!(
                    "line {:?}: {} of {} approved units already received or settled; cannot receive {quantity} more (set accept_surplus to record the surplus as an exception)",
                    line.line_id,
                    line.approved - remaining,
                    line.approved
                )));
            }
            b.raise(
                ExceptionKind::ReceivedMoreThanApproved,
                format!(
                    "line {:?}: {quantity} units arrived, {remaining} expected",
                    line.line_id
                ),
            );
            quantity = remaining;
        }
        if quantity > 0 {
            b.push(ReturnEvent::ItemsReceived {
                line_id: line.line_id.clone(),
                quantity,
                location: location.clone(),
            });
            b.effect(EffectKind::ReceiveIntoInspection {
                sku: line.sku.clone(),
                location,
                quantity,
            });
        }
    }
    if matches!(
        state,
        ReturnState::Approved | ReturnState::InTransit | ReturnState::Inspected
    ) && b.case.lines.values().any(|l| l.received > 0)
    {
        b.transition(ReturnState::Received);
    }
    Ok(())
}

/// Received units graded; unsellable ones raise an exception.
pub(super) fn inspect(
    b: &mut Builder<'_>,
    state: ReturnState,
    lines: &[InspectedLine],
) -> Result<(), Refusal> {
    if lines.is_empty() {
        return Err(Refusal::invalid("lines", "name at least one line"));
    }
    for inspected in lines {
        positive("lines.quantity", inspected.quantity)?;
        let line = line(&b.case, &inspected.line_id)?.clone();
        if inspected.quantity > line.received - line.inspected {
            return Err(refuse(format!(
                "line {:?}: {} received, {} already inspected; cannot inspect {}",
                line.line_id, line.received, line.inspected, inspected.quantity
            )));
        }
        b.push(ReturnEvent::ItemsInspected {
            line_id: line.line_id.clone(),
            quantity: inspected.quantity,
            grade: inspected.grade,
        });
        if inspected.grade == Grade::Unsellable {
            b.raise(
                ExceptionKind::DamagedOnArrival,
                format!(
                    "line {:?}: {} units unsellable",
                    line.line_id, inspected.quantity
                ),
            );
        }
    }
    let all_inspected = b.case.lines.values().all(|l| l.inspected == l.received);
    if all_inspected && state == ReturnState::Received {
        b.transition(ReturnState::Inspected);
    }
    Ok(())
}

/// What happens to units: restock, damaged hold, scrap, vendor, or none.
pub(super) fn dispose(
    b: &mut Builder<'_>,
    line_id: &str,
    quantity: i64,
    disposition: Disposition,
) -> Result<(), Refusal> {
    positive("quantity", quantity)?;
    let line = line(&b.case, line_id)?.clone();
    let limit = match disposition {
        Disposition::Missing | Disposition::KeepItem => {
            line.approved - line.received - line.canceled - line.not_returned
        }
        Disposition::RestockAfterProcessing => {
            line.received - line.disposed - line.awaiting_processing
        }
        _ => line.received - line.disposed,
    };
    if quantity > limit {
        return Err(refuse(format!(
            "line {line_id:?}: only {limit} units can take the disposition {disposition:?}, not {quantity}"
        )));
    }
    b.push(ReturnEvent::ItemsDisposed {
        line_id: line_id.to_owned(),
        quantity,
        disposition,
    });
    if matches!(
        disposition,
        Disposition::Restock
            | Disposition::DamagedHold
            | Disposition::Scrap
            | Disposition::ReturnToVendor
    ) {
        b.effect(EffectKind::Dispose {
            sku: line.sku.clone(),
            location: line.receiving_location.clone(),
            quantity,
            disposition,
        });
    }
    Ok(())
}
