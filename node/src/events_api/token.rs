//! Resume tokens: a subscription's position in every shard's event stream,
//! opaque to clients and versioned so the format can change.
//!
//! Version 1 is base64url (no padding) of the byte `1` followed by the
//! bincode (varint) encoding of the `(shard, last seq)` pairs of the shards
//! the position has moved in, in shard order. A shard not named is at 0:
//! nothing of it seen yet.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use skuld_actors::runtime::codec;
use skuld_actors::Error;

const VERSION: u8 = 1;
/// Longest token accepted: 1,024 shards at their largest positions fit.
const MAX_TOKEN_CHARS: usize = 24 * 1024;

/// The last event seen in each shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position(pub BTreeMap<u32, u64>);

impl Position {
    pub fn seen(&self, shard: u32) -> u64 {
        self.0.get(&shard).copied().unwrap_or(0)
    }

    pub fn advance(&mut self, shard: u32, seq: u64) {
        self.0.insert(shard, seq);
    }

    pub fn encode(&self) -> String {
        let pairs: Vec<(u32, u64)> = self
            .0
            .iter()
            .filter(|(_, seq)| **seq > 0)
            .map(|(shard, seq)| (*shard, *seq))
            .collect();
        let mut bytes = vec![VERSION];
        // Encoding plain integers cannot fail; an empty list is "nothing seen".
        bytes.extend(codec::encode(&pairs).unwrap_or_default());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn decode(token: &str) -> Result<Self, Error> {
        let malformed = || Error::invalid("after", "the resume token is malformed");
        if token.len() > MAX_TOKEN_CHARS {
            return Err(malformed());
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| malformed())?;
        match bytes.split_first() {
            Some((&VERSION, rest)) => {
                let pairs: Vec<(u32, u64)> =
                    codec::decode_limited(rest).map_err(|_| malformed())?;
                let mut position = BTreeMap::new();
                let mut previous = None;
                for (shard, seq) in pairs {
                    // Strictly increasing shards: one way to write a
                    // position; no number a store could not hold.
                    if previous.is_some_and(|previous| shard <= previous)
                        || i64::try_from(seq).is_err()
                        || i32::try_from(shard).is_err()
                    {
                        return Err(malformed());
                    }
                    previous = Some(shard);
                    position.insert(shard, seq);
                }
                Ok(Self(position))
            }
            Some((version, _)) => Err(Error::invalid(
                "after",
                format!("resume token version {version} is not known to this node"),
            )),
            None => Err(malformed()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_position_survives_its_token() {
        let mut position = Position::default();
        position.advance(3, 17);
        position.advance(1_023, i64::MAX as u64);
        position.advance(0, 1);
        assert_eq!(Position::decode(&position.encode()).unwrap(), position);
        assert_eq!(
            Position::decode(&Position::default().encode()).unwrap(),
            Position::default()
        );
    }

    #[test]
    fn a_malformed_or_foreign_token_is_invalid_argument() {
        for token in ["", "!!!", "AA", "Ag", &"A".repeat(MAX_TOKEN_CHARS + 1)] {
            let error = Position::decode(token).unwrap_err();
            assert!(
                matches!(
                    error,
                    Error::Refused(skuld_actors::Refusal::InvalidArgument { .. })
                ),
                "{token:?}: {error:?}"
            );
        }
        // A position no store could hold is refused.
        let mut bytes = vec![VERSION];
        bytes.extend(codec::encode(&vec![(1u32, u64::MAX)]).unwrap());
        assert!(Position::decode(&URL_SAFE_NO_PAD.encode(bytes)).is_err());
        // Shards out of order are refused, not silently merged.
        let mut bytes = vec![VERSION];
        bytes.extend(codec::encode(&vec![(5u32, 1u64), (2, 1)]).unwrap());
        assert!(Position::decode(&URL_SAFE_NO_PAD.encode(bytes)).is_err());
    }
}
