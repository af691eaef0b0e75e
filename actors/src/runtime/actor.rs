//! The entity actor: drains its mailbox, decides every queued command in
//! order, persists the batch in one write, then replies.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use skuld_cluster::{EntityWrite, IdempotencyRecord};

use super::codec::{decode, encode};
use super::known_keys::{self, key_hash, KnownKeys};
use super::measures::{self, Measure};
use super::published::publish;
use super::{Entity, EntityHandle, Envelope, Mutated, Outcome, Shared, Slot, Work};
use crate::journal::JournalEntry;
use crate::{Error, Refusal};

pub(crate) enum EntityMsg {
    /// Commands are waiting in the mailbox.
    Drain,
    /// Time to check whether the actor has been idle long enough to stop.
    IdleCheck,
}

pub(crate) struct EntityActor<E>(PhantomData<fn() -> E>);

impl<E> EntityActor<E> {
    pub(crate) fn new() -> Self {
        Self(PhantomData)
    }
}

pub(crate) struct ActorArgs<E: Entity> {
    pub(crate) key: E::Key,
    pub(crate) slot: Arc<Slot<E>>,
    pub(crate) shared: Arc<Shared<E>>,
}

pub(crate) struct ActorState<E: Entity> {
    key: E::Key,
    encoded_key: Vec<u8>,
    slot: Arc<Slot<E>>,
    shared: Arc<Shared<E>>,
    /// `None` until loaded, and again after a failed write (the store is the
    /// truth; the next drain reloads it).
    state: Option<E::State>,
    /// Version of the latest stored snapshot.
    snapshot_version: u64,
    /// The timer value last written, when known.
    timer_written: Option<Option<i64>>,
    /// The idempotency keys stored for this entity (see [`known_keys`]):
    /// loaded with the state, extended by each commit; `None` when over a
    /// bound, and then every key is looked up.
    known_keys: Option<KnownKeys>,
    /// The entity had more keys than one actor keeps: not asked again for
    /// as long as this actor lives (every reload would read them all).
    keys_over_bound: bool,
    /// The key's shard and the ownership epoch the state was loaded under;
    /// every write carries them so the store can refuse a stale owner.
    shard: u32,
    epoch: u64,
    last_active: Instant,
}

impl<E: Entity> Actor for EntityActor<E> {
    type Msg = EntityMsg;
    type State = ActorState<E>;
    type Arguments = ActorArgs<E>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ActorArgs<E>,
    ) -> Result<ActorState<E>, ActorProcessingErr> {
        metrics::gauge!("skuld_active_actors", "kind" => E::KIND).increment(1.0);
        Ok(ActorState {
            encoded_key: E::encode_key(&args.key),
            key: args.key,
            slot: args.slot,
            shared: args.shared,
            state: None,
            snapshot_version: 0,
            timer_written: None,
            known_keys: None,
            keys_over_bound: false,
            shard: 0,
            epoch: 0,
            last_active: Instant::now(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut ActorState<E>,
    ) -> Result<(), ActorProcessingErr> {
        myself.send_after(state.shared.config.idle_timeout, || EntityMsg::IdleCheck);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        _state: &mut ActorState<E>,
    ) -> Result<(), ActorProcessingErr> {
        metrics::gauge!("skuld_active_actors", "kind" => E::KIND).decrement(1.0);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: EntityMsg,
        state: &mut ActorState<E>,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            EntityMsg::Drain => {
                state.last_active = Instant::now();
                state.drain().await;
            }
            EntityMsg::IdleCheck => {
                let idle_timeout = state.shared.config.idle_timeout;
                let idle = state.last_active.elapsed();
                if idle >= idle_timeout && state.slot.mailbox.close_if_empty() {
                    state
                        .shared
                        .actors
                        .remove_if(&state.key, |_, current| Arc::ptr_eq(current, &state.slot));
                    myself.stop(None);
                } else {
                    let wait = idle_timeout
                        .saturating_sub(idle)
                        .max(Duration::from_millis(100));
                    myself.send_after(wait, || EntityMsg::IdleCheck);
                }
            }
        }
        Ok(())
    }
}

/// What an idempotency record stores: the first answer to its key.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) enum StoredAnswer<R> {
    Accepted(R),
    Refused(Refusal),
}

