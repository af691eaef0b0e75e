//! The multi-version key space: current keys, the revision, and the log of
//! every change since the last compaction (for ranges at an older revision
//! and for watches that start in the past).

use std::collections::BTreeMap;

use etcd_client::proto::PbKeyValue;
use tonic::Status;

use super::errors;

/// etcd's event types (`mvccpb.Event.EventType`).
pub(crate) const EVENT_PUT: i32 = 0;
pub(crate) const EVENT_DELETE: i32 = 1;

/// One change of one key, at one revision.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub kind: i32,
    /// After a put, the key as written; after a delete, only the key and
    /// the deleting revision (as etcd's delete events carry).
    pub kv: PbKeyValue,
    pub prev: Option<PbKeyValue>,
}

impl Change {
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

#[derive(Debug)]
pub(crate) struct Mvcc {
    /// A fresh etcd is at revision 1.
    revision: i64,
    /// Ranges and watches below this revision are refused (0: nothing
    /// compacted yet).
    compacted: i64,
    keys: BTreeMap<Vec<u8>, PbKeyValue>,
    /// Changes in revision order, from `compacted` on.
    log: Vec<Change>,
}

impl Default for Mvcc {
    fn default() -> Self {
        Self {
            revision: 1,
            compacted: 0,
            keys: BTreeMap::new(),
            log: Vec::new(),
        }
    }
}

/// A key range as etcd gives it: an empty end is the key alone, `"\0"` is
/// every key from `key` on, anything else is `[key, end)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyRange<'a> {
    pub key: &'a [u8],
    pub end: &'a [u8],
}

impl KeyRange<'_> {
    pub fn contains(&self, candidate: &[u8]) -> bool {
        if self.end.is_empty() {
            candidate == self.key
        } else if self.end == [0] {
            candidate >= self.key
        } else {
            candidate >= self.key && candidate < self.end
        }
    }
}

impl Mvcc {
    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn compacted(&self) -> i64 {
        self.compacted
    }

    pub fn get(&self, key: &[u8]) -> Option<&PbKeyValue> {
        self.keys.get(key)
    }

    /// The keys in `range` at `revision` (0 or less: now), in key order.
    pub fn range(&self, range: KeyRange<'_>, revision: i64) -> Result<Vec<PbKeyValue>, Status> {
        if revision <= 0 || revision == self.revision {
            return Ok(self.current(range).cloned().collect());
        }
        if revision > self.revision {
            return Err(errors::future_revision());
        }
        if revision < self.compacted {
            return Err(errors::compacted());
        }
        // Undo, newest first, what happened after `revision`.
        let mut keys: BTreeMap<Vec<u8>, PbKeyValue> = self
            .keys
            .iter()
            .filter(|(key, _)| range.contains(key))
            .map(|(key, kv)| (key.clone(), kv.clone()))
            .collect();
        for change in self
            .log
            .iter()
            .rev()
            .take_while(|change| change.revision() > revision)
        {
            if !range.contains(&change.kv.key) {
                continue;
            }
            match &change.prev {
                Some(prev) => keys.insert(prev.key.clone(), prev.clone()),
                None => keys.remove(&change.kv.key),
            };
        }
        Ok(keys.into_values().collect())
    }

    /// The current keys in `range`, in key order.
    pub fn current<'a>(&'a self, range: KeyRange<'a>) -> impl Iterator<Item = &'a PbKeyValue> {
        let start = range.key.to_vec();
        self.keys
            .range(start..)
            .take_while(move |(key, _)| {
                if range.end.is_empty() {
                    key.as_slice() == range.key
                } else {
                    range.end == [0] || key.as_slice() < range.end
                }
            })
            .map(|(_, kv)| kv)
    }

    /// The current keys attached to `lease`, in key order.
    pub fn keys_of_lease(&self, lease: i64) -> Vec<Vec<u8>> {
        self.keys
            .values()
            .filter(|kv| kv.lease == lease)
            .map(|kv| kv.key.clone())
            .collect()
    }

    /// Changes at `from` or later, in revision order.
    pub fn changes_since(&self, from: i64) -> &[Change] {
        let first = self.log.partition_point(|change| change.revision() < from);
        &self.log[first..]
    }

    /// Forgets the history below `revision`.
    pub fn compact(&mut self, revision: i64) -> Result<(), Status> {
        if revision <= self.compacted {
            return Err(errors::compacted());
        }
        if revision > self.revision {
            return Err(errors::future_revision());
        }
        self.compacted = revision;
        let kept = self
            .log
            .partition_point(|change| change.revision() < revision);
        self.log.drain(..kept);
        Ok(())
    }

