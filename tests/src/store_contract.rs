//! The store contract every backend keeps, run against each of them:
//! PostgreSQL (tests/tests/postgres_store.rs), the embedded and the memory
//! store (tests/tests/store_contract.rs) and the simulation's shared store
//! through a node's view (sim/tests/store_contract.rs). The simulation's
//! claims are only as good as its store's likeness to PostgreSQL; these
//! tests are that likeness.
//!
//! Two groups: what every store does (round trip, outbox numbering,
//! records), and what the stores of cluster mode do besides (fencing per
//! write, a fence waiting for the commit in flight, timers of owned
//! shards, a duplicate journal entry failing its batch). Each function
//! takes a fresh store, whose clock is the system's (stamps are checked
//! against it), and panics on a breach.

// Test code: a failed store call is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use skuld_cluster::{EntityWrite, IdempotencyRecord, Store, StoreError, WriteBatch};

/// The shard count a PostgreSQL store under test is connected with; the
/// fencing contract also uses shards past it (their fence rows come on use).
pub const SHARDS: u32 = 8;

/// How long the `held` store of [`a_fence_waits_for_the_commit_in_flight`]
/// holds each commit after its locks are taken.
pub const HELD_COMMIT: Duration = Duration::from_millis(1_500);

pub fn record(key: &str, fingerprint: u128, recorded_at_ms: u64) -> IdempotencyRecord {
    IdempotencyRecord {
        key: key.into(),
        fingerprint,
        reply: format!("reply-{key}").into_bytes(),
        recorded_at_ms,
    }
}

/// A record as read back: stamped by the store's clock (the system's, in
/// these tests), whatever the writer passed.
pub fn stored(found: &Option<IdempotencyRecord>) -> Option<(String, u128, Vec<u8>)> {
    let found = found.as_ref()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        found.recorded_at_ms.abs_diff(now) < 60_000,
        "stamped {} by the store, now is {now}",
        found.recorded_at_ms
    );
    Some((found.key.clone(), found.fingerprint, found.reply.clone()))
}

pub fn expected(key: &str, fingerprint: u128) -> Option<(String, u128, Vec<u8>)> {
    Some((key.into(), fingerprint, format!("reply-{key}").into_bytes()))
}

/// A write of `key` on `shard` at `epoch` with one journal entry, one
/// idempotency record, a timer and a summary.
pub fn full_write(key: &[u8], shard: u32, epoch: u64, seq: u64) -> EntityWrite {
    EntityWrite {
        key: key.to_vec(),
        shard,
        epoch,
        journal: vec![(seq, vec![seq as u8])],
        snapshot: Some((seq, b"state".to_vec())),
        idempotency: vec![record(&format!("k{seq}"), u128::from(seq), 1_000)],
        timer: Some(Some(5_000)),
        summary: Some((b"scope".to_vec(), key.to_vec())),
        events: vec![format!("event-{seq}").into_bytes()],
    }
}

pub fn batch(entities: Vec<EntityWrite>) -> WriteBatch {
    WriteBatch { entities }
}

