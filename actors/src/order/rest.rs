//! Callers waiting for an order to come to rest on this node.
//!
//! A client's order mutation is answered once its saga is at rest. Polling
//! the order answers late by up to the poll's pause and costs a read each
//! time; instead the caller registers here and the order's actor hands it
//! the state from the first write that leaves the order at rest. Only the
//! node that runs the order can do that: a caller whose order runs on
//! another node (cluster mode) is never woken here and keeps polling.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::{Order, OrderKey};

struct Waiter {
    id: u64,
    /// Woken only by a state newer than this version: the caller's own
    /// mutation was decided at it and left the order moving.
    after_version: u64,
    wake: oneshot::Sender<Order>,
}

/// The callers waiting per order.
#[derive(Default)]
pub struct RestWaiters {
    waiting: Mutex<HashMap<OrderKey, Vec<Waiter>>>,
    next_id: AtomicU64,
}

impl RestWaiters {
    /// Registers a caller for the first state at rest after `after_version`.
    pub fn watch(self: &Arc<Self>, key: &OrderKey, after_version: u64) -> RestWatch {
        let (wake, woken) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.waiting
            .lock()
            .entry(key.clone())
            .or_default()
            .push(Waiter {
                id,
                after_version,
                wake,
            });
        RestWatch {
            waiters: Arc::clone(self),
            key: key.clone(),
            id,
            woken: Some(woken),
        }
    }

    /// The order as just written (or read): wakes its callers if it is at
    /// rest and newer than what each of them saw.
    pub fn offer(&self, key: &OrderKey, order: &Order) {
        if !order.status.is_some_and(|status| status.at_rest()) {
            return;
        }
        let mut waiting = self.waiting.lock();
        let Some(waiters) = waiting.get_mut(key) else {
            return;
        };
        let (due, later): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(waiters)
            .into_iter()
            .partition(|waiter| order.version > waiter.after_version);
        if later.is_empty() {
            waiting.remove(key);
        } else {
            *waiters = later;
        }
        drop(waiting);
        for waiter in due {
            // The caller may have stopped waiting; nothing to do then.
            let _ = waiter.wake.send(order.clone());
        }
    }

    fn forget(&self, key: &OrderKey, id: u64) {
        let mut waiting = self.waiting.lock();
        if let Some(waiters) = waiting.get_mut(key) {
            waiters.retain(|waiter| waiter.id != id);
            if waiters.is_empty() {
                waiting.remove(key);
            }
        }
    }
}

/// One caller's registration; unregistered when dropped.
pub struct RestWatch {
    waiters: Arc<RestWaiters>,
    key: OrderKey,
    id: u64,
    woken: Option<oneshot::Receiver<Order>>,
}

impl RestWatch {
    /// The order once at rest; `None` once it was handed over (or can no
    /// longer be), so the caller polls. Cancel-safe.
    pub async fn rested(&mut self) -> Option<Order> {
        let woken = self.woken.as_mut()?;
        let order = woken.await.ok();
        self.woken = None;
        order
    }
}

impl Drop for RestWatch {
    fn drop(&mut self) {
        self.waiters.forget(&self.key, self.id);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::order::OrderStatus;

    fn order(version: u64, status: OrderStatus) -> Order {
        Order {
            version,
            status: Some(status),
            ..Order::default()
        }
    }

    #[tokio::test]
    async fn only_a_newer_state_at_rest_wakes_a_caller_and_a_dropped_watch_is_forgotten() {
        let waiters = Arc::new(RestWaiters::default());
        let key = OrderKey::new("t", "o1").unwrap();
        let mut watch = waiters.watch(&key, 3);
        waiters.offer(&key, &order(4, OrderStatus::Reserving));
        // The caller's own version at rest (a read of an older state): no.
        waiters.offer(&key, &order(3, OrderStatus::Held));
        assert!(watch.woken.as_mut().unwrap().try_recv().is_err());
        waiters.offer(&key, &order(5, OrderStatus::Held));
        assert_eq!(watch.rested().await.map(|o| o.version), Some(5));
        assert_eq!(watch.rested().await, None);
        let other = waiters.watch(&key, 9);
        drop(other);
        drop(watch);
        assert!(waiters.waiting.lock().is_empty());
    }
}
