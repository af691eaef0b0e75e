//! The node's routing table: for each shard, whether this node serves it
//! (and under which epoch), which other node does, or that it is moving.
//!
//! Requests read it on every call, so a lookup is one uncontended read lock
//! on one shard's slot; there is no lock across shards. The ownership
//! manager is the only writer.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use parking_lot::RwLock;
use tokio::sync::watch;

use crate::placement::shard_of;

/// Another node, as requests are forwarded to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node_id: String,
    /// The node's gRPC endpoint, e.g. `http://10.0.0.7:7400`.
    pub endpoint: String,
}

/// Where requests for a shard go right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This node owns the shard under `epoch` and serves it.
    Local { epoch: u64 },
    /// Another node owns it.
    Remote(Arc<Peer>),
    /// No node serves it at this moment: being handed off, its owner died
    /// and the lease has not run out yet, or the node lost its own lease.
    Moving,
}

struct Slot {
    route: RwLock<Route>,
    /// Requests admitted locally and not yet answered; a handoff waits for
    /// this to reach zero before it releases the shard.
    in_flight: AtomicUsize,
}

/// Routing table of one node.
pub struct ShardTable {
    slots: Box<[Slot]>,
    /// Bumped on every change, so that requests waiting out a handoff wake up.
    changes: watch::Sender<u64>,
    /// Nothing is served locally after this instant (nanoseconds after
    /// `base`): the end of the lease's safe window, pushed forward by every
    /// confirmed keep-alive. A process stopped or starved past it (SIGSTOP,
    /// a long stall) refuses at once when it runs again, before its
    /// ownership manager has noticed, so it serves no stale read. `Instant`
    /// is the monotonic clock, which does not advance while the machine is
    /// suspended or a VM is paused by its host: such a pause is not seen
    /// here, and only the store's fence (writes) covers it.
    serve_until_ns: AtomicU64,
    base: Instant,
}

