//! `decide` (command -> events or refusal) and `apply` (event -> new state).

use super::command::{Command, Context};
use super::reservations::ReservationRef;
use super::state::{
    AdjustmentReason, Bucket, Buckets, Event, LedgerEntry, PositionState, Reservation,
    ReservationState, ENDED_RESERVATIONS_KEPT,
};
use crate::Refusal;

/// What an accepted command does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Events to append; empty for an accepted no-op (releasing a reservation
    /// that already ended).
    pub events: Vec<Event>,
    /// The reservation the command was about, if any.
    pub reservation_id: Option<String>,
    /// For `Reserve`: the quantity granted.
    pub granted_quantity: i64,
}

impl Decision {
    fn events(events: Vec<Event>) -> Self {
        Self {
            events,
            ..Self::default()
        }
    }

    fn about(reservation_id: &str, events: Vec<Event>) -> Self {
        Self {
            events,
            reservation_id: Some(reservation_id.to_owned()),
            granted_quantity: 0,
        }
    }
}

/// Decides a command against the state. Never mutates; an `Err` means the
/// command is refused and nothing changes.
pub fn decide(
    state: &PositionState,
    expected_version: Option<u64>,
    command: &Command,
    context: &Context,
) -> Result<Decision, Refusal> {
    command.validate()?;
    if let Some(expected) = expected_version {
        if expected != state.version {
            return Err(Refusal::VersionMismatch {
                expected,
                current: state.version,
            });
        }
    }
    match command {
        Command::Adjust {
            bucket,
            delta,
            reason,
            change_from,
            reference,
        } => {
            check_change_from(&state.buckets, *bucket, *change_from)?;
            accept_if_sound(
                state,
                Event::Adjusted {
                    bucket: *bucket,
                    delta: *delta,
                    reason: *reason,
                    reference: reference.clone(),
                },
            )
        }
        Command::SetOnHand {
            on_hand,
            reason,
            counted_at_ms,
            change_from,
            reference,
        } => set_on_hand(
            state,
            context,
            *on_hand,
            *reason,
            *counted_at_ms,
            *change_from,
            reference,
        ),
        Command::Move {
            from,
            to,
            quantity,
            reason,
            from_change_from,
            to_change_from,
            reference,
        } => {
            check_change_from(&state.buckets, *from, *from_change_from)?;
            check_change_from(&state.buckets, *to, *to_change_from)?;
            accept_if_sound(
                state,
                Event::Moved {
                    from: *from,
                    to: *to,
                    quantity: *quantity,
                    reason: *reason,
                    reference: reference.clone(),
                },
            )
        }
        Command::Reserve {
            reservation_id,
            quantity,
            owner,
            channel,
            ttl_ms,
            allow_partial,
        } => {
            if state.reservation(reservation_id).is_some() {
                return Err(Refusal::ReservationExists(reservation_id.clone()));
            }
            let granted = grant(state, *quantity, *allow_partial)?;
            let ttl_ms = if *ttl_ms == 0 {
                context.default_ttl_ms
            } else {
                *ttl_ms
            }
            .min(context.max_ttl_ms);
            let event = Event::ReservationCreated {
                reservation: Reservation {
                    id: reservation_id.clone(),
                    owner: owner.clone(),
                    channel: channel.clone(),
                    quantity: granted,
                    requested_quantity: *quantity,
                    committed_quantity: 0,
                    state: ReservationState::Active,
                    created_at_ms: context.now_ms,
                    expires_at_ms: context.now_ms.saturating_add(ttl_ms),
                },
            };
            check_after(state, &event)?;
            let mut decision = Decision::about(reservation_id, vec![event]);
            decision.granted_quantity = granted;
            Ok(decision)
        }
        Command::ExtendReservation {
            reservation_id,
            ttl_ms,
        } => extend(state, context, reservation_id, *ttl_ms),
        Command::ReleaseReservation { reservation_id } => release(state, reservation_id),
        Command::CommitReservation {
            reservation_id,
            quantity,
            order_ref,
        } => commit(state, context, reservation_id, *quantity, order_ref),
        Command::Fulfill {
            order_ref,
            quantity,
        } => {
            committed_for(state, order_ref, *quantity)?;
            accept_if_sound(
                state,
                Event::CommitmentFulfilled {
                    order_ref: order_ref.clone(),
                    quantity: *quantity,
                },
            )
        }
        Command::CancelCommitment {
            order_ref,
            quantity,
            restock,
        } => {
            committed_for(state, order_ref, *quantity)?;
            accept_if_sound(
                state,
                Event::CommitmentCanceled {
                    order_ref: order_ref.clone(),
                    quantity: *quantity,
                    restock: *restock,
                },
            )
        }
        Command::ExpireDue => Ok(Decision::events(
            state
                .expired_at(context.now_ms)
                .map(|r| Event::ReservationExpired {
                    reservation_id: r.id.to_owned(),
                    quantity: r.quantity,
                })
                .collect(),
        )),
    }
}

