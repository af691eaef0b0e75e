//! The position actor: drains its mailbox, decides every queued command in
//! order, persists the batch in one write, then replies.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use skuld_cluster::{EntityWrite, IdempotencyRecord};

use super::codec::{decode, encode};
use super::{now_ms, Envelope, Mutated, Outcome, Shared, Slot, Work};
use crate::key::PositionKey;
use crate::position::{
    apply_entry, decide, Command, Context, LedgerEntry, MutationReply, PositionState,
};
use crate::Error;

pub(crate) enum PositionMsg {
    /// Commands are waiting in the mailbox.
    Drain,
    /// Time to check whether the actor has been idle long enough to stop.
    IdleCheck,
}

pub(crate) struct PositionActor;

pub(crate) struct ActorArgs {
    pub(crate) key: PositionKey,
    pub(crate) slot: Arc<Slot>,
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct ActorState {
    key: PositionKey,
    encoded_key: Vec<u8>,
    slot: Arc<Slot>,
    shared: Arc<Shared>,
    /// `None` until loaded, and again after a failed write (the store is the
    /// truth; the next drain reloads it).
    position: Option<PositionState>,
    /// Version of the latest stored snapshot.
    snapshot_version: u64,
    /// The timer value last written, when known.
    timer_written: Option<Option<i64>>,
    last_active: Instant,
}

impl Actor for PositionActor {
    type Msg = PositionMsg;
    type State = ActorState;
    type Arguments = ActorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ActorArgs,
    ) -> Result<ActorState, ActorProcessingErr> {
        metrics::gauge!("skuld_active_actors").increment(1.0);
        Ok(ActorState {
            encoded_key: args.key.encode(),
            key: args.key,
            slot: args.slot,
            shared: args.shared,
            position: None,
            snapshot_version: 0,
            timer_written: None,
            last_active: Instant::now(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut ActorState,
    ) -> Result<(), ActorProcessingErr> {
        myself.send_after(state.shared.config.idle_timeout, || PositionMsg::IdleCheck);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        _state: &mut ActorState,
    ) -> Result<(), ActorProcessingErr> {
        metrics::gauge!("skuld_active_actors").decrement(1.0);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: PositionMsg,
        state: &mut ActorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PositionMsg::Drain => {
                state.last_active = Instant::now();
                state.drain().await;
            }
            PositionMsg::IdleCheck => {
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
                    myself.send_after(wait, || PositionMsg::IdleCheck);
                }
            }
        }
        Ok(())
    }
}

/// A reply computed during the drain, sent once the batch is durable.
struct PendingReply {
    envelope: Envelope,
    result: Result<Outcome, Error>,
}

impl ActorState {
    fn context(&self) -> Context {
        let config = &self.shared.config;
        Context {
            now_ms: now_ms(),
            default_ttl_ms: i64::try_from(config.default_reservation_ttl.as_millis())
                .unwrap_or(i64::MAX),
            max_ttl_ms: i64::try_from(config.max_reservation_ttl.as_millis()).unwrap_or(i64::MAX),
        }
    }

    async fn load(&mut self) -> Result<(), Error> {
        if self.position.is_some() {
            return Ok(());
        }
        let loaded = self.shared.store.load(&self.encoded_key).await?;
        let mut position = match &loaded.snapshot {
            Some((_, bytes)) => decode::<PositionState>(bytes)?,
            None => PositionState::default(),
        };
        for (_, bytes) in &loaded.journal_tail {
            apply_entry(&mut position, &decode::<LedgerEntry>(bytes)?);
        }
        self.snapshot_version = loaded.snapshot.map_or(0, |(version, _)| version);
        self.position = Some(position);
        Ok(())
    }

    async fn drain(&mut self) {
        let envelopes = self.slot.mailbox.take_all();
        if envelopes.is_empty() {
            return;
        }
        metrics::histogram!("skuld_position_drain_commands").record(envelopes.len() as f64);
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
        if let Err(error) = self.load().await {
            tracing::error!(key = %self.key, %error, "cannot load position");
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
        let (write, replies) = self.decide_all(live, stored);
        let next_timer = write.timer;
        let snapshot_version = write.snapshot.as_ref().map(|(version, _)| *version);
        let result = if write.is_empty() {
            Ok(())
        } else {
            self.shared.writer.write(write).await
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
                for PendingReply { envelope, result } in replies {
                    envelope.answer(result);
                }
            }
            Err(error) => {
                // The in-memory state holds changes that are not durable:
                // drop it and reload from the store on the next drain.
                tracing::error!(key = %self.key, %error, "position write failed");
                self.position = None;
                self.timer_written = None;
                let error = Error::from(error);
                for PendingReply { envelope, .. } in replies {
                    envelope.answer(Err(error.clone()));
                }
            }
        }
    }

