//! The `skuld.v1.EventService`: subscriptions and histories, read from the
//! store's outbox (docs/events.md).
//!
//! Any node serves any subscription: it reads the store, not the owners.
//! Each subscription is its own task with its own position, sending into a
//! small bounded channel: a slow subscriber waits on its own channel, and
//! nothing it does reaches the write path. A subscription wakes when this
//! node's writer commits events and polls for the other nodes' commits.

pub mod token;

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use skuld_actors::runtime::published::PublishedEvent;
use skuld_actors::{store_error, Error, PositionKey, Refusal, ReturnKey};
use skuld_cluster::{ShardEvents, Store, StoredEvent};
use skuld_proto::v1 as pb;
use skuld_proto::v1::event_service_server::EventService;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::convert::{position_key, return_key};
use crate::rpc;
use crate::status::to_status;
use token::Position;

/// Events per message when the subscriber names no batch size.
const DEFAULT_BATCH: usize = 256;
const MAX_BATCH: usize = 1_000;
/// Events one store read takes at most, spread over the shards: what one
/// subscription holds in memory at a time.
const READ_BUDGET: usize = 4_096;
/// Events read from one shard per store read at most: enough to keep a
/// busy shard moving, few enough that one shard cannot starve the others.
const READ_PER_SHARD: usize = 512;
/// A subscription whose filter matches nothing still gets its position
/// this often, so its token does not fall behind retention.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
const MAX_TYPE_PREFIXES: usize = 32;
const DEFAULT_HISTORY_PAGE: usize = 100;
/// A history page token: the shard sequence of the page's last event.
const HISTORY_TOKEN_PREFIX: &str = "h1.";

fn history_position(page_token: &str) -> Result<u64, Error> {
    if page_token.is_empty() {
        return Ok(0);
    }
    page_token
        .strip_prefix(HISTORY_TOKEN_PREFIX)
        .and_then(|seq| seq.parse::<u64>().ok())
        .filter(|seq| i64::try_from(*seq).is_ok())
        .ok_or_else(|| Error::invalid("page_token", "not a token this service gave out"))
}

/// Settings of the event service.
#[derive(Debug, Clone, Copy)]
pub struct EventsSettings {
    pub poll_interval: Duration,
    pub max_subscriptions: usize,
}

pub struct EventsApi {
    store: Arc<dyn Store>,
    committed: watch::Receiver<u64>,
    settings: EventsSettings,
    subscriptions: Arc<Semaphore>,
    /// Ends every subscription when the node shuts down: the servers' own
    /// graceful stop would otherwise wait for streams that never end.
    stop: CancellationToken,
}

impl EventsApi {
    pub fn new(
        store: Arc<dyn Store>,
        committed: watch::Receiver<u64>,
        settings: EventsSettings,
        stop: CancellationToken,
    ) -> Self {
        Self {
            store,
            committed,
            settings,
            subscriptions: Arc::new(Semaphore::new(settings.max_subscriptions.max(1))),
            stop,
        }
    }

    async fn open(&self, request: pb::SubscribeRequest) -> Result<Subscription, Error> {
        let filter = Filter::new(request.filter.unwrap_or_default())?;
        let subscriber = if request.subscriber.is_empty() {
            "anonymous".to_owned()
        } else {
            validate_name(&request.subscriber)?;
            request.subscriber
        };
        let max_batch = match request.max_batch {
            0 => DEFAULT_BATCH,
            n if n as usize <= MAX_BATCH => n as usize,
            _ => {
                return Err(Error::invalid(
                    "max_batch",
                    format!("at most {MAX_BATCH} events per message"),
                ))
            }
        };
        let permit = Arc::clone(&self.subscriptions)
            .try_acquire_owned()
            .map_err(|_| Error::Overloaded {
                queue: "subscriptions".into(),
                retry_after_ms: 1_000,
            })?;
        let bounds = self.store.event_bounds().await.map_err(store_error)?;
        let position = match request.from {
            None | Some(pb::subscribe_request::From::Start(_)) => oldest(&bounds),
            Some(pb::subscribe_request::From::Now(_)) => Position(
                bounds
                    .iter()
                    .map(|shard| (shard.shard, shard.head))
                    .collect(),
            ),
            Some(pb::subscribe_request::From::After(token)) => {
                let position = Position::decode(&token)?;
                check_retained(&position, &bounds)?;
                position
            }
        };
        Ok(Subscription {
            store: Arc::clone(&self.store),
            committed: self.committed.clone(),
            poll_interval: self.settings.poll_interval,
            stop: self.stop.clone(),
            filter,
            subscriber,
            max_batch,
            position,
            _permit: permit,
        })
    }
}

