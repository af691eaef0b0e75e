#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::*;
use crate::Refusal;

const MINUTE: i64 = 60_000;

fn context(now_ms: i64) -> Context {
    Context {
        now_ms,
        default_ttl_ms: 15 * MINUTE,
        max_ttl_ms: 240 * MINUTE,
    }
}

fn owner() -> Owner {
    Owner {
        kind: OwnerType::Cart,
        id: "cart-1".into(),
        line_id: String::new(),
    }
}

/// Decides and, when accepted, applies: what the actor does, minus I/O.
/// Returns the journal entry written, if any.
fn run(
    state: &mut PositionState,
    command: &Command,
    now_ms: i64,
) -> Result<Option<LedgerEntry>, Refusal> {
    let decision = decide(state, None, command, &context(now_ms))?;
    if decision.events.is_empty() {
        return Ok(None);
    }
    let entry = LedgerEntry {
        version: state.version + 1,
        recorded_at_ms: now_ms,
        idempotency_key: None,
        correlation_id: String::new(),
        events: decision.events,
    };
    apply_entry(state, &entry);
    Ok(Some(entry))
}

fn receive(state: &mut PositionState, quantity: i64) {
    run(
        state,
        &Command::Adjust {
            bucket: Bucket::Available,
            delta: quantity,
            reason: AdjustmentReason::Receipt,
            change_from: None,
            reference: String::new(),
        },
        0,
    )
    .unwrap();
}

fn reserve(id: &str, quantity: i64, allow_partial: bool) -> Command {
    Command::Reserve {
        reservation_id: id.into(),
        quantity,
        owner: owner(),
        channel: "web".into(),
        ttl_ms: 0,
        allow_partial,
    }
}

fn commit(id: &str, quantity: i64, order: &str) -> Command {
    Command::CommitReservation {
        reservation_id: id.into(),
        quantity,
        order_ref: order.into(),
    }
}

#[test]
fn reserve_commit_fulfil_moves_stock_through_the_buckets() {
    let mut state = PositionState::default();
    receive(&mut state, 10);
    run(&mut state, &reserve("r1", 3, false), 1).unwrap();
    assert_eq!((state.buckets.reserved, state.buckets.available()), (3, 7));
    run(&mut state, &commit("r1", 0, "o1"), 2).unwrap();
    assert_eq!((state.buckets.reserved, state.buckets.committed), (0, 3));
    assert_eq!(
        state.reservation("r1").unwrap().state,
        ReservationState::Committed
    );
    run(
        &mut state,
        &Command::Fulfill {
            order_ref: "o1".into(),
            quantity: 3,
        },
        3,
    )
    .unwrap();
    assert_eq!((state.buckets.on_hand, state.buckets.committed), (7, 0));
    assert_eq!(state.version, 4);
}

#[test]
fn a_reservation_that_does_not_fit_is_refused_with_what_was_available() {
    let mut state = PositionState::default();
    receive(&mut state, 2);
    let before = state.clone();
    assert_eq!(
        run(&mut state, &reserve("r1", 5, false), 1),
        Err(Refusal::Insufficient {
            requested: 5,
            available: 2
        })
    );
    assert_eq!(state, before);
    let decision = decide(&state, None, &reserve("r1", 5, true), &context(1)).unwrap();
    assert_eq!(decision.granted_quantity, 2);
}

#[test]
fn taking_more_than_is_available_says_what_was_available() {
    let mut state = PositionState::default();
    receive(&mut state, 6);
    let before = state.clone();
    let take = Command::Adjust {
        bucket: Bucket::Available,
        delta: -7,
        reason: AdjustmentReason::Transfer,
        change_from: None,
        reference: String::new(),
    };
    // On-hand would go negative too; the answer still names what was available.
    assert_eq!(
        run(&mut state, &take, 1),
        Err(Refusal::Insufficient {
            requested: 7,
            available: 6
        })
    );
    assert_eq!(state, before);
}

#[test]
fn commit_after_expiry_fails_and_expiry_ends_the_reservation_once() {
    let mut state = PositionState::default();
    receive(&mut state, 5);
    run(&mut state, &reserve("r1", 2, false), 0).unwrap();
    let expiry = state.reservation("r1").unwrap().expires_at_ms;
    assert_eq!(expiry, 15 * MINUTE);
    assert!(matches!(
        run(&mut state, &commit("r1", 0, "o1"), expiry),
        Err(Refusal::FailedPrecondition(_))
    ));
    let first = run(&mut state, &Command::ExpireDue, expiry).unwrap();
    assert_eq!(first.unwrap().events.len(), 1);
    assert!(run(&mut state, &Command::ExpireDue, expiry + 1)
        .unwrap()
        .is_none());
    assert_eq!(state.buckets.reserved, 0);
    // Releasing an expired reservation is an accepted no-op.
    assert!(run(
        &mut state,
        &Command::ReleaseReservation {
            reservation_id: "r1".into()
        },
        expiry + 2
    )
    .unwrap()
    .is_none());
}

