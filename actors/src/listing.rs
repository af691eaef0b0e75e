//! The events a channel listing publishes (`channel` aggregates, keyed by
//! [`ListingKey`]): what the push worker found about what a channel
//! shows. They are no entity's journal: the worker writes each straight
//! into its shard's outbox, so they are ordered, retained and delivered
//! like every other event (docs/events.md).

use serde::{Deserialize, Serialize};

use crate::channel::{DriftDetected, ListingKey};
use crate::runtime::codec;
use crate::runtime::published::PublishedEvent;
use crate::Error;

/// The aggregate kind of a listing's events.
pub const KIND: &str = "channel";

/// The first byte of a listing event's body: neither an entity event's
/// format (2) nor the legacy one (36).
const LISTING_FORMAT: u8 = 3;

/// What the outbox stores per listing event.
#[derive(Debug, Serialize, Deserialize)]
struct Recorded {
    correlation_id: String,
    drift: DriftDetected,
}

/// The outbox body of a drift event.
pub fn drift_body(drift: &DriftDetected, correlation_id: &str) -> Result<Vec<u8>, Error> {
    let encoded = codec::encode(&Recorded {
        correlation_id: correlation_id.to_owned(),
        drift: drift.clone(),
    })?;
    let mut body = Vec::with_capacity(1 + encoded.len());
    body.push(LISTING_FORMAT);
    body.extend_from_slice(&encoded);
    Ok(body)
}

/// An outbox row of a listing back as the event consumers get; `None` when
/// `entity` is not a listing's key.
pub fn read(entity: &[u8], body: &[u8]) -> Option<Result<PublishedEvent, Error>> {
    let key = ListingKey::decode(entity)?;
    Some(rebuild(&key, entity, body))
}

fn rebuild(key: &ListingKey, entity: &[u8], body: &[u8]) -> Result<PublishedEvent, Error> {
    let recorded: Recorded = match body.split_first() {
        Some((&LISTING_FORMAT, recorded)) => codec::decode(recorded)?,
        _ => {
            return Err(Error::Unavailable(
                "stored record is unreadable: a listing event of an unknown format".into(),
            ))
        }
    };
    let drift = recorded.drift;
    // A listing has no version of its own, so the id comes from the whole
    // stored row: the same on every reading of it, and different for two
    // findings of one SKU (another location, value or time).
    let mut row = Vec::with_capacity(entity.len() + body.len());
    row.extend_from_slice(entity);
    row.extend_from_slice(body);
    Ok(PublishedEvent {
        id: uuid::Uuid::new_v8(xxhash_rust::xxh3::xxh3_128(&row).to_be_bytes()).to_string(),
        event_type: format!("skuld.{}.v1", DriftDetected::NAME),
        tenant: key.tenant.clone(),
        aggregate_kind: KIND.to_owned(),
        aggregate_key: key.to_string(),
        aggregate_version: drift.desired_version,
        index: 0,
        occurred_at_ms: drift.detected_at_ms,
        correlation_id: recorded.correlation_id.clone(),
        causation_id: "reconciliation".to_owned(),
        idempotency_key: None,
        data: codec::encode(&drift)?,
    })
}

/// A listing event's data as JSON: the drift's fields.
pub fn data_json(data: &[u8]) -> Result<serde_json::Value, Error> {
    let drift: DriftDetected = codec::decode(data)?;
    serde_json::to_value(drift)
        .map_err(|error| Error::Unavailable(format!("cannot render an event: {error}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn drift() -> DriftDetected {
        DriftDetected {
            location: Some("DC1".into()),
            remote: Some(7),
            believed: Some(5),
            desired: 5,
            desired_version: 12,
            detected_at_ms: 1_800_000_000_123,
        }
    }

    #[test]
    fn a_drift_reads_back_as_its_published_event() {
        let key = ListingKey::new("acme", "web", "TEE");
        let body = drift_body(&drift(), "corr-9").unwrap();
        let event = crate::read_event(&key.encode(), &body).unwrap();
        assert_eq!(
            event.event_type,
            "skuld.inventory.channel.drift_detected.v1"
        );
        assert_eq!(event.aggregate_kind, KIND);
        assert_eq!(event.aggregate_key, "acme/web/TEE");
        assert_eq!(event.tenant, "acme");
        assert_eq!(event.correlation_id, "corr-9");
        assert_eq!(event.aggregate_version, 12);
        // The same row always reads as the same id; another location's
        // finding of the same version, in the same millisecond, another.
        let again = crate::read_event(&key.encode(), &body).unwrap();
        assert_eq!(event.id, again.id);
        let other = DriftDetected {
            location: Some("DC2".into()),
            ..drift()
        };
        let other =
            crate::read_event(&key.encode(), &drift_body(&other, "corr-9").unwrap()).unwrap();
        assert_ne!(event.id, other.id);
        let json = crate::event_data_json(&event).unwrap();
        assert_eq!(json["remote"], 7);
        assert_eq!(json["location"], "DC1");
    }

    #[test]
    fn an_entity_body_under_a_listing_key_is_refused_not_misread() {
        let key = ListingKey::new("acme", "web", "TEE");
        assert!(read(&key.encode(), &[2, 0, 1]).unwrap().is_err());
        assert!(read(b"Pnot-a-listing", &[3]).is_none());
    }
}
