//! Group commit: one task owns the store's write path and merges the writes
//! that queue up while a commit is in flight into the next commit.
//!
//! Under light load each write commits alone (lowest latency); under heavy
//! load a batch grows to whatever arrived during the previous fsync, so many
//! actors' changes share one durable write. Callers wait for their batch.
//!
//! A networked store (PostgreSQL) spends most of a commit waiting on round
//! trips, so the writer may keep several commits in flight. That never
//! reorders one entity's writes: an actor has at most one write in flight.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

use super::{EntityWrite, Store, StoreError, WriteBatch};

/// Tuning of the group-commit writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Writes queued for the next commit at most; senders wait beyond it.
    pub queue_capacity: usize,
    /// Entity writes merged into one commit at most.
    pub max_batch_entities: usize,
    /// Commits in flight at once (1: strictly one after the other).
    pub concurrent_commits: usize,
    /// Test-only fault injection: sleep this long before every commit, to
    /// make queues fill up deterministically in overload tests.
    pub commit_delay: Option<Duration>,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 16_384,
            max_batch_entities: 4_096,
            concurrent_commits: 1,
            commit_delay: None,
        }
    }
}

struct PendingWrite {
    write: EntityWrite,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Handle to the group-commit task; cheap to clone.
#[derive(Clone)]
pub struct GroupCommitWriter {
    queue: mpsc::Sender<PendingWrite>,
    /// How many events this writer has made durable; event subscribers on
    /// this node wait on it instead of polling the store.
    events_committed: watch::Receiver<u64>,
}

impl GroupCommitWriter {
    /// Starts the writer task. It stops once every handle is dropped and the
    /// queue is drained.
    pub fn start(store: Arc<dyn Store>, config: WriterConfig) -> (Self, JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let (events_sender, events_committed) = watch::channel(0);
        let task = tokio::spawn(run_writer(store, config, receiver, events_sender));
        (
            Self {
                queue,
                events_committed,
            },
            task,
        )
    }

    /// Changes whenever a commit of this writer made events durable.
    pub fn events_committed(&self) -> watch::Receiver<u64> {
        self.events_committed.clone()
    }

    /// Queues `write` for the next commit and waits until it is durable.
    pub async fn write(&self, write: EntityWrite) -> Result<(), StoreError> {
        let (done, result) = oneshot::channel();
        self.queue
            .send(PendingWrite { write, done })
            .await
            .map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
    }
}

async fn run_writer(
    store: Arc<dyn Store>,
    config: WriterConfig,
    mut receiver: mpsc::Receiver<PendingWrite>,
    events_committed: watch::Sender<u64>,
) {
    let events_committed = Arc::new(events_committed);
    let max_batch = config.max_batch_entities.max(1);
    let slots = config.concurrent_commits.max(1);
    let in_flight = Arc::new(Semaphore::new(slots));
    let mut pending = Vec::with_capacity(max_batch);
    loop {
        // Take a commit slot first: while every slot is busy, writes keep
        // queueing and the next batch grows.
        let Ok(slot) = Arc::clone(&in_flight).acquire_owned().await else {
            break;
        };
        if receiver.recv_many(&mut pending, max_batch).await == 0 {
            break;
        }
        if let Some(delay) = config.commit_delay {
            tokio::time::sleep(delay).await;
        }
        let mut batch = WriteBatch {
            entities: Vec::with_capacity(pending.len()),
        };
        let mut waiters = Vec::with_capacity(pending.len());
        let mut shards = Vec::with_capacity(pending.len());
        for PendingWrite { write, done } in pending.drain(..) {
            shards.push((write.shard, write.epoch));
            batch.entities.push(write);
            waiters.push(done);
        }
        let store = Arc::clone(&store);
        let events_committed = Arc::clone(&events_committed);
        let commit = async move {
            commit_and_answer(store.as_ref(), batch, waiters, shards, &events_committed).await;
            drop(slot);
        };
        if slots == 1 {
            commit.await;
        } else {
            tokio::spawn(commit);
        }
    }
    // Flush: wait for the commits still in flight.
    let _ = in_flight
        .acquire_many(u32::try_from(slots).unwrap_or(u32::MAX))
        .await;
}

async fn commit_and_answer(
    store: &dyn Store,
    batch: WriteBatch,
    waiters: Vec<oneshot::Sender<Result<(), StoreError>>>,
    shards: Vec<(u32, u64)>,
    events_committed: &watch::Sender<u64>,
) {
    let size = batch.entities.len();
    let events: Vec<usize> = batch
        .entities
        .iter()
        .map(|write| write.events.len())
        .collect();
    let started = Instant::now();
    let result = store.commit(batch).await;
    metrics::histogram!("skuld_store_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("skuld_store_commit_batch_entities").record(size as f64);
    match result {
        Ok(committed) => {
            let mut answers: Vec<Result<(), StoreError>> = vec![Ok(()); waiters.len()];
            for &(index, current) in &committed.fenced {
                metrics::counter!("skuld_store_fenced_writes_total").increment(1);
                if let (Some(answer), Some(&(shard, epoch))) =
                    (answers.get_mut(index), shards.get(index))
                {
                    *answer = Err(StoreError::Fenced {
                        shard,
                        epoch,
                        current,
                    });
                }
            }
            let written: usize = events
                .iter()
                .zip(&answers)
                .filter(|(_, answer)| answer.is_ok())
                .map(|(count, _)| count)
                .sum();
            if written > 0 {
                metrics::counter!("skuld_events_written_total").increment(written as u64);
                events_committed.send_modify(|total| *total += written as u64);
            }
            for (waiter, answer) in waiters.into_iter().zip(answers) {
                // A waiter that went away (its request was cancelled) needs no reply.
                let _ = waiter.send(answer);
            }
        }
        Err(error) => {
            metrics::counter!("skuld_store_commit_errors_total").increment(1);
            tracing::error!(%error, entities = size, "group commit failed");
            for waiter in waiters {
                let _ = waiter.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_all_become_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let (writer, _task) = GroupCommitWriter::start(Arc::clone(&store), WriterConfig::default());
        let mut handles = Vec::new();
        for index in 0..200u64 {
            let writer = writer.clone();
            handles.push(tokio::spawn(async move {
                let key = format!("entity-{}", index % 10).into_bytes();
                writer
                    .write(EntityWrite {
                        key,
                        journal: vec![(index + 1, vec![0])],
                        ..EntityWrite::default()
                    })
                    .await
            }));
        }
        for handle in handles {
            handle.await.unwrap().unwrap();
        }
        let mut total = 0;
        for entity in 0..10 {
            total += store
                .journal(format!("entity-{entity}").as_bytes())
                .await
                .unwrap()
                .len();
        }
        assert_eq!(total, 200);
    }
}