#[test]
fn stale_guards_are_refused() {
    let mut state = PositionState::default();
    receive(&mut state, 5);
    let stale = decide(&state, Some(0), &reserve("r1", 1, false), &context(0));
    assert_eq!(
        stale,
        Err(Refusal::VersionMismatch {
            expected: 0,
            current: 1
        })
    );
    let cas = Command::Adjust {
        bucket: Bucket::Available,
        delta: 1,
        reason: AdjustmentReason::Correction,
        change_from: Some(4),
        reference: String::new(),
    };
    assert!(matches!(
        decide(&state, None, &cas, &context(0)),
        Err(Refusal::ChangeFromMismatch { current: 5, .. })
    ));
    let count = |at| Command::SetOnHand {
        on_hand: 4,
        reason: AdjustmentReason::CycleCount,
        counted_at_ms: at,
        change_from: None,
        reference: String::new(),
    };
    run(&mut state, &count(100), 0).unwrap();
    assert!(matches!(
        run(&mut state, &count(50), 0),
        Err(Refusal::FailedPrecondition(_))
    ));
}

#[test]
fn incoming_stock_arrives_into_available() {
    let mut state = PositionState::default();
    let adjust_incoming = Command::Adjust {
        bucket: Bucket::Incoming,
        delta: 8,
        reason: AdjustmentReason::Transfer,
        change_from: None,
        reference: "po://1".into(),
    };
    run(&mut state, &adjust_incoming, 0).unwrap();
    assert_eq!((state.buckets.incoming, state.buckets.on_hand), (8, 0));
    let arrive = Command::Move {
        from: Bucket::Incoming,
        to: Bucket::QualityControl,
        quantity: 5,
        reason: AdjustmentReason::Receipt,
        from_change_from: None,
        to_change_from: None,
        reference: String::new(),
    };
    run(&mut state, &arrive, 0).unwrap();
    assert_eq!(
        (
            state.buckets.incoming,
            state.buckets.on_hand,
            state.buckets.quality_control,
            state.buckets.available()
        ),
        (3, 5, 5, 0)
    );
}

// ---- properties -------------------------------------------------------------

fn bucket() -> impl Strategy<Value = Bucket> {
    prop_oneof![
        Just(Bucket::OnHand),
        Just(Bucket::Available),
        Just(Bucket::Reserved),
        Just(Bucket::Committed),
        Just(Bucket::Damaged),
        Just(Bucket::QualityControl),
        Just(Bucket::SafetyStock),
        Just(Bucket::Incoming),
    ]
}

fn id(prefix: &'static str) -> impl Strategy<Value = String> {
    (0..4u8).prop_map(move |n| format!("{prefix}{n}"))
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (bucket(), -20i64..40, proptest::option::of(0i64..20)).prop_map(
            |(bucket, delta, change_from)| {
                Command::Adjust {
                    bucket,
                    delta,
                    reason: AdjustmentReason::Correction,
                    change_from,
                    reference: String::new(),
                }
            }
        ),
        (-2i64..60, 0i64..200).prop_map(|(on_hand, counted_at_ms)| Command::SetOnHand {
            on_hand,
            reason: AdjustmentReason::CycleCount,
            counted_at_ms,
            change_from: None,
            reference: String::new(),
        }),
        (bucket(), bucket(), -1i64..15).prop_map(|(from, to, quantity)| Command::Move {
            from,
            to,
            quantity,
            reason: AdjustmentReason::Other,
            from_change_from: None,
            to_change_from: None,
            reference: String::new(),
        }),
        (id("r"), -1i64..15, any::<bool>(), 0i64..(30 * MINUTE)).prop_map(
            |(reservation_id, quantity, allow_partial, ttl_ms)| Command::Reserve {
                reservation_id,
                quantity,
                owner: owner(),
                channel: String::new(),
                ttl_ms,
                allow_partial,
            }
        ),
        (id("r"), 0i64..(30 * MINUTE)).prop_map(|(reservation_id, ttl_ms)| {
            Command::ExtendReservation {
                reservation_id,
                ttl_ms,
            }
        }),
        id("r").prop_map(|reservation_id| Command::ReleaseReservation { reservation_id }),
        (id("r"), 0i64..6, id("o")).prop_map(|(reservation_id, quantity, order_ref)| {
            Command::CommitReservation {
                reservation_id,
                quantity,
                order_ref,
            }
        }),
        (id("o"), 0i64..6).prop_map(|(order_ref, quantity)| Command::Fulfill {
            order_ref,
            quantity
        }),
        (id("o"), 0i64..6, any::<bool>()).prop_map(|(order_ref, quantity, restock)| {
            Command::CancelCommitment {
                order_ref,
                quantity,
                restock,
            }
        }),
        Just(Command::ExpireDue),
    ]
}

