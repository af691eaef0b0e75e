//! What each inventory effect of a return asks of its position: the SKU and
//! location, and the position command that carries it out. The runtime sends
//! that command with the effect's own idempotency key, so this mapping is
//! the whole contract between the two state machines.

use super::state::{Disposition, EffectKind};
use crate::position::{AdjustmentReason, Bucket, Command, Owner, OwnerType};

/// How long an exchange hold is asked for; the position caps it at its own
/// maximum TTL.
pub const EXCHANGE_HOLD_TTL_MS: i64 = 60 * 86_400_000;

/// A position command an effect becomes, and where it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionCommand<'a> {
    pub sku: &'a str,
    pub location: &'a str,
    pub command: Command,
}

impl EffectKind {
    /// The position command for this effect of return `return_id`; `None`
    /// for a disposition that moves no stock (never scheduled as an effect).
    pub fn position_command(&self, return_id: &str) -> Option<PositionCommand<'_>> {
        let reference = format!("return:{return_id}");
        let (sku, location, command) = match self {
            EffectKind::ReceiveIntoInspection {
                sku,
                location,
                quantity,
            } => (
                sku,
                location,
                Command::Adjust {
                    bucket: Bucket::QualityControl,
                    delta: *quantity,
                    reason: AdjustmentReason::ReturnRestock,
                    change_from: None,
                    reference,
                },
            ),
            EffectKind::Dispose {
                sku,
                location,
                quantity,
                disposition,
            } => (sku, location, disposal(*disposition, *quantity, reference)?),
            EffectKind::HoldExchange {
                sku,
                location,
                quantity,
                reservation_id,
            } => (
                sku,
                location,
                Command::Reserve {
                    reservation_id: reservation_id.clone(),
                    quantity: *quantity,
                    owner: Owner {
                        kind: OwnerType::ReturnExchange,
                        id: return_id.to_owned(),
                        line_id: String::new(),
                    },
                    channel: String::new(),
                    ttl_ms: EXCHANGE_HOLD_TTL_MS,
                    allow_partial: false,
                },
            ),
            EffectKind::ReleaseExchange {
                sku,
                location,
                reservation_id,
            } => (
                sku,
                location,
                Command::ReleaseReservation {
                    reservation_id: reservation_id.clone(),
                },
            ),
            EffectKind::ConfirmExchange {
                sku,
                location,
                reservation_id,
                order_ref,
            } => (
                sku,
                location,
                Command::CommitReservation {
                    reservation_id: reservation_id.clone(),
                    quantity: 0,
                    order_ref: order_ref.clone(),
                },
            ),
        };
        Some(PositionCommand {
            sku,
            location,
            command,
        })
    }
}

/// Units leaving inspection: back to sale, to the damaged hold, or out of
/// the building (scrapped or sent to the vendor).
fn disposal(disposition: Disposition, quantity: i64, reference: String) -> Option<Command> {
    let moved_to = |to, reason| Command::Move {
        from: Bucket::QualityControl,
        to,
        quantity,
        reason,
        from_change_from: None,
        to_change_from: None,
        reference: reference.clone(),
    };
    let removed = |reason| Command::Adjust {
        bucket: Bucket::QualityControl,
        delta: -quantity,
        reason,
        change_from: None,
        reference: reference.clone(),
    };
    match disposition {
        Disposition::Restock => Some(moved_to(Bucket::Available, AdjustmentReason::ReturnRestock)),
        Disposition::DamagedHold => Some(moved_to(Bucket::Damaged, AdjustmentReason::Damage)),
        Disposition::Scrap => Some(removed(AdjustmentReason::Damage)),
        Disposition::ReturnToVendor => Some(removed(AdjustmentReason::Transfer)),
        Disposition::RestockAfterProcessing | Disposition::Missing | Disposition::KeepItem => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dispose(disposition: Disposition) -> EffectKind {
        EffectKind::Dispose {
            sku: "S".into(),
            location: "L".into(),
            quantity: 2,
            disposition,
        }
    }

    #[test]
    fn dispositions_move_units_out_of_inspection_or_nowhere() {
        let target = |d| match dispose(d).position_command("R1").map(|c| c.command) {
            Some(Command::Move {
                from, to, quantity, ..
            }) => {
                assert_eq!((from, quantity), (Bucket::QualityControl, 2));
                Some(Some(to))
            }
            Some(Command::Adjust { bucket, delta, .. }) => {
                assert_eq!((bucket, delta), (Bucket::QualityControl, -2));
                Some(None)
            }
            Some(other) => panic!("unexpected command {other:?}"),
            None => None,
        };
        assert_eq!(target(Disposition::Restock), Some(Some(Bucket::Available)));
        assert_eq!(
            target(Disposition::DamagedHold),
            Some(Some(Bucket::Damaged))
        );
        assert_eq!(target(Disposition::Scrap), Some(None));
        assert_eq!(target(Disposition::ReturnToVendor), Some(None));
        assert_eq!(target(Disposition::KeepItem), None);
        assert_eq!(target(Disposition::Missing), None);
        assert_eq!(target(Disposition::RestockAfterProcessing), None);
    }

    #[test]
    fn an_exchange_hold_is_owned_by_the_return_and_never_partial() {
        let hold = EffectKind::HoldExchange {
            sku: "S".into(),
            location: "L".into(),
            quantity: 1,
            reservation_id: "R1-x1".into(),
        };
        let Some(PositionCommand {
            sku,
            location,
            command:
                Command::Reserve {
                    owner,
                    allow_partial,
                    reservation_id,
                    ..
                },
        }) = hold.position_command("R1")
        else {
            panic!("an exchange hold is a reservation");
        };
        assert_eq!(
            (sku, location, reservation_id.as_str()),
            ("S", "L", "R1-x1")
        );
        assert_eq!(
            (owner.kind, owner.id.as_str()),
            (OwnerType::ReturnExchange, "R1")
        );
        assert!(!allow_partial);
    }
}
