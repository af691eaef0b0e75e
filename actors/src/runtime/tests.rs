#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use skuld_cluster::store::memory::MemoryStore;
use skuld_cluster::{GroupCommitWriter, Store, WriterConfig};

use super::*;
use crate::position::{
    AdjustmentReason, Bucket, Command, Event, MutationRequest, Owner, OwnerType, PositionEntity,
    ReservationState,
};
use crate::{PositionKey, Refusal};

#[derive(Clone)]
struct Config {
    runtime: RuntimeConfig,
    max_in_flight: usize,
    timer_scan_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            runtime: RuntimeConfig::default(),
            max_in_flight: 10_000,
            timer_scan_interval: Duration::from_millis(500),
        }
    }
}

struct Node {
    runtime: Arc<EntityRuntime<PositionEntity>>,
    background: Option<Background>,
    store: Arc<dyn Store>,
}

impl Node {
    async fn shutdown(mut self) {
        if let Some(background) = self.background.take() {
            background.stop().await;
        }
        self.runtime.stop().await;
    }
}

/// The store a test's runtimes share: starting another runtime over the
/// same one is a restart of the node with its data kept.
fn memory() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new())
}

fn start(store: &Arc<MemoryStore>, config: Config, writer_config: WriterConfig) -> Node {
    start_with(store, config, writer_config, None)
}

fn start_with(
    store: &Arc<MemoryStore>,
    config: Config,
    writer_config: WriterConfig,
    routing: Option<routing::Routing>,
) -> Node {
    let store: Arc<dyn Store> = Arc::clone(store) as Arc<dyn Store>;
    let clock = config.runtime.clock.clone();
    let (writer, _) = GroupCommitWriter::start(Arc::clone(&store), writer_config);
    let admission = Arc::new(Admission::new(
        config.max_in_flight,
        80,
        Duration::from_millis(100),
    ));
    let mut runtime = EntityRuntime::new(
        PositionEntity::default(),
        Arc::clone(&store),
        writer,
        admission,
        config.runtime,
    );
    if let Some(routing) = routing {
        runtime = runtime.with_routing(routing);
    }
    let runtime = Arc::new(runtime);
    let background = Background::start(
        Arc::clone(&store),
        vec![Arc::clone(&runtime) as Arc<dyn TimerTarget>],
        None,
        super::BackgroundTiming {
            timer_scan_interval: config.timer_scan_interval,
            idempotency_retention: Duration::from_secs(86_400),
            event_retention: Duration::from_secs(7 * 86_400),
            purge_interval: Duration::from_secs(60),
        },
        clock,
    );
    Node {
        runtime,
        background: Some(background),
        store,
    }
}

fn key() -> PositionKey {
    PositionKey::new("acme", "SKU-1", "DC1").unwrap()
}

fn request(idempotency_key: &str, command: Command) -> MutationRequest {
    MutationRequest {
        key: key(),
        idempotency_key: idempotency_key.into(),
        expected_version: None,
        command,
    }
}

fn receive(quantity: i64) -> Command {
    Command::Adjust {
        bucket: Bucket::Available,
        delta: quantity,
        reason: AdjustmentReason::Receipt,
        change_from: None,
        reference: String::new(),
    }
}