fn check_invariants(state: &PositionState) -> Result<(), TestCaseError> {
    let b = state.buckets;
    for value in [
        b.on_hand,
        b.reserved,
        b.committed,
        b.damaged,
        b.quality_control,
        b.safety_stock,
        b.incoming,
        b.available(),
    ] {
        prop_assert!(value >= 0, "negative bucket in {:?}", b);
    }
    let held: i64 = state.active_reservations().map(|r| r.quantity).sum();
    prop_assert_eq!(held, b.reserved);
    let committed: i64 = state.commitments.values().sum();
    prop_assert_eq!(committed, b.committed);
    prop_assert!(state
        .active_reservations()
        .all(|r| r.quantity > 0 && r.state == ReservationState::Active));
    prop_assert!(state.commitments.values().all(|q| *q > 0));
    prop_assert!(state.ended_reservation_count() == state.ended_order().count());
    prop_assert!(state.ended_order().all(|id| state
        .ended_reservations()
        .any(|ended| ended.id == id && ended.state != ReservationState::Active)));
    prop_assert!(state.reservations.expiry_index_is_exact());
    let indexed: std::collections::BTreeSet<(i64, String)> = state
        .active_reservations()
        .map(|r| (r.expires_at_ms, r.id.to_owned()))
        .collect();
    let expiries: std::collections::BTreeSet<(i64, String)> = state
        .expiries()
        .map(|(at, id)| (at, id.to_owned()))
        .collect();
    prop_assert_eq!(&indexed, &expiries);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random command sequences never break an invariant, refused commands
    /// change nothing, and replaying the journal rebuilds the same state.
    #[test]
    fn invariants_hold_and_replay_rebuilds_the_state(
        steps in proptest::collection::vec((command(), 0i64..(10 * MINUTE)), 1..80)
    ) {
        let mut state = PositionState::default();
        let mut journal = Vec::new();
        let mut now_ms = 0;
        for (command, advance) in steps {
            now_ms += advance;
            let before = state.clone();
            let version_before = state.version;
            match run(&mut state, &Command::ExpireDue, now_ms) {
                Ok(Some(entry)) => journal.push(entry),
                Ok(None) => {}
                Err(error) => return Err(TestCaseError::fail(format!("expiry refused: {error}"))),
            }
            let expired = state.clone();
            match run(&mut state, &command, now_ms) {
                Ok(Some(entry)) => {
                    prop_assert_eq!(entry.version, state.version);
                    journal.push(entry);
                }
                Ok(None) => prop_assert_eq!(&state, &expired),
                Err(_) => prop_assert_eq!(&state, &expired),
            }
            prop_assert!(state.version >= version_before);
            prop_assert!(state.version <= before.version + 2);
            check_invariants(&state)?;
        }
        let mut replayed = PositionState::default();
        for entry in &journal {
            apply_entry(&mut replayed, entry);
        }
        prop_assert_eq!(&replayed, &state);
        // A snapshot round-trips through the storage encoding.
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&state, config).unwrap();
        let (decoded, _): (PositionState, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
        prop_assert_eq!(decoded, state);
    }

    /// Granted reservations never exceed what was available.
    #[test]
    fn no_oversell(stock in 0i64..50, asks in proptest::collection::vec((1i64..10, any::<bool>()), 1..40)) {
        let mut state = PositionState::default();
        if stock > 0 {
            receive(&mut state, stock);
        }
        let mut granted = 0;
        for (index, (quantity, partial)) in asks.into_iter().enumerate() {
            if let Ok(decision) = decide(&state, None, &reserve(&format!("r{index}"), quantity, partial), &context(0)) {
                granted += decision.granted_quantity;
                run(&mut state, &reserve(&format!("r{index}"), quantity, partial), 0).unwrap();
            }
        }
        prop_assert!(granted <= stock);
        prop_assert_eq!(state.buckets.reserved, granted);
    }
}
