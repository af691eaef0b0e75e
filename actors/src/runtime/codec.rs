//! The storage encoding of journal entries, snapshots and replies (bincode 2
//! through serde, standard config).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|error| Error::Unavailable(format!("cannot encode record: {error}")))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(value, _)| value)
        .map_err(|error| Error::Unavailable(format!("stored record is unreadable: {error}")))
}