fn reserve(id: &str, quantity: i64, ttl_ms: i64) -> Command {
    Command::Reserve {
        reservation_id: id.into(),
        quantity,
        owner: Owner {
            kind: OwnerType::Cart,
            id: "cart".into(),
            line_id: String::new(),
        },
        channel: "web".into(),
        ttl_ms,
        allow_partial: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_a_restart_and_retries_replay() {
    let store = memory();
    {
        let node = start(&store, Config::default(), WriterConfig::default());
        let first = node
            .runtime
            .mutate(request("receive-1", receive(10)), RequestMeta::default())
            .await
            .unwrap();
        assert_eq!((first.reply.version, first.replayed), (1, false));
        let retry = node
            .runtime
            .mutate(request("receive-1", receive(10)), RequestMeta::default())
            .await
            .unwrap();
        assert_eq!(retry.reply, first.reply);
        assert!(retry.replayed);
        let reused = node
            .runtime
            .mutate(request("receive-1", receive(11)), RequestMeta::default())
            .await;
        assert_eq!(
            reused,
            Err(Error::Refused(Refusal::IdempotencyKeyReused(
                "receive-1".into()
            )))
        );
        node.runtime
            .mutate(
                request("reserve-1", reserve("r1", 4, 0)),
                RequestMeta::default(),
            )
            .await
            .unwrap();
        node.shutdown().await;
    }
    let node = start(&store, Config::default(), WriterConfig::default());
    let state = node
        .runtime
        .read(&key(), RequestMeta::default())
        .await
        .unwrap();
    assert_eq!(state.version, 2);
    assert_eq!((state.buckets.on_hand, state.buckets.reserved), (10, 4));
    // The retry after the restart still replays and changes nothing.
    let retry = node
        .runtime
        .mutate(
            request("reserve-1", reserve("r1", 4, 0)),
            RequestMeta::default(),
        )
        .await
        .unwrap();
    assert!(retry.replayed);
    assert_eq!(
        node.runtime
            .read(&key(), RequestMeta::default())
            .await
            .unwrap()
            .version,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_on_one_position_never_oversell() {
    let store = memory();
    let node = start(&store, Config::default(), WriterConfig::default());
    node.runtime
        .mutate(request("receive", receive(100)), RequestMeta::default())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for index in 0..300 {
        let runtime = Arc::clone(&node.runtime);
        tasks.push(tokio::spawn(async move {
            runtime
                .mutate(
                    request(
                        &format!("reserve-{index}"),
                        reserve(&format!("r{index}"), 1, 0),
                    ),
                    RequestMeta::default(),
                )
                .await
        }));
    }
    let mut granted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => granted += 1,
            Err(Error::Refused(Refusal::Insufficient { .. })) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(granted, 100);
    let state = node
        .runtime
        .read(&key(), RequestMeta::default())
        .await
        .unwrap();
    assert_eq!(
        (state.buckets.reserved, state.buckets.available()),
        (100, 0)
    );
    assert_eq!(state.version, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_that_expired_while_the_node_was_down_expires_on_restart() {
    let store = memory();
    let config = Config {
        timer_scan_interval: Duration::from_millis(50),
        ..Config::default()
    };
    {
        let node = start(&store, config.clone(), WriterConfig::default());
        node.runtime
            .mutate(request("receive", receive(5)), RequestMeta::default())
            .await
            .unwrap();
        node.runtime
            .mutate(
                request("reserve", reserve("r1", 2, 300)),
                RequestMeta::default(),
            )
            .await
            .unwrap();
        // Stop before the TTL runs out.
        node.shutdown().await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let node = start(&store, config, WriterConfig::default());
    // Nothing touches the position: only the durable timer can expire it.
    let mut expired = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let journal = node.runtime.journal(&key()).await.unwrap();
        let last = journal.last().unwrap();
        if matches!(
            last.events.as_slice(),
            [Event::ReservationExpired { quantity: 2, .. }]
        ) {
            assert_eq!(journal.len(), 3, "expired exactly once");
            expired = true;
            break;
        }
    }
    assert!(expired, "the reservation did not expire after the restart");
    let state = node
        .runtime
        .read(&key(), RequestMeta::default())
        .await
        .unwrap();
    assert_eq!(state.buckets.reserved, 0);
    assert_eq!(
        state.reservation("r1").unwrap().state,
        ReservationState::Expired
    );
    let commit = node
        .runtime
        .mutate(
            request(
                "commit",
                Command::CommitReservation {
                    reservation_id: "r1".into(),
                    quantity: 0,
                    order_ref: "o1".into(),
                },
            ),
            RequestMeta::default(),
        )
        .await;
    assert!(matches!(
        commit,
        Err(Error::Refused(Refusal::FailedPrecondition(_)))
    ));
}

/// Decisions are stamped by the runtime's injected clock, and the timer
/// scanner finds a timer due by the same clock: set a century ahead of the
/// system's, a reservation's expiry is the injected time plus its TTL, and
/// it expires once that clock (not the system's) passes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_and_due_timers_follow_the_injected_clock() {
    use std::sync::atomic::{AtomicI64, Ordering};
    const START_MS: i64 = 4_102_444_800_000; // 2100-01-01
    let wall = Arc::new(AtomicI64::new(START_MS));
    let reading = Arc::clone(&wall);
    let config = Config {
        runtime: RuntimeConfig {
            clock: WallClock::from_fn(move || reading.load(Ordering::SeqCst)),
            ..RuntimeConfig::default()
        },
        timer_scan_interval: Duration::from_millis(20),
        ..Config::default()
    };
    let node = start(&memory(), config, WriterConfig::default());
    node.runtime
        .mutate(request("receive", receive(5)), RequestMeta::default())
        .await
        .unwrap();
    node.runtime
        .mutate(
            request("reserve", reserve("r1", 2, 60_000)),
            RequestMeta::default(),
        )
        .await
        .unwrap();
    let journal = node.runtime.journal(&key()).await.unwrap();
    assert!(journal.iter().all(|entry| entry.recorded_at_ms == START_MS));
    let state = node
        .runtime
        .read(&key(), RequestMeta::default())
        .await
        .unwrap();
    assert_eq!(
        state.reservation("r1").unwrap().expires_at_ms,
        START_MS + 60_000
    );

    wall.store(START_MS + 60_001, Ordering::SeqCst);
    // Nothing touches the position: only the timer scanner can expire it.
    let mut expired = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let journal = node.runtime.journal(&key()).await.unwrap();
        let last = journal.last().unwrap();
        if matches!(
            last.events.as_slice(),
            [Event::ReservationExpired { quantity: 2, .. }]
        ) {
            expired = Some(last.recorded_at_ms);
            break;
        }
    }
    assert_eq!(
        expired,
        Some(START_MS + 60_001),
        "not expired by the injected clock"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queues_refuse_at_once() {
    let store = memory();
    let config = Config {
        runtime: RuntimeConfig {
            mailbox_capacity: 2,
            ..RuntimeConfig::default()
        },
        ..Config::default()
    };
    let writer_config = WriterConfig {
        commit_delay: Some(Duration::from_millis(200)),
        ..WriterConfig::default()
    };
    let node = start(&store, config, writer_config);
    let mut tasks = Vec::new();
    for index in 0..20 {
        let runtime = Arc::clone(&node.runtime);
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let result = runtime
                .mutate(
                    request(&format!("k{index}"), receive(1)),
                    RequestMeta::default(),
                )
                .await;
            (result, started.elapsed())
        }));
    }
    let mut refused = 0;
    for task in tasks {
        let (result, elapsed) = task.await.unwrap();
        if let Err(Error::Overloaded { retry_after_ms, .. }) = result {
            assert!(retry_after_ms > 0);
            assert!(
                elapsed < Duration::from_millis(100),
                "refusal took {elapsed:?}"
            );
            refused += 1;
        }
    }
    assert!(refused >= 10, "only {refused} of 20 refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_actors_passivate_and_reload() {
    let store = memory();
    let config = Config {
        runtime: RuntimeConfig {
            idle_timeout: Duration::from_millis(100),
            snapshot_every: 3,
            ..RuntimeConfig::default()
        },
        ..Config::default()
    };
    let node = start(&store, config, WriterConfig::default());
    for index in 0..5 {
        node.runtime
            .mutate(
                request(&format!("k{index}"), receive(1)),
                RequestMeta::default(),
            )
            .await
            .unwrap();
    }
    assert_eq!(node.runtime.active_actors(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(node.runtime.active_actors(), 0);
    let state = node
        .runtime
        .read(&key(), RequestMeta::default())
        .await
        .unwrap();
    assert_eq!((state.version, state.buckets.on_hand), (5, 5));
    let loaded = node.store.load(&key().encode()).await.unwrap();
    assert_eq!(loaded.snapshot.map(|(version, _)| version), Some(3));
    assert_eq!(loaded.journal_tail.len(), 2);
    // The reloaded actor knows the stored keys again: retries replay and a
    // reused key is refused, whichever activation recorded it.
    let retry = node
        .runtime
        .mutate(request("k0", receive(1)), RequestMeta::default())
        .await
        .unwrap();
    assert!(retry.replayed);
    assert_eq!(
        node.runtime
            .mutate(request("k1", receive(2)), RequestMeta::default())
            .await,
        Err(Error::Refused(Refusal::IdempotencyKeyReused("k1".into())))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_deadlines_are_dropped_unapplied() {
    let store = memory();
    let node = start(&store, Config::default(), WriterConfig::default());
    let meta = RequestMeta {
        correlation_id: "c".into(),
        deadline: Some(Instant::now()),
        ..RequestMeta::default()
    };
    assert_eq!(
        node.runtime.mutate(request("k", receive(1)), meta).await,
        Err(Error::DeadlineExceeded)
    );
    let state = node
        .runtime
        .read(&key(), RequestMeta::default())
        .await
        .unwrap();
    assert_eq!(state.version, 0);
}

/// A cluster with no other node: nothing can be forwarded.
struct NoPeers;

#[async_trait::async_trait]
impl routing::Forwarder for NoPeers {
    async fn forward(
        &self,
        _peer: &skuld_cluster::shards::Peer,
        _kind: &'static str,
        _operation: routing::Operation,
        _payload: Vec<u8>,
        _meta: &RequestMeta,
    ) -> Result<Vec<u8>, Error> {
        Err(Error::Unavailable("no other node in this test".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_admitted_before_a_release_finish_under_their_epoch() {
    use skuld_cluster::shards::{Route, ShardTable};

    let store = memory();
    let table = ShardTable::new(1);
    table.set(0, Route::Local { epoch: 3 });
    let routing = routing::Routing {
        table: Arc::clone(&table),
        forwarder: Arc::new(NoPeers),
        node_id: "n1".into(),
        handoff_wait: Duration::from_millis(50),
    };
    // Every commit is held 1 s, so the second command queues behind the
    // first one's write with time to spare on a loaded machine.
    let writer_config = WriterConfig {
        commit_delay: Some(Duration::from_millis(1_000)),
        ..WriterConfig::default()
    };
    // The shard is served under epoch 3: its fence is raised to it first.
    assert!(store.fence(0, 3).await.unwrap());
    let node = start_with(&store, Config::default(), writer_config, Some(routing));
    let mutate = |idempotency_key: &'static str, quantity: i64| {
        let runtime = Arc::clone(&node.runtime);
        tokio::spawn(async move {
            runtime
                .mutate(
                    request(idempotency_key, receive(quantity)),
                    RequestMeta::default(),
                )
                .await
        })
    };
    let first = mutate("first", 5);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let second = mutate("second", 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    // The release of the shard begins: nothing new is admitted ...
    table.set(0, Route::Moving);
    assert!(matches!(
        mutate("third", 1).await.unwrap(),
        Err(Error::ShardMoving { shard: 0, .. })
    ));
    // ... and what was admitted before finishes, under epoch 3.
    assert_eq!(first.await.unwrap().unwrap().reply.version, 1);
    assert_eq!(second.await.unwrap().unwrap().reply.version, 2);
    table.set(0, Route::Local { epoch: 3 });
    let state = node
        .runtime
        .read(&key(), RequestMeta::default())
        .await
        .unwrap();
    assert_eq!((state.version, state.buckets.on_hand), (2, 6));
}

/// The key's first request is recorded with its answer, also when the
/// position refuses it: a retry gets the refusal again even after stock
/// arrived, and a different request with the key is refused as a reuse,
/// across a restart too. A request refused as malformed does not use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_first_use_consumes_its_idempotency_key() {
    let store = memory();
    let node = start(&store, Config::default(), WriterConfig::default());
    let mutate = |key: &str, command: Command| {
        let runtime = Arc::clone(&node.runtime);
        let request = request(key, command);
        async move { runtime.mutate(request, RequestMeta::default()).await }
    };
    mutate("stock", receive(5)).await.unwrap();
    let refused = mutate("k", reserve("r-1", 10, 60_000)).await;
    assert!(
        matches!(
            refused,
            Err(Error::Refused(Refusal::Insufficient {
                requested: 10,
                available: 5
            }))
        ),
        "{refused:?}"
    );
    mutate("more", receive(100)).await.unwrap();
    // The stored refusal, though 105 are available now.
    let retried = mutate("k", reserve("r-1", 10, 60_000)).await;
    assert!(
        matches!(
            retried,
            Err(Error::Refused(Refusal::Insufficient {
                requested: 10,
                available: 5
            }))
        ),
        "{retried:?}"
    );
    let reused = mutate("k", reserve("r-1", 3, 60_000)).await;
    assert!(
        matches!(
            reused,
            Err(Error::Refused(Refusal::IdempotencyKeyReused(_)))
        ),
        "{reused:?}"
    );
    // Malformed: refused before the position decides, the key stays free.
    let malformed = mutate("fresh", reserve("r-2", 0, 60_000)).await;
    assert!(matches!(
        malformed,
        Err(Error::Refused(Refusal::InvalidArgument { .. }))
    ));
    mutate("fresh", reserve("r-2", 2, 60_000)).await.unwrap();
    node.shutdown().await;

    let node = start(&store, Config::default(), WriterConfig::default());
    let after_restart = node
        .runtime
        .mutate(
            request("k", reserve("r-1", 10, 60_000)),
            RequestMeta::default(),
        )
        .await;
    assert!(
        matches!(
            after_restart,
            Err(Error::Refused(Refusal::Insufficient {
                requested: 10,
                available: 5
            }))
        ),
        "{after_restart:?}"
    );
    let state = node
        .runtime
        .read(&key(), RequestMeta::default())
        .await
        .unwrap();
    assert_eq!(state.buckets.reserved, 2, "only r-2 is held");
    node.shutdown().await;
}
