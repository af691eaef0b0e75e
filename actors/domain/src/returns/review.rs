//! Before the parcel arrives: review, approval, labels and carrier scans.

use super::builder::Builder;
use super::state::*;
use super::validation::{free_text, optional_token};
use crate::key::validate_token;
use crate::Refusal;

/// A person looks before the return is approved or declined.
pub(super) fn flag_for_review(b: &mut Builder<'_>, reason: &str) -> Result<(), Refusal> {
    free_text("reason", reason)?;
    b.push(ReturnEvent::FlaggedForReview {
        reason: reason.to_owned(),
    });
    b.transition(ReturnState::InReview);
    Ok(())
}

/// Approved: the customer may send the items (ship-by timer, exchange holds).
pub(super) fn approve(b: &mut Builder<'_>, approved_by: &str) -> Result<(), Refusal> {
    optional_token("approved_by", approved_by)?;
    b.approve();
    Ok(())
}

/// Declined: nothing will come back; exchange holds are released.
pub(super) fn decline(
    b: &mut Builder<'_>,
    reason: DeclineReason,
    note: &str,
) -> Result<(), Refusal> {
    free_text("note", note)?;
    b.push(ReturnEvent::Declined {
        reason,
        note: note.to_owned(),
    });
    b.transition(ReturnState::Declined);
    b.release_exchange_holds();
    Ok(())
}

/// A return label was made for the parcel.
pub(super) fn attach_label(b: &mut Builder<'_>, label: &Label, now: i64) -> Result<(), Refusal> {
    optional_token("label.carrier", &label.carrier)?;
    validate_token("label.tracking_number", &label.tracking_number)?;
    free_text("label.label_url", &label.label_url)?;
    b.push(ReturnEvent::LabelAttached {
        label: label.clone(),
        at_ms: now,
    });
    if b.case.milestone(Milestone::LabelCreated).is_none() {
        b.push(ReturnEvent::MilestoneReached {
            milestone: Milestone::LabelCreated,
            at_ms: now,
        });
    }
    Ok(())
}

/// A carrier scan: the parcel is moving (every earlier milestone is implied).
pub(super) fn carrier_milestone(
    b: &mut Builder<'_>,
    state: ReturnState,
    milestone: Milestone,
    at_ms: i64,
    now: i64,
) -> Result<(), Refusal> {
    if milestone == Milestone::LabelCreated {
        return Err(Refusal::invalid(
            "milestone",
            "a label is created with AttachLabel",
        ));
    }
    let at_ms = if at_ms == 0 { now } else { at_ms };
    // Any carrier scan means the parcel is moving.
    let implied: &[Milestone] = match milestone {
        Milestone::InTransit => &[Milestone::InTransit],
        Milestone::OutForDelivery => &[Milestone::InTransit, Milestone::OutForDelivery],
        _ => &[
            Milestone::InTransit,
            Milestone::OutForDelivery,
            Milestone::Delivered,
        ],
    };
    for reached in implied {
        if b.case.milestone(*reached).is_none() {
            b.push(ReturnEvent::MilestoneReached {
                milestone: *reached,
                at_ms,
            });
        }
    }
    if state == ReturnState::Approved {
        b.transition(ReturnState::InTransit);
    }
    Ok(())
}
