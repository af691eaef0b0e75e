//! A channel's listing of one SKU: the aggregate of the events the push
//! worker publishes about what a channel shows (today drift), and the key
//! its work is sharded by, so those events go into the stream of the shard
//! whose owner pushes the SKU.

use serde::{Deserialize, Serialize};

use crate::key::{decode_parts, encode_parts};

const LISTING_TAG: u8 = b'C';

/// One SKU of one channel of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ListingKey {
    pub tenant: String,
    pub channel: String,
    pub sku: String,
}

impl ListingKey {
    pub fn new(tenant: &str, channel: &str, sku: &str) -> Self {
        ListingKey {
            tenant: tenant.to_owned(),
            channel: channel.to_owned(),
            sku: sku.to_owned(),
        }
    }

    /// The storage key: a tag no entity key uses, then the parts
    /// length-prefixed like every entity key.
    pub fn encode(&self) -> Vec<u8> {
        encode_parts(LISTING_TAG, &[&self.tenant, &self.channel, &self.sku])
    }

    /// Inverse of [`ListingKey::encode`]; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let [tenant, channel, sku] = decode_parts(LISTING_TAG, bytes)?;
        Some(ListingKey {
            tenant,
            channel,
            sku,
        })
    }
}

impl std::fmt::Display for ListingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.tenant, self.channel, self.sku)
    }
}

/// `inventory.channel.drift_detected`: a read-back found the channel
/// showing something else than skuld believed it showed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftDetected {
    /// The location the figure is for; `None` for a per-SKU figure.
    pub location: Option<String>,
    /// What the channel showed (`None`: it did not know the item).
    pub remote: Option<i64>,
    /// What skuld believed it showed (the last acknowledged value).
    pub believed: Option<i64>,
    /// What skuld wants it to show, and that value's version.
    pub desired: i64,
    pub desired_version: u64,
    /// When the read-back found it (unix ms, the worker's clock).
    pub detected_at_ms: i64,
}

impl DriftDetected {
    pub const NAME: &'static str = "inventory.channel.drift_detected";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PositionKey;

    #[test]
    fn listing_keys_read_back_and_are_not_entity_keys() {
        let key = ListingKey::new("acme", "web", "TEE/1");
        assert_eq!(ListingKey::decode(&key.encode()), Some(key.clone()));
        let position = PositionKey {
            tenant: "acme".into(),
            sku: "web".into(),
            location: "TEE/1".into(),
        };
        assert_eq!(ListingKey::decode(&position.encode()), None);
        assert_eq!(PositionKey::decode(&key.encode()), None);
        assert_ne!(
            ListingKey::new("acme", "we", "bTEE").encode(),
            ListingKey::new("acme", "web", "TEE").encode()
        );
    }
}