/// Proof that a request is being served locally; the shard cannot be
/// released until it is dropped.
pub struct Serving {
    table: Arc<ShardTable>,
    shard: u32,
    pub epoch: u64,
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(slot) = self.table.slots.get(self.shard as usize) {
            slot.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl ShardTable {
    /// A table of `shard_count` shards, all moving until claimed.
    pub fn new(shard_count: u32) -> Arc<Self> {
        let slots = (0..shard_count.max(1))
            .map(|_| Slot {
                route: RwLock::new(Route::Moving),
                in_flight: AtomicUsize::new(0),
            })
            .collect();
        let (changes, _) = watch::channel(0);
        Arc::new(Self {
            slots,
            changes,
            serve_until_ns: AtomicU64::new(u64::MAX),
            base: Instant::now(),
        })
    }

    pub fn shard_count(&self) -> u32 {
        u32::try_from(self.slots.len()).unwrap_or(u32::MAX)
    }

    pub fn shard_of(&self, key: &[u8]) -> u32 {
        shard_of(key, self.shard_count())
    }

    pub fn route(&self, shard: u32) -> Route {
        self.slots
            .get(shard as usize)
            .map_or(Route::Moving, |slot| slot.route.read().clone())
    }

    /// The epoch under which this node serves `shard`, if it does.
    pub fn local_epoch(&self, shard: u32) -> Option<u64> {
        match self.route(shard) {
            Route::Local { epoch } => Some(epoch),
            _ => None,
        }
    }

    /// `local_epoch`, and only within the lease's safe window (as `serve`
    /// checks): for work that reaches outside the store, such as a push to
    /// a sales channel, which no fence stops once the window has passed.
    pub fn serving_epoch(&self, shard: u32) -> Option<u64> {
        if self.nanos_since_base(Instant::now()) >= self.serve_until_ns.load(Ordering::Acquire) {
            return None;
        }
        self.local_epoch(shard)
    }

    /// Starts serving a request locally if this node owns the shard. The
    /// check and the count happen under the slot's lock, so a handoff that
    /// has switched the route away sees every request it must wait for.
    pub fn serve(self: &Arc<Self>, shard: u32) -> Option<Serving> {
        if self.nanos_since_base(Instant::now()) >= self.serve_until_ns.load(Ordering::Acquire) {
            return None;
        }
        let slot = self.slots.get(shard as usize)?;
        let route = slot.route.read();
        let Route::Local { epoch } = *route else {
            return None;
        };
        slot.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(Serving {
            table: Arc::clone(self),
            shard,
            epoch,
        })
    }

    /// Local shards may be served until `until` (the lease's safe end);
    /// wakes waiting requests when that ends a lapse.
    pub fn serve_until(&self, until: Instant) {
        let until = self.nanos_since_base(until);
        let before = self.serve_until_ns.swap(until, Ordering::AcqRel);
        if before <= self.nanos_since_base(Instant::now()) {
            self.changes.send_modify(|version| *version += 1);
        }
    }

    fn nanos_since_base(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Replaces a shard's route and wakes waiting requests.
    pub fn set(&self, shard: u32, route: Route) {
        if let Some(slot) = self.slots.get(shard as usize) {
            let mut current = slot.route.write();
            if *current == route {
                return;
            }
            *current = route;
        }
        self.changes.send_modify(|version| *version += 1);
    }

    /// Requests served locally for `shard` right now.
    pub fn in_flight(&self, shard: u32) -> usize {
        self.slots
            .get(shard as usize)
            .map_or(0, |slot| slot.in_flight.load(Ordering::Acquire))
    }

    /// Waits until no request is being served for `shard`, at most `timeout`;
    /// true when it got there.
    pub async fn quiesce(&self, shard: u32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.in_flight(shard) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Shards this node serves.
    pub fn local_shards(&self) -> Vec<u32> {
        (0..self.shard_count())
            .filter(|&shard| self.local_epoch(shard).is_some())
            .collect()
    }

    /// A receiver that changes whenever any route changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_local_shards_are_served_and_counted() {
        let table = ShardTable::new(4);
        assert!(table.serve(1).is_none());
        table.set(1, Route::Local { epoch: 7 });
        let serving = table.serve(1).unwrap();
        assert_eq!(serving.epoch, 7);
        assert_eq!(table.in_flight(1), 1);
        assert_eq!(table.local_shards(), vec![1]);
        drop(serving);
        assert_eq!(table.in_flight(1), 0);
        assert!(table.serve(9).is_none());
    }

    #[test]
    fn nothing_is_served_once_the_lease_window_has_passed() {
        let table = ShardTable::new(1);
        table.set(0, Route::Local { epoch: 3 });
        table.serve_until(Instant::now() + Duration::from_secs(60));
        assert!(table.serve(0).is_some());
        // As after a pause: the window ended before anyone noticed.
        table.serve_until(Instant::now() - Duration::from_millis(1));
        assert!(table.serve(0).is_none());
        assert_eq!(table.local_epoch(0), Some(3), "the claim itself is kept");
        let mut changes = table.subscribe();
        changes.borrow_and_update();
        table.serve_until(Instant::now() + Duration::from_secs(60));
        assert!(changes.has_changed().unwrap(), "waiting requests are woken");
        assert!(table.serve(0).is_some());
    }

    #[tokio::test]
    async fn quiesce_waits_for_requests_in_flight() {
        let table = ShardTable::new(2);
        table.set(0, Route::Local { epoch: 1 });
        let serving = table.serve(0).unwrap();
        table.set(0, Route::Moving);
        assert!(
            table.serve(0).is_none(),
            "a moving shard admits nothing new"
        );
        assert!(!table.quiesce(0, Duration::from_millis(30)).await);
        let waiter = {
            let table = Arc::clone(&table);
            tokio::spawn(async move { table.quiesce(0, Duration::from_secs(5)).await })
        };
        drop(serving);
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn changes_wake_subscribers() {
        let table = ShardTable::new(2);
        let mut changes = table.subscribe();
        table.set(1, Route::Local { epoch: 3 });
        changes.changed().await.unwrap();
        table.set(1, Route::Local { epoch: 3 });
        assert!(
            !changes.has_changed().unwrap(),
            "an unchanged route is not a change"
        );
    }
}
