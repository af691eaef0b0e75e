//! The actor runtime: one ractor actor per active entity (inventory
//! position, return case), generic over [`Entity`].
//!
//! Request path: the API validates a command, [`EntityRuntime::mutate`]
//! admits it against the node-wide in-flight bound ([`Admission`]), queues it
//! in the entity's bounded mailbox and waits. The entity's actor drains its
//! mailbox, applies every queued command in order through the pure state
//! machine, hands one [`skuld_cluster::EntityWrite`] to the group-commit
//! writer, and replies to all of them once that write is durable.
//!
//! Actors start on first use from the store (snapshot + journal tail) and
//! passivate after an idle time. Timers are durable: each entity's next
//! wake-up is stored with its writes, and [`Background`] wakes entities whose
//! timer is due, even after a restart.

mod actor;
mod admission;
mod background;
pub mod codec;
mod entity;
mod forwarded;
mod known_keys;
mod mailbox;
pub mod measures;
pub mod published;
pub mod routing;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use dashmap::DashMap;
use ractor::{Actor, ActorRef};
use skuld_cluster::{GroupCommitWriter, Store, WallClock};
use tokio::sync::{oneshot, OnceCell};

use crate::Error;
use actor::{ActorArgs, EntityActor, EntityMsg};
use admission::Priority;
pub use admission::{Admission, READ_FAN_OUT};
pub use background::{Background, BackgroundTiming};
pub use entity::{Entity, Mutation};
pub use forwarded::{decode_forwarded, Forwarded};
use mailbox::{Mailbox, Push};
use routing::{Destination, Operation, Routing, ServedBy};

/// Tuning of an entity runtime. Every field but the clock is a node
/// option.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Commands queued per entity at most; beyond it RESOURCE_EXHAUSTED.
    pub mailbox_capacity: usize,
    /// An actor with nothing to do for this long stops (passivation).
    pub idle_timeout: Duration,
    /// A snapshot is written after this many journal entries.
    pub snapshot_every: u64,
    /// The wall clock decisions are stamped with (`recorded_at_ms`,
    /// expiries, due timers): the system's, or the simulation's.
    pub clock: WallClock,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            mailbox_capacity: 1_024,
            idle_timeout: Duration::from_secs(60),
            snapshot_every: 200,
            clock: WallClock::system(),
        }
    }
}

/// Per-request context carried to the actor.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub correlation_id: String,
    /// Past this instant the command is dropped unapplied.
    pub deadline: Option<Instant>,
    /// Filled with the id of the node that served the request (cluster
    /// mode), so the reply can name the owner.
    pub served_by: ServedBy,
}

/// The answer to a mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutated<R> {
    pub reply: R,
    /// The stored reply of an earlier request with the same idempotency key.
    pub replayed: bool,
}

pub use skuld_cluster::now_ms;

// ---- the runtime ------------------------------------------------------------

// Nearly every envelope is a mutation: boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Work<E: Entity> {
    Mutate {
        mutation: Mutation<E>,
        fingerprint: u128,
    },
    Read,
    /// A command the node issues itself (a timer, an effect's result).
    Internal(E::Command),
    /// Wake-up from the timer scanner: run the entity's timer command.
    Tick,
}

pub(crate) enum Outcome<E: Entity> {
    Mutated(Mutated<E::Reply>),
    Read(E::State),
}

pub(crate) struct Envelope<E: Entity> {
    pub(crate) work: Work<E>,
    pub(crate) correlation_id: String,
    pub(crate) deadline: Option<Instant>,
    /// The ownership epoch of the key's shard the request was admitted
    /// under (cluster mode); `None` for single-node and internal work.
    pub(crate) epoch: Option<u64>,
    pub(crate) reply: Option<oneshot::Sender<Result<Outcome<E>, Error>>>,
    /// Dropped with the envelope: once the actor has taken the command into
    /// a decision, or once it was refused or abandoned (see
    /// [`EntityHandle::send_internal_holding`]).
    pub(crate) held: Option<Box<dyn Send + Sync>>,
}

