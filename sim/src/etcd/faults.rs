//! The faults a nemesis injects into the simulated etcd, through a
//! cloneable handle that any host (or the outer step loop) may hold.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tonic::Status;

use super::Shared;

/// The fault switches, read by every request.
#[derive(Debug)]
pub(crate) struct FaultState {
    leaderless: watch::Sender<bool>,
    /// How many of the next writes apply but answer with an error.
    dropped_replies: AtomicU64,
    delay: Mutex<Duration>,
    /// Bumped to end every open watch stream.
    watch_cuts: watch::Sender<u64>,
}

impl Default for FaultState {
    fn default() -> Self {
        Self {
            leaderless: watch::channel(false).0,
            dropped_replies: AtomicU64::new(0),
            delay: Mutex::new(Duration::ZERO),
            watch_cuts: watch::channel(0).0,
        }
    }
}

impl FaultState {
    pub fn leaderless(&self) -> bool {
        *self.leaderless.borrow()
    }

    pub fn subscribe_leaderless(&self) -> watch::Receiver<bool> {
        self.leaderless.subscribe()
    }

    pub fn subscribe_watch_cuts(&self) -> watch::Receiver<u64> {
        self.watch_cuts.subscribe()
    }

    pub fn delay(&self) -> Duration {
        *self.delay.lock()
    }

    /// Takes one dropped reply if any is pending.
    pub fn take_dropped_reply(&self) -> bool {
        self.dropped_replies
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    }
}

/// Injects faults into one simulated etcd.
#[derive(Clone)]
pub struct EtcdFaults {
    shared: Arc<Shared>,
}

impl EtcdFaults {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Loses (true) or regains (false) the leader. Without one, writes and
    /// every request that asks for a leader fail Unavailable "etcdserver:
    /// no leader", streams that asked for one end so, and no lease expires.
    /// A leader regained is a new one: see [`EtcdFaults::change_leader`].
    pub fn set_leaderless(&self, leaderless: bool) {
        let was = self.shared.faults.leaderless.send_replace(leaderless);
        if was && !leaderless {
            self.shared.change_leader();
        }
    }

    /// The next `count` writes (put, delete, txn with a write, lease grant
    /// and revoke) apply, then answer Unavailable "etcdserver: request
    /// timed out": the client cannot tell whether they happened.
    pub fn drop_replies_after_apply(&self, count: u64) {
        self.shared
            .faults
            .dropped_replies
            .store(count, Ordering::Release);
    }

    /// Every request (and keep-alive answer) waits `delay` before it is
    /// handled; zero ends the slowness.
    pub fn set_delay(&self, delay: Duration) {
        *self.shared.faults.delay.lock() = delay;
    }

    /// Ends every open watch stream with an error (as a cut connection
    /// does); watches opened afterwards work.
    pub fn cut_watches(&self) {
        self.shared.faults.watch_cuts.send_modify(|cuts| *cuts += 1);
    }

    /// A leader election: every lease gets its full TTL again (plus one
    /// election timeout), as etcd's new leader gives them.
    pub fn change_leader(&self) {
        self.shared.change_leader();
    }

    /// Compacts the history below `revision`: ranges there fail and
    /// watches that need it are cancelled with the compact revision.
    pub fn compact(&self, revision: i64) -> Result<(), Status> {
        let current = {
            let mut state = self.shared.state.lock();
            state.mvcc.compact(revision)?;
            state.mvcc.revision()
        };
        self.shared.announce(current);
        Ok(())
    }
}