/// One event that changes only the buckets, accepted when they stay sound.
fn accept_if_sound(state: &PositionState, event: Event) -> Result<Decision, Refusal> {
    check_after(state, &event)?;
    Ok(Decision::events(vec![event]))
}

/// A physical count replaces on-hand, unless a later count was already applied
/// (counts can arrive out of order from store systems).
fn set_on_hand(
    state: &PositionState,
    context: &Context,
    on_hand: i64,
    reason: AdjustmentReason,
    counted_at_ms: i64,
    change_from: Option<i64>,
    reference: &str,
) -> Result<Decision, Refusal> {
    let counted_at_ms = if counted_at_ms == 0 {
        context.now_ms
    } else {
        counted_at_ms
    };
    if counted_at_ms < state.last_counted_at_ms {
        return Err(Refusal::FailedPrecondition(format!(
            "a later physical count (counted at {} ms) was already applied",
            state.last_counted_at_ms
        )));
    }
    check_change_from(&state.buckets, Bucket::OnHand, change_from)?;
    accept_if_sound(
        state,
        Event::OnHandCounted {
            on_hand,
            previous_on_hand: state.buckets.on_hand,
            counted_at_ms,
            reason,
            reference: reference.to_owned(),
        },
    )
}

/// How much a reservation gets: all of it when it fits (or under backorder),
/// what is available when partial is allowed, otherwise a refusal naming both.
fn grant(state: &PositionState, quantity: i64, allow_partial: bool) -> Result<i64, Refusal> {
    let available = state.buckets.available();
    if state.allow_backorder || quantity <= available {
        Ok(quantity)
    } else if allow_partial && available > 0 {
        Ok(available)
    } else {
        Err(Refusal::Insufficient {
            requested: quantity,
            available: available.max(0),
        })
    }
}

/// Moves an active reservation's expiry to now + TTL; the same expiry is a no-op.
fn extend(
    state: &PositionState,
    context: &Context,
    reservation_id: &str,
    ttl_ms: i64,
) -> Result<Decision, Refusal> {
    let reservation = active_reservation(state, reservation_id, context)?;
    let expires_at_ms = context
        .now_ms
        .saturating_add(ttl_ms.min(context.max_ttl_ms));
    let events = if expires_at_ms == reservation.expires_at_ms {
        Vec::new()
    } else {
        vec![Event::ReservationExtended {
            reservation_id: reservation_id.to_owned(),
            expires_at_ms,
        }]
    };
    Ok(Decision::about(reservation_id, events))
}

/// Releases an active reservation; one that already ended is a no-op so a
/// client's retry after a lost reply succeeds.
fn release(state: &PositionState, reservation_id: &str) -> Result<Decision, Refusal> {
    let reservation = state
        .reservation(reservation_id)
        .ok_or_else(|| Refusal::ReservationNotFound(reservation_id.to_owned()))?;
    match reservation.state {
        ReservationState::Active => Ok(Decision::about(
            reservation_id,
            vec![Event::ReservationReleased {
                reservation_id: reservation_id.to_owned(),
                quantity: reservation.quantity,
            }],
        )),
        ReservationState::Released | ReservationState::Expired => {
            Ok(Decision::about(reservation_id, Vec::new()))
        }
        ReservationState::Committed => Err(Refusal::FailedPrecondition(format!(
            "reservation {reservation_id:?} is fully committed; cancel the order's commitment instead"
        ))),
    }
}

