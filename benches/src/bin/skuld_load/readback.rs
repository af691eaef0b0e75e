//! Setup and read-back: stocking positions and checking what was stored.

use super::*;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::StreamExt as _;
use serde::Serialize;
use skuld_benches::check::{check_mixed, check_reserve_only, MixedExpectation, Observed};
use skuld_proto::v1 as pb;
use tonic::Code;

/// Stocks every position with `quantity` (a receipt), 64 requests at a
/// time, retrying refusals for overload or unknown outcomes with the same
/// idempotency key (a retry is safe).
pub(super) async fn stock(
    clients: &Arc<Clients>,
    run: &str,
    positions: &[pb::PositionKey],
    quantity: i64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let total = positions.len();
    let done = AtomicU64::new(0);
    let tty = std::io::stderr().is_terminal();
    let mut last_print = Instant::now();
    let mut stream = futures::stream::iter(positions.iter().enumerate())
        .map(|(index, key)| {
            let clients = Arc::clone(clients);
            let request = pb::AdjustRequest {
                header: header(key, format!("{run}-stock-{index}")),
                bucket: pb::Bucket::Available.into(),
                delta: quantity,
                reason: pb::AdjustmentReason::Receipt.into(),
                change_from: None,
                reference_document_uri: String::new(),
            };
            async move {
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let result = clients
                        .inventory(index)
                        .adjust(clients.request(request.clone()))
                        .await;
                    match result {
                        Ok(_) => return Ok(()),
                        Err(status)
                            if attempt < 20
                                && (status.code() == Code::ResourceExhausted
                                    || skuld_proto::retry::outcome_open(status.code())) =>
                        {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(status) => {
                            return Err(anyhow::anyhow!(
                                "stocking {}: {:?} {}",
                                request
                                    .header
                                    .as_ref()
                                    .and_then(|h| h.key.as_ref())
                                    .map_or("?", |k| k.sku.as_str()),
                                status.code(),
                                status.message()
                            ))
                        }
                    }
                }
            }
        })
        .buffer_unordered(64);
    while let Some(result) = stream.next().await {
        result?;
        let count = done.fetch_add(1, Ordering::Relaxed) + 1;
        if last_print.elapsed() >= Duration::from_secs(1) || count as usize == total {
            last_print = Instant::now();
            let line = format!(
                "setup: stocked {count} of {total} positions ({:.1}s)",
                started.elapsed().as_secs_f64()
            );
            if tty {
                eprint!("\r{line}   ");
            } else {
                eprintln!("{line}");
            }
        }
    }
    if tty {
        eprintln!();
    }
    Ok(())
}

pub(super) async fn read_position(
    clients: &Clients,
    key: &pb::PositionKey,
) -> anyhow::Result<Observed> {
    let mut attempt = 0;
    let reply = loop {
        attempt += 1;
        let result = clients
            .inventory(attempt)
            .get_position(clients.request(pb::GetPositionRequest {
                key: Some(key.clone()),
                reservations_page_size: 1,
                ..pb::GetPositionRequest::default()
            }))
            .await;
        match result {
            Ok(reply) => break reply,
            // Never written: every bucket is 0 (the check then says what
            // was expected instead).
            Err(status) if status.code() == Code::NotFound => return Ok(Observed::default()),
            Err(status)
                if attempt < 20
                    && (status.code() == Code::ResourceExhausted
                        || status.code() == Code::Unavailable) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => {
                bail!(
                    "cannot read back {}/{}: {:?} {}",
                    key.sku,
                    key.location,
                    status.code(),
                    status.message()
                )
            }
        }
    };
    let buckets = reply
        .into_inner()
        .position
        .and_then(|p| p.buckets)
        .unwrap_or_default();
    Ok(Observed {
        on_hand: buckets.on_hand,
        available: buckets.available,
        reserved: buckets.reserved,
        committed: buckets.committed,
        held: buckets.damaged + buckets.quality_control + buckets.safety_stock,
    })
}