    /// Starts a write: everything it does gets the next revision, taken
    /// when the writer is dropped if it changed anything.
    pub fn write(&mut self) -> Writer<'_> {
        let revision = self.revision + 1;
        Writer {
            mvcc: self,
            revision,
            changed: false,
        }
    }
}

/// The changes of one request, all at one revision. Reads through it see
/// its own earlier writes, as in an etcd transaction.
pub(crate) struct Writer<'a> {
    mvcc: &'a mut Mvcc,
    revision: i64,
    changed: bool,
}

impl Writer<'_> {
    pub fn mvcc(&self) -> &Mvcc {
        self.mvcc
    }

    /// The revision a read inside this write reports.
    pub fn read_revision(&self) -> i64 {
        if self.changed {
            self.revision
        } else {
            self.mvcc.revision
        }
    }

    /// Writes `key`; returns what it replaced.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Option<PbKeyValue> {
        let prev = self.mvcc.keys.get(key).cloned();
        let kv = PbKeyValue {
            key: key.to_vec(),
            create_revision: prev
                .as_ref()
                .map_or(self.revision, |prev| prev.create_revision),
            mod_revision: self.revision,
            version: prev.as_ref().map_or(1, |prev| prev.version + 1),
            value,
            lease,
        };
        self.mvcc.keys.insert(key.to_vec(), kv.clone());
        self.mvcc.log.push(Change {
            kind: EVENT_PUT,
            kv,
            prev: prev.clone(),
        });
        self.changed = true;
        prev
    }

    /// Deletes every key in `range`; returns the deleted keys.
    pub fn delete(&mut self, range: KeyRange<'_>) -> Vec<PbKeyValue> {
        let doomed: Vec<Vec<u8>> = self.mvcc.current(range).map(|kv| kv.key.clone()).collect();
        let mut deleted = Vec::with_capacity(doomed.len());
        for key in doomed {
            let Some(prev) = self.mvcc.keys.remove(&key) else {
                continue;
            };
            self.mvcc.log.push(Change {
                kind: EVENT_DELETE,
                kv: PbKeyValue {
                    key,
                    mod_revision: self.revision,
                    ..PbKeyValue::default()
                },
                prev: Some(prev.clone()),
            });
            self.changed = true;
            deleted.push(prev);
        }
        deleted
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        if self.changed {
            self.mvcc.revision = self.revision;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(key: &[u8]) -> KeyRange<'_> {
        KeyRange { key, end: b"" }
    }

    #[test]
    fn one_revision_per_write_and_none_for_a_write_that_changed_nothing() {
        let mut mvcc = Mvcc::default();
        assert_eq!(mvcc.revision(), 1);
        {
            let mut write = mvcc.write();
            write.put(b"a", b"1".to_vec(), 0);
            write.put(b"b", b"1".to_vec(), 0);
        }
        assert_eq!(mvcc.revision(), 2);
        {
            let mut write = mvcc.write();
            assert!(write.delete(only(b"missing")).is_empty());
        }
        assert_eq!(mvcc.revision(), 2);
        mvcc.write().put(b"a", b"2".to_vec(), 0);
        let a = mvcc.get(b"a").cloned().unwrap_or_default();
        assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 3, 2));
    }

    #[test]
    fn an_old_revision_reads_what_was_there_until_compacted() {
        let mut mvcc = Mvcc::default();
        mvcc.write().put(b"a", b"1".to_vec(), 0);
        mvcc.write().put(b"a", b"2".to_vec(), 0);
        mvcc.write().delete(only(b"a"));
        let prefix = KeyRange {
            key: b"a",
            end: b"b",
        };
        let values = |revision| -> Vec<Vec<u8>> {
            mvcc.range(prefix, revision)
                .unwrap_or_default()
                .into_iter()
                .map(|kv| kv.value)
                .collect()
        };
        assert_eq!(values(2), vec![b"1".to_vec()]);
        assert_eq!(values(3), vec![b"2".to_vec()]);
        assert!(values(4).is_empty());
        assert!(mvcc.range(prefix, 5).is_err());
        mvcc.compact(3).unwrap_or_default();
        assert!(mvcc.range(prefix, 2).is_err());
        assert_eq!(mvcc.changes_since(0).len(), 2);
    }
}
