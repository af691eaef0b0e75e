//! The actor runtime: one ractor actor per active inventory position.
//!
//! Request path: the API validates a command, [`PositionRuntime::mutate`]
//! admits it against the node-wide in-flight bound, queues it in the
//! position's bounded mailbox and waits. The position actor drains its
//! mailbox, applies every queued command in order through the pure state
//! machine, hands one [`skuld_cluster::EntityWrite`] to the group-commit
//! writer, and replies to all of them once that write is durable.
//!
//! Actors start on first use from the store (snapshot + journal tail) and
//! passivate after an idle time. Reservation expiry is a durable timer: each
//! position's earliest expiry is stored with its writes, and a scanner wakes
//! positions whose timer is due, even after a restart.

mod actor;
pub mod codec;
mod mailbox;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use parking_lot::Mutex;
use ractor::{Actor, ActorRef};
use skuld_cluster::{GroupCommitWriter, Store};
use tokio::sync::{oneshot, watch, OnceCell};
use tokio::task::JoinHandle;

use crate::key::PositionKey;
use crate::position::{MutationReply, MutationRequest, PositionState};
use crate::Error;
use actor::{PositionActor, PositionMsg};
use mailbox::{Mailbox, Push};

/// Tuning of the position runtime. Every field is a node option.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Commands queued per position at most; beyond it RESOURCE_EXHAUSTED.
    pub mailbox_capacity: usize,
    /// Requests in flight on the node at most; beyond it RESOURCE_EXHAUSTED.
    pub max_in_flight: usize,
    /// Reads are admitted only below this percentage of `max_in_flight`, so
    /// that reservations and adjustments win when the node is saturated.
    pub read_admission_percent: usize,
    /// The retry-after hint sent with RESOURCE_EXHAUSTED.
    pub retry_after: Duration,
    /// An actor with nothing to do for this long stops (passivation).
    pub idle_timeout: Duration,
    /// A snapshot is written after this many journal entries.
    pub snapshot_every: u64,
    pub default_reservation_ttl: Duration,
    pub max_reservation_ttl: Duration,
    /// How long idempotency records are kept.
    pub idempotency_retention: Duration,
    /// How often due timers are looked up in the store.
    pub timer_scan_interval: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            mailbox_capacity: 1_024,
            max_in_flight: 10_000,
            read_admission_percent: 80,
            retry_after: Duration::from_millis(100),
            idle_timeout: Duration::from_secs(60),
            snapshot_every: 200,
            default_reservation_ttl: Duration::from_secs(15 * 60),
            max_reservation_ttl: Duration::from_secs(4 * 60 * 60),
            idempotency_retention: Duration::from_secs(24 * 60 * 60),
            timer_scan_interval: Duration::from_millis(500),
        }
    }
}

/// Per-request context carried to the actor.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub correlation_id: String,
    /// Past this instant the command is dropped unapplied.
    pub deadline: Option<Instant>,
}

/// The answer to a mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutated {
    pub reply: MutationReply,
    /// The stored reply of an earlier request with the same idempotency key.
    pub replayed: bool,
}

// Nearly every envelope is a mutation: boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Work {
    Mutate {
        request: MutationRequest,
        fingerprint: u128,
    },
    Read,
    /// Wake-up from the timer scanner: expire what is due.
    Tick,
}

pub(crate) enum Outcome {
    Mutated(Mutated),
    Read(PositionState),
}

pub(crate) struct Envelope {
    pub(crate) work: Work,
    pub(crate) correlation_id: String,
    pub(crate) deadline: Option<Instant>,
    pub(crate) reply: Option<oneshot::Sender<Result<Outcome, Error>>>,
}

impl Envelope {
    pub(crate) fn answer(self, result: Result<Outcome, Error>) {
        if let Some(reply) = self.reply {
            // The caller may have gone (cancelled); nothing to do then.
            let _ = reply.send(result);
        }
    }
}

pub(crate) struct Slot {
    pub(crate) mailbox: Mailbox<Envelope>,
    actor: OnceCell<ActorRef<PositionMsg>>,
}

#[derive(Clone, Copy)]
enum Priority {
    Write,
    Read,
}

