//! Whether this node may serve against its store: part of ownership in
//! cluster mode.
//!
//! Two things take a node out of placement while it keeps forwarding:
//!
//! - **The store does not answer.** An owner that can reach etcd but not
//!   PostgreSQL would otherwise keep its shards forever, failing every write
//!   for its keys. [`MonitoredStore`] wraps the store and records each call's
//!   outcome; once every call has failed for the failover time the node is
//!   unhealthy.
//! - **Its clock disagrees with the store's.** Reservation expiry, return
//!   windows and overdue timers are decided by the owner's wall clock; a
//!   node a day ahead would expire every cart it owns. The health task
//!   compares the node's clock with PostgreSQL's on every ping and takes the
//!   node out while the difference, less half the round trip, exceeds the
//!   allowed offset (as CockroachDB does with its maximum clock offset).
//!
//! The node's health task ([`StoreHealth::watch`]) pings the store every
//! interval and publishes a [`Verdict`]; the node announces it in etcd, so
//! placement moves its shards to healthy nodes, and takes shards again once
//! it has been healthy for half the failover time.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::retention_clock::wall_ms;
use super::{
    Committed, IdempotencyRecord, LoadedEntity, ShardEvents, Store, StoreError, StoredEvent,
    SummaryRow, WriteBatch,
};
use crate::WallClock;

/// Why a node may or may not serve against its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not judged yet: the node has not heard from its store since it
    /// started. It takes no shards until it has.
    Starting,
    Healthy,
    /// Every call to the store has failed for at least the failover time.
    Failing {
        for_ms: u64,
    },
    /// The node's wall clock is this far from the store's (positive: ahead).
    ClockOffset {
        offset_ms: i64,
        allowed_ms: u64,
    },
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Starting => write!(f, "the store has not answered yet"),
            Verdict::Healthy => write!(f, "the store answers"),
            Verdict::Failing { for_ms } => {
                write!(f, "every call to the store has failed for {for_ms} ms")
            }
            Verdict::ClockOffset {
                offset_ms,
                allowed_ms,
            } => write!(
                f,
                "this node's clock is {:.1} s {} the store's (at most {allowed_ms} ms allowed)",
                offset_ms.unsigned_abs() as f64 / 1000.0,
                if *offset_ms > 0 { "ahead of" } else { "behind" }
            ),
        }
    }
}

/// How the health task judges.
#[derive(Debug, Clone, Copy)]
pub struct HealthPolicy {
    /// Every call failing for this long makes the node unhealthy.
    pub failover: Duration,
    /// How often the store is pinged.
    pub interval: Duration,
    /// The largest clock difference to the store allowed; `None` trusts
    /// the node's clock.
    pub max_clock_offset: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
struct Calls {
    /// The first failure of any call since the last success.
    failing_since: Option<Instant>,
    /// The first failed write (commit or fence) since the last write that
    /// went through: a store that answers reads but refuses writes (a
    /// read-only replica behind a stale address) is failing too.
    writes_failing_since: Option<Instant>,
}

/// Outcomes of store calls, shared by the store wrapper and the health task.
#[derive(Debug)]
pub struct StoreHealth {
    calls: Mutex<Calls>,
    verdict: watch::Sender<Verdict>,
}

impl StoreHealth {
    pub fn new() -> Arc<Self> {
        let (verdict, _) = watch::channel(Verdict::Starting);
        Arc::new(Self {
            calls: Mutex::new(Calls {
                failing_since: None,
                writes_failing_since: None,
            }),
            verdict,
        })
    }

    pub fn record<T>(&self, result: &Result<T, StoreError>) {
        let mut calls = self.calls.lock();
        match result {
            // A fenced write is the store answering: another node owns it.
            Ok(_) | Err(StoreError::Fenced { .. }) => calls.failing_since = None,
            Err(_) => {
                calls.failing_since.get_or_insert_with(Instant::now);
            }
        }
    }

