//! The encoding of journal entries, snapshots, replies and forwarded
//! commands (bincode 2 through serde, standard config), and the one safe
//! way to decode them.
//!
//! Every decoded byte string comes from outside this process: a record read
//! back from a store, or a payload another node (or anyone who can reach the
//! peer port) sent. bincode trusts the length prefixes it reads, so a
//! 17-byte payload claiming a 2^62-byte string would make it allocate that
//! much and abort the process. [`decode`] therefore runs under a size limit
//! tied to the input's own length (see [`decode_limited`]), and a malformed
//! input is an error, never an abort.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|error| Error::Unavailable(format!("cannot encode record: {error}")))
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(String);

/// Decodes bytes read back from a store; a malformed record is an error
/// naming what was wrong (the store is damaged or was written by an
/// incompatible version), never a panic.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    decode_limited(bytes)
        .map_err(|error| Error::Unavailable(format!("stored record is unreadable: {error}")))
}

/// Decodes a payload another node sent; malformed is INVALID_ARGUMENT.
pub fn decode_payload<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    decode_limited(bytes).map_err(|error| Error::invalid("payload", error.to_string()))
}

/// Decodes `bytes` entirely, under an allocation limit.
///
/// In bincode's serde path the only decoders that claim bytes against the
/// limit before allocating are strings and byte buffers, and each claim is
/// then read from the input, so a well-formed value never claims more than
/// the input's length (sequences and maps preallocate at most serde's
/// cautious size hint, about 1 MiB, and grow only as elements are actually
/// decoded). The limit is a compile-time constant in bincode, so it is the
/// smallest of a few tiers that holds the input: a length prefix beyond it
/// is refused before anything is allocated, and the largest allocation one
/// input can cause is a small multiple of its size. Trailing bytes are
/// refused too: they mean the input is not what the caller thinks it is.
pub fn decode_limited<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Malformed> {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    let decoded = match bytes.len() {
        0..=4_096 => decode_under::<T, { 16 * KIB }>(bytes),
        4_097..=262_144 => decode_under::<T, { MIB }>(bytes),
        262_145..=4_194_304 => decode_under::<T, { 16 * MIB }>(bytes),
        4_194_305..=67_108_864 => decode_under::<T, { 256 * MIB }>(bytes),
        _ => decode_under::<T, { 4096 * MIB }>(bytes),
    };
    let (value, used) = decoded.map_err(|error| Malformed(error.to_string()))?;
    if used != bytes.len() {
        return Err(Malformed(format!(
            "{} trailing bytes after the value",
            bytes.len() - used
        )));
    }
    Ok(value)
}

fn decode_under<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard().with_limit::<LIMIT>())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_claimed_length_is_refused_without_allocating() {
        // The payload of the report: a varint marker (0xfd = u64 follows),
        // 2^62 little-endian, and eight more bytes.
        let mut payload = vec![0xfd];
        payload.extend_from_slice(&(1u64 << 62).to_le_bytes());
        payload.extend_from_slice(&[0; 8]);
        assert_eq!(payload.len(), 17);
        assert!(decode_limited::<String>(&payload).is_err());
        assert!(decode_limited::<(String, String, Option<u64>)>(&payload).is_err());
        assert!(decode_limited::<Vec<String>>(&payload).is_err());
        assert!(decode_limited::<Vec<u8>>(&payload).is_err());
        let error = decode_payload::<String>(&payload).unwrap_err();
        assert!(matches!(error, Error::InvalidArgument { .. }), "{error:?}");
        assert!(matches!(
            decode::<String>(&payload).unwrap_err(),
            Error::Unavailable(_)
        ));
    }

    #[test]
    fn round_trips_and_refuses_trailing_bytes() {
        let value = (String::from("sku-1"), vec![1u64, 2, 3], Some(7i64));
        let mut bytes = encode(&value).unwrap();
        assert_eq!(
            decode_limited::<(String, Vec<u64>, Option<i64>)>(&bytes).unwrap(),
            value
        );
        bytes.push(0);
        assert!(decode_limited::<(String, Vec<u64>, Option<i64>)>(&bytes).is_err());
    }

    #[test]
    fn large_values_still_decode() {
        // A value near a tier boundary, made of many short strings (the
        // claims add up to less than the input).
        let value: Vec<String> = (0..100_000).map(|index| format!("r-{index}")).collect();
        let bytes = encode(&value).unwrap();
        assert!(bytes.len() > 262_144);
        assert_eq!(decode_limited::<Vec<String>>(&bytes).unwrap(), value);
        let blob = vec![7u8; 5 * 1024 * 1024];
        let bytes = encode(&blob).unwrap();
        assert_eq!(decode_limited::<Vec<u8>>(&bytes).unwrap(), blob);
    }
}
