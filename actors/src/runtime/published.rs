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

/// One published event as consumers get it, rebuilt by [`read`] from the
/// outbox row (the aggregate's encoded key and a [`Recorded`] body).
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

/// What the outbox stores per event: only what cannot be derived again.
/// The id, type, tenant, kind and aggregate key follow from the row's
/// entity key, the version, the index and the data, so the write path
/// stores (and the memtables and compactions carry) none of them.
#[derive(Debug, Serialize, Deserialize)]
struct Recorded {
    version: u64,
    index: u32,
    occurred_at_ms: i64,
    correlation_id: String,
    /// `None` when the cause is the idempotency key (a client's command).
    causation_id: Option<String>,
    idempotency_key: Option<String>,
    /// The name of an event derived from the change as a whole (it has no
    /// change event to name it); `None` for the change's own events.
    derived: Option<String>,
    data: Vec<u8>,
}

/// The first byte of a [`Recorded`] body. Bodies written before it (the
/// whole [`PublishedEvent`], bincode) begin with the id's length, 36, so
/// the two never collide and events written by the previous version stay
/// readable until retention deletes them.
const RECORDED_FORMAT: u8 = 2;
const LEGACY_FORMAT: u8 = 36;

/// A UUID (RFC 9562 version 8, variant 10) from the aggregate's encoded key,
/// its version and the event's index: the same event always gets the same id.
pub fn event_id(encoded_key: &[u8], version: u64, index: u32) -> String {
    let mut input = Vec::with_capacity(encoded_key.len() + 12);
    input.extend_from_slice(encoded_key);
    input.extend_from_slice(&version.to_be_bytes());
    input.extend_from_slice(&index.to_be_bytes());
    uuid::Uuid::new_v8(xxhash_rust::xxh3::xxh3_128(&input).to_be_bytes()).to_string()
}

/// The encoded outbox bodies of one journal entry's events, given the
/// entity's figures before and after it.
pub fn publish<E: Entity>(
    entry: &JournalEntry<E::Event>,
    before: &E::Figures,
    after: &E::Figures,
    causation_id: &str,
) -> Result<Vec<Vec<u8>>, Error> {
    let derived = E::derived_events(before, after);
    let named = entry
        .events
        .iter()
        .map(|event| (None, Some(event)))
        .chain(derived.into_iter().map(|name| (Some(name), None)));
    let causation_id =
        (entry.idempotency_key.as_deref() != Some(causation_id)).then(|| causation_id.to_owned());
    let mut bodies = Vec::with_capacity(entry.events.len());
    for (index, (derived, change)) in named.enumerate() {
        let recorded = Recorded {
            version: entry.version,
            index: u32::try_from(index).unwrap_or(u32::MAX),
            occurred_at_ms: entry.recorded_at_ms,
            correlation_id: entry.correlation_id.clone(),
            causation_id: causation_id.clone(),
            idempotency_key: entry.idempotency_key.clone(),
            derived: derived.map(str::to_owned),
            data: codec::encode(&(change, before, after))?,
        };
        let encoded = codec::encode(&recorded)?;
        let mut body = Vec::with_capacity(1 + encoded.len());
        body.push(RECORDED_FORMAT);
        body.extend_from_slice(&encoded);
        bodies.push(body);
    }
    Ok(bodies)
}

/// An outbox row of an `E` back as the event consumers get; `None` when
/// `entity` is not an `E`'s key.
pub fn read<E: Entity>(entity: &[u8], body: &[u8]) -> Option<Result<PublishedEvent, Error>> {
    let key = E::decode_key(entity)?;
    Some(rebuild::<E>(&key, entity, body))
}