    /// A write's outcome (see [`Calls::writes_failing_since`]).
    pub fn record_write<T>(&self, result: &Result<T, StoreError>) {
        let mut calls = self.calls.lock();
        match result {
            Ok(_) | Err(StoreError::Fenced { .. }) => calls.writes_failing_since = None,
            Err(_) => {
                calls.writes_failing_since.get_or_insert_with(Instant::now);
            }
        }
    }

    /// How long every call, or every write, has failed, if the last one
    /// did.
    pub fn failing_for(&self) -> Option<Duration> {
        let calls = self.calls.lock();
        let since = match (calls.failing_since, calls.writes_failing_since) {
            (Some(any), Some(writes)) => Some(any.min(writes)),
            (any, writes) => any.or(writes),
        };
        since.map(|since| since.elapsed())
    }

    /// The verdict of [`StoreHealth::watch`].
    pub fn verdict(&self) -> Verdict {
        *self.verdict.borrow()
    }

    pub fn is_healthy(&self) -> bool {
        self.verdict() == Verdict::Healthy
    }

    pub fn subscribe(&self) -> watch::Receiver<Verdict> {
        self.verdict.subscribe()
    }

    /// Until `stop`: pings `store` every interval, and publishes the
    /// verdict: unhealthy once every call failed for the failover time or
    /// the clock is off by more than allowed, healthy again after both were
    /// fine for half the failover time (so a flapping store does not bounce
    /// shards back and forth). The system clock is compared with the
    /// store's.
    pub async fn watch(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        policy: HealthPolicy,
        stop: CancellationToken,
    ) {
        self.watch_with_clock(store, policy, WallClock::system(), stop)
            .await;
    }

    /// [`StoreHealth::watch`] comparing the node's wall clock `clock` (the
    /// simulation's, skewed) with the store's.
    pub async fn watch_with_clock(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        policy: HealthPolicy,
        clock: WallClock,
        stop: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(policy.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fine_since: Option<Instant> = None;
        let mut offset_ms: Option<i64> = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => return,
            }
            let sent_wall = wall_ms(&clock);
            let sent = Instant::now();
            let ping =
                tokio::time::timeout(policy.interval.max(Duration::from_secs(1)), store.ping())
                    .await
                    .unwrap_or_else(|_| Err(StoreError::Backend("ping timed out".into())));
            self.record(&ping);
            if let Ok(Some(store_now)) = &ping {
                let store_now = *store_now;
                let round_trip = millis(sent.elapsed());
                let local_mid = i128::from(sent_wall) + i128::from(round_trip / 2);
                let offset = i64::try_from(local_mid - i128::from(store_now)).unwrap_or(i64::MAX);
                // What the round trip cannot explain.
                let beyond = offset.unsigned_abs().saturating_sub(round_trip / 2);
                offset_ms = Some(if beyond == 0 { 0 } else { offset });
                metrics::gauge!("skuld_clock_offset_ms").set(offset as f64);
            }
            let problem = match (self.failing_for(), policy.max_clock_offset, offset_ms) {
                (Some(failing), _, _) if failing >= policy.failover => Some(Verdict::Failing {
                    for_ms: millis(failing),
                }),
                (_, Some(allowed), Some(offset)) if offset.unsigned_abs() > millis(allowed) => {
                    Some(Verdict::ClockOffset {
                        offset_ms: offset,
                        allowed_ms: millis(allowed),
                    })
                }
                _ => None,
            };
            let current = self.verdict();
            match problem {
                Some(problem) => {
                    fine_since = None;
                    // Counted and logged once per kind of problem; the
                    // figures in it change with every ping.
                    if std::mem::discriminant(&current) != std::mem::discriminant(&problem) {
                        tracing::error!(%problem, "this node may not serve against its store: it takes no shards");
                        metrics::counter!("skuld_store_failovers_total").increment(1);
                    }
                    self.verdict.send_replace(problem);
                }
                // Still failing, but not yet for the failover time.
                None if self.failing_for().is_some() => fine_since = None,
                // The first good ping after start: healthy at once.
                None if current == Verdict::Starting => {
                    self.verdict.send_replace(Verdict::Healthy);
                }
                None if current != Verdict::Healthy => {
                    let since = *fine_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= policy.failover / 2 {
                        tracing::info!(
                            "the store answers and the clocks agree: taking shards again"
                        );
                        self.verdict.send_replace(Verdict::Healthy);
                    }
                }
                None => {}
            }
            metrics::gauge!("skuld_store_healthy").set(if self.is_healthy() { 1.0 } else { 0.0 });
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
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
        let result = self.inner.commit(batch).await;
        self.health.record_write(&result);
        self.seen(result)
    }

