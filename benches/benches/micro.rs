//! Micro-benchmarks: the position state machine, the journal encoding, and
//! the store's group commit. `cargo bench -p skuld-benches --bench micro`.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use skuld_actors::journal::JournalEntry;
use skuld_actors::position::{
    apply_entry, decide, AdjustmentReason, Bucket, Command, Context, Event, Owner, OwnerType,
    PositionState,
};
use skuld_cluster::{
    EmbeddedStore, EntityWrite, GroupCommitWriter, IdempotencyRecord, Store, WriterConfig,
};

fn context(now_ms: i64) -> Context {
    Context {
        now_ms,
        default_ttl_ms: 900_000,
        max_ttl_ms: 14_400_000,
    }
}

fn reserve(id: u64) -> Command {
    Command::Reserve {
        reservation_id: format!("r{id}"),
        quantity: 1,
        owner: Owner {
            kind: OwnerType::Cart,
            id: format!("cart-{id}"),
            line_id: String::new(),
        },
        channel: "web".into(),
        ttl_ms: 0,
        allow_partial: false,
    }
}

/// A hot position holding `reservations` active reservations.
fn hot_position(reservations: u64) -> PositionState {
    let mut state = PositionState::default();
    let stock = JournalEntry {
        version: 1,
        recorded_at_ms: 0,
        idempotency_key: None,
        correlation_id: String::new(),
        events: vec![Event::Adjusted {
            bucket: Bucket::Available,
            delta: 100_000_000,
            reason: AdjustmentReason::Receipt,
            reference: String::new(),
        }],
    };
    apply_entry(&mut state, &stock);
    for id in 0..reservations {
        if let Ok(decision) = decide(&state, None, &reserve(id), &context(id as i64)) {
            let entry = JournalEntry {
                version: state.version + 1,
                recorded_at_ms: 0,
                idempotency_key: None,
                correlation_id: String::new(),
                events: decision.events,
            };
            apply_entry(&mut state, &entry);
        }
    }
    state
}

fn state_machine(c: &mut Criterion) {
    let mut group = c.benchmark_group("position");
    for held in [0u64, 10_000] {
        let state = hot_position(held);
        group.bench_function(format!("decide+apply reserve ({held} held)"), |b| {
            b.iter_batched(
                || state.clone(),
                |mut state| {
                    if let Ok(decision) = decide(&state, None, &reserve(u64::MAX), &context(1)) {
                        let entry = JournalEntry {
                            version: state.version + 1,
                            recorded_at_ms: 1,
                            idempotency_key: None,
                            correlation_id: String::new(),
                            events: decision.events,
                        };
                        apply_entry(&mut state, &entry);
                    }
                    state
                },
                BatchSize::LargeInput,
            )
        });
        group.bench_function(format!("expire due ({held} held)"), |b| {
            b.iter(|| decide(&state, None, &Command::ExpireDue, &context(0)))
        });
    }
    group.finish();
}

fn journal_encoding(c: &mut Criterion) {
    let state = hot_position(1);
    let entry = JournalEntry {
        version: 2,
        recorded_at_ms: 1,
        idempotency_key: Some("checkout-42-line-1".into()),
        correlation_id: "0193a8d0-7c1e-7e0b-9b1a-2f3c4d5e6f70".into(),
        events: decide(&state, None, &reserve(7), &context(1))
            .map(|d| d.events)
            .unwrap_or_default(),
    };
    let config = bincode::config::standard();
    let bytes = bincode::serde::encode_to_vec(&entry, config).unwrap_or_default();
    let mut group = c.benchmark_group("journal");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("encode reserve entry", |b| {
        b.iter(|| bincode::serde::encode_to_vec(&entry, config))
    });
    group.bench_function("decode reserve entry", |b| {
        b.iter(|| bincode::serde::decode_from_slice::<JournalEntry<Event>, _>(&bytes, config))
    });
    group.finish();
}

fn group_commit(c: &mut Criterion) {
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    else {
        return;
    };
    let Ok(dir) = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")) else {
        return;
    };
    let Ok(store) = EmbeddedStore::open(dir.path()) else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(store);
    let writer = runtime.block_on(async {
        GroupCommitWriter::start(Arc::clone(&store), WriterConfig::default()).0
    });
    let mut group = c.benchmark_group("group commit");
    group.sample_size(20);
    for writers in [1usize, 64] {
        group.throughput(Throughput::Elements(writers as u64));
        let mut sequence = 0u64;
        group.bench_function(format!("{writers} concurrent durable writes"), |b| {
            b.iter(|| {
                sequence += 1;
                let base = sequence * writers as u64;
                runtime.block_on(async {
                    let writes = (0..writers as u64).map(|i| {
                        let writer = writer.clone();
                        async move {
                            writer
                                .write(EntityWrite {
                                    key: format!("entity-{}", i % 1_000).into_bytes(),
                                    journal: vec![(base + i, vec![0u8; 200])],
                                    idempotency: vec![IdempotencyRecord {
                                        key: format!("k{}", base + i),
                                        fingerprint: u128::from(base + i),
                                        reply: vec![0u8; 120],
                                        recorded_at_ms: 1,
                                    }],
                                    ..EntityWrite::default()
                                })
                                .await
                        }
                    });
                    futures::future::join_all(writes).await
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, state_machine, journal_encoding, group_commit);
criterion_main!(benches);