/// Where a subscription from the start begins: just before every retained event.
fn oldest(bounds: &[ShardEvents]) -> Position {
    Position(
        bounds
            .iter()
            .map(|shard| (shard.shard, shard.floor))
            .collect(),
    )
}

/// Refuses a position some of whose next events retention already deleted,
/// and one ahead of what the store holds (a token from another cluster, or
/// from before a restore that lost commits): resuming there would skip the
/// events that get those numbers next.
fn check_retained(position: &Position, bounds: &[ShardEvents]) -> Result<(), Error> {
    for (shard, seen) in &position.0 {
        let head = bounds
            .iter()
            .find(|bounds| bounds.shard == *shard)
            .map_or(0, |bounds| bounds.head);
        if *seen > head {
            return Err(Error::Refused(Refusal::FailedPrecondition(format!(
                "the resume token is ahead of this cluster's events (shard {shard}: token {seen}, stored {head}); start again from the oldest retained event"
            ))));
        }
    }
    match bounds
        .iter()
        .find(|shard| shard.floor > position.seen(shard.shard))
    {
        Some(shard) => Err(expired(shard.shard, shard.floor, bounds)),
        None => Ok(()),
    }
}

fn expired(shard: u32, floor: u64, bounds: &[ShardEvents]) -> Error {
    Error::EventsExpired {
        shard,
        floor,
        oldest_resume_token: oldest(bounds).encode(),
    }
}

fn validate_name(name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(
            "subscriber",
            "1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'",
        ))
    }
}

/// Which events a subscriber wants.
struct Filter {
    type_prefixes: Vec<String>,
    tenant: String,
    aggregate_key: String,
}

impl Filter {
    fn new(filter: pb::EventFilter) -> Result<Self, Error> {
        if filter.type_prefixes.len() > MAX_TYPE_PREFIXES {
            return Err(Error::invalid(
                "filter.type_prefixes",
                format!("at most {MAX_TYPE_PREFIXES}"),
            ));
        }
        for prefix in &filter.type_prefixes {
            if prefix.is_empty() || prefix.len() > 128 || prefix.chars().any(char::is_control) {
                return Err(Error::invalid(
                    "filter.type_prefixes",
                    "each 1 to 128 printable characters",
                ));
            }
        }
        // Empty: every tenant.
        if !filter.tenant.is_empty() {
            skuld_actors::key::validate_tenant("filter.tenant", &filter.tenant)?;
        }
        let longest = 512;
        if filter.aggregate_key.len() > longest
            || filter.aggregate_key.chars().any(char::is_control)
        {
            return Err(Error::invalid(
                "filter.aggregate_key",
                format!("at most {longest} printable characters"),
            ));
        }
        Ok(Self {
            type_prefixes: filter.type_prefixes,
            tenant: filter.tenant,
            aggregate_key: filter.aggregate_key,
        })
    }

    fn matches(&self, event: &PublishedEvent) -> bool {
        (self.type_prefixes.is_empty()
            || self
                .type_prefixes
                .iter()
                .any(|prefix| event.event_type.starts_with(prefix.as_str())))
            && (self.tenant.is_empty() || self.tenant == event.tenant)
            && (self.aggregate_key.is_empty() || self.aggregate_key == event.aggregate_key)
    }
}

fn to_proto(stored: &StoredEvent, event: PublishedEvent) -> pb::Event {
    // Rendered here, on the read side: the write path stores it encoded.
    let data_json = skuld_actors::event_data_json(&event)
        .map_or_else(|_| "null".to_owned(), |data| data.to_string());
    pb::Event {
        id: event.id,
        r#type: event.event_type,
        tenant: event.tenant,
        aggregate_kind: event.aggregate_kind,
        aggregate_key: event.aggregate_key,
        aggregate_version: event.aggregate_version,
        index: event.index,
        shard: stored.shard,
        shard_sequence: stored.seq,
        occurred_at_ms: event.occurred_at_ms,
        recorded_at_ms: i64::try_from(stored.recorded_at_ms).unwrap_or(i64::MAX),
        correlation_id: event.correlation_id,
        causation_id: event.causation_id,
        idempotency_key: event.idempotency_key.unwrap_or_default(),
        data_json,
    }
}

type Reply = Result<pb::SubscribeResponse, Status>;

/// One subscriber's position and what it asked for.
struct Subscription {
    store: Arc<dyn Store>,
    committed: watch::Receiver<u64>,
    poll_interval: Duration,
    stop: CancellationToken,
    filter: Filter,
    subscriber: String,
    max_batch: usize,
    position: Position,
    /// Held for the subscription's life: the node's limit on subscriptions.
    _permit: OwnedSemaphorePermit,
}

