//! The bounded per-key queue in front of a position actor.
//!
//! ractor mailboxes are unbounded and deliver one message per `handle` call.
//! Commands therefore wait here instead: a full queue refuses at once, and
//! the actor takes everything queued in one go, so a hot position applies
//! all waiting commands before a single durable write (group commit).

use std::collections::VecDeque;

use parking_lot::Mutex;

pub(crate) enum Push<T> {
    /// Queued; `wake` is true when the actor must be told to drain.
    Queued { wake: bool },
    /// The queue is at capacity; the item is handed back.
    Full(T),
    /// The actor passivated; the item is handed back to go to a new actor.
    Closed(T),
}

struct Inner<T> {
    queue: VecDeque<T>,
    /// A drain is pending: no need to wake the actor again.
    scheduled: bool,
    /// The actor stopped taking items.
    closed: bool,
}

pub(crate) struct Mailbox<T> {
    capacity: usize,
    inner: Mutex<Inner<T>>,
}

impl<T> Mailbox<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                scheduled: false,
                closed: false,
            }),
        }
    }

    pub(crate) fn push(&self, item: T) -> Push<T> {
        let mut inner = self.inner.lock();
        if inner.closed {
            return Push::Closed(item);
        }
        if inner.queue.len() >= self.capacity {
            return Push::Full(item);
        }
        inner.queue.push_back(item);
        let wake = !inner.scheduled;
        inner.scheduled = true;
        Push::Queued { wake }
    }

    /// Takes everything queued. Items pushed afterwards wake the actor again.
    pub(crate) fn take_all(&self) -> VecDeque<T> {
        let mut inner = self.inner.lock();
        inner.scheduled = false;
        std::mem::take(&mut inner.queue)
    }

    /// Closes the mailbox if it is empty; a closed mailbox refuses pushes.
    pub(crate) fn close_if_empty(&self) -> bool {
        let mut inner = self.inner.lock();
        if inner.queue.is_empty() {
            inner.closed = true;
        }
        inner.closed
    }

    /// Closes the mailbox and hands back whatever was still queued.
    pub(crate) fn close(&self) -> VecDeque<T> {
        let mut inner = self.inner.lock();
        inner.closed = true;
        std::mem::take(&mut inner.queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_once_per_drain_and_refuses_when_full_or_closed() {
        let mailbox = Mailbox::new(2);
        assert!(matches!(mailbox.push(1), Push::Queued { wake: true }));
        assert!(matches!(mailbox.push(2), Push::Queued { wake: false }));
        assert!(matches!(mailbox.push(3), Push::Full(3)));
        assert_eq!(mailbox.take_all().len(), 2);
        assert!(matches!(mailbox.push(4), Push::Queued { wake: true }));
        assert!(!mailbox.close_if_empty());
        mailbox.take_all();
        assert!(mailbox.close_if_empty());
        assert!(matches!(mailbox.push(5), Push::Closed(5)));
    }
}