pub(crate) struct Shared {
    pub(crate) config: RuntimeConfig,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) writer: GroupCommitWriter,
    pub(crate) actors: DashMap<PositionKey, Arc<Slot>>,
    in_flight: AtomicUsize,
    accepting: AtomicBool,
    shutdown: watch::Sender<bool>,
}

/// Releases an admission slot when the request is answered or abandoned.
struct Admission<'a>(&'a AtomicUsize);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        let now = self.0.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!("skuld_inflight_requests").set(now as f64);
    }
}

/// Milliseconds since the unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

impl Shared {
    fn overloaded(&self, queue: &'static str) -> Error {
        metrics::counter!("skuld_rejections_total", "queue" => queue).increment(1);
        Error::Overloaded {
            queue,
            retry_after_ms: u64::try_from(self.config.retry_after.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn admit(&self, priority: Priority) -> Result<Admission<'_>, Error> {
        if !self.accepting.load(Ordering::Acquire) {
            return Err(Error::Unavailable("node is draining".into()));
        }
        let limit = match priority {
            Priority::Write => self.config.max_in_flight,
            Priority::Read => self.config.max_in_flight * self.config.read_admission_percent / 100,
        };
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let admission = Admission(&self.in_flight);
        if before >= limit {
            return Err(self.overloaded("node"));
        }
        metrics::gauge!("skuld_inflight_requests").set((before + 1) as f64);
        Ok(admission)
    }

    /// Queues an envelope for a position, starting its actor if needed.
    /// Never awaits between queueing and waking the actor, so a cancelled
    /// caller cannot leave a queued command without a drain.
    fn submit(self: &Arc<Self>, key: &PositionKey, mut envelope: Envelope) -> Result<(), Error> {
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
                    if wake {
                        self.wake(key, &slot);
                    }
                    return Ok(());
                }
                Push::Full(_) => return Err(self.overloaded("position")),
                Push::Closed(returned) => {
                    // The actor passivated; forget it and start a new one.
                    self.actors
                        .remove_if(key, |_, current| Arc::ptr_eq(current, &slot));
                    envelope = returned;
                }
            }
        }
    }

    fn wake(self: &Arc<Self>, key: &PositionKey, slot: &Arc<Slot>) {
        if let Some(actor) = slot.actor.get() {
            if actor.cast(PositionMsg::Drain).is_err() {
                self.abandon(key, slot, "position actor stopped");
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
                    let arguments = actor::ActorArgs {
                        key: key.clone(),
                        slot: Arc::clone(&slot),
                        shared: Arc::clone(&shared),
                    };
                    Actor::spawn(None, PositionActor, arguments)
                        .await
                        .map(|(actor, _)| actor)
                })
                .await;
            match started {
                Ok(actor) => {
                    if actor.cast(PositionMsg::Drain).is_err() {
                        shared.abandon(&key, &slot, "position actor stopped");
                    }
                }
                Err(error) => {
                    tracing::error!(%key, %error, "cannot start position actor");
                    shared.abandon(&key, &slot, "position actor failed to start");
                }
            }
        });
    }

    /// Fails everything queued for a slot whose actor is gone.
    fn abandon(&self, key: &PositionKey, slot: &Arc<Slot>, why: &str) {
        for envelope in slot.mailbox.close() {
            envelope.answer(Err(Error::Unavailable(why.to_owned())));
        }
        self.actors
            .remove_if(key, |_, current| Arc::ptr_eq(current, slot));
    }
}

/// The node's inventory positions: admission, routing to actors, timers.
pub struct PositionRuntime {
    shared: Arc<Shared>,
    background: Mutex<Vec<JoinHandle<()>>>,
}

