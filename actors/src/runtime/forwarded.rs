//! Serving requests another node forwarded here: decoded under the size
//! limit, validated again, and served only if this node serves the key's
//! shard (a forwarded request is never forwarded again).

use super::codec;
use super::routing::{Destination, ForwardError, ForwardTarget, Operation};
use super::{Entity, EntityRuntime, Mutation, Priority, RequestMeta};
use crate::Error;

/// A request another node forwarded, decoded and validated.
pub enum Forwarded<E: Entity> {
    Mutate(Mutation<E>),
    Read(E::Key),
}

/// Decodes a forwarded payload the one way the peer API does: under the
/// size limit of [`codec::decode_payload`] (a length prefix claiming more
/// than the payload could hold is refused before anything is allocated),
/// then validated like a client's request, since a peer payload skips the
/// public API's checks. Public so the fuzz targets drive this very code.
pub fn decode_forwarded<E: Entity>(
    operation: Operation,
    payload: &[u8],
) -> Result<Forwarded<E>, Error> {
    match operation {
        Operation::Mutate => {
            let (key, idempotency_key, expected_version, command) =
                codec::decode_payload::<(E::Key, String, Option<u64>, E::Command)>(payload)?;
            let mutation = Mutation::<E> {
                key,
                idempotency_key,
                expected_version,
                command,
            };
            mutation.validate()?;
            Ok(Forwarded::Mutate(mutation))
        }
        Operation::Read => {
            let key = codec::decode_payload::<E::Key>(payload)?;
            E::validate_key(&key)?;
            Ok(Forwarded::Read(key))
        }
    }
}

#[async_trait::async_trait]
impl<E: Entity> ForwardTarget for EntityRuntime<E> {
    fn kind(&self) -> &'static str {
        E::KIND
    }

    /// Serves a request another node forwarded, here or not at all: a
    /// forwarded request is never forwarded again.
    async fn serve_forwarded(
        &self,
        operation: Operation,
        payload: Vec<u8>,
        meta: RequestMeta,
    ) -> Result<Vec<u8>, ForwardError> {
        let routing = self
            .shared
            .routing
            .clone()
            .ok_or_else(|| Error::Unavailable("this node is not in cluster mode".into()))?;
        match decode_forwarded::<E>(operation, &payload).map_err(ForwardError::Malformed)? {
            Forwarded::Mutate(mutation) => {
                let _admitted = self.shared.admission.admit(Priority::Write)?;
                let shard = routing.table.shard_of(&E::encode_key(&mutation.key));
                let give_up = routing.give_up(meta.deadline);
                let Destination::Here(serving) = routing.destination(shard, give_up, true).await?
                else {
                    return Err(routing.moving(shard).into());
                };
                let mutated = self
                    .mutate_here(mutation, meta, Some(serving.epoch))
                    .await?;
                drop(serving);
                Ok(codec::encode(&(mutated.reply, mutated.replayed))?)
            }
            Forwarded::Read(key) => {
                let _admitted = self.shared.admission.admit(Priority::Read)?;
                let shard = routing.table.shard_of(&E::encode_key(&key));
                let give_up = routing.give_up(meta.deadline);
                let Destination::Here(serving) = routing.destination(shard, give_up, true).await?
                else {
                    return Err(routing.moving(shard).into());
                };
                let state = self.read_here(&key, meta, Some(serving.epoch)).await?;
                drop(serving);
                Ok(codec::encode(&state)?)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::position::{Command, PositionEntity};
    use crate::returns::{ReceivedLine, ReturnCommand, ReturnEntity, MAX_RETURN_LINES};
    use crate::{PositionKey, Refusal, ReturnKey};

    fn invalid<T>(result: Result<T, Error>) -> String {
        match result {
            Err(Error::Refused(Refusal::InvalidArgument { field, .. })) => field.into_owned(),
            Err(other) => panic!("refused as {other:?}, not INVALID_ARGUMENT"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn a_payload_claiming_a_huge_length_is_refused_by_every_forwarded_decode() {
        // A string length prefix of 2^62 (varint marker 0xfd, then the u64),
        // in the first field of every payload: without the limit bincode
        // would try to allocate it and abort the process.
        let mut payload = vec![0xfd];
        payload.extend_from_slice(&(1u64 << 62).to_le_bytes());
        payload.extend_from_slice(&[0; 8]);
        for operation in [Operation::Mutate, Operation::Read] {
            assert_eq!(
                invalid(decode_forwarded::<PositionEntity>(operation, &payload)),
                "payload"
            );
            assert_eq!(
                invalid(decode_forwarded::<ReturnEntity>(operation, &payload)),
                "payload"
            );
        }
        // The same claim deeper in: a well-formed key, then the idempotency
        // key's length.
        let key = PositionKey::new("acme", "SKU-1", "DC1").unwrap();
        let mut payload = codec::encode(&key).unwrap();
        payload.push(0xfd);
        payload.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            invalid(decode_forwarded::<PositionEntity>(
                Operation::Mutate,
                &payload
            )),
            "payload"
        );
    }

    #[test]
    fn a_forwarded_command_is_validated_like_a_client_request() {
        // Well-formed bincode that the public API would have refused: the
        // hop does not skip the checks.
        let key = PositionKey::new("acme", "SKU-1", "DC1").unwrap();
        let command = Command::ReleaseReservation {
            reservation_id: "r".repeat(129),
        };
        let payload = codec::encode(&(&key, "idem", None::<u64>, &command)).unwrap();
        assert_eq!(
            invalid(decode_forwarded::<PositionEntity>(
                Operation::Mutate,
                &payload
            )),
            "reservation_id"
        );
        let key = ReturnKey::new("acme", "R-1").unwrap();
        let line = ReceivedLine {
            line_id: "L1".into(),
            quantity: 1,
            location: String::new(),
        };
        let command = ReturnCommand::Receive {
            lines: vec![line; MAX_RETURN_LINES + 1],
            accept_surplus: true,
        };
        let payload = codec::encode(&(&key, "idem", None::<u64>, &command)).unwrap();
        assert_eq!(
            invalid(decode_forwarded::<ReturnEntity>(
                Operation::Mutate,
                &payload
            )),
            "lines"
        );
        let bad_key = ReturnKey {
            tenant: "acme".into(),
            return_id: "x".repeat(200),
        };
        let payload = codec::encode(&bad_key).unwrap();
        assert_eq!(
            invalid(decode_forwarded::<ReturnEntity>(Operation::Read, &payload)),
            "return_id"
        );
    }
}
