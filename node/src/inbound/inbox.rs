//! The durable inbox of inbound webhook deliveries, and the task that
//! applies them.
//!
//! Intake ([`admit`], on whichever node the channel's HTTP request reached)
//! writes the verified delivery to the store and answers; the processor of
//! the delivery's shard applies it later, so a slow apply never costs
//! Shopify's 5 s budget and a crash or restart loses nothing accepted.
//!
//! Records, ids `<shard, 5 digits>/<hash>` where the shard is that of the
//! delivery's resource (`tenant`, `channel`, `order:<id>`, `level:<item>:
//! <location>`, ...), sharded like entities: in cluster mode one node, the
//! shard's owner, applies a resource's deliveries, one at a time, in the
//! order of their `updated_at`.
//! * [`INBOX_KIND`]: a delivery not yet applied, one per event id (another
//!   subscription's delivery of the same event lands on the same record).
//! * [`SEEN_KIND`]: a webhook id taken in (written by intake) or an event
//!   id decided (written by the processor, with its outcome): the dedupe
//!   keys, kept [`RETENTION`].
//! * [`RESOURCE_KIND`]: the mark of the last delivery a resource applied
//!   (skuld-domain `channel::inbound`; an ignored topic moves none), so an
//!   older level update arriving after a newer one is recorded as
//!   superseded, not applied.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use skuld_actors::channel::inbound::{advance, judge, ResourceMark, Verdict};
use skuld_cluster::shards::ShardTable;
use skuld_cluster::{Store, StoreError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use xxhash_rust::xxh3::xxh3_128;

use super::exceptions::{self, WebhookException};
use super::metrics as m;
use crate::channels::keys::{shard_of_record, shard_prefix};

pub const INBOX_KIND: &str = "inbound_inbox";
pub const SEEN_KIND: &str = "inbound_seen";
pub const RESOURCE_KIND: &str = "inbound_resource";

/// How long dedupe keys and resource marks are kept: past Shopify's retry
/// window (8 attempts over 4 hours) and its "up to a day late" deliveries,
/// with room to spare.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often the processor looks at the inbox when not woken by intake on
/// its own node (a delivery taken in by another node, a retry due).
const POLL: Duration = Duration::from_millis(100);
/// How often dedupe keys and marks past [`RETENTION`] are removed.
const PURGE_EVERY: Duration = Duration::from_secs(600);
/// Resources applied at once (each one's deliveries in order).
const CONCURRENCY: usize = 16;
/// Records read per store call.
const PAGE: usize = 1_000;
/// The longest wait before a failing delivery is tried again.
const MAX_RETRY_WAIT_MS: u64 = 30_000;

/// A verified delivery, as the inbox keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub tenant: String,
    pub channel: String,
    pub topic: String,
    pub webhook_id: String,
    pub event_id: String,
    /// `X-Shopify-Triggered-At`, as sent.
    pub triggered_at: String,
    pub received_at_ms: u64,
    /// What the delivery is about (the unit of ordering and sharding).
    pub resource: String,
    /// The payload's `updated_at` (or what stands for it), unix ms.
    pub updated_at_ms: i64,
    /// The raw body, as signed.
    pub body: String,
}

impl Delivery {
    fn hashed(&self, parts: &[&str]) -> u128 {
        let mut all = vec![self.tenant.as_str(), self.channel.as_str()];
        all.extend_from_slice(parts);
        xxh3_128(&serde_json::to_vec(&all).unwrap_or_default())
    }

    /// The shard of the delivery's resource.
    pub fn shard(&self, shard_count: u32) -> u32 {
        let key =
            serde_json::to_vec(&(&self.tenant, &self.channel, &self.resource)).unwrap_or_default();
        skuld_proto::shard::shard_of(&key, shard_count)
    }

    fn id(&self, shard_count: u32, parts: &[&str]) -> String {
        format!(
            "{}{:032x}",
            shard_prefix(self.shard(shard_count)),
            self.hashed(parts)
        )
    }

    pub fn inbox_id(&self, shard_count: u32) -> String {
        self.id(shard_count, &["inbox", &self.event_id])
    }

    fn webhook_seen_id(&self, shard_count: u32) -> String {
        self.id(shard_count, &["webhook", &self.webhook_id])
    }