/// A batch of several entities (one of them twice) reads back whole:
/// journals, snapshots, idempotency records stamped by the store, timers
/// set and cleared, summaries listed and scanned by page.
pub async fn a_committed_batch_reads_back(store: &dyn Store) {
    let big_fingerprint = u128::MAX - 5;
    let committed = store
        .commit(batch(vec![
            EntityWrite {
                key: b"a".to_vec(),
                journal: vec![(1, b"a1".to_vec()), (2, b"a2".to_vec())],
                idempotency: vec![record("k1", big_fingerprint, 1_001)],
                timer: Some(Some(5_000)),
                summary: Some((b"t1".to_vec(), b"a-first".to_vec())),
                ..EntityWrite::default()
            },
            EntityWrite {
                key: b"b".to_vec(),
                shard: 3,
                journal: vec![(1, b"b1".to_vec())],
                timer: Some(Some(4_000)),
                summary: Some((b"t1".to_vec(), b"b".to_vec())),
                ..EntityWrite::default()
            },
            // The same entity again in the same batch: its snapshot, timer
            // and summary replace the earlier ones.
            EntityWrite {
                key: b"a".to_vec(),
                journal: vec![(3, b"a3".to_vec())],
                snapshot: Some((2, b"a@2".to_vec())),
                idempotency: vec![record("k3", 3, 1_003)],
                timer: Some(Some(6_000)),
                summary: Some((b"t1".to_vec(), b"a-second".to_vec())),
                ..EntityWrite::default()
            },
            EntityWrite {
                key: b"c".to_vec(),
                summary: Some((b"t2".to_vec(), b"c".to_vec())),
                ..EntityWrite::default()
            },
        ]))
        .await
        .unwrap();
    assert!(committed.fenced.is_empty());

    let loaded = store.load(b"a").await.unwrap();
    assert_eq!(loaded.snapshot, Some((2, b"a@2".to_vec())));
    assert_eq!(loaded.journal_tail, vec![(3, b"a3".to_vec())]);
    assert_eq!(
        store.journal(b"a").await.unwrap(),
        vec![
            (1, b"a1".to_vec()),
            (2, b"a2".to_vec()),
            (3, b"a3".to_vec())
        ]
    );
    let unknown = store.load(b"nobody").await.unwrap();
    assert!(unknown.snapshot.is_none() && unknown.journal_tail.is_empty());

    let found = store
        .idempotency_lookup(b"a", vec!["k3".into(), "missing".into(), "k1".into()])
        .await
        .unwrap();
    assert_eq!(stored(&found[0]), expected("k3", 3));
    assert_eq!(found[1], None);
    assert_eq!(stored(&found[2]), expected("k1", big_fingerprint));
    let mut keys = store.idempotency_keys(b"a", 10).await.unwrap().unwrap();
    keys.sort();
    assert_eq!(keys, vec!["k1".to_owned(), "k3".to_owned()]);
    assert_eq!(store.idempotency_keys(b"a", 1).await.unwrap(), None);
    assert_eq!(
        store.idempotency_keys(b"nobody", 1).await.unwrap(),
        Some(vec![])
    );
    // Records are scoped to their entity.
    assert_eq!(
        store
            .idempotency_lookup(b"b", vec!["k1".into()])
            .await
            .unwrap(),
        vec![None]
    );

    assert_eq!(
        store.due_timers(10_000, 10, None).await.unwrap(),
        vec![(b"b".to_vec(), 4_000), (b"a".to_vec(), 6_000)]
    );
    assert_eq!(
        store.due_timers(5_999, 10, None).await.unwrap(),
        vec![(b"b".to_vec(), 4_000)]
    );
    assert_eq!(store.due_timers(10_000, 1, None).await.unwrap().len(), 1);

    assert_eq!(
        store.list_summaries(b"t1", None, 1).await.unwrap(),
        vec![(b"a".to_vec(), b"a-second".to_vec())]
    );
    assert_eq!(
        store
            .list_summaries(b"t1", Some(b"a".to_vec()), 10)
            .await
            .unwrap(),
        vec![(b"b".to_vec(), b"b".to_vec())]
    );
    assert!(store
        .list_summaries(b"t1", Some(b"b".to_vec()), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.list_summaries(b"t2", None, 10).await.unwrap(),
        vec![(b"c".to_vec(), b"c".to_vec())]
    );
    // Across scopes by prefix, a page at a time.
    let mut scanned = Vec::new();
    let mut after = None;
    loop {
        let page = store.scan_summaries(b"t", after.take(), 1).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.scope.clone(), last.entity.clone()));
        scanned.extend(
            page.into_iter()
                .map(|row| (row.scope, row.entity, row.value)),
        );
    }
    assert_eq!(
        scanned,
        vec![
            (b"t1".to_vec(), b"a".to_vec(), b"a-second".to_vec()),
            (b"t1".to_vec(), b"b".to_vec(), b"b".to_vec()),
            (b"t2".to_vec(), b"c".to_vec(), b"c".to_vec()),
        ]
    );
    assert_eq!(
        store.scan_summaries(b"t2", None, 10).await.unwrap().len(),
        1
    );
    assert!(store
        .scan_summaries(b"x", None, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .scan_summaries(b"t", None, 0)
        .await
        .unwrap()
        .is_empty());

    // Clearing a timer.
    store
        .commit(batch(vec![EntityWrite {
            key: b"a".to_vec(),
            timer: Some(None),
            ..EntityWrite::default()
        }]))
        .await
        .unwrap();
    assert_eq!(
        store.due_timers(u64::MAX, 10, None).await.unwrap(),
        vec![(b"b".to_vec(), 4_000)]
    );
}