    async fn fence(&self, shard: u32, epoch: u64) -> Result<bool, StoreError> {
        let result = self.inner.fence(shard, epoch).await;
        self.health.record_write(&result);
        self.seen(result)
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

    async fn ping(&self) -> Result<Option<u64>, StoreError> {
        // A ping checks that the store takes writes, so one that answers
        // clears an earlier run of failed writes too (there may be no new
        // write to do it: a node without shards makes none).
        let result = self.inner.ping().await;
        if result.is_ok() {
            self.health.record_write(&result);
        }
        self.seen(result)
    }

    async fn list_summaries(
        &self,
        scope: &[u8],
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.seen(self.inner.list_summaries(scope, after, limit).await)
    }

    async fn scan_summaries(
        &self,
        scope_prefix: &[u8],
        after: Option<(Vec<u8>, Vec<u8>)>,
        limit: usize,
    ) -> Result<Vec<SummaryRow>, StoreError> {
        self.seen(self.inner.scan_summaries(scope_prefix, after, limit).await)
    }

    async fn journal(&self, key: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.seen(self.inner.journal(key).await)
    }

    async fn read_events(
        &self,
        after: Vec<(u32, u64)>,
        per_shard: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.seen(self.inner.read_events(after, per_shard).await)
    }

    async fn shard_events(
        &self,
        shard: u32,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.seen(self.inner.shard_events(shard, after, limit).await)
    }

    async fn event_bounds(&self) -> Result<Vec<ShardEvents>, StoreError> {
        self.seen(self.inner.event_bounds().await)
    }

    async fn entity_events(
        &self,
        entity: &[u8],
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.seen(self.inner.entity_events(entity, after, limit).await)
    }

    async fn purge_events(
        &self,
        retention: Duration,
        shards: Option<Vec<u32>>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        self.seen(self.inner.purge_events(retention, shards, limit).await)
    }

    async fn put_record(&self, kind: &str, id: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let result = self.inner.put_record(kind, id, value).await;
        self.health.record_write(&result);
        self.seen(result)
    }

    async fn put_records(
        &self,
        kind: &str,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let result = self.inner.put_records(kind, records).await;
        self.health.record_write(&result);
        self.seen(result)
    }

    async fn get_record(&self, kind: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.seen(self.inner.get_record(kind, id).await)
    }

    async fn delete_record(&self, kind: &str, id: &str) -> Result<bool, StoreError> {
        let result = self.inner.delete_record(kind, id).await;
        self.health.record_write(&result);
        self.seen(result)
    }

    async fn list_records(
        &self,
        kind: &str,
        prefix: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.seen(self.inner.list_records(kind, prefix, after, limit).await)
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

    #[test]
    fn failing_writes_count_even_while_reads_answer() {
        let health = StoreHealth::new();
        health.record_write::<()>(&Err(StoreError::Backend("read-only".into())));
        health.record::<()>(&Err(StoreError::Backend("read-only".into())));
        // A read (a ping) answers: every call is not failing, writes are.
        health.record::<()>(&Ok(()));
        assert!(health.failing_for().is_some());
        health.record_write::<()>(&Ok(()));
        health.record::<()>(&Ok(()));
        assert_eq!(health.failing_for(), None);
    }

    #[test]
    fn verdicts_say_what_is_wrong() {
        let ahead = Verdict::ClockOffset {
            offset_ms: 86_400_000,
            allowed_ms: 1_000,
        };
        assert_eq!(
            ahead.to_string(),
            "this node's clock is 86400.0 s ahead of the store's (at most 1000 ms allowed)"
        );
        assert!(Verdict::Failing { for_ms: 2_000 }
            .to_string()
            .contains("2000 ms"));
    }
}
