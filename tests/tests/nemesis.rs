//! The seeded nemesis run: three nodes, a minute of random faults (kill -9
//! and restart, pause and resume, etcd and PostgreSQL restarts, node-etcd and
//! node-PostgreSQL cuts), one at a time, under contended reserve / release /
//! commit / receive / write-off / move traffic retried by key; then the
//! history check. Each seed's schedule is printed before it runs; a failing
//! seed is rerun with `SKULD_NEMESIS_SEEDS=<seed>` (comma-separated; `random`
//! picks a fresh one) and `SKULD_NEMESIS_SECS` sets the length.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use skuld_tests::cluster::{ClusterOptions, TestCluster};
use skuld_tests::nemesis::{run, schedule, windows};
use skuld_tests::workload::{Workload, WorkloadConfig};
use skuld_tests::NodeOptions;

/// The seeds CI runs: fixed, so a red run points at a schedule.
const DEFAULT_SEEDS: [u64; 2] = [0x5eed_0001, 0x5eed_0002];

fn seeds() -> Vec<u64> {
    match std::env::var("SKULD_NEMESIS_SEEDS") {
        Ok(value) => value
            .split(',')
            .map(|seed| match seed.trim() {
                "random" => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64,
                seed => seed
                    .strip_prefix("0x")
                    .map_or_else(|| seed.parse(), |hex| u64::from_str_radix(hex, 16))
                    .expect("SKULD_NEMESIS_SEEDS: numbers, 0x-hex or random"),
            })
            .collect(),
        Err(_) => DEFAULT_SEEDS.to_vec(),
    }
}

async fn one_run(seed: u64, length: Duration) {
    let steps = schedule(seed, 3, length);
    eprintln!("nemesis seed {seed:#x}: {} faults", steps.len());
    for (index, step) in steps.iter().enumerate() {
        eprintln!("  {index}: {} then {:?} quiet", step.fault, step.quiet);
    }
    let mut cluster = TestCluster::start_with(
        3,
        ClusterOptions {
            proxied: true,
            node: NodeOptions::default().arg("--store-failover-secs", 2),
        },
    )
    .await
    .unwrap();
    let workload = Workload::start(
        cluster.addresses(),
        WorkloadConfig {
            tenant: format!("nemesis-{seed:x}"),
            ..WorkloadConfig::default()
        },
    )
    .await
    .unwrap();
    let started = Instant::now();
    let injected = run(&mut cluster, &workload, &steps)
        .await
        .unwrap_or_else(|error| {
            panic!("nemesis seed {seed:#x} could not inject its faults: {error:#}")
        });
    let faulted = started.elapsed();
    // Everything is healed and running: the cluster settles by itself.
    let settle = cluster
        .wait_settled(Duration::from_secs(60))
        .await
        .unwrap_or_else(|error| panic!("nemesis seed {seed:#x}: {error:#}"));
    workload.set_addresses(cluster.addresses()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for injected in &injected {
        *by_kind.entry(injected.fault.kind()).or_default() += 1;
    }
    let label = format!(
        "nemesis seed {seed:#x}: {} faults in {faulted:.1?} ({by_kind:?}), settled {settle:.1?} after the last",
        injected.len()
    );
    let ran = workload.started().elapsed();
    let history = workload
        .finish(cluster.addresses(), &label, 500)
        .await
        .unwrap_or_else(|error| {
            panic!("{label}: {error:#}\nrerun this schedule with SKULD_NEMESIS_SEEDS={seed:#x}")
        });
    eprintln!(
        "nemesis seed {seed:#x}: goodput {:.0} applied operations/s over {ran:.1?} ({} checked)",
        history.applied() as f64 / ran.as_secs_f64(),
        history.records.len()
    );
    for line in windows(&injected, &history) {
        eprintln!("nemesis seed {seed:#x}: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_nemesis_runs_keep_every_acknowledged_operation_exactly_once() {
    let length = Duration::from_secs(
        std::env::var("SKULD_NEMESIS_SECS")
            .ok()
            .and_then(|secs| secs.parse().ok())
            .unwrap_or(60),
    );
    for seed in seeds() {
        one_run(seed, length).await;
    }
}
