//! Node-wide background work: the durable-timer scanner and the purge of
//! idempotency records and events past their retention.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use skuld_cluster::shards::ShardTable;
use skuld_cluster::{Store, StoreError, WallClock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::TimerTarget;

/// How often the background tasks run, and how long records are kept.
#[derive(Debug, Clone, Copy)]
pub struct BackgroundTiming {
    pub timer_scan_interval: Duration,
    pub idempotency_retention: Duration,
    pub event_retention: Duration,
    pub purge_interval: Duration,
}

/// Node-wide background work: the durable-timer scanner and the purge of
/// idempotency records and events past their retention.
pub struct Background {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Background {
    /// `shards`: in cluster mode, the routing table; timers are scanned
    /// only for the shards this node serves. `clock`: the one the runtimes
    /// stamp timers by (their `RuntimeConfig::clock`), which says when one
    /// is due.
    pub fn start(
        store: Arc<dyn Store>,
        targets: Vec<Arc<dyn TimerTarget>>,
        shards: Option<Arc<ShardTable>>,
        timing: BackgroundTiming,
        clock: WallClock,
    ) -> Self {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(scan_timers(
            Arc::clone(&store),
            targets,
            shards.clone(),
            timing.timer_scan_interval,
            clock,
            stop.clone(),
        ));
        tasks.spawn(purge_retained(store, shards, timing, stop.clone()));
        tasks.close();
        Self { stop, tasks }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

async fn scan_timers(
    store: Arc<dyn Store>,
    targets: Vec<Arc<dyn TimerTarget>>,
    shards: Option<Arc<ShardTable>>,
    interval: Duration,
    clock: WallClock,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        let now = u64::try_from(clock.now_ms()).unwrap_or(0);
        let owned = shards.as_ref().map(|table| table.local_shards());
        if owned.as_ref().is_some_and(Vec::is_empty) {
            continue;
        }
        // A store call in flight is dropped at shutdown: the scan only reads.
        let Some(scanned) = stop
            .run_until_cancelled(store.due_timers(now, 4_096, owned))
            .await
        else {
            return;
        };
        let due = match scanned {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "cannot read due timers");
                continue;
            }
        };
        for (encoded, _) in due {
            if !targets.iter().any(|target| target.wake_encoded(&encoded)) {
                tracing::warn!("timer for an entity of no known kind ignored");
            }
        }
    }
}

/// Deletes idempotency records and events past their retention, by the
/// store's clock (never this node's wall clock), and in cluster mode only
/// those of the shards this node owns.
async fn purge_retained(
    store: Arc<dyn Store>,
    shards: Option<Arc<ShardTable>>,
    timing: BackgroundTiming,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(timing.purge_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        let owned = shards.as_ref().map(|table| table.local_shards());
        if owned.as_ref().is_some_and(Vec::is_empty) {
            continue;
        }
        let finished = purge_backlog("idempotency", &stop, |chunk| {
            store.purge_idempotency(timing.idempotency_retention, owned.clone(), chunk)
        })
        .await
            && purge_backlog("events", &stop, |chunk| {
                store.purge_events(timing.event_retention, owned.clone(), chunk)
            })
            .await;
        if !finished {
            return;
        }
    }
}

/// Purges chunk after chunk until the backlog is gone, but shutdown does not
/// wait for it: a purge cut short deletes whole rows or none, and the next
/// start goes on from there. False when stopped.
async fn purge_backlog<F, P>(what: &'static str, stop: &CancellationToken, mut purge: P) -> bool
where
    P: FnMut(usize) -> F,
    F: Future<Output = Result<usize, StoreError>>,
{
    const PURGE_CHUNK: usize = 10_000;
    loop {
        let Some(purged) = stop.run_until_cancelled(purge(PURGE_CHUNK)).await else {
            return false;
        };
        match purged {
            Ok(purged) => {
                metrics::counter!("skuld_purged_total", "what" => what).increment(purged as u64);
                if purged < PURGE_CHUNK {
                    return true;
                }
            }
            Err(error) => {
                tracing::warn!(%error, what, "purge failed");
                return true;
            }
        }
    }
}
