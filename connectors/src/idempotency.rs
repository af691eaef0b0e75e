//! Idempotency keys (CHANNELS.md A.3, item 18): deterministic, so a retry of
//! the same push is the same request and the channel replays its first
//! result; a new value, a new desired version or a compare against a new
//! figure (after a conflict) is a new operation with a new key.
//!
//! A key is a UUID version 8 (RFC 9562 5.8, "custom") whose 122 free bits are
//! the first bits of a SHA-256 over the fields, length-prefixed so that no two
//! field lists hash the same bytes. Shopify "strongly recommends UUIDs"
//! (A.3); v8 rather than v5 because v5 is SHA-1.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Domain separation: a key of another kind of skuld request never equals
/// a push's.
const PUSH_TAG: &[u8] = b"skuld.channel.push.v1";
const BATCH_TAG: &[u8] = b"skuld.channel.batch.v1";

fn field(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

fn uuid_of(hasher: Sha256) -> String {
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::new_v8(bytes).hyphenated().to_string()
}

/// The key of one push of `value` to (channel, sku, location) at desired
/// `version` compared against `change_from`. The value is part of it: a
/// worker that starts afresh (after a restart, or another node after a
/// shard move) could meet a version and compare it used before for another
/// value, and the channel would replay that old result instead of
/// applying the new value.
pub fn idempotency_key(
    channel_id: &str,
    sku: &str,
    location: Option<&str>,
    value: i64,
    version: u64,
    change_from: Option<i64>,
) -> String {
    let mut hasher = Sha256::new();
    field(&mut hasher, PUSH_TAG);
    field(&mut hasher, channel_id.as_bytes());
    field(&mut hasher, sku.as_bytes());
    // None and Some("") differ: a marker byte before the location.
    match location {
        None => field(&mut hasher, b"\0"),
        Some(location) => {
            field(&mut hasher, b"\x01");
            field(&mut hasher, location.as_bytes());
        }
    }
    hasher.update(value.to_be_bytes());
    hasher.update(version.to_be_bytes());
    match change_from {
        None => field(&mut hasher, b"\0"),
        Some(value) => {
            field(&mut hasher, b"\x01");
            hasher.update(value.to_be_bytes());
        }
    }
    uuid_of(hasher)
}

/// The key of a request that carries several pushes (Shopify's
/// `quantities[]`, a feed): a function of the set of their keys, whatever
/// their order, so a retry of the same batch reuses it and any other
/// composition gets another. `salt` distinguishes a deliberate second
/// operation over the same items (Shopify's
/// `IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED`: "retry with a new key").
pub fn batch_key<'a>(keys: impl IntoIterator<Item = &'a str>, salt: &str) -> String {
    let mut keys: Vec<&str> = keys.into_iter().collect();
    keys.sort_unstable();
    keys.dedup();
    let mut hasher = Sha256::new();
    field(&mut hasher, BATCH_TAG);
    field(&mut hasher, salt.as_bytes());
    for key in keys {
        field(&mut hasher, key.as_bytes());
    }
    uuid_of(hasher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_push_gives_the_same_key() {
        let a = idempotency_key("shop", "SKU-1", Some("loc-1"), 5, 7, Some(3));
        assert_eq!(
            a,
            idempotency_key("shop", "SKU-1", Some("loc-1"), 5, 7, Some(3))
        );
        let parsed = Uuid::parse_str(&a).map(|uuid| uuid.get_version_num());
        assert_eq!(parsed, Ok(8));
    }

    #[test]
    fn every_field_changes_the_key() {
        let base = idempotency_key("shop", "SKU-1", Some("loc-1"), 5, 7, Some(3));
        let variants = [
            idempotency_key("shop2", "SKU-1", Some("loc-1"), 5, 7, Some(3)),
            idempotency_key("shop", "SKU-2", Some("loc-1"), 5, 7, Some(3)),
            idempotency_key("shop", "SKU-1", Some("loc-2"), 5, 7, Some(3)),
            idempotency_key("shop", "SKU-1", None, 5, 7, Some(3)),
            idempotency_key("shop", "SKU-1", Some(""), 5, 7, Some(3)),
            idempotency_key("shop", "SKU-1", Some("loc-1"), 5, 8, Some(3)),
            idempotency_key("shop", "SKU-1", Some("loc-1"), 5, 7, Some(4)),
            idempotency_key("shop", "SKU-1", Some("loc-1"), 5, 7, None),
            idempotency_key("shop", "SKU-1", Some("loc-1"), 6, 7, Some(3)),
            // Field boundaries matter: "ab"+"c" is not "a"+"bc".
            idempotency_key("shopS", "KU-1", Some("loc-1"), 5, 7, Some(3)),
        ];
        for (index, variant) in variants.iter().enumerate() {
            assert_ne!(&base, variant, "variant {index}");
        }
        assert_ne!(
            idempotency_key("s", "k", None, 5, 1, None),
            idempotency_key("s", "k", Some(""), 5, 1, None)
        );
    }

    #[test]
    fn batch_keys_ignore_order_not_composition() {
        let a = batch_key(["k1", "k2", "k3"], "");
        assert_eq!(a, batch_key(["k3", "k1", "k2"], ""));
        assert_ne!(a, batch_key(["k1", "k2"], ""));
        assert_ne!(a, batch_key(["k1", "k2", "k3"], "retry-1"));
    }
}
