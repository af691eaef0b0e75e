//! A seeded nemesis: a random schedule of faults, one at a time, against a
//! proxied test cluster under the contended workload.
//!
//! The schedule is a pure function of the seed ([`schedule`]): a failing
//! seed reruns the same faults in the same order with the same durations
//! (the timing of the requests around them still varies from run to run).
//! Faults: `kill -9` and restart of a node, SIGSTOP/SIGCONT of a node (often
//! past its lease), etcd killed and restarted, PostgreSQL killed
//! (immediate shutdown) and restarted, one node's link to etcd or to
//! PostgreSQL black-holed and healed.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::cluster::{node_id, TestCluster};
use crate::workload::{next_random, History, Workload};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a node, start it again after `down`.
    Kill {
        node: usize,
        down: Duration,
    },
    /// SIGSTOP a node, SIGCONT it after `for_`.
    Pause {
        node: usize,
        for_: Duration,
    },
    EtcdRestart {
        down: Duration,
    },
    PostgresRestart {
        down: Duration,
    },
    /// Black-hole one node's traffic to etcd.
    CutEtcd {
        node: usize,
        for_: Duration,
    },
    /// Black-hole one node's traffic to PostgreSQL.
    CutPostgres {
        node: usize,
        for_: Duration,
    },
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => "kill -9 and restart",
            Fault::Pause { .. } => "pause",
            Fault::EtcdRestart { .. } => "etcd restart",
            Fault::PostgresRestart { .. } => "PostgreSQL restart",
            Fault::CutEtcd { .. } => "node-etcd cut",
            Fault::CutPostgres { .. } => "node-PostgreSQL cut",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill { node, down } => write!(f, "kill -9 {} for {down:?}", node_id(*node)),
            Fault::Pause { node, for_ } => write!(f, "pause {} for {for_:?}", node_id(*node)),
            Fault::EtcdRestart { down } => write!(f, "etcd down for {down:?}"),
            Fault::PostgresRestart { down } => write!(f, "PostgreSQL down for {down:?}"),
            Fault::CutEtcd { node, for_ } => {
                write!(f, "cut {} from etcd for {for_:?}", node_id(*node))
            }
            Fault::CutPostgres { node, for_ } => {
                write!(f, "cut {} from PostgreSQL for {for_:?}", node_id(*node))
            }
        }
    }
}

/// A fault and the quiet time after it.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub fault: Fault,
    pub quiet: Duration,
}

/// The seeded random numbers of a schedule.
struct Dice(u64);

impl Dice {
    fn below(&mut self, bound: u64) -> u64 {
        next_random(&mut self.0) % bound.max(1)
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }
}

/// The faults of `seed` for `nodes` nodes, filling about `length`.
pub fn schedule(seed: u64, nodes: usize, length: Duration) -> Vec<Step> {
    // xorshift needs a nonzero state; splitmix64 spreads neighbouring seeds.
    let mut mixed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let mut dice = Dice((mixed ^ (mixed >> 31)).max(1));
    let mut steps = Vec::new();
    let mut total = Duration::ZERO;
    while total < length {
        let node = dice.below(nodes as u64) as usize;
        let fault = match dice.below(6) {
            0 => Fault::Kill {
                node,
                down: dice.millis(500, 3_000),
            },
            1 => Fault::Pause {
                node,
                for_: dice.millis(1_000, 6_000),
            },
            2 => Fault::EtcdRestart {
                down: dice.millis(500, 3_000),
            },
            3 => Fault::PostgresRestart {
                down: dice.millis(500, 3_000),
            },
            4 => Fault::CutEtcd {
                node,
                for_: dice.millis(2_000, 7_000),
            },
            _ => Fault::CutPostgres {
                node,
                for_: dice.millis(2_000, 7_000),
            },
        };
        let quiet = dice.millis(1_000, 3_000);
        total += match fault {
            Fault::Kill { down, .. }
            | Fault::EtcdRestart { down }
            | Fault::PostgresRestart { down } => down,
            Fault::Pause { for_, .. }
            | Fault::CutEtcd { for_, .. }
            | Fault::CutPostgres { for_, .. } => for_,
        } + quiet;
        steps.push(Step { fault, quiet });
    }
    steps
}

/// Runs a blocking harness call (a service restart) without stalling the
/// runtime's other tasks.
fn blocking<T>(call: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(call)
}

