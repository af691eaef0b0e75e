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
/// bincode checks every claim a decoder makes against the limit before it
/// allocates: strings and byte buffers claim their length prefix, and each
/// primitive claims its size in memory (an enum tag 4 bytes, a u64 8, a
/// u128 16), however few bytes its varint took. So a well-formed value
/// claims at most 16 times its encoded length, and the limit is the
/// smallest of a few power-of-four tiers (bincode's limit is a compile-time
/// constant) that is at least that. A length prefix beyond it is refused
/// before anything is allocated: one input can make a string allocate at
/// most 64 times its own size (at least 64 KiB). Sequences and maps are
/// preallocated at most serde's cautious size hint (about 1 MiB) and grow
/// only as elements are really decoded. Trailing bytes are refused too:
/// they mean the input is not what the caller thinks it is.
pub fn decode_limited<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Malformed> {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    let needed = bytes.len().saturating_mul(MAX_CLAIM_PER_BYTE);
    let decoded = if needed <= 64 * KIB {
        decode_under::<T, { 64 * KIB }>(bytes)
    } else if needed <= 256 * KIB {
        decode_under::<T, { 256 * KIB }>(bytes)
    } else if needed <= MIB {
        decode_under::<T, { MIB }>(bytes)
    } else if needed <= 4 * MIB {
        decode_under::<T, { 4 * MIB }>(bytes)
    } else if needed <= 16 * MIB {
        decode_under::<T, { 16 * MIB }>(bytes)
    } else if needed <= 64 * MIB {
        decode_under::<T, { 64 * MIB }>(bytes)
    } else if needed <= 256 * MIB {
        decode_under::<T, { 256 * MIB }>(bytes)
    } else if needed <= 1024 * MIB {
        decode_under::<T, { 1024 * MIB }>(bytes)
    } else {
        decode_under::<T, { usize::MAX }>(bytes)
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

/// The most a decoder claims per encoded byte: a u128 from a one-byte varint.
const MAX_CLAIM_PER_BYTE: usize = 16;

fn decode_under<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard().with_limit::<LIMIT>())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Refusal;

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
        assert!(
            matches!(error, Error::Refused(Refusal::InvalidArgument { .. })),
            "{error:?}"
        );
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
    fn values_whose_claims_outgrow_their_bytes_still_decode() {
        // Small numbers take one byte each and claim their size in memory:
        // 8 for a u64, 16 for a u128, 4 for an enum tag. Around every tier.
        for count in [1_000usize, 4_000, 16_000, 60_000, 250_000, 1_000_000] {
            let numbers: Vec<u64> = vec![1; count];
            let bytes = encode(&numbers).unwrap();
            assert_eq!(decode_limited::<Vec<u64>>(&bytes).unwrap(), numbers);
            let wide: Vec<u128> = vec![1; count / 4];
            let bytes = encode(&wide).unwrap();
            assert_eq!(decode_limited::<Vec<u128>>(&bytes).unwrap(), wide);
            let options: Vec<Option<bool>> = vec![None; count];
            let bytes = encode(&options).unwrap();
            assert_eq!(
                decode_limited::<Vec<Option<bool>>>(&bytes).unwrap(),
                options
            );
            let map: std::collections::BTreeMap<String, i64> = (0..count / 8)
                .map(|index| (format!("{index:x}"), 1))
                .collect();
            let bytes = encode(&map).unwrap();
            assert_eq!(
                decode_limited::<std::collections::BTreeMap<String, i64>>(&bytes).unwrap(),
                map
            );
        }
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
