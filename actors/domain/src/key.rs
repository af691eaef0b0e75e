//! Entity keys: validation and a stable, unambiguous byte encoding.

use serde::{Deserialize, Serialize};

use crate::Refusal;

/// Longest tenant, sku, location, reservation id, order reference or
/// idempotency key accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 128;

/// Checks an identifier: 1 to [`MAX_TOKEN_BYTES`] bytes, no control
/// characters, no leading or trailing white space.
pub fn validate_token(field: &'static str, value: &str) -> Result<(), Refusal> {
    if value.is_empty() {
        return Err(Refusal::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_TOKEN_BYTES {
        return Err(Refusal::invalid(
            field,
            format!(
                "is {} bytes; at most {MAX_TOKEN_BYTES} allowed",
                value.len()
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Refusal::invalid(
            field,
            "must not contain control characters",
        ));
    }
    if value.trim() != value {
        return Err(Refusal::invalid(
            field,
            "must not start or end with white space",
        ));
    }
    Ok(())
}

/// The tenant name that credentials use to grant every tenant; no tenant
/// may be called so, or a request for it would be one over all tenants.
pub const RESERVED_TENANT: &str = "*";

/// Checks a tenant: a token ([`validate_token`]) and not
/// [`RESERVED_TENANT`].
pub fn validate_tenant(field: &'static str, value: &str) -> Result<(), Refusal> {
    validate_token(field, value)?;
    if value == RESERVED_TENANT {
        return Err(Refusal::invalid(
            field,
            "must not be \"*\": it is reserved (in credentials it grants every tenant)",
        ));
    }
    Ok(())
}

/// A tag byte, then each part length-prefixed (`u16` big-endian), so no two
/// keys share an encoding whatever characters they contain. Parts are
/// validated to at most [`MAX_TOKEN_BYTES`], so their length fits a `u16`.
pub(crate) fn encode_parts(tag: u8, parts: &[&str]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + parts.iter().map(|p| 2 + p.len()).sum::<usize>());
    bytes.push(tag);
    for part in parts {
        let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(part.as_bytes());
    }
    bytes
}

/// Inverse of [`encode_parts`] for exactly `N` parts under `tag`.
pub(crate) fn decode_parts<const N: usize>(tag: u8, bytes: &[u8]) -> Option<[String; N]> {
    let (found, mut rest) = bytes.split_first()?;
    if *found != tag {
        return None;
    }
    let mut parts = Vec::with_capacity(N);
    for _ in 0..N {
        let (len, tail) = rest.split_at_checked(2)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let (part, tail) = tail.split_at_checked(len)?;
        parts.push(String::from_utf8(part.to_vec()).ok()?);
        rest = tail;
    }
    if !rest.is_empty() {
        return None;
    }
    parts.try_into().ok()
}

/// A SKU at a location, of one tenant: the key of an inventory position actor.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PositionKey {
    pub tenant: String,
    pub sku: String,
    pub location: String,
}

const POSITION_TAG: u8 = b'P';

impl PositionKey {
    /// Builds a key, validating each part.
    pub fn new(
        tenant: impl Into<String>,
        sku: impl Into<String>,
        location: impl Into<String>,
    ) -> Result<Self, Refusal> {
        let key = Self {
            tenant: tenant.into(),
            sku: sku.into(),
            location: location.into(),
        };
        key.validate()?;
        Ok(key)
    }

    /// Checks each part (a key decoded from bytes was not built by `new`).
    pub fn validate(&self) -> Result<(), Refusal> {
        validate_tenant("tenant", &self.tenant)?;
        validate_token("sku", &self.sku)?;
        validate_token("location", &self.location)
    }

    /// The storage key (see [`encode_parts`]).
    pub fn encode(&self) -> Vec<u8> {
        encode_parts(POSITION_TAG, &[&self.tenant, &self.sku, &self.location])
    }

    /// Inverse of [`PositionKey::encode`]; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let [tenant, sku, location] = decode_parts(POSITION_TAG, bytes)?;
        Some(Self {
            tenant,
            sku,
            location,
        })
    }
}

impl std::fmt::Display for PositionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.tenant, self.sku, self.location)
    }
}

