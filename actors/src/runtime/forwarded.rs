//! Serving requests another node forwarded here: decoded under the size
//! limit, validated again, and served only if this node serves the key's
//! shard (a forwarded request is never forwarded again).

use super::codec;
use super::routing::{Destination, ForwardError, ForwardTarget, Operation};
use super::{Entity, EntityRuntime, Mutation, Priority, RequestMeta};
use crate::Error;

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
        match operation {
            Operation::Mutate => {
                let (key, idempotency_key, expected_version, command) =
                    codec::decode_payload::<(E::Key, String, Option<u64>, E::Command)>(&payload)
                        .map_err(ForwardError::Malformed)?;
                let mutation = Mutation::<E> {
                    key,
                    idempotency_key,
                    expected_version,
                    command,
                };
                mutation.validate().map_err(ForwardError::Malformed)?;
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
            Operation::Read => {
                let key =
                    codec::decode_payload::<E::Key>(&payload).map_err(ForwardError::Malformed)?;
                E::validate_key(&key).map_err(ForwardError::Malformed)?;
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