/// Every active reservation id of a position (paged; for diagnosis).
pub(super) async fn reservation_ids(
    clients: &Clients,
    key: &pb::PositionKey,
) -> anyhow::Result<std::collections::HashSet<String>> {
    let mut ids = std::collections::HashSet::new();
    let mut token = String::new();
    for _ in 0..10_000 {
        let reply = clients
            .inventory(0)
            .get_position(clients.request(pb::GetPositionRequest {
                key: Some(key.clone()),
                reservations_page_size: 1_000,
                reservations_page_token: token.clone(),
            }))
            .await
            .context("cannot page reservations")?
            .into_inner();
        let Some(position) = reply.position else {
            break;
        };
        ids.extend(position.reservations.into_iter().map(|r| r.reservation_id));
        if position.next_reservations_page_token.is_empty() {
            break;
        }
        token = position.next_reservations_page_token;
    }
    Ok(ids)
}

#[derive(Debug, Serialize)]
pub(super) struct Check {
    pub(super) passed: bool,
    pub(super) positions_checked: usize,
    pub(super) positions_with_unknown_outcomes: usize,
    /// Requests whose outcome the generator cannot know (deadline or
    /// transport error); they widen the check of their position only.
    pub(super) unknown_outcomes: i64,
    /// OK replies marked `replayed` although every key was new.
    pub(super) replayed_replies: u64,
    pub(super) failures: Vec<String>,
}