impl<E: Entity> Envelope<E> {
    pub(crate) fn answer(self, result: Result<Outcome<E>, Error>) {
        if let Some(reply) = self.reply {
            // The caller may have gone (cancelled); nothing to do then.
            let _ = reply.send(result);
        }
    }

    fn internal(work: Work<E>, correlation_id: &str) -> Self {
        Self {
            work,
            correlation_id: correlation_id.to_owned(),
            deadline: None,
            epoch: None,
            reply: None,
            held: None,
        }
    }
}

pub(crate) struct Slot<E: Entity> {
    pub(crate) mailbox: Mailbox<Envelope<E>>,
    actor: OnceCell<ActorRef<EntityMsg>>,
}

pub(crate) struct Shared<E: Entity> {
    pub(crate) entity: E,
    pub(crate) config: RuntimeConfig,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) writer: GroupCommitWriter,
    pub(crate) actors: DashMap<E::Key, Arc<Slot<E>>>,
    admission: Arc<Admission>,
    pub(crate) routing: Option<Routing>,
    /// Idempotency keys all actors of this runtime keep in memory.
    pub(crate) known_keys_budget: Arc<known_keys::Budget>,
    /// Set by [`EntityRuntime::stop`]: from then on nothing is queued, so
    /// no actor starts (or writes) after the runtime stopped.
    stopping: AtomicBool,
}

impl<E: Entity> Shared<E> {
    /// The shard of an encoded key and the epoch this node serves it under;
    /// `(0, 0)` in single-node mode, where nothing is fenced.
    /// With `admitted`, the epoch a request was admitted under: that one,
    /// even if a release has begun since (the release waits for it).
    pub(crate) fn ownership(
        &self,
        encoded_key: &[u8],
        admitted: Option<u64>,
    ) -> Result<(u32, u64), Error> {
        let Some(routing) = &self.routing else {
            return Ok((0, 0));
        };
        let shard = routing.table.shard_of(encoded_key);
        if let Some(epoch) = admitted {
            return Ok((shard, epoch));
        }
        routing
            .table
            .local_epoch(shard)
            .map(|epoch| (shard, epoch))
            .ok_or_else(|| routing.moving(shard))
    }

    /// Queues an envelope for an entity, starting its actor if needed.
    /// Never awaits between queueing and waking the actor, so a cancelled
    /// caller cannot leave a queued command without a drain.
    fn submit(self: &Arc<Self>, key: &E::Key, mut envelope: Envelope<E>) -> Result<(), Error> {
        const SHUTTING_DOWN: &str = "node is shutting down";
        if self.stopping.load(Ordering::SeqCst) {
            return Err(Error::Unavailable(SHUTTING_DOWN.into()));
        }
        loop {
            let slot = match self.actors.get(key) {
                Some(slot) => Arc::clone(slot.value()),
                None => Arc::clone(
                    self.actors
                        .entry(key.clone())
                        .or_insert_with(|| {
                            Arc::new(Slot {
                                mailbox: Mailbox::new(self.config.mailbox_capacity),
                                actor: OnceCell::new(),
                            })
                        })
                        .value(),
                ),
            };
            match slot.mailbox.push(envelope) {
                Push::Queued { wake } => {
                    // A stop that began after the check above may have
                    // listed the actors before this slot was added: then
                    // this caller abandons it (its envelope included).
                    if self.stopping.load(Ordering::SeqCst) {
                        self.abandon(key, &slot, SHUTTING_DOWN);
                        return Err(Error::Unavailable(SHUTTING_DOWN.into()));
                    }
                    if wake {
                        self.wake(key, &slot);
                    }
                    return Ok(());
                }
                Push::Full(_) => {
                    metrics::counter!("skuld_rejections_total", "queue" => E::KIND).increment(1);
                    return Err(Error::Overloaded {
                        queue: E::KIND.into(),
                        retry_after_ms: u64::try_from(self.admission.retry_after.as_millis())
                            .unwrap_or(u64::MAX),
                    });
                }
                Push::Closed(returned) => {
                    // The actor passivated; forget it and start a new one.
                    self.actors
                        .remove_if(key, |_, current| Arc::ptr_eq(current, &slot));
                    envelope = returned;
                }
            }
        }
    }