/// A reply computed during the drain, sent once the batch is durable.
struct PendingReply<E: Entity> {
    envelope: Envelope<E>,
    result: Result<Outcome<E>, Error>,
}

impl<E: Entity> ActorState<E> {
    /// Loads the entity unless it is loaded under the current epoch:
    /// `admitted` (the epoch the drained requests were admitted under) or,
    /// for internal work only, the shard's live route.
    async fn load(&mut self, admitted: Option<u64>) -> Result<(), Error> {
        let (shard, epoch) = self.shared.ownership(&self.encoded_key, admitted)?;
        if self.state.is_some() && epoch == self.epoch {
            return Ok(());
        }
        // First load, or the shard was claimed again since: the store is the
        // truth, whatever this actor still remembers.
        self.state = None;
        self.known_keys = None;
        self.timer_written = None;
        self.shard = shard;
        self.epoch = epoch;
        let loaded = self
            .shared
            .store
            .load(&self.encoded_key)
            .await
            .map_err(crate::store_error)?;
        let stored_keys = if self.keys_over_bound {
            None
        } else {
            self.shared
                .store
                .idempotency_keys(&self.encoded_key, known_keys::PER_ENTITY)
                .await
                .map_err(crate::store_error)?
        };
        self.keys_over_bound = stored_keys.is_none();
        let mut state = match &loaded.snapshot {
            Some((_, bytes)) => decode::<E::State>(bytes)?,
            None => E::State::default(),
        };
        for (_, bytes) in &loaded.journal_tail {
            E::apply_entry(&mut state, &decode::<JournalEntry<E::Event>>(bytes)?);
        }
        self.snapshot_version = loaded.snapshot.map_or(0, |(version, _)| version);
        self.known_keys =
            stored_keys.and_then(|keys| KnownKeys::load(&keys, &self.shared.known_keys_budget));
        self.state = Some(state);
        Ok(())
    }