    /// The stored replies for this drain's idempotency keys (one store read).
    async fn stored_replies(
        &self,
        envelopes: &[Envelope],
    ) -> Result<HashMap<String, IdempotencyRecord>, Error> {
        let keys: Vec<String> = envelopes
            .iter()
            .filter_map(|envelope| match &envelope.work {
                Work::Mutate { request, .. } => Some(request.idempotency_key.clone()),
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
            .await?;
        Ok(found
            .into_iter()
            .flatten()
            .map(|record| (record.key.clone(), record))
            .collect())
    }

    /// Decides every envelope in order against the in-memory state and
    /// collects the one write that makes the accepted ones durable.
    fn decide_all(
        &mut self,
        envelopes: Vec<Envelope>,
        mut stored: HashMap<String, IdempotencyRecord>,
    ) -> (EntityWrite, Vec<PendingReply>) {
        let context = self.context();
        let mut write = EntityWrite {
            key: self.encoded_key.clone(),
            ..EntityWrite::default()
        };
        let mut replies = Vec::with_capacity(envelopes.len());
        let Some(position) = self.position.as_mut() else {
            for envelope in envelopes {
                replies.push(PendingReply {
                    envelope,
                    result: Err(Error::Unavailable("position not loaded".into())),
                });
            }
            return (write, replies);
        };

        // Expire what is due before anything else sees the position.
        if position
            .next_expiry_ms()
            .is_some_and(|due| due <= context.now_ms)
        {
            let expired =
                decide(position, None, &Command::ExpireDue, &context).and_then(|decision| {
                    append(
                        position,
                        &mut write,
                        decision.events,
                        None,
                        "timer",
                        context.now_ms,
                    )
                });
            if let Err(error) = expired {
                tracing::error!(key = %self.key, %error, "reservation expiry failed");
            }
        }

        for envelope in envelopes {
            let result = match &envelope.work {
                // Expiry already ran above; a tick needs no answer.
                Work::Tick => continue,
                Work::Read => Ok(Outcome::Read(position.clone())),
                Work::Mutate {
                    request,
                    fingerprint,
                } => match stored.get(&request.idempotency_key) {
                    Some(record) if record.fingerprint == *fingerprint => {
                        decode::<MutationReply>(&record.reply).map(|reply| {
                            Outcome::Mutated(Mutated {
                                reply,
                                replayed: true,
                            })
                        })
                    }
                    Some(_) => Err(Error::IdempotencyKeyReused(request.idempotency_key.clone())),
                    None => decide(
                        position,
                        request.expected_version,
                        &request.command,
                        &context,
                    )
                    .and_then(|decision| {
                        append(
                            position,
                            &mut write,
                            decision.events,
                            Some(request.idempotency_key.clone()),
                            &envelope.correlation_id,
                            context.now_ms,
                        )?;
                        let reply = MutationReply {
                            version: position.version,
                            buckets: position.buckets,
                            reservation: decision
                                .reservation_id
                                .and_then(|id| position.reservation(&id).cloned()),
                            granted_quantity: decision.granted_quantity,
                        };
                        let record = IdempotencyRecord {
                            key: request.idempotency_key.clone(),
                            fingerprint: *fingerprint,
                            reply: encode(&reply)?,
                            recorded_at_ms: u64::try_from(context.now_ms).unwrap_or(0),
                        };
                        // A duplicate later in this same drain replays it.
                        stored.insert(record.key.clone(), record.clone());
                        write.idempotency.push(record);
                        Ok(Outcome::Mutated(Mutated {
                            reply,
                            replayed: false,
                        }))
                    }),
                },
            };
            replies.push(PendingReply { envelope, result });
        }

        let next_expiry = position.next_expiry_ms();
        if self.timer_written != Some(next_expiry) {
            write.timer = Some(next_expiry.map(|due| u64::try_from(due).unwrap_or(0)));
        }
        if !write.journal.is_empty()
            && position.version >= self.snapshot_version + self.shared.config.snapshot_every
        {
            match encode(&*position) {
                Ok(bytes) => write.snapshot = Some((position.version, bytes)),
                Err(error) => tracing::warn!(key = %self.key, %error, "snapshot skipped"),
            }
        }
        (write, replies)
    }
}

/// Applies accepted events as one journal entry and adds it to the write.
fn append(
    position: &mut PositionState,
    write: &mut EntityWrite,
    events: Vec<crate::position::Event>,
    idempotency_key: Option<String>,
    correlation_id: &str,
    now_ms: i64,
) -> Result<(), Error> {
    if events.is_empty() {
        return Ok(());
    }
    let entry = LedgerEntry {
        version: position.version + 1,
        recorded_at_ms: now_ms,
        idempotency_key,
        correlation_id: correlation_id.to_owned(),
        events,
    };
    let bytes = encode(&entry)?;
    apply_entry(position, &entry);
    write.journal.push((entry.version, bytes));
    Ok(())
}
