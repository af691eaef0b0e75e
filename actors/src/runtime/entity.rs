//! What an entity kind provides so the runtime can serve it as actors.

use std::fmt::Display;
use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::measures::Pending;
use super::EntityHandle;
use crate::journal::JournalEntry;
use crate::key::validate_token;
use crate::Error;

/// An entity kind (inventory position, return case): its key, state,
/// commands and events, and the pure rules that connect them.
pub trait Entity: Send + Sync + Sized + 'static {
    type Key: Clone + Eq + Hash + Display + Serialize + DeserializeOwned + Send + Sync + 'static;
    type State: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static;
    type Command: Clone + Serialize + DeserializeOwned + Send + Sync + 'static;
    type Event: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What `decide` tells `reply` beyond the new state.
    type Outcome: Send + 'static;
    type Reply: Serialize + DeserializeOwned + Clone + Send + Sync + 'static;

    /// A short name for metrics and logs.
    const KIND: &'static str;

    /// The storage key; must be unambiguous and start with a tag byte of
    /// its own so kinds never collide.
    fn encode_key(key: &Self::Key) -> Vec<u8>;
    fn decode_key(bytes: &[u8]) -> Option<Self::Key>;

    /// What of a command the client sent, for the request fingerprint: a
    /// retry must match it, so anything the receiving node adds (a policy
    /// it resolved) is left out. The default is the whole command.
    fn client_part(command: &Self::Command) -> std::borrow::Cow<'_, Self::Command> {
        std::borrow::Cow::Borrowed(command)
    }

    /// Checks a key that did not come from a validated request (one decoded
    /// from a forwarded payload).
    fn validate_key(key: &Self::Key) -> Result<(), Error>;

    /// Checks a command that needs no state; refused before it is queued.
    fn validate(key: &Self::Key, command: &Self::Command) -> Result<(), Error>;

    fn version(state: &Self::State) -> u64;

    /// Roughly how many items a snapshot of the state holds. Snapshots are
    /// taken no more often than every that many journal entries, so a hot
    /// position with thousands of holds does not rewrite them all every few
    /// hundred commands (snapshot cost stays amortised O(1) per entry).
    fn size_hint(_state: &Self::State) -> u64 {
        0
    }

    /// When the entity must be woken with [`Entity::timer_command`].
    fn next_timer_ms(state: &Self::State) -> Option<i64>;
    fn timer_command() -> Self::Command;

    /// Decides a command against the state: events, or a refusal.
    fn decide(
        &self,
        key: &Self::Key,
        state: &Self::State,
        expected_version: Option<u64>,
        command: &Self::Command,
        now_ms: i64,
    ) -> Result<(Vec<Self::Event>, Self::Outcome), Error>;

    fn apply_entry(state: &mut Self::State, entry: &JournalEntry<Self::Event>);

    fn reply(state: &Self::State, outcome: Self::Outcome) -> Self::Reply;

    /// A listing summary `(scope, value)` stored with each write that
    /// changes the entity; `None` (the default) keeps no listing.
    fn summary(_key: &Self::Key, _state: &Self::State) -> Option<(Vec<u8>, Vec<u8>)> {
        None
    }

    /// What every published event of a change carries as the entity's
    /// values before and after it (a position's quantities, a case's state).
    type Figures: Serialize + DeserializeOwned;
    fn figures(state: &Self::State) -> Self::Figures;

    /// The tenant the key belongs to; consumers filter on it.
    fn tenant(key: &Self::Key) -> &str;

    /// An event's name for consumers (`inventory.reservation.created`).
    fn event_name(event: &Self::Event) -> &'static str;

    /// Events that follow from a change as a whole rather than from one of
    /// its events (a position running out of stock); none by default.
    fn derived_events(_before: &Self::Figures, _after: &Self::Figures) -> Vec<&'static str> {
        Vec::new()
    }

    /// What a journal entry counts for in the business metrics (see
    /// [`super::measures`]); `state` is the entity after the entry. Recorded
    /// only once the entry is durable. Nothing by default.
    fn measure(_entry: &JournalEntry<Self::Event>, _state: &Self::State, _measures: &mut Pending) {}

    /// Called after each durable write of an entity; starts side effects
    /// the new state asks for. Must not block.
    fn after_commit(&self, _key: &Self::Key, _state: &Self::State, _handle: &EntityHandle<Self>) {}
}

/// A client's mutation of one entity.
pub struct Mutation<E: Entity> {
    pub key: E::Key,
    pub idempotency_key: String,
    pub expected_version: Option<u64>,
    pub command: E::Command,
}

impl<E: Entity> Mutation<E> {
    /// Validates the idempotency key and the command.
    pub fn validate(&self) -> Result<(), Error> {
        validate_token("idempotency_key", &self.idempotency_key)?;
        E::validate(&self.key, &self.command)
    }

    /// Identifies the request apart from its idempotency key: a retry must
    /// carry the same fingerprint. Covers only what the client sent.
    pub fn fingerprint(&self) -> u128 {
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(
            (
                &self.key,
                self.expected_version,
                E::client_part(&self.command).as_ref(),
            ),
            config,
        )
        .unwrap_or_default();
        xxhash_rust::xxh3::xxh3_128(&bytes)
    }
}

impl<E: Entity> Clone for Mutation<E> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            idempotency_key: self.idempotency_key.clone(),
            expected_version: self.expected_version,
            command: self.command.clone(),
        }
    }
}

impl<E: Entity> std::fmt::Debug for Mutation<E>
where
    E::Command: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mutation")
            .field("key", &self.key.to_string())
            .field("idempotency_key", &self.idempotency_key)
            .field("expected_version", &self.expected_version)
            .field("command", &self.command)
            .finish()
    }
}