    async fn drain(&mut self) {
        let envelopes = self.slot.mailbox.take_all();
        if envelopes.is_empty() {
            return;
        }
        metrics::histogram!("skuld_drain_commands", "kind" => E::KIND)
            .record(envelopes.len() as f64);
        let now = Instant::now();
        let mut live = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            if envelope.deadline.is_some_and(|deadline| deadline <= now) {
                metrics::counter!("skuld_deadline_dropped_total").increment(1);
                envelope.answer(Err(Error::DeadlineExceeded));
            } else {
                live.push(envelope);
            }
        }
        if live.is_empty() {
            return;
        }
        // The newest epoch the drained requests were admitted under; the
        // state is reloaded if it was loaded under another. (Normally all
        // share one: a release stops the shard's actors before letting go.
        // A request left from an older epoch is then decided on the fresh
        // state like a retry.) Internal work carries none.
        let admitted = live.iter().filter_map(|envelope| envelope.epoch).max();
        if let Err(error) = self.load(admitted).await {
            tracing::error!(kind = E::KIND, key = %self.key, %error, "cannot load entity");
            for envelope in live {
                envelope.answer(Err(error.clone()));
            }
            return;
        }
        let stored = match self.stored_replies(&live).await {
            Ok(stored) => stored,
            Err(error) => {
                for envelope in live {
                    envelope.answer(Err(error.clone()));
                }
                return;
            }
        };
        let (write, replies, measures) = self.decide_all(live, stored);
        let next_timer = write.timer;
        let snapshot_version = write.snapshot.as_ref().map(|(version, _)| *version);
        let recorded: Vec<u64> = write
            .idempotency
            .iter()
            .map(|record| key_hash(&record.key))
            .collect();
        let wrote = !write.is_empty();
        let result = if wrote {
            self.shared.writer.write(write).await
        } else {
            Ok(())
        };
        match result {
            Ok(()) => {
                if let Some(timer) = next_timer {
                    self.timer_written =
                        Some(timer.map(|due| i64::try_from(due).unwrap_or(i64::MAX)));
                }
                if let Some(version) = snapshot_version {
                    self.snapshot_version = version;
                }
                self.known_keys = self
                    .known_keys
                    .take()
                    .and_then(|known| known.extend(&recorded));
                measures.record();
                for PendingReply { envelope, result } in replies {
                    envelope.answer(result);
                }
                if let Some(state) = &self.state {
                    let handle = EntityHandle {
                        shared: Arc::clone(&self.shared),
                    };
                    self.shared.entity.after_commit(&self.key, state, &handle);
                }
            }
            Err(error) => {
                // The in-memory state holds changes that are not durable:
                // drop it and reload from the store on the next drain.
                tracing::error!(kind = E::KIND, key = %self.key, %error, "write failed");
                self.state = None;
                self.timer_written = None;
                let error = crate::store_error(error);
                for PendingReply { envelope, .. } in replies {
                    envelope.answer(Err(error.clone()));
                }
            }
        }
    }

    /// The stored replies for this drain's idempotency keys: one store read
    /// for the keys that may have a record, none when every key is new.
    async fn stored_replies(
        &self,
        envelopes: &[Envelope<E>],
    ) -> Result<HashMap<String, IdempotencyRecord>, Error> {
        let maybe_stored = |key: &str| {
            self.known_keys
                .as_ref()
                .is_none_or(|known| known.may_contain(key))
        };
        let keys: Vec<String> = envelopes
            .iter()
            .filter_map(|envelope| match &envelope.work {
                Work::Mutate { mutation, .. } if maybe_stored(&mutation.idempotency_key) => {
                    Some(mutation.idempotency_key.clone())
                }
                _ => None,
            })
            .collect();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let found = self
            .shared
            .store
            .idempotency_lookup(&self.encoded_key, keys)
            .await
            .map_err(crate::store_error)?;
        Ok(found
            .into_iter()
            .flatten()
            .map(|record| (record.key.clone(), record))
            .collect())
    }

    /// Decides every envelope in order against the in-memory state and
    /// collects the one write that makes the accepted ones durable, with
    /// the business measures that count once it is.
    fn decide_all(
        &mut self,
        envelopes: Vec<Envelope<E>>,
        stored: HashMap<String, IdempotencyRecord>,
    ) -> (EntityWrite, Vec<PendingReply<E>>, measures::Pending) {
        let mut write = EntityWrite {
            key: self.encoded_key.clone(),
            shard: self.shard,
            epoch: self.epoch,
            ..EntityWrite::default()
        };
        let mut replies = Vec::with_capacity(envelopes.len());
        let Some(state) = self.state.as_mut() else {
            for envelope in envelopes {
                replies.push(PendingReply {
                    envelope,
                    result: Err(Error::Unavailable("entity not loaded".into())),
                });
            }
            return (write, replies, measures::Pending::default());
        };
        let mut batch = Batch {
            entity: &self.shared.entity,
            key: &self.key,
            state,
            write: &mut write,
            stored,
            now_ms: self.shared.config.clock.now_ms(),
            poisoned: false,
            measures: measures::Pending::default(),
        };

        // Run a due timer before anything else sees the entity.
        batch.run_due_timer();
        for envelope in envelopes {
            let result = match &envelope.work {
                // The due timer already ran above; a tick needs no answer.
                Work::Tick => continue,
                Work::Read => Ok(Outcome::Read(batch.state.clone())),
                Work::Internal(command) => {
                    batch.internal(command, &envelope.correlation_id);
                    continue;
                }
                Work::Mutate {
                    mutation,
                    fingerprint,
                } => batch.mutate(mutation, *fingerprint, &envelope.correlation_id),
            };
            replies.push(PendingReply { envelope, result });
        }
        if batch.poisoned {
            // The state holds applied events that this write cannot make
            // durable as they were answered: write nothing, answer every
            // request of the drain as unavailable (retries are safe, nothing
            // was stored) and reload the state on the next drain.
            tracing::error!(kind = E::KIND, key = %self.key, "batch abandoned: an answer could not be recorded");
            self.state = None;
            self.timer_written = None;
            for reply in &mut replies {
                reply.result = Err(Error::Unavailable(
                    "the request could not be recorded; retry".into(),
                ));
            }
            let empty = EntityWrite {
                key: self.encoded_key.clone(),
                shard: self.shard,
                epoch: self.epoch,
                ..EntityWrite::default()
            };
            return (empty, replies, measures::Pending::default());
        }
        let measures = std::mem::take(&mut batch.measures);
        self.seal(&mut write);
        (write, replies, measures)
    }

    /// Completes a batch's write with what follows from the new state: the
    /// next timer when it changed, the summary, a snapshot when one is due.
    fn seal(&self, write: &mut EntityWrite) {
        let Some(state) = self.state.as_ref() else {
            return;
        };
        let next_timer = E::next_timer_ms(state);
        if self.timer_written != Some(next_timer) {
            write.timer = Some(next_timer.map(|due| u64::try_from(due).unwrap_or(0)));
        }
        if write.journal.is_empty() {
            return;
        }
        write.summary = E::summary(&self.key, state);
        let version = E::version(state);
        let snapshot_every = self.shared.config.snapshot_every.max(E::size_hint(state));
        if version >= self.snapshot_version + snapshot_every {
            match encode(state) {
                Ok(bytes) => write.snapshot = Some((version, bytes)),
                Err(error) => {
                    tracing::warn!(kind = E::KIND, key = %self.key, %error, "snapshot skipped")
                }
            }
        }
    }
}