/// Reads back the positions in `indexes` (32 at a time) and checks each.
pub(super) async fn read_back<F>(
    clients: &Arc<Clients>,
    positions: &[pb::PositionKey],
    indexes: Vec<usize>,
    verdict: F,
) -> anyhow::Result<Vec<(usize, Observed, Result<(), String>)>>
where
    F: Fn(usize, &Observed) -> Result<(), String>,
{
    let reads = futures::stream::iter(indexes)
        .map(|index| {
            let clients = Arc::clone(clients);
            let key = positions[index].clone();
            async move { (index, read_position(&clients, &key).await) }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let mut results = Vec::with_capacity(reads.len());
    for (index, observed) in reads {
        let observed = observed?;
        let verdict = verdict(index, &observed);
        results.push((index, observed, verdict));
    }
    results.sort_by_key(|(index, _, _)| *index);
    Ok(results)
}

/// What a reserve-only workload sent: its positions, the units acknowledged
/// and of unknown outcome per position, and the OK replies marked replayed.
pub(super) struct ReserveOnly<'a> {
    pub(super) positions: &'a [pb::PositionKey],
    pub(super) acknowledged: &'a [AtomicI64],
    pub(super) unknown: &'a [AtomicI64],
    pub(super) replayed: u64,
}

/// Reads back every position with acknowledged or unknown-outcome
/// reservations and checks each holds what was acknowledged (reserve-only
/// workloads). A position that fails is a failure worded by `describe`
/// (index, reason, what was read); OK replies marked replayed are one more
/// (`keys` names what was new each time). Also returns the failed
/// positions' indexes, in the order of their failures.
pub(super) async fn check_reserved(
    clients: &Arc<Clients>,
    sent: ReserveOnly<'_>,
    stocked: i64,
    keys: &str,
    describe: impl Fn(usize, &str, &Observed) -> String,
) -> anyhow::Result<(Check, Vec<usize>)> {
    let ReserveOnly {
        positions,
        acknowledged,
        unknown,
        replayed,
    } = sent;
    eprintln!("check: reading back every touched position");
    let touched: Vec<usize> = (0..positions.len())
        .filter(|&i| {
            acknowledged[i].load(Ordering::Relaxed) != 0 || unknown[i].load(Ordering::Relaxed) != 0
        })
        .collect();
    let results = read_back(clients, positions, touched, |index, observed| {
        check_reserve_only(
            stocked,
            acknowledged[index].load(Ordering::Relaxed),
            unknown[index].load(Ordering::Relaxed),
            observed,
        )
    })
    .await?;
    let mut check = Check {
        passed: true,
        positions_checked: results.len(),
        positions_with_unknown_outcomes: unknown
            .iter()
            .filter(|u| u.load(Ordering::Relaxed) > 0)
            .count(),
        unknown_outcomes: unknown.iter().map(|u| u.load(Ordering::Relaxed)).sum(),
        replayed_replies: replayed,
        failures: Vec::new(),
    };
    let mut failed = Vec::new();
    for (index, observed, verdict) in results {
        let Err(reason) = verdict else { continue };
        check.passed = false;
        check.failures.push(describe(index, &reason, &observed));
        failed.push(index);
    }
    if replayed > 0 {
        check.passed = false;
        check.failures.push(format!(
            "{replayed} OK replies were marked replayed although every {keys} was new"
        ));
    }
    Ok((check, failed))
}

pub(super) async fn check_reservations(
    clients: &Arc<Clients>,
    workload: &Reservations,
    stocked: i64,
) -> anyhow::Result<Check> {
    let (mut check, failed) = check_reserved(
        clients,
        ReserveOnly {
            positions: &workload.positions,
            acknowledged: &workload.acknowledged,
            unknown: &workload.unknown,
            replayed: workload.replayed.load(Ordering::Relaxed),
        },
        stocked,
        "idempotency key",
        |index, reason, observed| {
            let key = &workload.positions[index];
            format!(
                "{}/{}: {reason} (acknowledged {}, unknown {}; read {:?})",
                key.sku,
                key.location,
                workload.acknowledged[index].load(Ordering::Relaxed),
                workload.unknown[index].load(Ordering::Relaxed),
                observed
            )
        },
    )
    .await?;
    // Name the acknowledged reservations the node does not hold, for the
    // first few failed positions.
    for (failure, index) in check.failures.iter_mut().zip(failed).take(5) {
        let key = &workload.positions[index];
        if let Ok(held) = reservation_ids(clients, key).await {
            let acknowledged = workload.acknowledged_keys[index].lock().clone();
            let missing: Vec<String> = acknowledged
                .iter()
                .map(|&n| workload.key(n))
                .filter(|id| !held.contains(id))
                .collect();
            failure.push_str(&format!(
                "; acknowledged but not active: {} {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            ));
        }
    }
    Ok(check)
}

pub(super) async fn check_mixed_positions(
    clients: &Arc<Clients>,
    workload: &Mixed,
    stocked: i64,
) -> anyhow::Result<Check> {
    eprintln!("check: reading back every touched position");
    let expectations: Vec<MixedExpectation> = workload
        .expected
        .iter()
        .map(|e| e.snapshot(stocked))
        .collect();
    // Every position a mutation was sent to, plus every 50th untouched one
    // (which must still be exactly as stocked).
    let indexes: Vec<usize> = (0..workload.positions.len())
        .filter(|&index| {
            index % 50 == 0 || workload.expected[index].touched.load(Ordering::Relaxed)
        })
        .collect();
    let results = read_back(clients, &workload.positions, indexes, |index, observed| {
        check_mixed(&expectations[index], observed)
    })
    .await?;
    let mut check = Check {
        passed: true,
        positions_checked: results.len(),
        positions_with_unknown_outcomes: expectations.iter().filter(|e| e.uncertain()).count(),
        unknown_outcomes: expectations
            .iter()
            .map(|e| {
                e.unknown_reserves
                    + e.unknown_commits
                    + e.unknown_releases
                    + e.unknown_fulfilled
                    + e.unknown_adjusted / ADJUST_UNITS
            })
            .sum(),
        replayed_replies: workload.replayed.load(Ordering::Relaxed),
        failures: Vec::new(),
    };
    for (index, observed, verdict) in results {
        if let Err(reason) = verdict {
            check.passed = false;
            let key = &workload.positions[index];
            check.failures.push(format!(
                "{}/{}: {reason} (expected {:?}; read {:?})",
                key.sku, key.location, expectations[index], observed
            ));
        }
    }
    if check.replayed_replies > 0 {
        check.passed = false;
        check.failures.push(format!(
            "{} OK replies were marked replayed although every idempotency key was new",
            check.replayed_replies
        ));
    }
    Ok(check)
}
