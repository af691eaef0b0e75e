//! Sinks: delivery of the event stream to systems outside skuld (webhook
//! endpoints, NATS JetStream), each with its own durable cursor per shard.
//!
//! A node delivers the shards it owns (all of them in single-node mode).
//! For one sink and one shard it reads a window of events after the
//! sink's cursor, delivers each aggregate key's events in order (one in
//! flight per key; keys of the window in parallel), and only then moves the
//! cursor past the window. A crash or a shard move before the cursor moved
//! delivers the window again: at least once, and every delivery carries the
//! event id for deduplication. The cursor never moves past an event that
//! was neither delivered nor dead-lettered.

pub mod nats;
pub mod webhook;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt as _, TryStreamExt as _};
use skuld_actors::runtime::published::PublishedEvent;
use skuld_cluster::shards::ShardTable;
use skuld_cluster::{Store, StoreError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Record kind of the sinks' cursors: id `<sink>/<shard>`, value the last
/// delivered sequence as decimal text.
pub const CURSOR_KIND: &str = "sink_cursor";
/// Events one window holds at most.
const WINDOW: usize = 256;
/// Keys of one window delivered at once at most.
const KEYS_IN_FLIGHT: usize = 8;
/// How often the set of webhook endpoints is read again.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// One event to deliver, with its place in the stream.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: PublishedEvent,
    /// The encoded key of the entity the event belongs to.
    pub entity: Vec<u8>,
    pub shard: u32,
    pub seq: u64,
    pub recorded_at_ms: u64,
}

/// A window that could not be finished: the cursor stays before what was
/// not delivered.
#[derive(Debug)]
pub enum Stopped {
    /// The sink must end: its endpoint was disabled or removed, or the node
    /// is stopping.
    Final(String),
    /// Passing (the store failed): the window is tried again after a pause.
    Passing(String),
}

impl From<StoreError> for Stopped {
    fn from(error: StoreError) -> Self {
        Stopped::Passing(error.to_string())
    }
}

/// How long a sink waits after a passing failure before trying again.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Names its cursors and metrics.
    fn name(&self) -> String;
    /// Events it does not want only move its cursor.
    fn wants(&self, event: &PublishedEvent) -> bool;
    /// Delivers one key's events in order, each delivered or given up on
    /// (dead-lettered) before the next.
    async fn deliver(&self, events: Vec<Delivery>, stop: &CancellationToken)
        -> Result<(), Stopped>;

    /// Delivers a window: each key's events (in order, keys in order of
    /// first appearance), [`KEYS_IN_FLIGHT`] keys at once by default. A
    /// sink that does better with the whole window at once (one store
    /// write for it) overrides this.
    async fn deliver_window(
        &self,
        by_key: Vec<Vec<Delivery>>,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        futures::stream::iter(by_key)
            .map(|events| self.deliver(events, stop))
            .buffer_unordered(KEYS_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}

/// The event as a CloudEvents 1.0 structured-mode JSON body; skuld's own
/// envelope fields are extension attributes (lowercase alphanumerics).
pub fn cloud_event(delivery: &Delivery) -> String {
    let event = &delivery.event;
    let data = skuld_actors::event_data_json(event).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "specversion": "1.0",
        "id": event.id,
        "source": format!("skuld/{}", event.aggregate_kind),
        "type": event.event_type,
        "subject": event.aggregate_key,
        "time": crate::timestamp::format_unix_ms(event.occurred_at_ms),
        "datacontenttype": "application/json",
        "data": data,
        "skuldtenant": event.tenant,
        "skuldversion": event.aggregate_version,
        "skuldindex": event.index,
        "skuldshard": delivery.shard,
        "skuldsequence": delivery.seq,
        "skuldcorrelationid": event.correlation_id,
        "skuldcausationid": event.causation_id,
        "skuldidempotencykey": event.idempotency_key.clone().unwrap_or_default(),
    })
    .to_string()
}

pub fn cursor_id(sink: &str, shard: u32) -> String {
    format!("{sink}/{shard:05}")
}