fn rebuild<E: Entity>(key: &E::Key, entity: &[u8], body: &[u8]) -> Result<PublishedEvent, Error> {
    let recorded: Recorded = match body.split_first() {
        Some((&RECORDED_FORMAT, recorded)) => codec::decode(recorded)?,
        Some((&LEGACY_FORMAT, _)) => return codec::decode(body),
        _ => {
            return Err(Error::Unavailable(
                "stored record is unreadable: an event body of an unknown format".into(),
            ))
        }
    };
    let name = match recorded.derived {
        Some(name) => name,
        None => {
            let (change, _, _): (Option<E::Event>, E::Figures, E::Figures) =
                codec::decode(&recorded.data)?;
            let change = change.ok_or_else(|| {
                Error::Unavailable("stored record is unreadable: an event without a name".into())
            })?;
            E::event_name(&change).to_owned()
        }
    };
    Ok(PublishedEvent {
        id: event_id(entity, recorded.version, recorded.index),
        event_type: format!("{TYPE_PREFIX}{name}{TYPE_VERSION}"),
        tenant: E::tenant(key).to_owned(),
        aggregate_kind: E::KIND.to_owned(),
        aggregate_key: key.to_string(),
        aggregate_version: recorded.version,
        index: recorded.index,
        occurred_at_ms: recorded.occurred_at_ms,
        correlation_id: recorded.correlation_id,
        causation_id: match recorded.causation_id {
            Some(causation_id) => causation_id,
            None => recorded.idempotency_key.clone().unwrap_or_default(),
        },
        idempotency_key: recorded.idempotency_key,
        data: recorded.data,
    })
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::position::{
        AdjustmentReason, Bucket, Buckets, Event, PositionEntity, PositionFigures,
    };
    use crate::PositionKey;

    fn figures(on_hand: i64) -> PositionFigures {
        let buckets = Buckets {
            on_hand,
            ..Buckets::default()
        };
        PositionFigures {
            buckets,
            available: buckets.available(),
        }
    }

    fn position_key() -> PositionKey {
        PositionKey {
            tenant: "acme".into(),
            sku: "sku-1".into(),
            location: "store-9".into(),
        }
    }

    fn received(idempotency_key: Option<&str>) -> JournalEntry<Event> {
        JournalEntry {
            version: 7,
            recorded_at_ms: 1_700_000_000_000,
            idempotency_key: idempotency_key.map(str::to_owned),
            correlation_id: "corr-1".into(),
            events: vec![Event::Adjusted {
                bucket: Bucket::OnHand,
                delta: 5,
                reason: AdjustmentReason::Receipt,
                reference: "asn-1".into(),
            }],
        }
    }

    #[test]
    fn what_the_outbox_stores_reads_back_as_the_whole_event() {
        let key = position_key();
        let encoded = key.encode();
        // Out of stock to 5 on hand: the adjustment and a derived back-in-stock.
        let bodies = publish::<PositionEntity>(
            &received(Some("idem-1")),
            &figures(0),
            &figures(5),
            "idem-1",
        )
        .unwrap();
        assert_eq!(bodies.len(), 2);
        let events: Vec<PublishedEvent> = bodies
            .iter()
            .map(|body| read::<PositionEntity>(&encoded, body).unwrap().unwrap())
            .collect();
        let [change, derived] = &events[..] else {
            panic!("two events expected");
        };
        assert_eq!(change.event_type, "skuld.inventory.quantities.changed.v1");
        assert_eq!(
            derived.event_type,
            "skuld.inventory.stock_status.back_in_stock.v1"
        );
        for (index, event) in events.iter().enumerate() {
            assert_eq!(event.id, event_id(&encoded, 7, index as u32));
            assert_eq!(event.index, index as u32);
            assert_eq!(event.tenant, "acme");
            assert_eq!(event.aggregate_kind, "position");
            assert_eq!(event.aggregate_key, key.to_string());
            assert_eq!(event.aggregate_version, 7);
            assert_eq!(event.occurred_at_ms, 1_700_000_000_000);
            assert_eq!(event.correlation_id, "corr-1");
            assert_eq!(event.causation_id, "idem-1");
            assert_eq!(event.idempotency_key.as_deref(), Some("idem-1"));
        }
        let data = data_json::<PositionEntity>(&change.data).unwrap();
        assert_eq!(data["before"]["available"], 0);
        assert_eq!(data["after"]["available"], 5);
        assert!(data.get("change").is_some());
        assert!(data_json::<PositionEntity>(&derived.data)
            .unwrap()
            .get("change")
            .is_none());
    }

    #[test]
    fn a_cause_other_than_the_idempotency_key_is_kept() {
        let encoded = position_key().encode();
        let bodies =
            publish::<PositionEntity>(&received(None), &figures(5), &figures(10), "timer").unwrap();
        let event = read::<PositionEntity>(&encoded, &bodies[0])
            .unwrap()
            .unwrap();
        assert_eq!(event.causation_id, "timer");
        assert_eq!(event.idempotency_key, None);
    }

    #[test]
    fn an_event_written_whole_by_the_previous_version_still_reads() {
        let key = position_key();
        let encoded = key.encode();
        let bodies =
            publish::<PositionEntity>(&received(None), &figures(5), &figures(10), "timer").unwrap();
        let event = read::<PositionEntity>(&encoded, &bodies[0])
            .unwrap()
            .unwrap();
        let legacy = codec::encode(&event).unwrap();
        assert_eq!(legacy[0], LEGACY_FORMAT);
        assert_eq!(
            read::<PositionEntity>(&encoded, &legacy).unwrap().unwrap(),
            event
        );
    }

    #[test]
    fn a_row_of_another_kind_or_a_damaged_body_is_not_an_event() {
        let encoded = position_key().encode();
        let bodies =
            publish::<PositionEntity>(&received(None), &figures(5), &figures(10), "timer").unwrap();
        assert!(read::<crate::returns::ReturnEntity>(&encoded, &bodies[0]).is_none());
        let truncated = &bodies[0][..bodies[0].len() - 1];
        assert!(read::<PositionEntity>(&encoded, truncated)
            .unwrap()
            .is_err());
    }
}
