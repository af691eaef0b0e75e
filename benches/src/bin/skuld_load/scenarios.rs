//! The scenarios: what each runs and checks.

use super::*;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use skuld_benches::pick::Picker;
use skuld_benches::stats::{series, Percentiles, Recorder};
use skuld_proto::v1 as pb;

pub(super) async fn reservation_scenario(
    clients: &Arc<Clients>,
    args: &Args,
    run: &str,
    picker: Picker,
    name: &str,
) -> anyhow::Result<bool> {
    let stocked = if picker.positions() == 1 {
        100_000_000
    } else {
        1_000_000
    };
    let workload = Arc::new(Reservations::new(clients, args, run, picker));
    stock(clients, run, &workload.positions, stocked).await?;
    let result = drive(args, Arc::clone(&workload) as Arc<dyn Workload>, name).await?;
    let check = check_reservations(clients, &workload, stocked).await?;
    let passed = check.passed;
    let report = build_report(
        args,
        run,
        name,
        mode(args),
        &result,
        series(&result.recorder),
        Some(check),
        serde_json::Value::Null,
    );
    save(args, &report, &result)?;
    Ok(passed)
}

pub(super) async fn mixed(clients: &Arc<Clients>, args: &Args, run: &str) -> anyhow::Result<bool> {
    let count = args.positions.max(1);
    let mut positions: Vec<pb::PositionKey> = (0..count)
        .map(|i| pkey(&args.tenant, &format!("{run}-sku-{i}"), "DC1"))
        .collect();
    let hot = (args.hot_sku_share > 0.0).then(|| {
        positions.push(pkey(&args.tenant, &format!("{run}-hot"), "DC1"));
        count
    });
    let stocked = if hot.is_some() {
        100_000_000
    } else {
        1_000_000
    };
    stock(clients, run, &positions, stocked).await?;
    let workload = Arc::new(Mixed {
        clients: Arc::clone(clients),
        run: run.to_owned(),
        expected: (0..positions.len()).map(|_| Expected::default()).collect(),
        positions,
        hot,
        hot_share: args.hot_sku_share,
        callers: (0..args.concurrency.max(1))
            .map(|_| Mutex::new(CallerState::default()))
            .collect(),
        replayed: AtomicU64::new(0),
        next_key: AtomicU64::new(0),
    });
    let name = if hot.is_some() { "mixed-hot" } else { "mixed" };
    let result = drive(args, Arc::clone(&workload) as Arc<dyn Workload>, name).await?;
    let check = check_mixed_positions(clients, &workload, stocked).await?;
    let passed = check.passed;
    let extra = serde_json::json!({ "hot_sku_share_percent": args.hot_sku_share });
    let report = build_report(
        args,
        run,
        name,
        mode(args),
        &result,
        series(&result.recorder),
        Some(check),
        extra,
    );
    save(args, &report, &result)?;
    Ok(passed)
}