/// Injects `fault`, waits its duration and heals it. Keeps the workload
/// sending to every node that runs (a restarted node listens on new ports).
pub async fn inject(
    cluster: &mut TestCluster,
    workload: &Workload,
    fault: Fault,
) -> anyhow::Result<()> {
    match fault {
        Fault::Kill { node, down } => {
            cluster.node_mut(node).kill9()?;
            let running: Vec<String> = cluster
                .live()
                .into_iter()
                .filter(|index| *index != node)
                .map(|index| cluster.node(index).grpc_addr.clone())
                .collect();
            workload.set_addresses(running).await;
            tokio::time::sleep(down).await;
            cluster
                .node_mut(node)
                .restart()
                .await
                .with_context(|| format!("restarting {}", node_id(node)))?;
            workload.set_addresses(cluster.addresses()).await;
        }
        Fault::Pause { node, for_ } => {
            cluster.signal(node, true)?;
            tokio::time::sleep(for_).await;
            cluster.signal(node, false)?;
        }
        Fault::EtcdRestart { down } => {
            cluster.etcd.kill();
            tokio::time::sleep(down).await;
            blocking(|| cluster.etcd.restart()).context("restarting etcd")?;
        }
        Fault::PostgresRestart { down } => {
            cluster.postgres.kill();
            tokio::time::sleep(down).await;
            blocking(|| cluster.postgres.restart()).context("restarting PostgreSQL")?;
        }
        Fault::CutEtcd { node, for_ } => {
            cluster.links(node).etcd.cut();
            tokio::time::sleep(for_).await;
            cluster.links(node).etcd.heal();
        }
        Fault::CutPostgres { node, for_ } => {
            cluster.links(node).postgres.cut();
            tokio::time::sleep(for_).await;
            cluster.links(node).postgres.heal();
        }
    }
    Ok(())
}

/// One fault as it was injected: from when to when, counted from the
/// workload's start.
#[derive(Debug, Clone, Copy)]
pub struct Injected {
    pub fault: Fault,
    pub from: Duration,
    pub until: Duration,
}

/// Runs the steps in order; returns each fault with when it was in force.
pub async fn run(
    cluster: &mut TestCluster,
    workload: &Workload,
    steps: &[Step],
) -> anyhow::Result<Vec<Injected>> {
    let started = Instant::now();
    let mut injected = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        eprintln!(
            "nemesis {:>5.1}s step {index}: {}",
            started.elapsed().as_secs_f64(),
            step.fault
        );
        let from = workload.started().elapsed();
        inject(cluster, workload, step.fault)
            .await
            .with_context(|| format!("step {index}: {}", step.fault))?;
        injected.push(Injected {
            fault: step.fault,
            from,
            until: workload.started().elapsed(),
        });
        tokio::time::sleep(step.quiet).await;
    }
    Ok(injected)
}

/// Per kind of fault: how many were injected, how many operations were
/// sent while one was in force, and the longest a client waited for an
/// answer to one of them (retries included): the unavailability clients saw.
pub fn windows(injected: &[Injected], history: &History) -> Vec<String> {
    let mut kinds: std::collections::BTreeMap<&str, (usize, usize, Duration)> =
        std::collections::BTreeMap::new();
    for fault in injected {
        let entry = kinds.entry(fault.fault.kind()).or_default();
        entry.0 += 1;
        for record in &history.records {
            if (fault.from..fault.until).contains(&record.sent_at) {
                entry.1 += 1;
                entry.2 = entry.2.max(record.waited);
            }
        }
    }
    kinds
        .into_iter()
        .map(|(kind, (count, operations, longest))| {
            format!("{kind}: {count} injected, {operations} operations sent during them, longest wait {longest:.2?}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_gives_the_same_schedule() {
        let one = schedule(42, 3, Duration::from_secs(60));
        let again = schedule(42, 3, Duration::from_secs(60));
        assert_eq!(
            one.iter().map(|step| step.fault).collect::<Vec<_>>(),
            again.iter().map(|step| step.fault).collect::<Vec<_>>()
        );
        let other = schedule(43, 3, Duration::from_secs(60));
        assert_ne!(
            one.iter().map(|step| step.fault).collect::<Vec<_>>(),
            other.iter().map(|step| step.fault).collect::<Vec<_>>()
        );
        assert!(one.len() >= 6, "{} faults in a minute", one.len());
    }
}