impl Subscription {
    async fn run(mut self, replies: mpsc::Sender<Reply>) {
        metrics::gauge!("skuld_event_subscriptions").increment(1.0);
        let ended = self.stream(&replies).await;
        metrics::gauge!("skuld_event_subscriptions").decrement(1.0);
        if let Err(error) = ended {
            // The subscriber may be gone already; nothing to tell then.
            let _ = replies.send(Err(to_status(&error))).await;
        }
    }

    /// Sends events until the subscriber goes away (Ok) or the stream must
    /// end with an error.
    async fn stream(&mut self, replies: &mpsc::Sender<Reply>) -> Result<(), Error> {
        let mut last_sent = Instant::now();
        let mut lag_measured = Instant::now();
        loop {
            // Marked seen before the read: a commit during the read wakes
            // the next wait instead of being missed.
            self.committed.borrow_and_update();
            let read = tokio::select! {
                read = self.store.read_events(self.pairs(), self.per_shard()) => read,
                () = self.stop.cancelled() => return Err(shutting_down()),
            };
            let events = read.map_err(store_error)?;
            if events.is_empty() {
                metrics::gauge!("skuld_event_subscriber_lag_seconds", "subscriber" => self.subscriber.clone()).set(0.0);
                metrics::gauge!("skuld_event_subscriber_lag_events", "subscriber" => self.subscriber.clone()).set(0.0);
                if !self.wait(replies).await? {
                    return Ok(());
                }
                continue;
            }
            let mut batch = Vec::new();
            for stored in &events {
                let seen = self.position.seen(stored.shard);
                if stored.seq <= seen {
                    continue;
                }
                if stored.seq != seen + 1 {
                    // Retention deleted events this subscriber had not read.
                    let bounds = self.store.event_bounds().await.map_err(store_error)?;
                    return Err(expired(stored.shard, stored.seq - 1, &bounds));
                }
                self.position.advance(stored.shard, stored.seq);
                let event = skuld_actors::read_event(&stored.entity, &stored.body)?;
                if self.filter.matches(&event) {
                    batch.push(to_proto(stored, event));
                }
                if batch.len() == self.max_batch {
                    if !self.send(replies, std::mem::take(&mut batch)).await {
                        return Ok(());
                    }
                    last_sent = Instant::now();
                }
            }
            if let Some(last) = events.last() {
                let lag_ms = skuld_cluster::now_ms()
                    .saturating_sub(i64::try_from(last.recorded_at_ms).unwrap_or(i64::MAX));
                metrics::gauge!("skuld_event_subscriber_lag_seconds", "subscriber" => self.subscriber.clone())
                    .set(lag_ms.max(0) as f64 / 1_000.0);
            }
            if lag_measured.elapsed() >= PROGRESS_EVERY {
                lag_measured = Instant::now();
                self.measure_lag().await;
            }
            if !batch.is_empty() || last_sent.elapsed() >= PROGRESS_EVERY {
                if !self.send(replies, batch).await {
                    return Ok(());
                }
                last_sent = Instant::now();
            }
        }
    }

    /// How many committed events this subscriber has not read yet, over
    /// every shard (one bounds read, at most once a second).
    async fn measure_lag(&self) {
        if let Ok(bounds) = self.store.event_bounds().await {
            let behind: u64 = bounds
                .iter()
                .map(|shard| shard.head.saturating_sub(self.position.seen(shard.shard)))
                .sum();
            metrics::gauge!("skuld_event_subscriber_lag_events", "subscriber" => self.subscriber.clone())
                .set(behind as f64);
        }
    }

    /// Waits for this node's next commit of events, the poll interval (the
    /// other nodes' commits) or the end. False when the subscriber is gone.
    async fn wait(&mut self, replies: &mpsc::Sender<Reply>) -> Result<bool, Error> {
        tokio::select! {
            changed = self.committed.changed() => {
                // The writer is gone: the node is stopping.
                if changed.is_err() {
                    return Err(shutting_down());
                }
            }
            () = tokio::time::sleep(self.poll_interval) => {}
            () = replies.closed() => return Ok(false),
            () = self.stop.cancelled() => return Err(shutting_down()),
        }
        Ok(true)
    }

    /// Sends one message; false when the subscriber is gone.
    async fn send(&self, replies: &mpsc::Sender<Reply>, events: Vec<pb::Event>) -> bool {
        let now_ms = skuld_cluster::now_ms();
        for event in &events {
            let lag_ms = now_ms.saturating_sub(event.recorded_at_ms).max(0);
            metrics::histogram!("skuld_event_delivery_seconds").record(lag_ms as f64 / 1_000.0);
        }
        metrics::counter!("skuld_events_delivered_total", "subscriber" => self.subscriber.clone())
            .increment(events.len() as u64);
        let message = pb::SubscribeResponse {
            events,
            resume_token: self.position.encode(),
        };
        tokio::select! {
            sent = replies.send(Ok(message)) => sent.is_ok(),
            () = self.stop.cancelled() => false,
        }
    }