/// Commits all (quantity 0) or part of an active reservation to an order.
fn commit(
    state: &PositionState,
    context: &Context,
    reservation_id: &str,
    quantity: i64,
    order_ref: &str,
) -> Result<Decision, Refusal> {
    let reservation = active_reservation(state, reservation_id, context)?;
    let quantity = if quantity == 0 {
        reservation.quantity
    } else {
        quantity
    };
    if quantity > reservation.quantity {
        return Err(Refusal::FailedPrecondition(format!(
            "reservation {reservation_id:?} holds {}, cannot commit {quantity}",
            reservation.quantity
        )));
    }
    Ok(Decision::about(
        reservation_id,
        vec![Event::ReservationCommitted {
            reservation_id: reservation_id.to_owned(),
            order_ref: order_ref.to_owned(),
            quantity,
        }],
    ))
}

fn check_change_from(
    buckets: &Buckets,
    bucket: Bucket,
    expected: Option<i64>,
) -> Result<(), Refusal> {
    match expected {
        Some(expected) if buckets.get(bucket) != expected => Err(Refusal::ChangeFromMismatch {
            bucket,
            expected,
            current: buckets.get(bucket),
        }),
        _ => Ok(()),
    }
}

fn active_reservation<'s>(
    state: &'s PositionState,
    reservation_id: &str,
    context: &Context,
) -> Result<ReservationRef<'s>, Refusal> {
    let reservation = state
        .reservation(reservation_id)
        .ok_or_else(|| Refusal::ReservationNotFound(reservation_id.to_owned()))?;
    if reservation.state == ReservationState::Active && reservation.expires_at_ms <= context.now_ms
    {
        return Err(Refusal::FailedPrecondition(format!(
            "reservation {reservation_id:?} expired at {} ms",
            reservation.expires_at_ms
        )));
    }
    if reservation.state != ReservationState::Active {
        return Err(Refusal::FailedPrecondition(format!(
            "reservation {reservation_id:?} is {}",
            reservation.state
        )));
    }
    Ok(reservation)
}

fn committed_for(state: &PositionState, order_ref: &str, quantity: i64) -> Result<(), Refusal> {
    let committed = state
        .commitments
        .get(order_ref)
        .copied()
        .ok_or_else(|| Refusal::CommitmentNotFound(order_ref.to_owned()))?;
    if quantity > committed {
        return Err(Refusal::FailedPrecondition(format!(
            "order {order_ref:?} has {committed} committed, cannot take {quantity}"
        )));
    }
    Ok(())
}

/// Refuses an event whose buckets would break an invariant.
fn check_after(state: &PositionState, event: &Event) -> Result<(), Refusal> {
    let mut buckets = state.buckets;
    apply_to_buckets(&mut buckets, event);
    // Taking more than is available says what was available, even when
    // on-hand would also go negative (a transfer's or sale's answer).
    if let Event::Adjusted {
        bucket: Bucket::Available,
        delta,
        ..
    } = event
    {
        if *delta < 0 && buckets.available() < 0 && !state.allow_backorder {
            return Err(Refusal::Insufficient {
                requested: -delta,
                available: state.buckets.available().max(0),
            });
        }
    }
    for bucket in [
        Bucket::OnHand,
        Bucket::Reserved,
        Bucket::Committed,
        Bucket::Damaged,
        Bucket::QualityControl,
        Bucket::SafetyStock,
        Bucket::Incoming,
    ] {
        let value = buckets.get(bucket);
        if value < 0 {
            return Err(Refusal::NegativeBucket { bucket, value });
        }
    }
    let available = buckets.available();
    if available < 0 && !state.allow_backorder {
        return Err(match event {
            Event::Adjusted { delta, .. } if *delta < 0 => Refusal::Insufficient {
                requested: -delta,
                available: state.buckets.available().max(0),
            },
            Event::Moved {
                from: Bucket::Available,
                quantity,
                ..
            } => Refusal::Insufficient {
                requested: *quantity,
                available: state.buckets.available().max(0),
            },
            _ => Refusal::NegativeBucket {
                bucket: Bucket::Available,
                value: available,
            },
        });
    }
    Ok(())
}