/// Where a sink starts: at every shard's current head, so a new endpoint
/// gets the events committed after it was added (a shard without events
/// yet has no cursor and starts at its beginning).
pub async fn start_at_heads(store: &dyn Store, sink: &str) -> Result<(), StoreError> {
    for bounds in store.event_bounds().await? {
        store
            .put_record(
                CURSOR_KIND,
                &cursor_id(sink, bounds.shard),
                bounds.head.to_string().into_bytes(),
            )
            .await?;
    }
    Ok(())
}

/// What every sink task needs from the node.
#[derive(Clone)]
pub struct SinkContext {
    pub store: Arc<dyn Store>,
    /// Cluster mode: the shards this node owns; else every shard.
    pub shards: Option<Arc<ShardTable>>,
    pub committed: watch::Receiver<u64>,
    pub poll_interval: Duration,
    pub webhooks: webhook::WebhookSettings,
    pub nats: Option<nats::NatsSettings>,
    /// Fault injection for the tests: wait this long between delivering a
    /// window and recording it, so a kill lands in between.
    pub pause_before_cursor: Option<Duration>,
}

/// Runs every sink until stopped.
pub struct Sinks {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Sinks {
    pub fn start(context: SinkContext) -> Self {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(supervise(context, stop.clone(), tasks.clone()));
        Self { stop, tasks }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Starts a task per enabled webhook endpoint (and the NATS sink when
/// configured), and stops the task of an endpoint removed, disabled or
/// changed.
async fn supervise(context: SinkContext, stop: CancellationToken, tasks: TaskTracker) {
    if let Some(settings) = context.nats.clone() {
        let context = context.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            // NATS may be down when the node starts: keep trying.
            let sink = loop {
                match nats::NatsSink::connect(settings.clone()).await {
                    Ok(sink) => break sink,
                    Err(error) => {
                        tracing::warn!(%error, "the NATS sink cannot connect yet; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(2)) => {}
                            () = stop.cancelled() => return,
                        }
                    }
                }
            };
            run_sink(Arc::new(sink), context, stop).await;
        });
    }
    // Endpoint id -> (its definition's revision, the task's stop, the task).
    let mut running: HashMap<String, (Vec<u8>, CancellationToken, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    let client = webhook::http_client(&context.webhooks);
    loop {
        match webhook::load_endpoints(context.store.as_ref()).await {
            Ok(endpoints) => {
                let wanted: HashMap<String, (Vec<u8>, webhook::Endpoint)> = endpoints
                    .into_iter()
                    .filter(|(_, endpoint)| endpoint.enabled)
                    .map(|(raw, endpoint)| (endpoint.id.clone(), (raw, endpoint)))
                    .collect();
                // A task that ended by itself (its endpoint answered 410 and
                // is disabled now, or it met an unreadable cursor) is
                // started again if the endpoint is still wanted.
                running.retain(|id, (revision, token, task)| {
                    let keep = !task.is_finished()
                        && wanted.get(id).is_some_and(|(raw, _)| raw == revision);
                    if !keep {
                        token.cancel();
                    }
                    keep
                });
                for (id, (raw, endpoint)) in wanted {
                    if running.contains_key(&id) {
                        continue;
                    }
                    match webhook::WebhookSink::new(
                        endpoint,
                        client.clone(),
                        Arc::clone(&context.store),
                        context.webhooks.clone(),
                    ) {
                        Ok(sink) => {
                            let token = stop.child_token();
                            let task = tasks.spawn(run_sink(
                                Arc::new(sink),
                                context.clone(),
                                token.clone(),
                            ));
                            running.insert(id, (raw, token, task));
                        }
                        Err(error) => {
                            tracing::warn!(endpoint = %id, %error, "webhook endpoint not started")
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the webhook endpoints"),
        }
        tokio::select! {
            () = tokio::time::sleep(REFRESH_EVERY) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// One sink over the shards this node owns, until stopped.
pub(crate) async fn run_sink(sink: Arc<dyn Sink>, context: SinkContext, stop: CancellationToken) {
    let name = sink.name();
    let mut committed = context.committed.clone();
    tracing::info!(sink = %name, "sink started");
    loop {
        committed.borrow_and_update();
        let shards = match owned_shards(&context).await {
            Ok(shards) => shards,
            Err(error) => {
                tracing::warn!(sink = %name, %error, "cannot list the shards to deliver");
                Vec::new()
            }
        };
        let mut moved = false;
        for shard in shards {
            if stop.is_cancelled() {
                return;
            }
            match drain_window(sink.as_ref(), &name, &context, shard, &stop).await {
                Ok(progress) => moved |= progress,
                Err(Stopped::Final(reason)) => {
                    tracing::info!(sink = %name, %reason, "sink stopped");
                    return;
                }
                Err(Stopped::Passing(reason)) => {
                    metrics::counter!("skuld_sink_failures_total", "sink" => name.clone())
                        .increment(1);
                    tracing::warn!(sink = %name, shard, %reason, "sink window failed; trying again");
                    tokio::select! {
                        () = tokio::time::sleep(PAUSE_AFTER_FAILURE) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        }
        if moved {
            continue;
        }
        tokio::select! {
            _ = committed.changed() => {}
            () = tokio::time::sleep(context.poll_interval) => {}
            () = stop.cancelled() => return,
        }
    }
}

async fn owned_shards(context: &SinkContext) -> Result<Vec<u32>, StoreError> {
    match &context.shards {
        Some(table) => Ok(table.local_shards()),
        None => Ok(context
            .store
            .event_bounds()
            .await?
            .into_iter()
            .map(|bounds| bounds.shard)
            .collect()),
    }
}

/// Delivers the next window of one shard and moves the cursor past it;
/// false when there was nothing to deliver.
async fn drain_window(
    sink: &dyn Sink,
    name: &str,
    context: &SinkContext,
    shard: u32,
    stop: &CancellationToken,
) -> Result<bool, Stopped> {
    let cursor_id = cursor_id(name, shard);
    let cursor = match context.store.get_record(CURSOR_KIND, &cursor_id).await? {
        Some(bytes) => String::from_utf8_lossy(&bytes)
            .parse::<u64>()
            .map_err(|_| Stopped::Final(format!("cursor {cursor_id} is unreadable")))?,
        None => 0,
    };
    let stored = context.store.shard_events(shard, cursor, WINDOW).await?;
    let (Some(first), Some(last)) = (stored.first(), stored.last()) else {
        return Ok(false);
    };
    if first.seq != cursor + 1 {
        // Retention deleted events this sink had not delivered (it was
        // stopped or failing for longer than the retention). They cannot
        // be sent any more: say so loudly and go on from what is left.
        let lost = first.seq - cursor - 1;
        metrics::counter!("skuld_sink_events_lost_total", "sink" => name.to_owned())
            .increment(lost);
        tracing::error!(sink = %name, shard, from = cursor + 1, to = first.seq - 1, lost, "events deleted by retention before this sink delivered them");
    }
    let (last_seq, last_recorded_ms) = (last.seq, last.recorded_at_ms);
    // Each key's events in stream order, keys in order of first appearance.
    let mut by_key: Vec<Vec<Delivery>> = Vec::new();
    let mut index_of: HashMap<String, usize> = HashMap::new();
    for stored in stored {
        let event = match skuld_actors::read_event(&stored.entity, &stored.body) {
            Ok(event) => event,
            Err(error) => {
                // Never written by this version; skipping it is the only way on.
                metrics::counter!("skuld_events_unreadable_total").increment(1);
                tracing::error!(sink = %name, shard, seq = stored.seq, %error, "unreadable event skipped");
                continue;
            }
        };
        if !sink.wants(&event) {
            continue;
        }
        let slot = *index_of
            .entry(event.aggregate_key.clone())
            .or_insert_with(|| {
                by_key.push(Vec::new());
                by_key.len() - 1
            });
        by_key[slot].push(Delivery {
            event,
            entity: stored.entity,
            shard: stored.shard,
            seq: stored.seq,
            recorded_at_ms: stored.recorded_at_ms,
        });
    }
    sink.deliver_window(by_key, stop).await?;
    if let Some(pause) = context.pause_before_cursor {
        tokio::time::sleep(pause).await;
    }
    context
        .store
        .put_record(CURSOR_KIND, &cursor_id, last_seq.to_string().into_bytes())
        .await?;
    let lag_ms = skuld_cluster::now_ms() - i64::try_from(last_recorded_ms).unwrap_or(i64::MAX);
    metrics::gauge!("skuld_sink_lag_seconds", "sink" => name.to_owned())
        .set(lag_ms.max(0) as f64 / 1_000.0);
    Ok(true)
}
