//! Inventory positions as an [`Entity`] of the actor runtime.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::holds::OldestHolds;
use super::{
    apply_entry, decide, stock_status_crossing, Buckets, Command, Context, Decision, Event,
    MutationReply, PositionState,
};
use crate::journal::JournalEntry;
use crate::key::PositionKey;
use crate::runtime::measures::{Labels, Measure, Pending};
use crate::runtime::{Entity, EntityHandle, Mutation};
use crate::Error;

/// A client's mutation of one position.
pub type MutationRequest = Mutation<PositionEntity>;

/// A position's quantities before and after a change, in its published events.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PositionFigures {
    pub buckets: Buckets,
    pub available: i64,
}

/// The position rules with the node's reservation limits.
#[derive(Debug, Clone)]
pub struct PositionEntity {
    /// TTL of a reservation that asks for none.
    pub default_ttl_ms: i64,
    /// Longest TTL a reservation or an extension may get.
    pub max_ttl_ms: i64,
    /// Longest TTL of an exchange hold placed by a return (they last until
    /// the return is processed, so far longer than a cart's).
    pub max_exchange_ttl_ms: i64,
    /// The oldest active reservation per position written on this node.
    pub holds: Arc<OldestHolds>,
}

impl Default for PositionEntity {
    fn default() -> Self {
        Self {
            default_ttl_ms: 15 * 60_000,
            max_ttl_ms: 4 * 3_600_000,
            max_exchange_ttl_ms: 60 * 86_400_000,
            holds: Arc::default(),
        }
    }
}

impl Entity for PositionEntity {
    type Key = PositionKey;
    type State = PositionState;
    type Command = Command;
    type Event = Event;
    type Outcome = Decision;
    type Reply = MutationReply;

    const KIND: &'static str = "position";

    fn encode_key(key: &PositionKey) -> Vec<u8> {
        key.encode()
    }

    fn decode_key(bytes: &[u8]) -> Option<PositionKey> {
        PositionKey::decode(bytes)
    }

    fn validate_key(key: &PositionKey) -> Result<(), Error> {
        Ok(key.validate()?)
    }

    fn validate(key: &PositionKey, command: &Command) -> Result<(), Error> {
        key.validate()?;
        Ok(command.validate()?)
    }

    fn version(state: &PositionState) -> u64 {
        state.version
    }

    fn size_hint(state: &PositionState) -> u64 {
        (state.active_reservation_count()
            + state.ended_reservation_count()
            + state.commitments.len()) as u64
    }

    fn next_timer_ms(state: &PositionState) -> Option<i64> {
        state.next_expiry_ms()
    }

    fn timer_command() -> Command {
        Command::ExpireDue
    }

    fn decide(
        &self,
        _key: &PositionKey,
        state: &PositionState,
        expected_version: Option<u64>,
        command: &Command,
        now_ms: i64,
    ) -> Result<(Vec<Event>, Decision), Error> {
        let max_ttl_ms = match command {
            Command::Reserve { owner, .. } if owner.kind == super::OwnerType::ReturnExchange => {
                self.max_exchange_ttl_ms.max(self.max_ttl_ms)
            }
            _ => self.max_ttl_ms,
        };
        let context = Context {
            now_ms,
            default_ttl_ms: self.default_ttl_ms,
            max_ttl_ms,
        };
        let mut decision = decide(state, expected_version, command, &context)?;
        let events = std::mem::take(&mut decision.events);
        Ok((events, decision))
    }

    fn apply_entry(state: &mut PositionState, entry: &JournalEntry<Event>) {
        apply_entry(state, entry);
    }

    type Figures = PositionFigures;

    fn figures(state: &PositionState) -> PositionFigures {
        PositionFigures {
            buckets: state.buckets,
            available: state.buckets.available(),
        }
    }

    fn tenant(key: &PositionKey) -> &str {
        &key.tenant
    }

    fn event_name(event: &Event) -> &'static str {
        event.name()
    }

    fn derived_events(before: &PositionFigures, after: &PositionFigures) -> Vec<&'static str> {
        stock_status_crossing(&before.buckets, &after.buckets)
            .into_iter()
            .collect()
    }

    fn measure(entry: &JournalEntry<Event>, _state: &PositionState, measures: &mut Pending) {
        measures.extend(entry.events.iter().filter_map(reservation_measure));
    }

    fn after_commit(&self, key: &PositionKey, state: &PositionState, _handle: &EntityHandle<Self>) {
        self.holds.observe(key, state);
    }

    fn reply(state: &PositionState, decision: Decision) -> MutationReply {
        MutationReply {
            version: state.version,
            buckets: state.buckets,
            reservation: decision
                .reservation_id
                .and_then(|id| state.reservation(&id).map(|held| held.to_reservation())),
            granted_quantity: decision.granted_quantity,
        }
    }
}

/// `skuld_reservations_total{outcome}`: reservations made and how they ended.
fn reservation_measure(event: &Event) -> Option<Measure> {
    let outcome = match event {
        Event::ReservationCreated { .. } => "created",
        Event::ReservationReleased { .. } => "released",
        Event::ReservationExpired { .. } => "expired",
        Event::ReservationCommitted { .. } => "committed",
        _ => return None,
    };
    Some(Measure::count(
        "skuld_reservations_total",
        Labels::one("outcome", outcome),
    ))
}