/// One drain's commands deciding against the entity's state, in order, into
/// one write.
struct Batch<'a, E: Entity> {
    entity: &'a E,
    key: &'a E::Key,
    state: &'a mut E::State,
    write: &'a mut EntityWrite,
    /// Stored answers for this batch's idempotency keys, and the ones this
    /// batch records (a duplicate later in the same drain replays them).
    stored: HashMap<String, IdempotencyRecord>,
    now_ms: i64,
    /// Set when events were applied to `state` but their answer could not
    /// be recorded: the whole batch is then abandoned, never half written.
    poisoned: bool,
    /// What the batch's entries and decided refusals count for once durable.
    measures: measures::Pending,
}

impl<E: Entity> Batch<'_, E> {
    fn run_due_timer(&mut self) {
        if E::next_timer_ms(self.state).is_none_or(|due| due > self.now_ms) {
            return;
        }
        let timer = E::timer_command();
        if let Err(error) = self.decide_and_append(None, &timer, None, "timer", "timer") {
            tracing::error!(kind = E::KIND, key = %self.key, %error, "timer command failed");
        }
    }

    /// A command the node issued itself: nobody waits for its answer.
    fn internal(&mut self, command: &E::Command, correlation_id: &str) {
        if let Err(error) = self.decide_and_append(None, command, None, correlation_id, "internal")
        {
            tracing::warn!(kind = E::KIND, key = %self.key, %error, "internal command refused");
        }
    }

    /// A client's mutation: replayed when its idempotency key has an answer,
    /// refused when the key came with a different request, decided otherwise.
    fn mutate(
        &mut self,
        mutation: &super::Mutation<E>,
        fingerprint: u128,
        correlation_id: &str,
    ) -> Result<Outcome<E>, Error> {
        match self.stored.get(&mutation.idempotency_key) {
            Some(record) if record.fingerprint == fingerprint => replay::<E>(record),
            Some(_) => Err(Error::Refused(Refusal::IdempotencyKeyReused(
                mutation.idempotency_key.clone(),
            ))),
            None => {
                let decided = self
                    .decide_and_append(
                        mutation.expected_version,
                        &mutation.command,
                        Some(mutation.idempotency_key.clone()),
                        correlation_id,
                        &mutation.idempotency_key,
                    )
                    .map(|outcome| E::reply(self.state, outcome));
                // The key's first request is recorded with its answer,
                // accepted or refused by the entity, so a retry gets the
                // same answer whatever changed since (see "Idempotent
                // retries" in the README).
                let answer = match decided {
                    Ok(reply) => StoredAnswer::Accepted(reply),
                    Err(Error::Refused(refusal)) if refusal.is_decision() => {
                        self.measures.push(Measure::Refused {
                            kind: E::KIND,
                            reason: refusal.reason(),
                        });
                        StoredAnswer::Refused(refusal)
                    }
                    Err(error) => return Err(error),
                };
                let records = self.write.idempotency.len();
                let recorded =
                    record::<E>(self.write, &mut self.stored, mutation, fingerprint, answer);
                if self.write.idempotency.len() == records {
                    self.poisoned = true;
                }
                recorded
            }
        }
    }

    fn decide_and_append(
        &mut self,
        expected_version: Option<u64>,
        command: &E::Command,
        idempotency_key: Option<String>,
        correlation_id: &str,
        causation_id: &str,
    ) -> Result<E::Outcome, Error> {
        let (events, outcome) =
            self.entity
                .decide(self.key, self.state, expected_version, command, self.now_ms)?;
        let entry = JournalEntry {
            version: E::version(self.state) + 1,
            recorded_at_ms: self.now_ms,
            idempotency_key,
            correlation_id: correlation_id.to_owned(),
            events,
        };
        if let Err(error) = append::<E>(self.state, self.write, &entry, causation_id) {
            // The state may hold the entry without the write: abandon the batch.
            self.poisoned = true;
            return Err(error);
        }
        if !entry.events.is_empty() {
            E::measure(&entry, self.state, &mut self.measures);
        }
        Ok(outcome)
    }
}

