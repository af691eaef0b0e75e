//! Multi-line orders against single-line reservations in one run (issue
//! 17's figure: `ReserveOrder` of 3-line orders at a third of the
//! single-line throughput or more). Each order reserves one unit at each of
//! `--order-lines` distinct positions, all lines or none, through the order
//! saga; the check reads every touched position back.

use super::*;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use skuld_benches::pick::Picker;
use skuld_benches::stats::series;
use skuld_proto::v1 as pb;

pub(super) struct Orders {
    clients: Arc<Clients>,
    run: String,
    tenant: String,
    positions: Vec<pb::PositionKey>,
    picker: Picker,
    lines: usize,
    /// Units held by OK (held) orders, per position.
    acknowledged: Vec<AtomicI64>,
    /// Orders with an unknown outcome touching the position, per position.
    unknown: Vec<AtomicI64>,
    /// OK replies whose order is not held: stock is ample, so none.
    not_held: AtomicU64,
    replayed: AtomicU64,
    next_key: AtomicU64,
}

impl Orders {
    fn pick_lines(&self) -> Vec<usize> {
        let mut rng = rand::rng();
        let mut picked: Vec<usize> = Vec::with_capacity(self.lines);
        while picked.len() < self.lines.min(self.positions.len()) {
            let index = self.picker.pick(&mut rng);
            if !picked.contains(&index) {
                picked.push(index);
            }
        }
        picked
    }
}

impl Workload for Orders {
    fn call(&self, caller: usize) -> Call<'_> {
        Box::pin(async move {
            let picked = self.pick_lines();
            let number = self.next_key.fetch_add(1, Ordering::Relaxed);
            let order_id = format!("{}-o{number}", self.run);
            let request = pb::ReserveOrderRequest {
                key: Some(pb::OrderKey {
                    tenant: self.tenant.clone(),
                    order_id: order_id.clone(),
                }),
                idempotency_key: order_id,
                lines: picked
                    .iter()
                    .enumerate()
                    .map(|(line, &index)| pb::OrderLineSpec {
                        line_id: format!("l{line}"),
                        sku: self.positions[index].sku.clone(),
                        quantity: 1,
                        locations: vec![self.positions[index].location.clone()],
                        allow_split: false,
                    })
                    .collect(),
                ttl_seconds: 0,
                channel: String::new(),
            };
            let mut client = self.clients.orders(caller);
            let result = client.reserve_order(self.clients.request(request)).await;
            match result {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    if reply.replayed {
                        self.replayed.fetch_add(1, Ordering::Relaxed);
                    }
                    let held = reply
                        .order
                        .is_some_and(|order| order.status == pb::OrderStatus::Held as i32);
                    if held {
                        for &index in &picked {
                            self.acknowledged[index].fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        self.not_held.fetch_add(1, Ordering::Relaxed);
                    }
                    ("reserve_order", Ok(()))
                }
                Err(status) => {
                    if skuld_proto::retry::outcome_open(status.code()) {
                        for &index in &picked {
                            self.unknown[index].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    ("reserve_order", Err(status))
                }
            }
        })
    }
}

/// Single-line reservations over `--positions` positions, then orders of
/// `--order-lines` lines over as many other positions, against the same
/// node: two reports (`orders-single`, `orders-<n>-line`) and their ratio.
pub(super) async fn orders(clients: &Arc<Clients>, args: &Args, run: &str) -> anyhow::Result<bool> {
    const STOCKED: i64 = 1_000_000;
    let lines = args.order_lines.max(1);
    let single = Arc::new(Reservations::new(
        clients,
        args,
        &format!("{run}-single"),
        Picker::uniform(args.positions),
    ));
    stock(clients, run, &single.positions, STOCKED).await?;
    let single_result = drive(
        args,
        Arc::clone(&single) as Arc<dyn Workload>,
        "orders-single",
    )
    .await?;
    let single_check = check_reservations(clients, &single, STOCKED).await?;
    let mut passed = single_check.passed;
    let single_report = build_report(
        args,
        run,
        "orders-single",
        mode(args),
        &single_result,
        series(&single_result.recorder),
        Some(single_check),
        serde_json::Value::Null,
    );
    save(args, &single_report, &single_result)?;

    let positions: Vec<pb::PositionKey> = (0..args.positions.max(lines))
        .map(|i| pkey(&args.tenant, &format!("{run}-order-sku-{i}"), "DC1"))
        .collect();
    stock(clients, run, &positions, STOCKED).await?;
    let workload = Arc::new(Orders {
        clients: Arc::clone(clients),
        run: run.to_owned(),
        tenant: args.tenant.clone(),
        acknowledged: positions.iter().map(|_| AtomicI64::new(0)).collect(),
        unknown: positions.iter().map(|_| AtomicI64::new(0)).collect(),
        picker: Picker::uniform(positions.len()),
        positions,
        lines,
        not_held: AtomicU64::new(0),
        replayed: AtomicU64::new(0),
        next_key: AtomicU64::new(0),
    });
    let name = format!("orders-{lines}-line");
    let result = drive(args, Arc::clone(&workload) as Arc<dyn Workload>, &name).await?;
    let check = check_orders(clients, &workload, STOCKED).await?;
    passed &= check.passed;
    let report = build_report(
        args,
        run,
        &name,
        mode(args),
        &result,
        series(&result.recorder),
        Some(check),
        serde_json::json!({ "order_lines": lines }),
    );
    save(args, &report, &result)?;
    let ratio = if single_report.ok_per_second > 0.0 {
        report.ok_per_second / single_report.ok_per_second
    } else {
        0.0
    };
    println!(
        "orders: {lines}-line orders {:.0} ok/s (p99 {:.2} ms, {:.0} lines/s) against single-line reservations {:.0} ok/s (p99 {:.2} ms): {ratio:.2}x",
        report.ok_per_second,
        report.latency.p99_ms,
        report.ok_per_second * lines as f64,
        single_report.ok_per_second,
        single_report.latency.p99_ms,
    );
    Ok(passed)
}

/// Every touched position holds exactly the units of the held orders
/// (and at most one more per order of unknown outcome).
async fn check_orders(
    clients: &Arc<Clients>,
    workload: &Orders,
    stocked: i64,
) -> anyhow::Result<Check> {
    let (mut check, _) = check_reserved(
        clients,
        ReserveOnly {
            positions: &workload.positions,
            acknowledged: &workload.acknowledged,
            unknown: &workload.unknown,
            replayed: workload.replayed.load(Ordering::Relaxed),
        },
        stocked,
        "order id",
        |index, reason, observed| {
            format!(
                "{}: {reason} (held by orders {}, unknown {}; read {observed:?})",
                workload.positions[index].sku,
                workload.acknowledged[index].load(Ordering::Relaxed),
                workload.unknown[index].load(Ordering::Relaxed),
            )
        },
    )
    .await?;
    let not_held = workload.not_held.load(Ordering::Relaxed);
    if not_held > 0 {
        check.passed = false;
        check.failures.push(format!(
            "{not_held} orders were answered OK but not held, with stock for all"
        ));
    }
    Ok(check)
}