/// Longest return id accepted: it is embedded in the idempotency keys of the
/// return's inventory steps, which must stay within [`MAX_TOKEN_BYTES`].
pub const MAX_RETURN_ID_BYTES: usize = 96;

/// A return case of one tenant: the key of a return-case actor.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReturnKey {
    pub tenant: String,
    pub return_id: String,
}

const RETURN_TAG: u8 = b'R';

impl ReturnKey {
    pub fn new(tenant: impl Into<String>, return_id: impl Into<String>) -> Result<Self, Refusal> {
        let key = Self {
            tenant: tenant.into(),
            return_id: return_id.into(),
        };
        key.validate()?;
        Ok(key)
    }

    pub fn validate(&self) -> Result<(), Refusal> {
        validate_tenant("tenant", &self.tenant)?;
        validate_token("return_id", &self.return_id)?;
        if self.return_id.len() > MAX_RETURN_ID_BYTES {
            return Err(Refusal::invalid(
                "return_id",
                format!(
                    "is {} bytes; at most {MAX_RETURN_ID_BYTES} allowed",
                    self.return_id.len()
                ),
            ));
        }
        Ok(())
    }

    /// The storage key (see [`encode_parts`]).
    pub fn encode(&self) -> Vec<u8> {
        encode_parts(RETURN_TAG, &[&self.tenant, &self.return_id])
    }

    /// Inverse of [`ReturnKey::encode`]; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let [tenant, return_id] = decode_parts(RETURN_TAG, bytes)?;
        Some(Self { tenant, return_id })
    }
}

impl std::fmt::Display for ReturnKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tenant, self.return_id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_bad_tokens() {
        assert!(validate_token("sku", "").is_err());
        assert!(validate_token("sku", &"x".repeat(129)).is_err());
        assert!(validate_token("sku", "a\u{0}b").is_err());
        assert!(validate_token("sku", "a\nb").is_err());
        assert!(validate_token("sku", " a").is_err());
        assert!(validate_token("sku", &"x".repeat(128)).is_ok());
        assert!(validate_token("sku", "SKU-1 blue/XL").is_ok());
    }

    #[test]
    fn the_tenant_that_grants_every_tenant_is_no_tenant() {
        let refused = validate_tenant("tenant", "*").unwrap_err();
        assert!(refused.to_string().contains("reserved"), "{refused}");
        assert!(PositionKey::new("*", "SKU-1", "DC1").is_err());
        assert!(ReturnKey::new("*", "R-1").is_err());
        assert!(validate_tenant("tenant", "").is_err());
        assert!(validate_tenant("tenant", "acme*").is_ok());
        assert!(validate_tenant("tenant", &"x".repeat(MAX_TOKEN_BYTES)).is_ok());
        // Other identifiers may be "*".
        assert!(PositionKey::new("acme", "*", "*").is_ok());
        assert!(validate_token("idempotency_key", "*").is_ok());
    }

    proptest! {
        #[test]
        fn encoding_round_trips(t in "[^\\p{Cc}]{1,20}", s in "[^\\p{Cc}]{1,20}", l in ".{1,20}") {
            let key = PositionKey { tenant: t, sku: s, location: l };
            prop_assert_eq!(PositionKey::decode(&key.encode()), Some(key));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = PositionKey::decode(&bytes);
            let _ = ReturnKey::decode(&bytes);
        }

        #[test]
        fn return_keys_round_trip_and_never_read_as_positions(t in "[^\\p{Cc}]{1,20}", r in ".{1,20}") {
            let key = ReturnKey { tenant: t, return_id: r };
            prop_assert_eq!(ReturnKey::decode(&key.encode()), Some(key.clone()));
            prop_assert_eq!(PositionKey::decode(&key.encode()), None);
        }
    }
}
