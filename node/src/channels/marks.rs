//! The marks this node's projection made, handed to the local worker in
//! memory.
//!
//! The dirty records in the store are the durable truth; this feed only
//! spares the worker listing all of them each time a window of events
//! marks a few keys (a profile put a fifth of a busy node's time in those
//! listings). The worker still lists the store on its poll interval, for
//! marks other nodes made for its shards and for anything this feed
//! dropped: when more than [`FEED_CAPACITY`] marks wait, the feed keeps
//! none of the excess and tells the worker to list the store instead.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;

/// Marks held for the worker at most (distinct keys).
pub const FEED_CAPACITY: usize = 100_000;

#[derive(Default)]
struct Pending {
    /// Record id -> the dirty record's content; the latest mark of a key
    /// replaces an earlier one, as in the store.
    marks: HashMap<String, Vec<u8>>,
    /// Marks were dropped: the worker must list the store.
    overflowed: bool,
}

/// What the worker takes from the feed.
pub struct Taken {
    pub marks: Vec<(String, Vec<u8>)>,
    /// Some marks were dropped since the last take: list the store.
    pub overflowed: bool,
}

#[derive(Default)]
pub struct MarkFeed {
    pending: Mutex<Pending>,
    notify: Notify,
}

impl MarkFeed {
    /// Hands over marks already written to the store, and wakes the worker.
    pub fn offer(&self, records: &[(String, Vec<u8>)]) {
        {
            // A poisoned lock only means a panic elsewhere mid-insert: the
            // map is still a valid map, and the store holds every mark.
            let mut pending = self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (id, raw) in records {
                if pending.marks.len() >= FEED_CAPACITY && !pending.marks.contains_key(id) {
                    pending.overflowed = true;
                    continue;
                }
                pending.marks.insert(id.clone(), raw.clone());
            }
        }
        self.notify.notify_one();
    }

    /// Everything offered since the last take.
    pub fn take(&self) -> Taken {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let taken = std::mem::take(&mut *pending);
        Taken {
            marks: taken.marks.into_iter().collect(),
            overflowed: taken.overflowed,
        }
    }

    /// Resolves once marks were offered after the last call.
    pub async fn offered(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_mark_of_a_key_is_taken_once() {
        let feed = MarkFeed::default();
        feed.offer(&[("a".into(), b"1".to_vec()), ("b".into(), b"1".to_vec())]);
        feed.offer(&[("a".into(), b"2".to_vec())]);
        let mut taken = feed.take();
        taken.marks.sort();
        assert_eq!(
            taken.marks,
            vec![("a".into(), b"2".to_vec()), ("b".into(), b"1".to_vec())]
        );
        assert!(!taken.overflowed);
        assert!(feed.take().marks.is_empty());
    }

    #[test]
    fn a_full_feed_drops_new_keys_and_says_so() {
        let feed = MarkFeed::default();
        let records: Vec<(String, Vec<u8>)> = (0..FEED_CAPACITY + 3)
            .map(|index| (index.to_string(), Vec::new()))
            .collect();
        feed.offer(&records);
        // A key already held is still updated.
        feed.offer(&[("0".into(), b"new".to_vec())]);
        let taken = feed.take();
        assert_eq!(taken.marks.len(), FEED_CAPACITY);
        assert!(taken.overflowed);
        assert!(taken
            .marks
            .iter()
            .any(|(id, raw)| id == "0" && raw == b"new"));
        assert!(!feed.take().overflowed);
    }
}
