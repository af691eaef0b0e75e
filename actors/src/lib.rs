//! The actor runtime that serves skuld's entities, and the entities it
//! serves.
//!
//! * [`listing`]: the events the channel push worker publishes (drift),
//!   written straight into the outbox.
//! * [`position`], [`returns`]: inventory positions and return cases as
//!   entities of the runtime; their rules are the pure state machines of
//!   `skuld-domain`, re-exported here with the rest of the domain.
//! * [`runtime`]: one ractor actor per active entity, started on demand
//!   from the store, passivated when idle, with bounded queues, group commit,
//!   durable timers and, in cluster mode, routing to the key's owner.

pub mod listing;
pub mod order;
pub mod position;
pub mod returns;
pub mod runtime;

pub mod error;
pub use error::{store_error, Error};

/// An outbox row (the aggregate's encoded key and the stored body) as the
/// event consumers get, by the key's kind.
pub fn read_event(entity: &[u8], body: &[u8]) -> Result<runtime::published::PublishedEvent, Error> {
    use runtime::published::read;
    read::<position::PositionEntity>(entity, body)
        .or_else(|| read::<returns::ReturnEntity>(entity, body))
        .or_else(|| read::<order::OrderEntity>(entity, body))
        .or_else(|| listing::read(entity, body))
        .unwrap_or_else(|| {
            Err(Error::Unavailable(
                "stored record is unreadable: an event of no known aggregate".into(),
            ))
        })
}

/// A published event's data as JSON, by its aggregate's kind.
pub fn event_data_json(
    event: &runtime::published::PublishedEvent,
) -> Result<serde_json::Value, Error> {
    use runtime::Entity as _;
    match event.aggregate_kind.as_str() {
        position::PositionEntity::KIND => {
            runtime::published::data_json::<position::PositionEntity>(&event.data)
        }
        returns::ReturnEntity::KIND => {
            runtime::published::data_json::<returns::ReturnEntity>(&event.data)
        }
        order::OrderEntity::KIND => {
            runtime::published::data_json::<order::OrderEntity>(&event.data)
        }
        listing::KIND => listing::data_json(&event.data),
        other => Err(Error::Unavailable(format!(
            "events of kind {other:?} are unknown here"
        ))),
    }
}
pub use skuld_domain::{channel, journal, key, refusal};
pub use skuld_domain::{OrderKey, PositionKey, Refusal, ReturnKey};