    fn wake(self: &Arc<Self>, key: &E::Key, slot: &Arc<Slot<E>>) {
        if let Some(actor) = slot.actor.get() {
            if actor.cast(EntityMsg::Drain).is_err() {
                self.abandon(key, slot, "actor stopped");
            }
            return;
        }
        let shared = Arc::clone(self);
        let key = key.clone();
        let slot = Arc::clone(slot);
        // Spawning an actor awaits; do it off the caller's future so that a
        // cancelled request cannot strand the queued commands.
        tokio::spawn(async move {
            let started = slot
                .actor
                .get_or_try_init(|| async {
                    let arguments = ActorArgs {
                        key: key.clone(),
                        slot: Arc::clone(&slot),
                        shared: Arc::clone(&shared),
                    };
                    Actor::spawn(None, EntityActor::<E>::new(), arguments)
                        .await
                        .map(|(actor, _)| actor)
                })
                .await;
            match started {
                Ok(actor) => {
                    if actor.cast(EntityMsg::Drain).is_err() {
                        shared.abandon(&key, &slot, "actor stopped");
                    }
                }
                Err(error) => {
                    tracing::error!(kind = E::KIND, %key, %error, "cannot start actor");
                    shared.abandon(&key, &slot, "actor failed to start");
                }
            }
        });
    }

    /// Fails everything queued for a slot whose actor is gone.
    fn abandon(&self, key: &E::Key, slot: &Arc<Slot<E>>, why: &str) {
        for envelope in slot.mailbox.close() {
            envelope.answer(Err(Error::Unavailable(why.to_owned())));
        }
        self.actors
            .remove_if(key, |_, current| Arc::ptr_eq(current, slot));
    }
}

/// A handle entities use to send themselves internal commands (effect
/// results) from side-effect tasks.
pub struct EntityHandle<E: Entity> {
    shared: Arc<Shared<E>>,
}

impl<E: Entity> Clone for EntityHandle<E> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<E: Entity> EntityHandle<E> {
    /// The runtime's wall clock now, for the entity's side effects (is a
    /// retry due?), so they read the clock its decisions are stamped by.
    pub fn now_ms(&self) -> i64 {
        self.shared.config.clock.now_ms()
    }

    /// Queues a node-issued command for `key`; no reply, no admission.
    pub fn send_internal(
        &self,
        key: &E::Key,
        command: E::Command,
        correlation_id: &str,
    ) -> Result<(), Error> {
        self.shared.submit(
            key,
            Envelope::internal(Work::Internal(command), correlation_id),
        )
    }

    /// Like [`EntityHandle::send_internal`], and keeps `held` alive until
    /// the command has been decided (it is dropped during the drain that
    /// decides it, before that drain's `after_commit`), or until it is
    /// refused or abandoned unqueued. A side effect reporting its result
    /// holds its "running" mark this way, so no drain in between starts the
    /// same effect again.
    pub fn send_internal_holding(
        &self,
        key: &E::Key,
        command: E::Command,
        correlation_id: &str,
        held: impl Send + Sync + 'static,
    ) -> Result<(), Error> {
        let mut envelope = Envelope::internal(Work::Internal(command), correlation_id);
        envelope.held = Some(Box::new(held));
        self.shared.submit(key, envelope)
    }
}

/// Wakes entities whose durable timer is due; implemented by every runtime.
pub trait TimerTarget: Send + Sync {
    /// Wakes the entity if the key is of this runtime's kind.
    fn wake_encoded(&self, encoded_key: &[u8]) -> bool;
}

/// The actors of one entity kind.
pub struct EntityRuntime<E: Entity> {
    shared: Arc<Shared<E>>,
}

