//! `PostgresStore` against a real PostgreSQL: the same semantics as the
//! embedded store, plus fencing by shard epochs, concurrent migrations and
//! surviving a database crash and restart with the same store value.
//!
//! Every test starts its own server (about a second: `initdb --no-sync`)
//! so a test that kills it disturbs no other, and works in a database of
//! its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use skuld_cluster::{EntityWrite, IdempotencyRecord, PostgresStore, Store, StoreError, WriteBatch};
use skuld_tests::services::Postgres;

const SHARDS: u32 = 8;

async fn store(postgres: &Postgres, database: &str) -> (PostgresStore, String) {
    let url = postgres.create_database(database).await.unwrap();
    let store = PostgresStore::connect(&url, SHARDS, 4).await.unwrap();
    (store, url)
}

/// A raw connection, to look at the tables or hold locks the store would.
async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

fn record(key: &str, fingerprint: u128, recorded_at_ms: u64) -> IdempotencyRecord {
    IdempotencyRecord {
        key: key.into(),
        fingerprint,
        reply: format!("reply-{key}").into_bytes(),
        recorded_at_ms,
    }
}

/// A record as read back: stamped by the database's clock, whatever the
/// writer passed.
fn stored(found: &Option<IdempotencyRecord>) -> Option<(String, u128, Vec<u8>)> {
    let found = found.as_ref()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        found.recorded_at_ms.abs_diff(now) < 60_000,
        "stamped {} by the database, now is {now}",
        found.recorded_at_ms
    );
    Some((found.key.clone(), found.fingerprint, found.reply.clone()))
}

fn expected(key: &str, fingerprint: u128) -> Option<(String, u128, Vec<u8>)> {
    Some((key.into(), fingerprint, format!("reply-{key}").into_bytes()))
}