/// The bucket arithmetic of each event, shared by `check_after` and `apply`.
fn apply_to_buckets(buckets: &mut Buckets, event: &Event) {
    match event {
        Event::Adjusted { bucket, delta, .. } => match bucket {
            Bucket::OnHand | Bucket::Available => buckets.on_hand += delta,
            Bucket::Incoming => buckets.incoming += delta,
            physical => {
                if let Some(field) = buckets.stored_mut(*physical) {
                    *field += delta;
                }
                buckets.on_hand += delta;
            }
        },
        Event::OnHandCounted { on_hand, .. } => buckets.on_hand = *on_hand,
        Event::Moved {
            from, to, quantity, ..
        } => {
            if *from == Bucket::Incoming {
                // Inbound stock arrives: it becomes physical (available first).
                buckets.incoming -= quantity;
                buckets.on_hand += quantity;
            } else if let Some(field) = buckets.stored_mut(*from) {
                *field -= quantity;
            }
            if let Some(field) = buckets.stored_mut(*to) {
                *field += quantity;
            }
        }
        Event::ReservationCreated { reservation } => buckets.reserved += reservation.quantity,
        Event::ReservationExtended { .. } => {}
        Event::ReservationReleased { quantity, .. }
        | Event::ReservationExpired { quantity, .. } => {
            buckets.reserved -= quantity;
        }
        Event::ReservationCommitted { quantity, .. } => {
            buckets.reserved -= quantity;
            buckets.committed += quantity;
        }
        Event::CommitmentFulfilled { quantity, .. } => {
            buckets.committed -= quantity;
            buckets.on_hand -= quantity;
        }
        Event::CommitmentCanceled {
            quantity, restock, ..
        } => {
            buckets.committed -= quantity;
            if !restock {
                buckets.on_hand -= quantity;
            }
        }
    }
}

/// Folds one event into the state. Events were checked by `decide`, so
/// applying never fails.
pub fn apply(state: &mut PositionState, event: &Event) {
    apply_to_buckets(&mut state.buckets, event);
    match event {
        Event::Adjusted { .. } | Event::Moved { .. } => {}
        Event::OnHandCounted { counted_at_ms, .. } => state.last_counted_at_ms = *counted_at_ms,
        Event::ReservationCreated { reservation } => state.reservations.create(reservation),
        Event::ReservationExtended {
            reservation_id,
            expires_at_ms,
        } => state.reservations.extend(reservation_id, *expires_at_ms),
        Event::ReservationReleased { reservation_id, .. } => {
            state.reservations.end(
                reservation_id,
                ReservationState::Released,
                ENDED_RESERVATIONS_KEPT,
            );
        }
        Event::ReservationExpired { reservation_id, .. } => {
            state.reservations.end(
                reservation_id,
                ReservationState::Expired,
                ENDED_RESERVATIONS_KEPT,
            );
        }
        Event::ReservationCommitted {
            reservation_id,
            order_ref,
            quantity,
        } => {
            *state.commitments.entry(order_ref.clone()).or_insert(0) += quantity;
            state
                .reservations
                .commit(reservation_id, *quantity, ENDED_RESERVATIONS_KEPT);
        }
        Event::CommitmentFulfilled {
            order_ref,
            quantity,
        }
        | Event::CommitmentCanceled {
            order_ref,
            quantity,
            ..
        } => {
            if let Some(committed) = state.commitments.get_mut(order_ref) {
                *committed -= quantity;
                if *committed == 0 {
                    state.commitments.remove(order_ref);
                }
            }
        }
    }
}

/// Applies a journal entry: its events, then its version.
pub fn apply_entry(state: &mut PositionState, entry: &LedgerEntry) {
    for event in &entry.events {
        apply(state, event);
    }
    state.version = entry.version;
}