pub(super) async fn overload(
    clients: &Arc<Clients>,
    args: &Args,
    run: &str,
) -> anyhow::Result<bool> {
    let stocked = 100_000_000;
    let workload = Arc::new(Reservations::new(
        clients,
        args,
        run,
        Picker::uniform(args.positions),
    ));
    stock(clients, run, &workload.positions, stocked).await?;
    let as_workload = || Arc::clone(&workload) as Arc<dyn Workload>;
    let capacity = match args.capacity {
        Some(capacity) => capacity,
        None => {
            eprintln!(
                "capacity: closed loop spread, {} callers, {:.0} s",
                args.concurrency, args.capacity_seconds
            );
            let recorder = closed_loop(
                as_workload(),
                args.concurrency,
                Duration::from_secs(1),
                Duration::from_secs_f64(args.capacity_seconds),
                "capacity",
            )
            .await;
            recorder.ok_count() as f64 / args.capacity_seconds
        }
    };
    if capacity <= 0.0 {
        bail!("capacity is 0: the node answered nothing");
    }
    let probe_rate = args
        .probe_rate
        .unwrap_or_else(|| (capacity * 0.05).clamp(50.0, 2_000.0));
    let origin = Instant::now();
    let plan = |rate: f64, seconds: f64, label: &str, quiet: bool| OpenLoop {
        rate,
        max_outstanding: args.max_outstanding,
        warmup: Duration::ZERO,
        duration: Duration::from_secs_f64(seconds),
        callers: args.concurrency.max(1),
        label: label.to_owned(),
        quiet,
        origin: Some(origin),
    };
    eprintln!("baseline: open loop {probe_rate:.0}/s for 3 s");
    let baseline = open_loop(as_workload(), plan(probe_rate, 3.0, "baseline", false)).await;
    let baseline_p99 = Percentiles::of(&baseline.recorder.latency).p99_ms;
    let threshold = 2.0 * baseline_p99.max(0.5);
    let mut timeline = Recorder::default();
    timeline.merge(&baseline.recorder);
    let mut phases_total = OpenResult::empty();
    let mut phases = Vec::new();
    for &multiplier in &args.multipliers {
        let rate = capacity * multiplier;
        eprintln!(
            "overload {multiplier}x: open loop {rate:.0}/s for {:.0} s",
            args.duration
        );
        let phase_start = Instant::now();
        let label = format!("{multiplier}x");
        let phase = tokio::spawn(open_loop(
            as_workload(),
            plan(rate, args.duration, &label, false),
        ));
        tokio::time::sleep_until((phase_start + Duration::from_secs_f64(args.duration)).into())
            .await;
        // Recovery: probe windows at the probe rate from the moment the
        // overload stops (while the excess still drains) until one window
        // has no error and p99 within 2x the baseline p99.
        let stopped = Instant::now();
        let mut recovered_after = None;
        let mut probes = Vec::new();
        while stopped.elapsed() < Duration::from_secs_f64(args.recovery_timeout) {
            let window = open_loop(
                as_workload(),
                plan(probe_rate, args.probe_window, "probe", true),
            )
            .await;
            timeline.merge(&window.recorder);
            let p99 = Percentiles::of(&window.recorder.latency).p99_ms;
            let errors = window.recorder.error_count();
            probes.push(serde_json::json!({
                "at_s": stopped.elapsed().as_secs_f64(),
                "ok": window.recorder.ok_count(),
                "errors": errors,
                "p99_ms": p99,
            }));
            if errors == 0 && window.recorder.ok_count() > 0 && p99 <= threshold {
                recovered_after = Some(stopped.elapsed().as_secs_f64());
                break;
            }
        }
        let result = phase.await.context("overload phase failed")?;
        let drained_after = stopped.elapsed().as_secs_f64();
        timeline.merge(&result.recorder);
        let recorder = &result.recorder;
        let accepted = Percentiles::of(&recorder.latency);
        let rejected = Percentiles::of(&recorder.rejections);
        let rejections = recorder
            .errors
            .get("RESOURCE_EXHAUSTED")
            .copied()
            .unwrap_or(0);
        let skipped = recorder
            .errors
            .get("ClientMaxOutstanding")
            .copied()
            .unwrap_or(0);
        let sent = recorder.ok_count() + recorder.error_count() - skipped;
        let goodput = recorder.ok_count() as f64 / args.duration;
        let lag = Percentiles::of(&result.dispatch_lag);
        let accepted_from_send = Percentiles::of(&result.accepted_from_send);
        let rejected_from_send = Percentiles::of(&result.rejected_from_send);
        phases.push(serde_json::json!({
            "multiplier": multiplier,
            "offered_per_s": rate,
            "sent": sent,
            "not_sent_max_outstanding": skipped,
            "goodput_per_s": goodput,
            "goodput_share_of_capacity": goodput / capacity,
            "accepted": accepted,
            "rejections": rejections,
            "rejection_share_of_sent": rejections as f64 / (sent.max(1)) as f64,
            "rejection_latency": rejected,
            "errors": recorder.errors,
            "error_samples": recorder.error_samples,
            "generator_send_lag": lag,
            "accepted_from_actual_send": accepted_from_send,
            "rejection_latency_from_actual_send": rejected_from_send,
            "recovered_after_s": recovered_after,
            "recovery_threshold_p99_ms": threshold,
            "drained_after_s": drained_after,
            "probes": probes,
        }));
        phases_total.merge(&result);
    }
    let check = check_reservations(clients, &workload, stocked).await?;
    let passed = check.passed;
    let extra = serde_json::json!({
        "capacity_per_s": capacity,
        "capacity_measured": args.capacity.is_none(),
        "probe_rate_per_s": probe_rate,
        "baseline_p99_ms": baseline_p99,
        "phases": phases,
    });
    let timeline_series = series(&timeline);
    let phase_args = Args {
        duration: args.duration * args.multipliers.len() as f64,
        warmup: 0.0,
        ..args.clone()
    };
    let report = build_report(
        &phase_args,
        run,
        "overload",
        format!(
            "open loop at {:?} x capacity {capacity:.0}/s, max {} outstanding",
            args.multipliers, args.max_outstanding
        ),
        &phases_total,
        timeline_series,
        Some(check),
        extra,
    );
    save(args, &report, &phases_total)?;
    print_phases(&report.extra);
    Ok(passed)
}

