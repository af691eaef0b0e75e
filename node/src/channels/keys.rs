//! The keys the channel worker pushes, and the records that make its work
//! durable.
//!
//! A push key is `(tenant, channel, sku)`: one SKU of one channel, whose
//! targets are the values the channel is shown (one per location, or one
//! for the SKU). Push keys are sharded like entities (`shard_of` over the
//! key's bytes), so in cluster mode exactly one node, the shard's owner,
//! pushes a key, and a shard move hands the key's work to the next owner.
//! The bytes are the key's [`ListingKey`] encoding, so the owner writes
//! the listing's events (drift) into a shard it holds the fence of.
//!
//! Two record kinds, ids `<shard, 5 digits>/<hash of the key>` so an owner
//! lists its shards' records by prefix:
//! * [`DIRTY_KIND`]: the key's stock changed and the channel may not show
//!   it yet. Written by the projection before the event stream's cursor
//!   moves past the change; deleted by the worker once every target is
//!   acknowledged. A crash in between leaves it, so no change is lost.
//! * [`KNOWN_KIND`]: the key was pushed once; the reconciliation reads such
//!   keys back after a restart too.
//! * [`REPLAY_KIND`]: an operator replayed the key's dead letters; the
//!   worker pushes the current desired value of its parked targets again.

use serde::{Deserialize, Serialize};
use skuld_actors::channel::ListingKey;
use xxhash_rust::xxh3::xxh3_128;

pub const DIRTY_KIND: &str = "channel_dirty";
pub const KNOWN_KIND: &str = "channel_key";
pub const REPLAY_KIND: &str = "channel_replay";

/// One SKU of one channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PushKey {
    pub tenant: String,
    pub channel: String,
    pub sku: String,
}

impl PushKey {
    pub fn new(tenant: &str, channel: &str, sku: &str) -> Self {
        PushKey {
            tenant: tenant.to_owned(),
            channel: channel.to_owned(),
            sku: sku.to_owned(),
        }
    }

    /// The key of the listing aggregate whose events the worker publishes
    /// for this key (drift).
    pub fn listing(&self) -> ListingKey {
        ListingKey::new(&self.tenant, &self.channel, &self.sku)
    }

    /// Unambiguous bytes whatever the parts hold: the listing's encoded
    /// key, so the key's shard is the shard its listing events go to.
    fn bytes(&self) -> Vec<u8> {
        self.listing().encode()
    }

    pub fn shard(&self, shard_count: u32) -> u32 {
        skuld_proto::shard::shard_of(&self.bytes(), shard_count)
    }

    /// The id of this key's records.
    pub fn record_id(&self, shard_count: u32) -> String {
        format!(
            "{}{:032x}",
            shard_prefix(self.shard(shard_count)),
            xxh3_128(&self.bytes())
        )
    }
}

/// The prefix of every record id of `shard`.
pub fn shard_prefix(shard: u32) -> String {
    format!("{shard:05}/")
}

/// The shard a record id names, if it is one of these ids.
pub fn shard_of_record(id: &str) -> Option<u32> {
    id.split_once('/')?.0.parse().ok()
}

/// What a dirty record holds: the key, and the place in the event stream
/// of the change that marked it last (`<shard>:<seq>`), so a worker tells
/// a key marked again from one it has already computed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirtyMark {
    pub key: PushKey,
    pub at: String,
}

pub fn encode_mark(mark: &DirtyMark) -> Vec<u8> {
    serde_json::to_vec(mark).unwrap_or_default()
}

pub fn decode_mark(raw: &[u8]) -> Option<DirtyMark> {
    serde_json::from_slice(raw).ok()
}

/// What the known and replay records hold: the key itself (the id is a
/// hash).
pub fn encode_key(key: &PushKey) -> Vec<u8> {
    serde_json::to_vec(key).unwrap_or_default()
}

pub fn decode_key(raw: &[u8]) -> Option<PushKey> {
    serde_json::from_slice(raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids_name_their_shard_and_tell_keys_apart() {
        let a = PushKey::new("acme", "web", "TEE/1");
        let b = PushKey::new("acme/web", "TEE", "1");
        assert_ne!(a.record_id(1_024), b.record_id(1_024));
        let id = a.record_id(1_024);
        assert_eq!(shard_of_record(&id), Some(a.shard(1_024)));
        assert!(id.starts_with(&shard_prefix(a.shard(1_024))));
        assert_eq!(
            a.record_id(1_024),
            PushKey::new("acme", "web", "TEE/1").record_id(1_024)
        );
    }

    #[test]
    fn marks_read_back() {
        let mark = DirtyMark {
            key: PushKey::new("acme", "web", "TEE"),
            at: "3:17".into(),
        };
        assert_eq!(decode_mark(&encode_mark(&mark)), Some(mark));
        assert_eq!(decode_mark(b"{}"), None);
    }

    #[test]
    fn keys_read_back_from_their_records() {
        let key = PushKey::new("acme", "web", "TEE");
        assert_eq!(decode_key(&encode_key(&key)), Some(key));
        assert_eq!(decode_key(b"not json"), None);
    }
}