    fn event_seen_id(&self, shard_count: u32) -> String {
        self.id(shard_count, &["event", &self.event_id])
    }

    fn resource_id(&self, shard_count: u32) -> String {
        self.id(shard_count, &["resource", &self.resource])
    }
}

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Taken in, not decided yet (a webhook id's record).
    Received,
    Applied,
    Duplicate,
    Superseded,
    /// A topic skuld does nothing with.
    Ignored,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Seen {
    at_ms: u64,
    outcome: Outcome,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredMark {
    mark: ResourceMark,
    at_ms: u64,
}

fn now_ms() -> u64 {
    u64::try_from(skuld_cluster::now_ms()).unwrap_or(0)
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// What intake made of a verified delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    Accepted,
    /// Seen before, by this key (`webhook_id` or `event_id`): nothing written.
    Duplicate(&'static str),
}

/// Takes a verified delivery in: durable in the inbox once this returns
/// `Accepted`, unless it is one seen before.
pub async fn admit(
    store: &dyn Store,
    delivery: &Delivery,
    shard_count: u32,
) -> Result<Admitted, StoreError> {
    let webhook_seen = delivery.webhook_seen_id(shard_count);
    if store.get_record(SEEN_KIND, &webhook_seen).await?.is_some() {
        return Ok(Admitted::Duplicate("webhook_id"));
    }
    let inbox_id = delivery.inbox_id(shard_count);
    if store
        .get_record(SEEN_KIND, &delivery.event_seen_id(shard_count))
        .await?
        .is_some()
        || store.get_record(INBOX_KIND, &inbox_id).await?.is_some()
    {
        return Ok(Admitted::Duplicate("event_id"));
    }
    store
        .put_record(INBOX_KIND, &inbox_id, encode(delivery))
        .await?;
    // After the inbox record: a crash in between leaves a delivery whose
    // retry is taken in again onto the same record (one per event id).
    store
        .put_record(
            SEEN_KIND,
            &webhook_seen,
            encode(&Seen {
                at_ms: delivery.received_at_ms,
                outcome: Outcome::Received,
            }),
        )
        .await?;
    Ok(Admitted::Accepted)
}

/// What applying a delivery came to.
#[derive(Debug)]
pub enum Applied {
    /// Done; what could not be applied is in the exceptions.
    Done(Vec<WebhookException>),
    /// A topic skuld does nothing with.
    Ignored,
    /// Not now (skuld unavailable, a saga still running): tried again.
    Retry(String),
}

/// Applies one delivery's business meaning. Must be idempotent: a crash
/// after it and before the delivery is marked done applies it again.
#[async_trait::async_trait]
pub trait Apply: Send + Sync {
    async fn apply(&self, delivery: &Delivery) -> Applied;
}

/// Applies the inbox of the shards this node owns.
pub struct Processor {
    pub store: Arc<dyn Store>,
    /// Cluster mode: the shards this node owns; else every shard.
    pub shards: Option<Arc<ShardTable>>,
    pub shard_count: u32,
    pub applier: Arc<dyn Apply>,
    /// Intake on this node wakes the processor at once.
    pub wake: Arc<Notify>,
}

#[derive(Default)]
struct Backoff {
    attempts: u32,
    due_ms: u64,
}

impl Processor {
    pub async fn run(self, stop: CancellationToken) {
        // Tests: take deliveries in without applying them for a while (a
        // crash with a full inbox).
        if let Some(hold) = crate::config::Config::failpoint_ms("INBOUND_HOLD_MS") {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(hold) => {}
            }
        }
        let retries: Mutex<HashMap<String, Backoff>> = Mutex::new(HashMap::new());
        let mut purged_at = tokio::time::Instant::now();
        loop {
            self.pass(&retries).await;
            if purged_at.elapsed() >= PURGE_EVERY {
                purged_at = tokio::time::Instant::now();
                if let Err(error) = self.purge().await {
                    tracing::warn!(%error, "cannot purge old webhook dedupe records");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    fn owned(&self) -> Option<HashSet<u32>> {
        self.shards
            .as_ref()
            .map(|table| table.local_shards().into_iter().collect())
    }

    async fn owned_records(
        &self,
        kind: &str,
        owned: Option<&HashSet<u32>>,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut records = Vec::new();
        let mut after = None;
        loop {
            let page = self.store.list_records(kind, "", after, PAGE).await?;
            let full = page.len() == PAGE;
            after = page.last().map(|(id, _)| id.clone());
            records.extend(page.into_iter().filter(|(id, _)| {
                owned.is_none_or(|owned| shard_of_record(id).is_some_and(|s| owned.contains(&s)))
            }));
            if !full {
                return Ok(records);
            }
        }
    }

    /// One look at the inbox: every owned resource's pending deliveries in
    /// `updated_at` order, resources concurrently.
    async fn pass(&self, retries: &Mutex<HashMap<String, Backoff>>) {
        let owned = self.owned();
        let records = match self.owned_records(INBOX_KIND, owned.as_ref()).await {
            Ok(records) => records,
            Err(error) => {
                tracing::warn!(%error, "cannot list the webhook inbox");
                return;
            }
        };
        metrics::gauge!(m::INBOX_DEPTH).set(records.len() as f64);
        let mut resources: BTreeMap<(String, String, String), Vec<(String, Delivery)>> =
            BTreeMap::new();
        for (id, raw) in records {
            match serde_json::from_slice::<Delivery>(&raw) {
                Ok(delivery) => resources
                    .entry((
                        delivery.tenant.clone(),
                        delivery.channel.clone(),
                        delivery.resource.clone(),
                    ))
                    .or_default()
                    .push((id, delivery)),
                Err(error) => {
                    tracing::warn!(%id, %error, "an unreadable inbox record: left in place")
                }
            }
        }
        retries
            .lock()
            .retain(|id, _| resources.values().flatten().any(|(other, _)| other == id));
        futures::stream::iter(resources.into_values())
            .for_each_concurrent(CONCURRENCY, |mut deliveries| async move {
                deliveries.sort_by_key(|(_, d)| (d.updated_at_ms, d.received_at_ms));
                for (id, delivery) in deliveries {
                    let now = now_ms();
                    if retries.lock().get(&id).is_some_and(|b| b.due_ms > now) {
                        // Later deliveries of the resource wait behind it.
                        return;
                    }
                    let span = tracing::info_span!(
                        "inbound_webhook",
                        topic = %delivery.topic,
                        channel = %delivery.channel,
                        event_id = %delivery.event_id,
                        resource = %delivery.resource,
                    );
                    match self.process(&id, &delivery).instrument(span).await {
                        Ok(()) => {
                            retries.lock().remove(&id);
                        }
                        Err(reason) => {
                            let mut retries = retries.lock();
                            let backoff = retries.entry(id.clone()).or_default();
                            backoff.attempts += 1;
                            let wait = (100u64 << backoff.attempts.min(9)).min(MAX_RETRY_WAIT_MS);
                            backoff.due_ms = now + wait;
                            tracing::info!(%id, %reason, attempts = backoff.attempts, wait_ms = wait, "webhook delivery not applied yet; trying again");
                            return;
                        }
                    }
                }
            })
            .await;
    }

    /// Decides and applies one delivery, then marks it done and removes it
    /// from the inbox. An error leaves it there, to be tried again.
    async fn process(&self, id: &str, delivery: &Delivery) -> Result<(), String> {
        let store = self.store.as_ref();
        let failed = |error: StoreError| error.to_string();
        let event_seen = delivery.event_seen_id(self.shard_count);
        let decided = store
            .get_record(SEEN_KIND, &event_seen)
            .await
            .map_err(failed)?
            .and_then(|raw| serde_json::from_slice::<Seen>(&raw).ok())
            .is_some_and(|seen| seen.outcome != Outcome::Received);
        let resource_id = delivery.resource_id(self.shard_count);
        let last: Option<StoredMark> = store
            .get_record(RESOURCE_KIND, &resource_id)
            .await
            .map_err(failed)?
            .and_then(|raw| serde_json::from_slice(&raw).ok());
        let last = last.map(|stored| stored.mark);
        let verdict = if decided {
            Verdict::Duplicate
        } else {
            judge(
                last.as_ref(),
                &delivery.topic,
                &delivery.event_id,
                delivery.updated_at_ms,
            )
        };
        let outcome = match verdict {
            Verdict::Duplicate => {
                metrics::counter!(m::DUPLICATES, "by" => "event_id").increment(1);
                tracing::debug!("a delivery of an event already decided");
                Outcome::Duplicate
            }
            Verdict::Superseded => {
                metrics::counter!(m::SUPERSEDED, "topic" => m::topic_label(&delivery.topic))
                    .increment(1);
                tracing::info!(
                    updated_at_ms = delivery.updated_at_ms,
                    applied_updated_at_ms = last.as_ref().map_or(0, |mark| mark.updated_at_ms),
                    "an older update than the one applied: superseded, not applied"
                );
                Outcome::Superseded
            }
            Verdict::Apply => match self.applier.apply(delivery).await {
                Applied::Done(exceptions) => {
                    exceptions::record(store, &exceptions)
                        .await
                        .map_err(failed)?;
                    for exception in &exceptions {
                        metrics::counter!(m::EXCEPTIONS, "code" => exception.code.as_str())
                            .increment(1);
                        tracing::warn!(code = exception.code.as_str(), remote_ref = %exception.remote_ref, owner = %exception.owner, detail = %exception.detail, "webhook exception recorded");
                    }
                    metrics::counter!(m::APPLIED, "topic" => m::topic_label(&delivery.topic))
                        .increment(1);
                    Outcome::Applied
                }
                Applied::Ignored => Outcome::Ignored,
                Applied::Retry(reason) => return Err(reason),
            },
        };
        let now = now_ms();
        if verdict != Verdict::Duplicate {
            // A topic skuld ignores moves no mark: its `updated_at` would
            // supersede the resource's later-arriving older deliveries.
            if outcome != Outcome::Ignored {
                let mark = StoredMark {
                    mark: advance(last, &delivery.event_id, delivery.updated_at_ms),
                    at_ms: now,
                };
                store
                    .put_record(RESOURCE_KIND, &resource_id, encode(&mark))
                    .await
                    .map_err(failed)?;
            }
            store
                .put_record(
                    SEEN_KIND,
                    &event_seen,
                    encode(&Seen {
                        at_ms: now,
                        outcome,
                    }),
                )
                .await
                .map_err(failed)?;
        }
        store.delete_record(INBOX_KIND, id).await.map_err(failed)?;
        Ok(())
    }

    /// Removes dedupe keys and marks of this node's shards older than
    /// [`RETENTION`].
    async fn purge(&self) -> Result<(), StoreError> {
        let owned = self.owned();
        let oldest = now_ms().saturating_sub(u64::try_from(RETENTION.as_millis()).unwrap_or(0));
        for (id, raw) in self.owned_records(SEEN_KIND, owned.as_ref()).await? {
            if serde_json::from_slice::<Seen>(&raw).is_ok_and(|seen| seen.at_ms < oldest) {
                self.store.delete_record(SEEN_KIND, &id).await?;
            }
        }
        for (id, raw) in self.owned_records(RESOURCE_KIND, owned.as_ref()).await? {
            if serde_json::from_slice::<StoredMark>(&raw).is_ok_and(|mark| mark.at_ms < oldest) {
                self.store.delete_record(RESOURCE_KIND, &id).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn delivery(event_id: &str, webhook_id: &str) -> Delivery {
        Delivery {
            tenant: "acme".into(),
            channel: "web".into(),
            topic: "orders/create".into(),
            webhook_id: webhook_id.into(),
            event_id: event_id.into(),
            triggered_at: String::new(),
            received_at_ms: 1,
            resource: "order:1".into(),
            updated_at_ms: 1,
            body: "{}".into(),
        }
    }

    #[test]
    fn one_event_through_two_subscriptions_lands_on_one_inbox_record_in_its_resources_shard() {
        let first = delivery("e1", "w1");
        let second = delivery("e1", "w2");
        assert_eq!(first.inbox_id(1_024), second.inbox_id(1_024));
        assert_ne!(first.webhook_seen_id(1_024), second.webhook_seen_id(1_024));
        let other = Delivery {
            resource: "order:2".into(),
            ..delivery("e2", "w3")
        };
        assert_eq!(
            shard_of_record(&first.inbox_id(1_024)),
            Some(first.shard(1_024))
        );
        assert_ne!(first.inbox_id(1_024), other.inbox_id(1_024));
    }
}