impl<E: Entity> EntityRuntime<E> {
    pub fn new(
        entity: E,
        store: Arc<dyn Store>,
        writer: GroupCommitWriter,
        admission: Arc<Admission>,
        config: RuntimeConfig,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                entity,
                config,
                store,
                writer,
                actors: DashMap::new(),
                admission,
                routing: None,
                known_keys_budget: known_keys::Budget::new(known_keys::PER_RUNTIME),
                stopping: AtomicBool::new(false),
            }),
        }
    }

    /// Serves only the shards `routing` says this node owns and forwards
    /// the rest (cluster mode). Call before the runtime is shared.
    pub fn with_routing(mut self, routing: Routing) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.routing = Some(routing);
        }
        self
    }

    pub fn handle(&self) -> EntityHandle<E> {
        EntityHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    pub fn entity(&self) -> &E {
        &self.shared.entity
    }

    /// Applies a mutation; returns once it is durable. In cluster mode the
    /// owner of the key's shard applies it, here or on another node.
    pub async fn mutate(
        &self,
        mutation: Mutation<E>,
        meta: RequestMeta,
    ) -> Result<Mutated<E::Reply>, Error> {
        mutation.validate()?;
        let _admitted = self.shared.admission.admit(Priority::Write)?;
        let Some(routing) = self.shared.routing.clone() else {
            return self.mutate_here(mutation, meta, None).await;
        };
        let shard = routing.table.shard_of(&E::encode_key(&mutation.key));
        let (reply, replayed) = self
            .here_or_forward(
                &routing,
                shard,
                meta,
                Operation::Mutate,
                mutation,
                |mutation| {
                    codec::encode(&(
                        &mutation.key,
                        &mutation.idempotency_key,
                        mutation.expected_version,
                        &mutation.command,
                    ))
                },
                |mutation, meta, epoch| async move {
                    let mutated = self.mutate_here(mutation, meta, Some(epoch)).await?;
                    Ok((mutated.reply, mutated.replayed))
                },
            )
            .await?;
        Ok(Mutated { reply, replayed })
    }

    /// Reads an entity as of every acknowledged change (on its owner, in
    /// cluster mode).
    pub async fn read(&self, key: &E::Key, meta: RequestMeta) -> Result<E::State, Error> {
        let _admitted = self.shared.admission.admit(Priority::Read)?;
        self.read_admitted(key, meta).await
    }

    /// Reads several entities for one request, [`READ_FAN_OUT`] at a time,
    /// admitted once; the states come back in the order of `keys`.
    pub async fn read_many(
        &self,
        keys: &[E::Key],
        meta: RequestMeta,
    ) -> Result<Vec<E::State>, Error> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        let _admitted = self
            .shared
            .admission
            .admit_slots(Priority::Read, keys.len().min(READ_FAN_OUT))?;
        let reads: Vec<_> = keys
            .iter()
            .map(|key| self.read_admitted(key, meta.clone()))
            .collect();
        stream::iter(reads)
            .buffered(READ_FAN_OUT)
            .try_collect()
            .await
    }

    async fn read_admitted(&self, key: &E::Key, meta: RequestMeta) -> Result<E::State, Error> {
        let Some(routing) = self.shared.routing.clone() else {
            return self.read_here(key, meta, None).await;
        };
        let shard = routing.table.shard_of(&E::encode_key(key));
        self.here_or_forward(
            &routing,
            shard,
            meta,
            Operation::Read,
            key,
            |key| codec::encode(*key),
            |key, meta, epoch| self.read_here(key, meta, Some(epoch)),
        )
        .await
    }

    /// Runs `here` when this node serves `shard`, holding the shard until it
    /// is done; otherwise sends `operation` to the owner, and looks again
    /// when the owner has moved on or cannot be reached (the idempotency key
    /// makes a resend of an applied command a replay). The request is
    /// encoded for the wire at most once.
    #[allow(clippy::too_many_arguments)]
    async fn here_or_forward<I, T, Fut>(
        &self,
        routing: &Routing,
        shard: u32,
        meta: RequestMeta,
        operation: Operation,
        input: I,
        encode: impl Fn(&I) -> Result<Vec<u8>, Error>,
        here: impl FnOnce(I, RequestMeta, u64) -> Fut,
    ) -> Result<T, Error>
    where
        T: serde::de::DeserializeOwned,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let give_up = routing.give_up(meta.deadline);
        let mut payload: Option<Vec<u8>> = None;
        loop {
            match routing.destination(shard, give_up, false).await? {
                Destination::Here(serving) => {
                    meta.served_by.set(&routing.node_id);
                    let epoch = serving.epoch;
                    let result = here(input, meta, epoch).await;
                    drop(serving);
                    return result;
                }
                Destination::There(peer) => {
                    let bytes = match &payload {
                        Some(bytes) => bytes.clone(),
                        None => payload.insert(encode(&input)?).clone(),
                    };
                    match routing
                        .forwarder
                        .forward(&peer, E::KIND, operation, bytes, &meta)
                        .await
                    {
                        Ok(answer) => {
                            meta.served_by.set(&peer.node_id);
                            return codec::decode_limited(&answer).map_err(|error| {
                                Error::Unavailable(format!(
                                    "{} answered with a malformed reply: {error}",
                                    peer.node_id
                                ))
                            });
                        }
                        Err(error) if routing.look_again(&error) => {
                            routing
                                .wait_for_change(&peer, shard, give_up, error)
                                .await?;
                        }
                        // The owner answered with a refusal: it names the
                        // owner like an answer does.
                        Err(error) => {
                            meta.served_by.set(&peer.node_id);
                            return Err(error);
                        }
                    }
                }
            }
        }
    }

    /// `epoch`: the ownership epoch the request was admitted under (cluster
    /// mode); the actor decides and writes under it even if a release of
    /// the shard has begun meanwhile, since the release waits for it.
    async fn mutate_here(
        &self,
        mutation: Mutation<E>,
        meta: RequestMeta,
        epoch: Option<u64>,
    ) -> Result<Mutated<E::Reply>, Error> {
        let key = mutation.key.clone();
        let fingerprint = mutation.fingerprint();
        match self
            .dispatch(
                &key,
                Work::Mutate {
                    mutation,
                    fingerprint,
                },
                meta,
                epoch,
            )
            .await?
        {
            Outcome::Mutated(mutated) => Ok(mutated),
            Outcome::Read(_) => Err(Error::Unavailable("unexpected reply from actor".into())),
        }
    }

    async fn read_here(
        &self,
        key: &E::Key,
        meta: RequestMeta,
        epoch: Option<u64>,
    ) -> Result<E::State, Error> {
        match self.dispatch(key, Work::Read, meta, epoch).await? {
            Outcome::Read(state) => Ok(state),
            Outcome::Mutated(_) => Err(Error::Unavailable("unexpected reply from actor".into())),
        }
    }

    /// Reads an entity's whole journal from the store (its history).
    pub async fn journal(
        &self,
        key: &E::Key,
    ) -> Result<Vec<crate::journal::JournalEntry<E::Event>>, Error> {
        let entries = self
            .shared
            .store
            .journal(&E::encode_key(key))
            .await
            .map_err(crate::store_error)?;
        entries
            .iter()
            .map(|(_, bytes)| codec::decode(bytes))
            .collect()
    }

    /// A page of listing summaries in `scope`, after the entity `after`.
    pub async fn summaries(
        &self,
        scope: &[u8],
        after: Option<&E::Key>,
        limit: usize,
    ) -> Result<Vec<(E::Key, Vec<u8>)>, Error> {
        let rows = self
            .shared
            .store
            .list_summaries(scope, after.map(E::encode_key), limit)
            .await
            .map_err(crate::store_error)?;
        Ok(rows
            .into_iter()
            .filter_map(|(key, value)| E::decode_key(&key).map(|key| (key, value)))
            .collect())
    }

    async fn dispatch(
        &self,
        key: &E::Key,
        work: Work<E>,
        meta: RequestMeta,
        epoch: Option<u64>,
    ) -> Result<Outcome<E>, Error> {
        if meta
            .deadline
            .is_some_and(|deadline| deadline <= Instant::now())
        {
            return Err(Error::DeadlineExceeded);
        }
        let (reply, answer) = oneshot::channel();
        self.shared.submit(
            key,
            Envelope {
                work,
                correlation_id: meta.correlation_id,
                deadline: meta.deadline,
                epoch,
                reply: Some(reply),
                held: None,
            },
        )?;
        answer
            .await
            .map_err(|_| Error::Unavailable("actor stopped before replying".into()))?
    }

    /// Entities with a running actor.
    pub fn active_actors(&self) -> usize {
        self.shared.actors.len()
    }

    /// Stops the actors of every key of `shard` (it is no longer served
    /// here), so that a later claim starts them afresh from the store.
    pub async fn evict_shard(&self, shard: u32) {
        let Some(routing) = &self.shared.routing else {
            return;
        };
        let slots: Vec<_> = self
            .shared
            .actors
            .iter()
            .filter(|entry| routing.table.shard_of(&E::encode_key(entry.key())) == shard)
            .map(|entry| (entry.key().clone(), Arc::clone(entry.value())))
            .collect();
        let slots = in_key_order(slots);
        self.stop_actors(
            slots,
            "its shard moved to another node",
            Duration::from_secs(5),
        )
        .await;
    }

    /// Stops every actor; queued commands are answered UNAVAILABLE.
    pub async fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let slots: Vec<_> = self
            .shared
            .actors
            .iter()
            .map(|entry| (entry.key().clone(), Arc::clone(entry.value())))
            .collect();
        let slots = in_key_order(slots);
        self.stop_actors(slots, "node is shutting down", Duration::from_secs(1))
            .await;
    }

    /// Fails what is queued for each slot and stops its actor, up to
    /// [`CONCURRENT_STOPS`] at once, waiting at most `each` for any one (an
    /// actor finishes the drain it is in, which may wait on the store).
    async fn stop_actors(&self, slots: Vec<(E::Key, Arc<Slot<E>>)>, why: &str, each: Duration) {
        use futures::stream::{self, StreamExt};
        let stops: Vec<_> = slots
            .into_iter()
            .map(|(key, slot)| {
                self.shared.abandon(&key, &slot, why);
                async move {
                    if let Some(actor) = slot.actor.get() {
                        let _ = actor.stop_and_wait(None, Some(each)).await;
                    }
                }
            })
            .collect();
        stream::iter(stops)
            .buffer_unordered(CONCURRENT_STOPS)
            .collect::<()>()
            .await;
    }
}

