//! Each fault knob of the simulated store, on a paused clock: a fault
//! strikes the node it was set for and no other, and ends when it is
//! cleared.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use skuld_cluster::store::EntityWrite;

fn write(key: &[u8], shard: u32, epoch: u64, seq: u64) -> EntityWrite {
    EntityWrite {
        key: key.to_vec(),
        shard,
        epoch,
        journal: vec![(seq, vec![seq as u8])],
        events: vec![vec![seq as u8]],
        ..EntityWrite::default()
    }
}

fn batch(entities: Vec<EntityWrite>) -> WriteBatch {
    WriteBatch { entities }
}

fn store() -> SimStore {
    SimStore::new(WallClock::from_fn(|| 1_000_000))
}

async fn journal_len(store: &SimStore, key: &[u8]) -> usize {
    store.data().journal(key).await.unwrap().len()
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_node_fails_every_call_and_others_go_on() {
    let store = store();
    let (cut, other) = (store.for_node("node-1"), store.for_node("node-2"));
    store.faults().set_reachable("node-1", false);

    let commit = cut.commit(batch(vec![write(b"a", 0, 0, 1)])).await;
    assert!(matches!(commit, Err(StoreError::Backend(_))), "{commit:?}");
    assert!(cut.load(b"a").await.is_err());
    assert!(cut.fence(0, 1).await.is_err());
    assert!(cut.ping().await.is_err());
    assert!(cut.due_timers(u64::MAX, 10, None).await.is_err());
    assert_eq!(journal_len(&store, b"a").await, 0);
    assert!(store.data().newest_fence().is_none(), "a cut fence applied");

    other
        .commit(batch(vec![write(b"b", 1, 0, 1)]))
        .await
        .unwrap();
    store.faults().set_reachable("node-1", true);
    cut.commit(batch(vec![write(b"a", 0, 0, 1)])).await.unwrap();
    assert_eq!(journal_len(&store, b"a").await, 1);
    assert!(store.faults().injected() >= 5);
}

#[tokio::test(start_paused = true)]
async fn a_failure_before_apply_applies_nothing_and_strikes_only_the_next_calls() {
    let store = store();
    let node = store.for_node("node-1");
    store
        .faults()
        .fail_next("node-1", StoreCall::Commit, Failure::BeforeApply, 1);
    store
        .faults()
        .fail_next("node-1", StoreCall::Fence, Failure::BeforeApply, 1);

    assert!(node
        .commit(batch(vec![write(b"a", 0, 0, 1)]))
        .await
        .is_err());
    assert_eq!(journal_len(&store, b"a").await, 0);
    assert!(store.applied_commits().is_empty());
    assert!(node.fence(0, 3).await.is_err());
    assert!(store.data().newest_fence().is_none());

    // The retry goes through: the failure was for one call.
    node.commit(batch(vec![write(b"a", 0, 0, 1)]))
        .await
        .unwrap();
    assert!(node.fence(0, 3).await.unwrap());
    assert_eq!(journal_len(&store, b"a").await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failure_after_apply_applies_and_loses_the_reply() {
    let store = store();
    let node = store.for_node("node-1");
    assert!(node.fence(2, 4).await.unwrap());
    store
        .faults()
        .fail_next("node-1", StoreCall::Commit, Failure::AfterApply, 1);
    store
        .faults()
        .fail_next("node-1", StoreCall::Fence, Failure::AfterApply, 1);

    let commit = node.commit(batch(vec![write(b"a", 2, 4, 1)])).await;
    assert!(matches!(commit, Err(StoreError::Backend(_))), "{commit:?}");
    assert_eq!(journal_len(&store, b"a").await, 1, "the write was applied");
    assert_eq!(
        store.applied_commits().get(&2).map(Vec::len),
        Some(1),
        "and logged"
    );
    assert!(node.fence(2, 5).await.is_err());
    assert_eq!(store.data().newest_fence(), Some((2, 5)));
    // A retry of the same fence is answered true (same epoch).
    assert!(node.fence(2, 5).await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn latency_delays_both_ways_and_a_cut_on_the_way_back_loses_only_the_reply() {
    let store = store();
    let node = store.for_node("node-1");
    let latency = Duration::from_millis(40);
    store.faults().set_latency("node-1", latency);

    let started = tokio::time::Instant::now();
    node.commit(batch(vec![write(b"a", 0, 0, 1)]))
        .await
        .unwrap();
    assert_eq!(started.elapsed(), 2 * latency);
    let started = tokio::time::Instant::now();
    store.for_node("node-2").load(b"a").await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO, "another node is slowed");

    // Cut while the commit travels: it arrived and applied, its reply is lost.
    let committing = tokio::spawn({
        let node = Arc::clone(&node);
        async move { node.commit(batch(vec![write(b"a", 0, 0, 2)])).await }
    });
    tokio::time::sleep(latency + latency / 2).await;
    store.faults().set_reachable("node-1", false);
    assert!(committing.await.unwrap().is_err());
    assert_eq!(journal_len(&store, b"a").await, 2);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_commit_holds_a_concurrent_fence_until_it_applies() {
    let store = store();
    let zombie = store.for_node("node-1");
    let new_owner = store.for_node("node-2");
    assert!(zombie.fence(0, 1).await.unwrap());
    let hold = Duration::from_secs(3);
    store.faults().stall_commits(
        "node-1",
        Stall {
            hold,
            end: StallEnd::Apply,
        },
    );

    let started = tokio::time::Instant::now();
    let committing = tokio::spawn({
        let zombie = Arc::clone(&zombie);
        async move { zombie.commit(batch(vec![write(b"held", 0, 1, 1)])).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fencing = tokio::spawn({
        let new_owner = Arc::clone(&new_owner);
        async move { new_owner.fence(0, 2).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !fencing.is_finished(),
        "the fence slipped past the stalled commit"
    );
    // Another shard's fence does not wait.
    assert!(new_owner.fence(1, 2).await.unwrap());

    let committed = committing.await.unwrap().unwrap();
    assert!(committed.fenced.is_empty());
    assert!(fencing.await.unwrap().unwrap());
    assert_eq!(started.elapsed(), hold);
    assert_eq!(journal_len(&store, b"held").await, 1);

    // The stall is still set, but the zombie's next write is refused after it.
    let stale = zombie
        .commit(batch(vec![write(b"held", 0, 1, 2)]))
        .await
        .unwrap();
    assert_eq!(stale.fenced, vec![(0, 2)]);
    assert_eq!(journal_len(&store, b"held").await, 1);
    let epochs: Vec<u64> = store.applied_commits()[&0]
        .iter()
        .map(|commit| commit.epoch)
        .collect();
    assert_eq!(epochs, vec![1]);
    assert!(interleaved_epochs(&store.applied_commits()).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_stall_ends_failing_when_told_or_when_postgres_would_abort_it() {
    for (stall, cut_while_stalled) in [
        (
            Stall {
                hold: Duration::from_secs(1),
                end: StallEnd::Fail,
            },
            false,
        ),
        (
            Stall {
                hold: Duration::from_secs(60),
                end: StallEnd::Apply,
            },
            false,
        ),
        (
            Stall {
                hold: Duration::from_secs(1),
                end: StallEnd::Apply,
            },
            true,
        ),
    ] {
        let store = store();
        let node = store.for_node("node-1");
        store.faults().stall_commits("node-1", stall);
        let started = tokio::time::Instant::now();
        let committing = tokio::spawn({
            let node = Arc::clone(&node);
            async move { node.commit(batch(vec![write(b"a", 0, 0, 1)])).await }
        });
        if cut_while_stalled {
            tokio::time::sleep(Duration::from_millis(500)).await;
            store.faults().set_reachable("node-1", false);
        }
        assert!(committing.await.unwrap().is_err(), "{stall:?}");
        assert_eq!(
            started.elapsed(),
            stall.hold.min(IDLE_IN_TRANSACTION_TIMEOUT),
            "{stall:?}"
        );
        assert_eq!(journal_len(&store, b"a").await, 0, "{stall:?}");
        assert!(store.applied_commits().is_empty());

        // Ended: the next commit neither stalls nor fails.
        store.faults().heal_all();
        let started = tokio::time::Instant::now();
        node.commit(batch(vec![write(b"a", 0, 0, 1)]))
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}

#[tokio::test(start_paused = true)]
async fn the_commit_log_follows_the_apply_order_and_finds_interleaved_epochs() {
    let store = store();
    let node = store.for_node("node-1");
    assert!(node.fence(3, 7).await.unwrap());
    node.commit(batch(vec![write(b"a", 3, 7, 1), write(b"b", 4, 0, 1)]))
        .await
        .unwrap();
    // A fenced write is not logged; only the applied one of its batch is.
    node.commit(batch(vec![write(b"a", 3, 6, 2), write(b"b", 4, 0, 2)]))
        .await
        .unwrap();
    let applied = store.applied_commits();
    let log = |shard: u32| -> Vec<(u64, u64)> {
        applied[&shard]
            .iter()
            .map(|commit| (commit.commit, commit.epoch))
            .collect()
    };
    assert_eq!(log(3), vec![(1, 7)]);
    assert_eq!(log(4), vec![(1, 0), (2, 0)]);
    assert!(interleaved_epochs(&applied).is_empty());

    // What the checker reports when a store let a zombie through.
    let commit = |commit: u64, epoch: u64| ShardCommit {
        commit,
        node: format!("node-{commit}"),
        epoch,
    };
    let zombie_log = BTreeMap::from([(
        5,
        vec![commit(1, 1), commit(2, 2), commit(3, 2), commit(4, 1)],
    )]);
    assert_eq!(
        interleaved_epochs(&zombie_log),
        vec![EpochInterleaving {
            shard: 5,
            newer: commit(2, 2),
            older: commit(4, 1),
        }]
    );
}
