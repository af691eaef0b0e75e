//! `PostgresStore` against a real PostgreSQL: the same semantics as the
//! embedded store, plus fencing by shard epochs, concurrent migrations and
//! surviving a database crash and restart with the same store value.
//!
//! Every test starts its own server (about a second: `initdb --no-sync`)
//! so a test that kills it disturbs no other, and works in a database of
//! its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use skuld_cluster::{EntityWrite, PostgresStore, Store, StoreError};
use skuld_tests::services::Postgres;
use skuld_tests::store_contract::{
    self as contract, batch, events_write, expected, full_write, record, stored, SHARDS,
};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_batch_reads_back_like_the_embedded_store() {
    let postgres = Postgres::start().unwrap();
    let (round_trip, _) = store(&postgres, "round_trip").await;
    contract::a_committed_batch_reads_back(&round_trip).await;
    let (duplicate, _) = store(&postgres, "duplicate_journal").await;
    contract::a_journal_entry_written_again_fails_the_whole_batch(&duplicate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epochs_are_fenced_per_write() {
    let postgres = Postgres::start().unwrap();
    let (fencing, _) = store(&postgres, "fencing").await;
    contract::stale_epochs_are_fenced_per_write(&fencing).await;
    let (outbox, _) = store(&postgres, "fenced_events").await;
    contract::a_fenced_write_takes_no_event_number(&outbox).await;
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
        .pause_commits_after_lock(Some(contract::HELD_COMMIT));
    contract::a_fence_waits_for_the_commit_in_flight(Arc::new(store), Arc::new(old_owner)).await;
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
    contract::due_timers_can_be_limited_to_shards(&store).await;
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

/// The outbox: concurrent commits number a shard's events 1, 2, 3, ...
/// without a gap or a repeat, a fenced write leaves no event and no number
/// behind, a new owner continues the sequence, histories page by sequence,
/// and retention deletes a prefix and raises the floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_numbers_each_shard_without_gaps_under_concurrent_commits_and_fencing() {
    let postgres = Postgres::start().unwrap();
    let (store, url) = store(&postgres, "outbox").await;
    contract::the_outbox_numbers_each_shard_without_gaps(Arc::new(store.clone())).await;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_put_one_or_many_listed_by_prefix_and_deleted() {
    let postgres = Postgres::start().unwrap();
    let (store, _) = store(&postgres, "records").await;
    contract::records_are_put_one_or_many_listed_by_prefix_and_deleted(&store).await;
}