/// The stored answer to a retried mutation, as it was first given.
fn replay<E: Entity>(record: &IdempotencyRecord) -> Result<Outcome<E>, Error> {
    let answer = decode::<StoredAnswer<E::Reply>>(&record.reply)?;
    metrics::counter!("skuld_idempotent_replays_total", "kind" => E::KIND).increment(1);
    match answer {
        StoredAnswer::Accepted(reply) => Ok(Outcome::Mutated(Mutated {
            reply,
            replayed: true,
        })),
        StoredAnswer::Refused(refusal) => Err(refusal.into()),
    }
}

/// Records the first answer to a mutation's idempotency key in the write
/// and returns it as the mutation's result.
fn record<E: Entity>(
    write: &mut EntityWrite,
    stored: &mut HashMap<String, IdempotencyRecord>,
    mutation: &super::Mutation<E>,
    fingerprint: u128,
    answer: StoredAnswer<E::Reply>,
) -> Result<Outcome<E>, Error> {
    let record = IdempotencyRecord {
        key: mutation.idempotency_key.clone(),
        fingerprint,
        reply: encode(&answer)?,
        // Stamped by the store's clock at commit.
        recorded_at_ms: 0,
    };
    // A duplicate later in this same drain replays it.
    stored.insert(record.key.clone(), record.clone());
    write.idempotency.push(record);
    match answer {
        StoredAnswer::Accepted(reply) => Ok(Outcome::Mutated(Mutated {
            reply,
            replayed: false,
        })),
        StoredAnswer::Refused(refusal) => Err(refusal.into()),
    }
}

/// Applies accepted events as one journal entry and adds it, with its
/// published events (the outbox), to the write.
fn append<E: Entity>(
    state: &mut E::State,
    write: &mut EntityWrite,
    entry: &JournalEntry<E::Event>,
    causation_id: &str,
) -> Result<(), Error> {
    if entry.events.is_empty() {
        return Ok(());
    }
    let bytes = encode(entry)?;
    let before = E::figures(state);
    E::apply_entry(state, entry);
    let after = E::figures(state);
    let events = publish::<E>(entry, &before, &after, causation_id)?;
    write.journal.push((entry.version, bytes));
    write.events.extend(events);
    Ok(())
}
