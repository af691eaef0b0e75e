//! Whether this node's store answers, as seen by every call the node makes
//! to it: part of ownership in cluster mode.
//!
//! An owner that can reach etcd but not PostgreSQL would otherwise keep its
//! shards forever, failing every write for its keys. [`MonitoredStore`]
//! wraps the store and records each call's outcome; the node's health task
//! ([`StoreHealth::watch`]) pings the store when nothing else has answered
//! recently and, once every call has failed for the failover time, reports
//! the node unhealthy in etcd so placement moves its shards to nodes whose
//! store answers. It reports healthy again once the store has answered for a
//! while.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::{Committed, IdempotencyRecord, LoadedEntity, Store, StoreError, WriteBatch};

#[derive(Debug, Clone, Copy)]
struct Calls {
    last_success: Instant,
    /// The first failure since the last success.
    failing_since: Option<Instant>,
}

/// Outcomes of store calls, shared by the store wrapper and the health task.
#[derive(Debug)]
pub struct StoreHealth {
    calls: Mutex<Calls>,
    healthy: watch::Sender<bool>,
}

impl StoreHealth {
    pub fn new() -> Arc<Self> {
        let (healthy, _) = watch::channel(true);
        Arc::new(Self {
            calls: Mutex::new(Calls {
                last_success: Instant::now(),
                failing_since: None,
            }),
            healthy,
        })
    }

    pub fn record<T>(&self, result: &Result<T, StoreError>) {
        let mut calls = self.calls.lock();
        match result {
            // A fenced write is the store answering: another node owns it.
            Ok(_) | Err(StoreError::Fenced { .. }) => {
                calls.last_success = Instant::now();
                calls.failing_since = None;
            }
            Err(_) => {
                calls.failing_since.get_or_insert_with(Instant::now);
            }
        }
    }

    /// How long every call has failed, if the last one failed.
    pub fn failing_for(&self) -> Option<Duration> {
        self.calls.lock().failing_since.map(|since| since.elapsed())
    }

    fn since_success(&self) -> Duration {
        self.calls.lock().last_success.elapsed()
    }

    /// The verdict of [`StoreHealth::watch`]: false while the store is
    /// failing over.
    pub fn is_healthy(&self) -> bool {
        *self.healthy.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.healthy.subscribe()
    }

    /// Until `stop`: pings `store` whenever no call succeeded in the last
    /// `interval`, and turns unhealthy once every call failed for
    /// `failover`, healthy again after calls succeeded for `failover / 2`
    /// (so a flapping store does not bounce shards back and forth).
    pub async fn watch(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        failover: Duration,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut succeeding_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            if self.since_success() >= interval {
                let ping = tokio::time::timeout(interval.max(Duration::from_secs(1)), store.ping())
                    .await
                    .unwrap_or_else(|_| Err(StoreError::Backend("ping timed out".into())));
                self.record(&ping);
            }
            let healthy = self.is_healthy();
            match self.failing_for() {
                Some(failing) => {
                    succeeding_since = None;
                    if healthy && failing >= failover {
                        tracing::error!(
                            failing_ms = failing.as_millis() as u64,
                            "the store has failed every call: giving this node's shards up"
                        );
                        metrics::counter!("skuld_store_failovers_total").increment(1);
                        self.healthy.send_replace(false);
                    }
                }
                None if !healthy => {
                    let since = *succeeding_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= failover / 2 {
                        tracing::info!("the store answers again: taking shards again");
                        self.healthy.send_replace(true);
                    }
                }
                None => {}
            }
            metrics::gauge!("skuld_store_healthy").set(if self.is_healthy() { 1.0 } else { 0.0 });
        }
    }
}

/// A store whose every call is recorded in a [`StoreHealth`].
pub struct MonitoredStore {
    inner: Arc<dyn Store>,
    health: Arc<StoreHealth>,
}

impl MonitoredStore {
    pub fn new(inner: Arc<dyn Store>, health: Arc<StoreHealth>) -> Self {
        Self { inner, health }
    }

    fn seen<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        self.health.record(&result);
        result
    }
}

#[async_trait]
impl Store for MonitoredStore {
    async fn load(&self, key: &[u8]) -> Result<LoadedEntity, StoreError> {
        self.seen(self.inner.load(key).await)
    }

    async fn idempotency_lookup(
        &self,
        entity: &[u8],
        keys: Vec<String>,
    ) -> Result<Vec<Option<IdempotencyRecord>>, StoreError> {
        self.seen(self.inner.idempotency_lookup(entity, keys).await)
    }

    async fn idempotency_keys(
        &self,
        entity: &[u8],
        limit: usize,
    ) -> Result<Option<Vec<String>>, StoreError> {
        self.seen(self.inner.idempotency_keys(entity, limit).await)
    }

    async fn commit(&self, batch: WriteBatch) -> Result<Committed, StoreError> {
        self.seen(self.inner.commit(batch).await)
    }

    async fn fence(&self, shard: u32, epoch: u64) -> Result<bool, StoreError> {
        self.seen(self.inner.fence(shard, epoch).await)
    }

    async fn due_timers(
        &self,
        now_ms: u64,
        limit: usize,
        shards: Option<Vec<u32>>,
    ) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        self.seen(self.inner.due_timers(now_ms, limit, shards).await)
    }

    async fn purge_idempotency(
        &self,
        retention: Duration,
        shards: Option<Vec<u32>>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        self.seen(self.inner.purge_idempotency(retention, shards, limit).await)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.seen(self.inner.ping().await)
    }

    async fn list_summaries(
        &self,
        scope: &[u8],
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.seen(self.inner.list_summaries(scope, after, limit).await)
    }

    async fn journal(&self, key: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.seen(self.inner.journal(key).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_from_the_first_since_the_last_success() {
        let health = StoreHealth::new();
        assert_eq!(health.failing_for(), None);
        health.record::<()>(&Err(StoreError::Backend("down".into())));
        let first = health.failing_for();
        assert!(first.is_some());
        health.record::<()>(&Err(StoreError::Backend("still down".into())));
        assert!(health.failing_for() >= first);
        // The store refusing a stale owner is an answer, not a failure.
        health.record::<()>(&Err(StoreError::Fenced {
            shard: 1,
            epoch: 2,
            current: 3,
        }));
        assert_eq!(health.failing_for(), None);
    }
}