/// A journal entry written twice is a bug: the whole batch fails and
/// nothing of it is applied, not even the other entity's write (fencing
/// stores: PostgreSQL's primary key, the memory store's check).
pub async fn a_journal_entry_written_again_fails_the_whole_batch(store: &dyn Store) {
    store
        .commit(batch(vec![EntityWrite {
            key: b"a".to_vec(),
            journal: vec![(3, b"a3".to_vec())],
            ..EntityWrite::default()
        }]))
        .await
        .unwrap();
    let failed = store
        .commit(batch(vec![
            full_write(b"d", 0, 0, 1),
            EntityWrite {
                key: b"a".to_vec(),
                journal: vec![(3, b"again".to_vec())],
                ..EntityWrite::default()
            },
        ]))
        .await;
    assert!(matches!(failed, Err(StoreError::Backend(_))), "{failed:?}");
    assert!(store.journal(b"d").await.unwrap().is_empty());
    assert!(store.load(b"d").await.unwrap().snapshot.is_none());
    assert_eq!(store.journal(b"a").await.unwrap().len(), 1);
}

/// Fencing per write: a fence only rises (the same epoch again is a fine
/// retry); a write whose epoch is not its shard's, older or ahead of a
/// fence not raised yet, is left out of its batch with nothing of it
/// stored, while the batch's other writes apply whole.
pub async fn stale_epochs_are_fenced_per_write(store: &dyn Store) {
    assert!(store.fence(1, 1).await.unwrap());
    assert!(store.fence(1, 2).await.unwrap());
    // Raising to the same epoch again (a retry after an unknown outcome) is fine.
    assert!(store.fence(1, 2).await.unwrap(), "equal epoch");
    assert!(!store.fence(1, 1).await.unwrap(), "lower epoch");

    let committed = store
        .commit(batch(vec![
            full_write(b"stale", 1, 1, 1),
            full_write(b"owner", 1, 2, 1),
            full_write(b"other", 2, 0, 1),
        ]))
        .await
        .unwrap();
    assert_eq!(committed.fenced, vec![(0, 2)]);

    // Nothing of the stale write is stored.
    assert!(store.journal(b"stale").await.unwrap().is_empty());
    assert!(store.load(b"stale").await.unwrap().snapshot.is_none());
    assert_eq!(
        store
            .idempotency_lookup(b"stale", vec!["k1".into()])
            .await
            .unwrap(),
        vec![None]
    );
    let scope = store.list_summaries(b"scope", None, 10).await.unwrap();
    let listed: Vec<&[u8]> = scope.iter().map(|(key, _)| key.as_slice()).collect();
    assert_eq!(listed, vec![b"other".as_slice(), b"owner".as_slice()]);
    let due = store.due_timers(u64::MAX, 10, None).await.unwrap();
    assert!(due.iter().all(|(key, _)| key != b"stale"), "{due:?}");
    assert_eq!(due.len(), 2);
    // The accepted writes are complete.
    for key in [b"owner".as_slice(), b"other".as_slice()] {
        assert_eq!(store.journal(key).await.unwrap(), vec![(1, vec![1])]);
        assert!(store
            .idempotency_lookup(key, vec!["k1".into()])
            .await
            .unwrap()[0]
            .is_some());
    }

    // Nor can a stale writer clear or overwrite what the owner wrote: its
    // timer clear, snapshot and summary change nothing, while the clear of
    // an accepted write in the same batch goes through.
    let stale = store
        .commit(batch(vec![
            EntityWrite {
                key: b"owner".to_vec(),
                shard: 1,
                epoch: 1,
                journal: vec![(2, b"stale".to_vec())],
                snapshot: Some((2, b"stale-state".to_vec())),
                timer: Some(None),
                summary: Some((b"scope".to_vec(), b"stale-summary".to_vec())),
                ..EntityWrite::default()
            },
            EntityWrite {
                key: b"other".to_vec(),
                shard: 2,
                timer: Some(None),
                ..EntityWrite::default()
            },
        ]))
        .await
        .unwrap();
    assert_eq!(stale.fenced, vec![(0, 2)]);
    assert_eq!(
        store.due_timers(u64::MAX, 10, None).await.unwrap(),
        vec![(b"owner".to_vec(), 5_000)]
    );
    assert_eq!(
        store.load(b"owner").await.unwrap().snapshot,
        Some((1, b"state".to_vec()))
    );
    assert_eq!(store.journal(b"owner").await.unwrap(), vec![(1, vec![1])]);
    assert_eq!(
        store.list_summaries(b"scope", None, 10).await.unwrap(),
        vec![
            (b"other".to_vec(), b"other".to_vec()),
            (b"owner".to_vec(), b"owner".to_vec())
        ]
    );

    // A writer ahead of the stored epoch has not fenced yet: refused too.
    let ahead = store
        .commit(batch(vec![full_write(b"ahead", 2, 7, 1)]))
        .await
        .unwrap();
    assert_eq!(ahead.fenced, vec![(0, 0)]);
    assert!(store.journal(b"ahead").await.unwrap().is_empty());

    // Shards beyond the count given at connect get their fence row on use.
    assert!(store.fence(SHARDS + 5, 3).await.unwrap());
    assert!(!store.fence(SHARDS + 5, 2).await.unwrap());
    let beyond = store
        .commit(batch(vec![
            full_write(b"beyond-fenced", SHARDS + 5, 3, 1),
            full_write(b"beyond-new", SHARDS + 6, 0, 1),
        ]))
        .await
        .unwrap();
    assert!(beyond.fenced.is_empty());
    assert_eq!(store.journal(b"beyond-new").await.unwrap().len(), 1);
}

