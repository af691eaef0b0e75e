//! What consumers hear about a position's changes: the name of each event
//! (docs/domain.md section 2.1) and the stock-status crossings that follow
//! from the quantities before and after a change.

use super::state::{Buckets, Event};

impl Event {
    /// The event's name for consumers.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Adjusted { .. } | Event::Moved { .. } => "inventory.quantities.changed",
            Event::OnHandCounted { .. } => "inventory.physical_count.recorded",
            Event::ReservationCreated { .. } => "inventory.reservation.created",
            Event::ReservationExtended { .. } => "inventory.reservation.extended",
            Event::ReservationReleased { .. } => "inventory.reservation.released",
            Event::ReservationExpired { .. } => "inventory.reservation.expired",
            Event::ReservationCommitted { .. } => "inventory.reservation.committed",
            Event::CommitmentFulfilled { .. } => "inventory.commitment.fulfilled",
            Event::CommitmentCanceled { .. } => "inventory.commitment.canceled",
        }
    }
}

/// The stock-status event a change causes when the available quantity
/// crosses zero: out of stock when it falls to zero or below, back in
/// stock when it rises above zero again.
pub fn stock_status_crossing(before: &Buckets, after: &Buckets) -> Option<&'static str> {
    match (before.available() > 0, after.available() > 0) {
        (true, false) => Some("inventory.stock_status.out_of_stock"),
        (false, true) => Some("inventory.stock_status.back_in_stock"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_hand(on_hand: i64, reserved: i64) -> Buckets {
        Buckets {
            on_hand,
            reserved,
            ..Buckets::default()
        }
    }

    #[test]
    fn only_a_change_across_zero_available_is_a_stock_status_event() {
        assert_eq!(
            stock_status_crossing(&on_hand(5, 4), &on_hand(5, 5)),
            Some("inventory.stock_status.out_of_stock")
        );
        assert_eq!(
            stock_status_crossing(&on_hand(0, 0), &on_hand(3, 0)),
            Some("inventory.stock_status.back_in_stock")
        );
        // Backorders below zero, and moves that stay on one side, are not.
        assert_eq!(stock_status_crossing(&on_hand(0, 0), &on_hand(0, 2)), None);
        assert_eq!(stock_status_crossing(&on_hand(9, 0), &on_hand(9, 4)), None);
    }

    #[test]
    fn every_event_has_an_inventory_name() {
        let names = [
            Event::ReservationExtended {
                reservation_id: "r".into(),
                expires_at_ms: 1,
            }
            .name(),
            Event::CommitmentCanceled {
                order_ref: "o".into(),
                quantity: 1,
                restock: true,
            }
            .name(),
        ];
        assert!(names.iter().all(|name| name.starts_with("inventory.")));
    }
}
