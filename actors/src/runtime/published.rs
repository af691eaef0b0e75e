//! Events as skuld publishes them: the envelope each accepted change's
//! events get in the outbox (docs/events.md).
//!
//! Built in the same drain that decides the change, so the events go into
//! the same write as the journal entry; the store numbers them per shard
//! when it commits.

use serde::{Deserialize, Serialize};

use super::codec;
use super::entity::Entity;
use crate::journal::JournalEntry;
use crate::Error;

/// The prefix and suffix of every published type name:
/// `skuld.inventory.reservation.created.v1`.
const TYPE_PREFIX: &str = "skuld.";
const TYPE_VERSION: &str = ".v1";

/// One published event, as stored in the outbox body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedEvent {
    /// Stable across every reading and every resend: consumers deduplicate
    /// on it. A UUID (version 8) derived from the aggregate, its version
    /// and the event's place in the change.
    pub id: String,
    pub event_type: String,
    pub tenant: String,
    /// `position` or `return`.
    pub aggregate_kind: String,
    /// `tenant/sku@location` or `tenant/return_id`.
    pub aggregate_key: String,
    /// The aggregate's version after the change; the change's events share it.
    pub aggregate_version: u64,
    /// The event's place within its change (0, 1, ...).
    pub index: u32,
    /// When the change was decided (unix ms, the deciding node's clock).
    pub occurred_at_ms: i64,
    pub correlation_id: String,
    /// What directly caused the change: the command's idempotency key, or
    /// `timer` for a change the entity's own timer made.
    pub causation_id: String,
    pub idempotency_key: Option<String>,
    /// The change's event and the figures before and after it, encoded
    /// (bincode) as written; [`data_json`] renders it for consumers, so the
    /// write path pays for no JSON.
    pub data: Vec<u8>,
}

impl PublishedEvent {
    pub fn decode(body: &[u8]) -> Result<Self, Error> {
        codec::decode(body)
    }
}

/// A UUID (RFC 9562 version 8, variant 10) from the aggregate's encoded key,
/// its version and the event's index: the same event always gets the same id.
pub fn event_id(encoded_key: &[u8], version: u64, index: u32) -> String {
    let mut input = Vec::with_capacity(encoded_key.len() + 12);
    input.extend_from_slice(encoded_key);
    input.extend_from_slice(&version.to_be_bytes());
    input.extend_from_slice(&index.to_be_bytes());
    uuid::Uuid::new_v8(xxhash_rust::xxh3::xxh3_128(&input).to_be_bytes()).to_string()
}

/// The encoded published events of one journal entry, given the entity's
/// figures before and after it.
pub fn publish<E: Entity>(
    key: &E::Key,
    encoded_key: &[u8],
    entry: &JournalEntry<E::Event>,
    before: &E::Figures,
    after: &E::Figures,
    causation_id: &str,
) -> Result<Vec<Vec<u8>>, Error> {
    let derived = E::derived_events(before, after);
    let mut named: Vec<(&'static str, Option<&E::Event>)> = entry
        .events
        .iter()
        .map(|event| (E::event_name(event), Some(event)))
        .collect();
    named.extend(derived.into_iter().map(|name| (name, None)));
    let aggregate_key = key.to_string();
    let tenant = E::tenant(key).to_owned();
    let mut bodies = Vec::with_capacity(named.len());
    for (index, (name, change)) in named.into_iter().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        let data = codec::encode(&(change, before, after))?;
        let event = PublishedEvent {
            id: event_id(encoded_key, entry.version, index),
            event_type: format!("{TYPE_PREFIX}{name}{TYPE_VERSION}"),
            tenant: tenant.clone(),
            aggregate_kind: E::KIND.to_owned(),
            aggregate_key: aggregate_key.clone(),
            aggregate_version: entry.version,
            index,
            occurred_at_ms: entry.recorded_at_ms,
            correlation_id: entry.correlation_id.clone(),
            causation_id: causation_id.to_owned(),
            idempotency_key: entry.idempotency_key.clone(),
            data,
        };
        bodies.push(codec::encode(&event)?);
    }
    Ok(bodies)
}

/// An event's data as consumers get it: `{"change": <the event>, "before":
/// <figures>, "after": <figures>}`; a derived event (stock status) has no
/// `change`.
pub fn data_json<E: Entity>(data: &[u8]) -> Result<serde_json::Value, Error> {
    let (change, before, after): (Option<E::Event>, E::Figures, E::Figures) = codec::decode(data)?;
    let mut json = serde_json::Map::new();
    if let Some(change) = change {
        json.insert(
            "change".into(),
            serde_json::to_value(change).map_err(internal)?,
        );
    }
    json.insert(
        "before".into(),
        serde_json::to_value(before).map_err(internal)?,
    );
    json.insert(
        "after".into(),
        serde_json::to_value(after).map_err(internal)?,
    );
    Ok(serde_json::Value::Object(json))
}

fn internal(error: serde_json::Error) -> Error {
    Error::Unavailable(format!("cannot render an event: {error}"))
}