/// Due timers of the given shards only, earliest first (a node scans the
/// shards it owns).
pub async fn due_timers_can_be_limited_to_shards(store: &dyn Store) {
    let timer = |key: &[u8], shard: u32, due: u64| EntityWrite {
        key: key.to_vec(),
        shard,
        timer: Some(Some(due)),
        ..EntityWrite::default()
    };
    store
        .commit(batch(vec![
            timer(b"s0-late", 0, 300),
            timer(b"s1", 1, 100),
            timer(b"s2", 2, 200),
            timer(b"s0-early", 0, 50),
            timer(b"s2-future", 2, 10_000),
        ]))
        .await
        .unwrap();

    assert_eq!(
        store.due_timers(1_000, 10, Some(vec![0, 2])).await.unwrap(),
        vec![
            (b"s0-early".to_vec(), 50),
            (b"s2".to_vec(), 200),
            (b"s0-late".to_vec(), 300)
        ]
    );
    assert_eq!(
        store.due_timers(1_000, 1, Some(vec![2])).await.unwrap(),
        vec![(b"s2".to_vec(), 200)]
    );
    assert!(store
        .due_timers(1_000, 10, Some(vec![]))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.due_timers(1_000, 10, None).await.unwrap().len(), 4);
    assert_eq!(store.due_timers(u64::MAX, 10, None).await.unwrap().len(), 5);
}