impl PositionRuntime {
    /// Starts the runtime and its background tasks (timer scanner,
    /// idempotency purge). Must be called inside a tokio runtime.
    pub fn start(store: Arc<dyn Store>, writer: GroupCommitWriter, config: RuntimeConfig) -> Self {
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            store,
            writer,
            actors: DashMap::new(),
            in_flight: AtomicUsize::new(0),
            accepting: AtomicBool::new(true),
            shutdown,
        });
        let background = vec![
            tokio::spawn(scan_timers(Arc::clone(&shared))),
            tokio::spawn(purge_idempotency(Arc::clone(&shared))),
        ];
        Self {
            shared,
            background: Mutex::new(background),
        }
    }

    /// Applies a mutation; returns once it is durable.
    pub async fn mutate(
        &self,
        request: MutationRequest,
        meta: RequestMeta,
    ) -> Result<Mutated, Error> {
        request.validate()?;
        let _admission = self.shared.admit(Priority::Write)?;
        let key = request.key.clone();
        let fingerprint = request.fingerprint();
        let outcome = self
            .dispatch(
                &key,
                Work::Mutate {
                    request,
                    fingerprint,
                },
                meta,
            )
            .await?;
        match outcome {
            Outcome::Mutated(mutated) => Ok(mutated),
            Outcome::Read(_) => Err(Error::Unavailable(
                "unexpected reply from position actor".into(),
            )),
        }
    }

    /// Reads a position as of every acknowledged change.
    pub async fn read(&self, key: &PositionKey, meta: RequestMeta) -> Result<PositionState, Error> {
        let _admission = self.shared.admit(Priority::Read)?;
        match self.dispatch(key, Work::Read, meta).await? {
            Outcome::Read(state) => Ok(state),
            Outcome::Mutated(_) => Err(Error::Unavailable(
                "unexpected reply from position actor".into(),
            )),
        }
    }

    async fn dispatch(
        &self,
        key: &PositionKey,
        work: Work,
        meta: RequestMeta,
    ) -> Result<Outcome, Error> {
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
                reply: Some(reply),
            },
        )?;
        answer
            .await
            .map_err(|_| Error::Unavailable("position actor stopped before replying".into()))?
    }

    /// Requests currently admitted.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// Positions with a running actor.
    pub fn active_actors(&self) -> usize {
        self.shared.actors.len()
    }

    /// Stops admitting, waits up to `timeout` for admitted requests to be
    /// answered, then stops every actor and background task.
    pub async fn shutdown(&self, timeout: Duration) {
        self.shared.accepting.store(false, Ordering::Release);
        let _ = self.shared.shutdown.send(true);
        let deadline = Instant::now() + timeout;
        while self.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let background: Vec<_> = self.background.lock().drain(..).collect();
        for task in background {
            task.abort();
            let _ = task.await;
        }
        let slots: Vec<_> = self
            .shared
            .actors
            .iter()
            .map(|entry| (entry.key().clone(), Arc::clone(entry.value())))
            .collect();
        for (key, slot) in slots {
            self.shared.abandon(&key, &slot, "node is shutting down");
            if let Some(actor) = slot.actor.get() {
                let _ = actor
                    .stop_and_wait(None, Some(Duration::from_secs(1)))
                    .await;
            }
        }
    }
}

/// Wakes positions whose reservation-expiry timer is due.
async fn scan_timers(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut interval = tokio::time::interval(shared.config.timer_scan_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = u64::try_from(now_ms()).unwrap_or(0);
        let due = match shared.store.due_timers(now, 4_096).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "cannot read due timers");
                continue;
            }
        };
        for (encoded, _) in due {
            let Some(key) = PositionKey::decode(&encoded) else {
                tracing::warn!("timer for an undecodable key ignored");
                continue;
            };
            let tick = Envelope {
                work: Work::Tick,
                correlation_id: "timer".into(),
                deadline: None,
                reply: None,
            };
            // A full mailbox means the actor is busy and expires due
            // reservations on its next drain anyway.
            let _ = shared.submit(&key, tick);
        }
    }
}

/// Deletes idempotency records older than the retention.
async fn purge_idempotency(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut interval = tokio::time::interval(Duration::from_secs(60));
    let retention_ms =
        i64::try_from(shared.config.idempotency_retention.as_millis()).unwrap_or(i64::MAX);
    const PURGE_CHUNK: usize = 10_000;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        let before = u64::try_from(now_ms().saturating_sub(retention_ms)).unwrap_or(0);
        loop {
            match shared.store.purge_idempotency(before, PURGE_CHUNK).await {
                Ok(purged) => {
                    metrics::counter!("skuld_idempotency_purged_total").increment(purged as u64);
                    if purged < PURGE_CHUNK {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "idempotency purge failed");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
