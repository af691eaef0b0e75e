//! Sales channels on the node: their definitions in the store's records
//! ([`definitions`], read by every node through the [`catalog`]), the
//! [`projection`] that marks the push keys a position change touches, and
//! the push [`worker`] that sends each channel what it may sell through its
//! connector (skuld-connectors), with dead letters and drift in the
//! [`ledger`]. docs/channels.md has the contract.

pub mod catalog;
pub mod credentials;
pub mod definitions;
pub mod keys;
pub mod ledger;
pub mod marks;
pub mod operations;
pub mod projection;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::sinks::{self, SinkContext};
use projection::Projection;
use worker::{Worker, WorkerContext};

/// How often the node looks whether any channel is defined (the projection
/// runs only while one is).
const PROJECTION_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The node's channel tasks: the projection over the event stream and the
/// push worker.
pub struct Channels {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Channels {
    pub fn start(sink_context: SinkContext, worker: WorkerContext) -> Self {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let projection = Arc::new(Projection {
            store: Arc::clone(&worker.store),
            catalog: Arc::clone(&worker.catalog),
            shard_count: worker.shard_count,
            marked: Arc::clone(&worker.marked),
        });
        tasks.spawn(run_projection(
            projection,
            sink_context,
            stop.clone(),
            tasks.clone(),
        ));
        tasks.spawn(Worker::run(worker, stop.clone()));
        Self { stop, tasks }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Runs the projection sink while any channel is defined. It starts from
/// each shard's cursor (from the start of the retained stream the first
/// time), so the keys of every position changed within the retention are
/// marked once when the first channel appears.
async fn run_projection(
    projection: Arc<Projection>,
    context: SinkContext,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let mut running: Option<(CancellationToken, tokio::task::JoinHandle<()>)> = None;
    loop {
        let wanted = !projection.catalog.is_empty();
        match (&running, wanted) {
            (None, true) => {
                let token = stop.child_token();
                let task = tasks.spawn(sinks::run_sink(
                    Arc::clone(&projection) as Arc<dyn sinks::Sink>,
                    context.clone(),
                    token.clone(),
                ));
                running = Some((token, task));
            }
            (Some((token, task)), wanted) if !wanted || task.is_finished() => {
                token.cancel();
                running = None;
            }
            _ => {}
        }
        tokio::select! {
            () = tokio::time::sleep(PROJECTION_CHECK_EVERY) => {}
            () = stop.cancelled() => return,
        }
    }
}