pub(super) fn print_phases(extra: &serde_json::Value) {
    let number = |value: &serde_json::Value, path: &[&str]| {
        let mut value = value;
        for key in path {
            value = &value[*key];
        }
        value.as_f64().unwrap_or(f64::NAN)
    };
    println!(
        "  capacity {:.0}/s, baseline p99 {:.2} ms",
        number(extra, &["capacity_per_s"]),
        number(extra, &["baseline_p99_ms"])
    );
    println!(
        "  {:>5} {:>10} {:>10} {:>7} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "x",
        "offered/s",
        "goodput/s",
        "share",
        "rejected",
        "rej %",
        "rej p99",
        "acc p99",
        "not sent",
        "recovery"
    );
    for phase in extra["phases"].as_array().into_iter().flatten() {
        let recovered = phase["recovered_after_s"]
            .as_f64()
            .map_or_else(|| "none".to_owned(), |s| format!("{s:.2} s"));
        println!(
            "  {:>5} {:>10.0} {:>10.0} {:>6.0}% {:>10} {:>6.1}% {:>6.2} ms {:>6.2} ms {:>9} {:>9}",
            number(phase, &["multiplier"]),
            number(phase, &["offered_per_s"]),
            number(phase, &["goodput_per_s"]),
            100.0 * number(phase, &["goodput_share_of_capacity"]),
            number(phase, &["rejections"]),
            100.0 * number(phase, &["rejection_share_of_sent"]),
            number(phase, &["rejection_latency", "p99_ms"]),
            number(phase, &["accepted", "p99_ms"]),
            number(phase, &["not_sent_max_outstanding"]),
            recovered
        );
    }
}

pub(super) async fn returns_surge(
    clients: &Arc<Clients>,
    args: &Args,
    run: &str,
) -> anyhow::Result<bool> {
    let workload = Arc::new(ReturnsSurge {
        clients: Arc::clone(clients),
        run: run.to_owned(),
        tenant: args.tenant.clone(),
        callers: (0..args.concurrency.max(1))
            .map(|_| Mutex::new((0, 0)))
            .collect(),
        closed: AtomicU64::new(0),
        restocked: (0..args.concurrency.max(1))
            .map(|_| AtomicI64::new(0))
            .collect(),
        uncertain: AtomicBool::new(false),
    });
    // One case per caller at a time: always a closed loop.
    let closed = Args {
        rate: None,
        ..args.clone()
    };
    let result = drive(
        &closed,
        Arc::clone(&workload) as Arc<dyn Workload>,
        "returns-surge",
    )
    .await?;
    // Restocks run after the dispose answer; give them a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every acknowledged restock reaches its SKU's position exactly once.
    let uncertain = workload.uncertain.load(Ordering::Relaxed);
    let mut failures = Vec::new();
    let mut quality_control_left = 0;
    let mut positions_checked = 0;
    for (slot, restocked) in workload.restocked.iter().enumerate() {
        let restocked = restocked.load(Ordering::Relaxed);
        if restocked == 0 && !uncertain {
            continue;
        }
        let sku = format!("{run}-SHIRT-{slot}");
        let observed = read_position(clients, &pkey(&args.tenant, &sku, "DC1")).await?;
        positions_checked += 1;
        // Only quality_control is held by returns here.
        quality_control_left += observed.held;
        let fits = if uncertain {
            observed.available >= restocked
        } else {
            observed.available == restocked
        };
        if !fits || observed.available < 0 {
            failures.push(format!(
                "{sku}: restocked {restocked} acknowledged, available {}",
                observed.available
            ));
        }
    }
    let check = Check {
        passed: failures.is_empty(),
        positions_checked,
        positions_with_unknown_outcomes: usize::from(uncertain),
        unknown_outcomes: i64::from(uncertain),
        replayed_replies: 0,
        failures,
    };
    let extra = serde_json::json!({
        "cases_closed": workload.closed.load(Ordering::Relaxed),
        "transitions_per_s": result.recorder.ok_count() as f64 / args.duration,
        "quality_control_left": quality_control_left,
    });
    let passed = check.passed;
    let report = build_report(
        &closed,
        run,
        "returns-surge",
        mode(&closed),
        &result,
        series(&result.recorder),
        Some(check),
        extra,
    );
    save(args, &report, &result)?;
    Ok(passed)
}