/// A write of `key` on `shard` at `epoch` carrying `events` outbox events.
pub fn events_write(key: &[u8], shard: u32, epoch: u64, seq: u64, events: usize) -> EntityWrite {
    EntityWrite {
        key: key.to_vec(),
        shard,
        epoch,
        journal: vec![(seq, vec![seq as u8])],
        events: (0..events)
            .map(|index| format!("{}-{seq}-{index}", String::from_utf8_lossy(key)).into_bytes())
            .collect(),
        ..EntityWrite::default()
    }
}

/// The outbox: concurrent commits number a shard's events 1, 2, 3, ...
/// without a gap or a repeat, a write without events takes no number, and
/// histories page by sequence. Leaves shard 0 with events 1..=400 and
/// shard 1 with 1..=200 (the PostgreSQL test goes on with retention).
pub async fn the_outbox_numbers_each_shard_without_gaps(store: Arc<dyn Store>) {
    // 8 writers x 25 commits, each commit touching shards 0 and 1.
    let mut writers = Vec::new();
    for writer in 0..8u64 {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            for round in 1..=25u64 {
                let committed = store
                    .commit(batch(vec![
                        events_write(format!("w{writer}-a").as_bytes(), 0, 0, round, 2),
                        events_write(format!("w{writer}-b").as_bytes(), 1, 0, round, 1),
                    ]))
                    .await
                    .unwrap();
                assert!(committed.fenced.is_empty());
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let read = store.read_events(Vec::new(), 10_000).await.unwrap();
    for (shard, expected) in [(0u32, 8 * 25 * 2), (1, 8 * 25)] {
        let seqs: Vec<u64> = read
            .iter()
            .filter(|event| event.shard == shard)
            .map(|event| event.seq)
            .collect();
        assert_eq!(seqs, (1..=expected).collect::<Vec<u64>>(), "shard {shard}");
    }
    // One entity's events of one commit are consecutive and in order.
    let of_writer: Vec<Vec<u8>> = read
        .iter()
        .filter(|event| event.entity == b"w3-a")
        .map(|event| event.body.clone())
        .collect();
    assert_eq!(of_writer.first().unwrap(), b"w3-a-1-0");
    assert_eq!(of_writer.get(1).unwrap(), b"w3-a-1-1");

    // A write without events (a refusal recorded, a timer) leaves its
    // shard's numbering alone, even beside events of another shard.
    store
        .commit(batch(vec![
            events_write(b"refused", 0, 0, 1, 0),
            events_write(b"elsewhere", 2, 0, 1, 1),
        ]))
        .await
        .unwrap();
    let after = store
        .read_events(vec![(0, 400), (1, 200)], 100)
        .await
        .unwrap();
    let after: Vec<(u32, u64)> = after.iter().map(|event| (event.shard, event.seq)).collect();
    assert_eq!(after, vec![(2, 1)]);

    // Bounds, and history pages by sequence.
    let bounds = store.event_bounds().await.unwrap();
    let head = |shard| bounds.iter().find(|b| b.shard == shard).unwrap().head;
    assert_eq!((head(0), head(1), head(2)), (400, 200, 1));
    let first_page = store.entity_events(b"w3-b", 0, 10).await.unwrap();
    assert_eq!(first_page.len(), 10);
    let second_page = store
        .entity_events(b"w3-b", first_page.last().unwrap().seq, 100)
        .await
        .unwrap();
    assert_eq!(first_page.len() + second_page.len(), 25);
}

/// A new owner fences a shard: the old owner's write is refused and takes
/// no event number; the new owner's events continue the sequence.
pub async fn a_fenced_write_takes_no_event_number(store: &dyn Store) {
    store
        .commit(batch(vec![events_write(b"earlier", 1, 0, 1, 2)]))
        .await
        .unwrap();
    assert!(store.fence(1, 5).await.unwrap());
    let committed = store
        .commit(batch(vec![
            events_write(b"stale", 1, 0, 1, 3),
            events_write(b"new-owner", 1, 5, 1, 1),
        ]))
        .await
        .unwrap();
    assert_eq!(committed.fenced, vec![(0, 5)]);
    let after = store.read_events(vec![(1, 2)], 100).await.unwrap();
    let after: Vec<(u64, &[u8])> = after
        .iter()
        .map(|event| (event.seq, event.entity.as_slice()))
        .collect();
    assert_eq!(after, vec![(3, b"new-owner".as_slice())]);
    assert!(store
        .entity_events(b"stale", 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store.journal(b"stale").await.unwrap().is_empty());
}

/// The old owner's commit is in flight, its shard's fence row locked,
/// when the new owner fences the shard: the fence waits for it. `held` is
/// the same store through a way that holds each commit for at least
/// [`HELD_COMMIT`] after its locks are taken, then applies it (PostgreSQL's
/// pause failpoint, the simulated store's stall). The write it checked
/// lands; the old owner's next one is refused and leaves nothing behind,
/// not even an event number.
pub async fn a_fence_waits_for_the_commit_in_flight(store: Arc<dyn Store>, held: Arc<dyn Store>) {
    let committing =
        tokio::spawn(async move { held.commit(batch(vec![full_write(b"held", 0, 0, 1)])).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fencing = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.fence(0, 1).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !fencing.is_finished(),
        "the fence slipped past the commit in flight"
    );
    let committed = committing.await.unwrap().unwrap();
    assert!(committed.fenced.is_empty(), "{committed:?}");
    let fenced = tokio::time::timeout(Duration::from_secs(5), fencing)
        .await
        .expect("the fence did not finish after the commit")
        .unwrap()
        .unwrap();
    assert!(fenced);

    assert_eq!(store.journal(b"held").await.unwrap(), vec![(1, vec![1])]);
    let stale = store
        .commit(batch(vec![full_write(b"held", 0, 0, 2)]))
        .await
        .unwrap();
    assert_eq!(stale.fenced, vec![(0, 1)]);
    assert_eq!(store.journal(b"held").await.unwrap().len(), 1);
    let bounds = store.event_bounds().await.unwrap();
    let shard0 = bounds.iter().find(|b| b.shard == 0).unwrap();
    assert_eq!(shard0.head, 1, "the refused write took an event number");
}

/// The records of no shard, in every store: one at a time or many in one
/// write (the last value of an id given twice counts), listed by prefix in
/// id order and page by page, deleted.
pub async fn records_are_put_one_or_many_listed_by_prefix_and_deleted(store: &dyn Store) {
    store.put_record("k", "a/1", b"one".to_vec()).await.unwrap();
    store
        .put_records(
            "k",
            vec![
                ("a/2".into(), b"two".to_vec()),
                ("a/3".into(), b"first".to_vec()),
                ("b/1".into(), b"other".to_vec()),
                ("a/3".into(), b"three".to_vec()),
            ],
        )
        .await
        .unwrap();
    store.put_records("k", Vec::new()).await.unwrap();
    store
        .put_record("other kind", "a/9", b"x".to_vec())
        .await
        .unwrap();
    let listed = store.list_records("k", "a/", None, 10).await.unwrap();
    assert_eq!(
        listed,
        vec![
            ("a/1".to_owned(), b"one".to_vec()),
            ("a/2".to_owned(), b"two".to_vec()),
            ("a/3".to_owned(), b"three".to_vec()),
        ]
    );
    let page = store
        .list_records("k", "a/", Some("a/1".into()), 1)
        .await
        .unwrap();
    assert_eq!(page, vec![("a/2".to_owned(), b"two".to_vec())]);
    assert!(store.delete_record("k", "a/2").await.unwrap());
    assert!(!store.delete_record("k", "a/2").await.unwrap());
    assert_eq!(store.get_record("k", "a/2").await.unwrap(), None);
    assert_eq!(
        store.get_record("k", "b/1").await.unwrap(),
        Some(b"other".to_vec())
    );
}