    /// Per-shard share of the read budget, by the shards seen so far.
    fn per_shard(&self) -> usize {
        (READ_BUDGET / self.position.0.len().max(1)).clamp(8, READ_PER_SHARD)
    }

    fn pairs(&self) -> Vec<(u32, u64)> {
        self.position
            .0
            .iter()
            .map(|(shard, seq)| (*shard, *seq))
            .collect()
    }
}

fn shutting_down() -> Error {
    Error::Unavailable("node is shutting down; resume on another node with the last token".into())
}

#[tonic::async_trait]
impl EventService for EventsApi {
    type SubscribeStream = ReceiverStream<Reply>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        rpc::serve("Subscribe", request, |request, _| async move {
            let subscription = self.open(request).await?;
            // Two messages ahead at most: a slow subscriber holds little.
            let (replies, stream) = mpsc::channel(2);
            tokio::spawn(subscription.run(replies));
            Ok(ReceiverStream::new(stream))
        })
        .await
    }

    async fn get_history(
        &self,
        request: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::GetHistoryResponse>, Status> {
        rpc::serve("GetHistory", request, |request, _| async move {
            let entity = match request.aggregate {
                Some(pb::get_history_request::Aggregate::Position(key)) => {
                    let key: PositionKey = position_key(Some(key))?;
                    key.encode()
                }
                Some(pb::get_history_request::Aggregate::ReturnCase(key)) => {
                    let key: ReturnKey = return_key(Some(key))?;
                    key.encode()
                }
                None => {
                    return Err(Error::invalid(
                        "aggregate",
                        "a position or a return_case is required",
                    ))
                }
            };
            let page_size = match request.page_size {
                0 => DEFAULT_HISTORY_PAGE,
                n if n as usize <= MAX_BATCH => n as usize,
                _ => {
                    return Err(Error::invalid(
                        "page_size",
                        format!("at most {MAX_BATCH} events per page"),
                    ))
                }
            };
            let after = history_position(&request.page_token)?;
            let stored = self
                .store
                .entity_events(&entity, after, page_size)
                .await
                .map_err(store_error)?;
            let next_page_token = match stored.last() {
                Some(last) if stored.len() == page_size => {
                    format!("{HISTORY_TOKEN_PREFIX}{}", last.seq)
                }
                _ => String::new(),
            };
            let events = stored
                .iter()
                .map(|stored| {
                    skuld_actors::read_event(&stored.entity, &stored.body)
                        .map(|event| to_proto(stored, event))
                })
                .collect::<Result<_, _>>()?;
            Ok(pb::GetHistoryResponse {
                events,
                next_page_token,
            })
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_position_behind_retention_or_ahead_of_the_store_is_refused() {
        let bounds = [ShardEvents {
            shard: 0,
            floor: 5,
            head: 10,
        }];
        let at = |shard, seq| {
            let mut position = Position::default();
            position.advance(shard, seq);
            position
        };
        assert!(check_retained(&at(0, 5), &bounds).is_ok());
        assert!(check_retained(&at(0, 10), &bounds).is_ok());
        assert!(matches!(
            check_retained(&at(0, 4), &bounds),
            Err(Error::EventsExpired {
                shard: 0,
                floor: 5,
                ..
            })
        ));
        for ahead in [at(0, 11), at(3, 1)] {
            assert!(matches!(
                check_retained(&ahead, &bounds),
                Err(Error::Refused(Refusal::FailedPrecondition(_)))
            ));
        }
    }

    #[test]
    fn a_filter_tenant_is_any_tenant_name_but_the_reserved_one() {
        let filter = |tenant: String| {
            Filter::new(pb::EventFilter {
                tenant,
                ..Default::default()
            })
        };
        let longest = "x".repeat(skuld_actors::key::MAX_TOKEN_BYTES);
        assert_eq!(filter(longest.clone()).unwrap().tenant, longest);
        assert!(filter(String::new()).is_ok());
        for bad in [
            "x".repeat(skuld_actors::key::MAX_TOKEN_BYTES + 1),
            "*".into(),
            "a\nb".into(),
        ] {
            match filter(bad.clone()) {
                Err(Error::Refused(Refusal::InvalidArgument { field, .. })) => {
                    assert_eq!(field, "filter.tenant", "{bad:?}");
                }
                other => panic!("{bad:?}: {:?}", other.err()),
            }
        }
    }
}