/// A write of `key` on `shard` at `epoch` with one journal entry, one
/// idempotency record, a timer and a summary.
fn full_write(key: &[u8], shard: u32, epoch: u64, seq: u64) -> EntityWrite {
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

fn batch(entities: Vec<EntityWrite>) -> WriteBatch {
    WriteBatch { entities }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_batch_reads_back_like_the_embedded_store() {
    let postgres = Postgres::start().unwrap();
    let (store, _) = store(&postgres, "round_trip").await;

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

    // A journal entry written twice is a bug: the whole batch fails and
    // nothing of it is applied, not even the other entity's write.
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
    assert_eq!(store.journal(b"a").await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epochs_are_fenced_per_write() {
    let postgres = Postgres::start().unwrap();
    let (store, _) = store(&postgres, "fencing").await;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_waits_for_the_commit_in_flight() {
    let postgres = Postgres::start().unwrap();
    let (store, url) = store(&postgres, "fence_waits").await;

    // The old owner's commit, held open between its epoch check and its
    // COMMIT: the lock the store's commit statement takes (the fence row FOR
    // SHARE, held to the commit), here as separate statements of an
    // explicit transaction; the store's own statement is the next test.
    let mut old_owner = raw(&url).await;
    let tx = old_owner.transaction().await.unwrap();
    let epoch: i64 = tx
        .query_one(
            "SELECT epoch FROM shard_fences WHERE shard = ANY($1::int[]) FOR SHARE",
            &[&vec![0_i32]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(epoch, 0);
    tx.execute(
        "INSERT INTO journal (entity, seq, entry) VALUES ($1, 1, $2)",
        &[&b"held".as_slice(), &b"old owner".as_slice()],
    )
    .await
    .unwrap();

    let fencing = tokio::spawn({
        let store = store.clone();
        async move { store.fence(0, 1).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !fencing.is_finished(),
        "the fence slipped past a commit in flight"
    );

    tx.commit().await.unwrap();
    let fenced = tokio::time::timeout(Duration::from_secs(5), fencing)
        .await
        .expect("the fence did not finish after the commit")
        .unwrap()
        .unwrap();
    assert!(fenced);

    // The old owner's write landed before the fence; its next one does not.
    assert_eq!(
        store.journal(b"held").await.unwrap(),
        vec![(1, b"old owner".to_vec())]
    );
    let committed = store
        .commit(batch(vec![full_write(b"held", 0, 0, 2)]))
        .await
        .unwrap();
    assert_eq!(committed.fenced, vec![(0, 1)]);
    assert_eq!(store.journal(b"held").await.unwrap().len(), 1);
}

/// The same through the store's own commit statement: held open after its
/// epoch check by the failpoint, it keeps the fence row locked, so the new
/// owner's fence waits for it; the write it checked lands, the next one of
/// the old owner is refused and leaves nothing behind, not even an event
/// number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_waits_for_the_stores_own_commit_in_flight() {
    let postgres = Postgres::start().unwrap();
    let (store, url) = store(&postgres, "fence_waits_commit").await;
    // The failpoint runs the statement in an explicit transaction (the
    // explicit-transaction path, not the autocommit one of production).
    let old_owner = PostgresStore::connect(&url, SHARDS, 2)
        .await
        .unwrap()
        .pause_commits_after_lock(Some(Duration::from_millis(1_500)));

    let committing = tokio::spawn(async move {
        old_owner
            .commit(batch(vec![full_write(b"held", 0, 0, 1)]))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fencing = tokio::spawn({
        let store = store.clone();
        async move { store.fence(0, 1).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !fencing.is_finished(),
        "the fence slipped past the store's commit in flight"
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

/// The subtlest case: the new owner's fence commits after the old owner's
/// commit statement began (its snapshot still holds epoch 0) but before the
/// statement locked the fence row. The statement waits for the row; under
/// READ COMMITTED the lock returns the row's newest version, and every row
/// is joined to the locked epoch, not the snapshot's: the stale write
/// leaves nothing behind, not even an event number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_committed_while_the_commit_waits_for_the_row_refuses_it() {
    let postgres = Postgres::start().unwrap();
    let (store, url) = store(&postgres, "fence_before_lock").await;
    store
        .commit(batch(vec![events_write(b"earlier", 0, 0, 1, 2)]))
        .await
        .unwrap();
    assert_eq!(head_of(&store, 0).await, 2);

    let mut new_owner = raw(&url).await;
    let fence = new_owner.transaction().await.unwrap();
    let raised = fence
        .execute("UPDATE shard_fences SET epoch = 1 WHERE shard = 0", &[])
        .await
        .unwrap();
    assert_eq!(raised, 1);

    let committing = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .commit(batch(vec![full_write(b"late", 0, 0, 1)]))
                .await
        }
    });
    // The statement has started and waits for the fence row.
    let observer = raw(&url).await;
    let started = std::time::Instant::now();
    loop {
        let waiting: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() \
                   AND wait_event_type = 'Lock' AND query LIKE '%FROM shard_fences%FOR SHARE%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 1 {
            break;
        }
        assert!(
            !committing.is_finished(),
            "the commit did not wait for the fence row"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the commit never waited for the fence row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !committing.is_finished(),
        "the commit did not wait for the fence row"
    );

    fence.commit().await.unwrap();
    let committed = tokio::time::timeout(Duration::from_secs(5), committing)
        .await
        .expect("the commit did not finish after the fence")
        .unwrap()
        .unwrap();
    assert_eq!(committed.fenced, vec![(0, 1)]);

    assert!(store.journal(b"late").await.unwrap().is_empty());
    assert!(store.load(b"late").await.unwrap().snapshot.is_none());
    assert_eq!(
        store
            .idempotency_lookup(b"late", vec!["k1".into()])
            .await
            .unwrap(),
        vec![None]
    );
    assert!(store
        .due_timers(u64::MAX, 10, None)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .list_summaries(b"scope", None, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .entity_events(b"late", 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        head_of(&store, 0).await,
        2,
        "the refused write took an event number"
    );
}

async fn head_of(store: &PostgresStore, shard: u32) -> u64 {
    let bounds = store.event_bounds().await.unwrap();
    bounds.iter().find(|b| b.shard == shard).unwrap().head
}

/// A URL with its own `options` keeps them, after the store's safety
/// timeouts: here its own `lock_timeout` of 1 s ends a fence stuck behind a
/// lock another session holds (the store's default is 15 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_in_the_url_are_merged_with_the_safety_timeouts() {
    let postgres = Postgres::start().unwrap();
    let url = postgres.create_database("options").await.unwrap();
    let with_options = format!("{url}?options=-c%20lock_timeout%3D1000");
    let store = PostgresStore::connect(&with_options, SHARDS, 2)
        .await
        .unwrap();
    let mut holder = raw(&url).await;
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM shard_fences WHERE shard = 0 FOR UPDATE", &[])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let fenced = tokio::time::timeout(Duration::from_secs(10), store.fence(0, 1))
        .await
        .expect("the URL's lock_timeout was dropped");
    assert!(
        matches!(&fenced, Err(StoreError::Backend(message)) if message.contains("lock")),
        "{fenced:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    tx.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_timers_can_be_limited_to_shards() {
    let postgres = Postgres::start().unwrap();
    let (store, _) = store(&postgres, "timers").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_deletes_records_older_than_the_retention_by_the_database_clock_of_owned_shards() {
    let postgres = Postgres::start().unwrap();
    let (store, url) = store(&postgres, "purge").await;
    store
        .commit(batch(vec![
            EntityWrite {
                key: b"a".to_vec(),
                idempotency: vec![record("a1", 1, 1_001), record("a5", 5, 1_005)],
                ..EntityWrite::default()
            },
            EntityWrite {
                key: b"b".to_vec(),
                shard: 1,
                // A writer's clock two days ahead changes nothing: the
                // database stamps the record.
                idempotency: vec![record("b2", 2, u64::MAX / 4), record("b3", 3, 1_003)],
                ..EntityWrite::default()
            },
        ]))
        .await
        .unwrap();
    let hour = Duration::from_secs(3_600);
    // Just written, by the database's clock: nothing is older than an hour.
    assert_eq!(store.purge_idempotency(hour, None, 100).await.unwrap(), 0);

    // Age a1 and b2 by two hours, and one row as written before migration 2
    // (no shard).
    let client = raw(&url).await;
    client
        .execute(
            "UPDATE idempotency SET recorded_at_ms = recorded_at_ms - 7200000 \
             WHERE key IN ('a1', 'b2')",
            &[],
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE idempotency SET recorded_at_ms = recorded_at_ms - 7200000, shard = NULL \
             WHERE key = 'b3'",
            &[],
        )
        .await
        .unwrap();
    // A node purges only the shards it owns.
    assert_eq!(
        store
            .purge_idempotency(hour, Some(vec![2, 3]), 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .purge_idempotency(hour, Some(vec![1]), 100)
            .await
            .unwrap(),
        1
    );
    // The owner of shard 0 also purges rows without a shard.
    assert_eq!(
        store
            .purge_idempotency(hour, Some(vec![0]), 100)
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.purge_idempotency(hour, None, 100).await.unwrap(), 0);
    let a = store
        .idempotency_lookup(b"a", vec!["a1".into(), "a5".into()])
        .await
        .unwrap();
    let b = store
        .idempotency_lookup(b"b", vec!["b2".into(), "b3".into()])
        .await
        .unwrap();
    assert_eq!(a[0], None);
    assert_eq!(stored(&a[1]), expected("a5", 5));
    assert_eq!(b, vec![None, None]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_even_when_nodes_connect_together() {
    let postgres = Postgres::start().unwrap();
    let url = postgres.create_database("migrations").await.unwrap();

    let connects =
        futures::future::join_all((0..4).map(|_| PostgresStore::connect(&url, SHARDS, 2))).await;
    let stores: Vec<PostgresStore> = connects.into_iter().map(Result::unwrap).collect();
    assert!(stores[0].fence(0, 5).await.unwrap());

    // Connecting again changes nothing that exists.
    let again = PostgresStore::connect(&url, SHARDS, 2).await.unwrap();
    assert!(!again.fence(0, 4).await.unwrap(), "the epoch was reset");
    // A cluster of another shard count is refused: its keys would hash to
    // other shards' fences.
    let other = PostgresStore::connect(&url, SHARDS * 2, 2).await;
    match other {
        Err(StoreError::Incompatible(message)) => {
            assert!(message.contains("8 shards"), "{message}");
        }
        other => panic!("a different shard count was accepted: {other:?}"),
    }

    let client = raw(&url).await;
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM skuld_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    // Migration 5 drops two indexes no query reads and keeps timers_due:
    // the due-timer scan of a node's shards reads it under a backlog.
    let indexes: Vec<String> = client
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema() \
             AND indexname IN ('idempotency_recorded_at', 'events_shard_recorded_at', \
                 'timers_due', 'timers_shard_due') \
             ORDER BY indexname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(indexes, vec!["timers_due", "timers_shard_due"]);
    // Every shard has its event bounds from the start.
    let bounds: i64 = client
        .query_one("SELECT count(*) FROM event_bounds WHERE head = 0", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(bounds, i64::from(SHARDS));
    let fences: i64 = client
        .query_one("SELECT count(*) FROM shard_fences WHERE epoch = 0", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(fences, i64::from(SHARDS) - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_works_again_after_postgres_crashes_and_restarts() {
    let mut postgres = Postgres::start().unwrap();
    let (store, _) = store(&postgres, "restart").await;
    store
        .commit(batch(vec![full_write(b"before", 0, 0, 1)]))
        .await
        .unwrap();

    postgres.kill();
    let down = store
        .commit(batch(vec![full_write(b"during", 0, 0, 1)]))
        .await;
    assert!(matches!(down, Err(StoreError::Backend(_))), "{down:?}");
    let read = store.load(b"before").await;
    assert!(matches!(read, Err(StoreError::Backend(_))), "{read:?}");

    postgres.restart().unwrap();
    let committed = store
        .commit(batch(vec![full_write(b"after", 0, 0, 1)]))
        .await
        .unwrap();
    assert!(committed.fenced.is_empty());
    // What was acknowledged before the crash survived it.
    assert_eq!(store.journal(b"before").await.unwrap(), vec![(1, vec![1])]);
    assert_eq!(store.journal(b"after").await.unwrap(), vec![(1, vec![1])]);
    assert!(store.journal(b"during").await.unwrap().is_empty());
}

/// A write of `key` on `shard` at `epoch` carrying `events` outbox events.
fn events_write(key: &[u8], shard: u32, epoch: u64, seq: u64, events: usize) -> EntityWrite {
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
/// without a gap or a repeat, a fenced write leaves no event and no number
/// behind, a new owner continues the sequence, histories page by sequence,
/// and retention deletes a prefix and raises the floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_numbers_each_shard_without_gaps_under_concurrent_commits_and_fencing() {
    let postgres = Postgres::start().unwrap();
    let (store, url) = store(&postgres, "outbox").await;
    let store = std::sync::Arc::new(store);

    // 8 writers x 25 commits, each commit touching shards 0 and 1.
    let mut writers = Vec::new();
    for writer in 0..8u64 {
        let store = std::sync::Arc::clone(&store);
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

    // A new owner fences shard 1: the old owner's write is refused and
    // takes no number; the new owner's events continue the sequence.
    assert!(store.fence(1, 5).await.unwrap());
    let committed = store
        .commit(batch(vec![
            events_write(b"stale", 1, 0, 1, 3),
            events_write(b"new-owner", 1, 5, 1, 1),
        ]))
        .await
        .unwrap();
    assert_eq!(committed.fenced, vec![(0, 5)]);
    let after = store
        .read_events(vec![(0, 400), (1, 200), (2, 1)], 100)
        .await
        .unwrap();
    assert_eq!(after.len(), 1, "{} events after the heads", after.len());
    assert_eq!(
        (after[0].seq, after[0].entity.as_slice()),
        (201, b"new-owner".as_slice())
    );
    assert!(store
        .entity_events(b"stale", 0, 10)
        .await
        .unwrap()
        .is_empty());

    // Bounds, and history pages by sequence.
    let bounds = store.event_bounds().await.unwrap();
    let head = |shard| bounds.iter().find(|b| b.shard == shard).unwrap().head;
    assert_eq!((head(0), head(1)), (400, 201));
    let first_page = store.entity_events(b"w3-b", 0, 10).await.unwrap();
    let second_page = store
        .entity_events(b"w3-b", first_page.last().unwrap().seq, 100)
        .await
        .unwrap();
    assert_eq!(first_page.len() + second_page.len(), 25);

    // Retention by the database's clock: back-date shard 0's first 100
    // events; only they go, and the floor rises past them.
    raw(&url)
        .await
        .execute(
            "UPDATE events SET recorded_at_ms = recorded_at_ms - 3600000 WHERE shard = 0 AND seq <= 100",
            &[],
        )
        .await
        .unwrap();
    let purged = store
        .purge_events(Duration::from_secs(60), Some(vec![0, 1]), 1_000)
        .await
        .unwrap();
    assert_eq!(purged, 100);
    let bounds = store.event_bounds().await.unwrap();
    let shard0 = bounds.iter().find(|b| b.shard == 0).unwrap();
    assert_eq!((shard0.floor, shard0.head), (100, 400));
    let oldest = store.read_events(Vec::new(), 1).await.unwrap();
    assert_eq!(
        oldest.iter().find(|e| e.shard == 0).map(|e| e.seq),
        Some(101)
    );
}

/// The records of no shard, in both stores: one at a time or many in one
/// write (the last value of an id given twice counts), listed by prefix in
/// id order and page by page, deleted.
async fn records_contract(store: &dyn Store) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_put_one_or_many_listed_by_prefix_and_deleted() {
    let postgres = Postgres::start().unwrap();
    let (store, _) = store(&postgres, "records").await;
    records_contract(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let embedded = skuld_cluster::EmbeddedStore::open(dir.path()).unwrap();
    records_contract(&embedded).await;
}