/// Actors stopped at once at most when a shard is evicted or the node stops.
const CONCURRENT_STOPS: usize = 64;

/// The slots sorted by encoded key: a DashMap iterates in an order that
/// depends on its hasher's random seed, and the order actors are stopped in
/// (who is answered UNAVAILABLE first, which stops run together) must be
/// the same on every run of a simulation seed.
fn in_key_order<E: Entity>(slots: Vec<(E::Key, Arc<Slot<E>>)>) -> Vec<(E::Key, Arc<Slot<E>>)> {
    let mut keyed: Vec<_> = slots
        .into_iter()
        .map(|(key, slot)| (E::encode_key(&key), key, slot))
        .collect();
    keyed.sort_by(|left, right| left.0.cmp(&right.0));
    keyed
        .into_iter()
        .map(|(_, key, slot)| (key, slot))
        .collect()
}

impl<E: Entity> TimerTarget for EntityRuntime<E> {
    fn wake_encoded(&self, encoded_key: &[u8]) -> bool {
        let Some(key) = E::decode_key(encoded_key) else {
            return false;
        };
        // A full mailbox means the actor is busy and runs its due timer on
        // its next drain anyway.
        let _ = self
            .shared
            .submit(&key, Envelope::internal(Work::Tick, "timer"));
        true
    }
}

#[cfg(test)]
mod decode_fuzz_tests;
#[cfg(test)]
mod tests;
