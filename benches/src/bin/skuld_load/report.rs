//! Reporting: the JSON report, the printed summary, the SVG.

use super::*;
use std::collections::BTreeMap;

use anyhow::Context as _;
use serde::Serialize;
use skuld_benches::node::peak_rss_mib;
use skuld_benches::plot::write_svg;
use skuld_benches::stats::{combined, distribution, Percentiles, QuantilePoint, SecondSample};

#[derive(Serialize)]
pub(super) struct Report {
    pub(super) scenario: String,
    pub(super) command: String,
    pub(super) endpoint: String,
    pub(super) run_id: String,
    pub(super) mode: String,
    pub(super) connections: usize,
    pub(super) warmup_s: f64,
    pub(super) duration_s: f64,
    pub(super) ok: u64,
    pub(super) ok_per_second: f64,
    pub(super) errors_total: u64,
    pub(super) latency: Percentiles,
    /// The OK latency at every quarter "nine" (p0 to p99.99).
    pub(super) latency_distribution: Vec<QuantilePoint>,
    pub(super) by_operation: BTreeMap<String, Percentiles>,
    /// mixed with a hot SKU: every operation on the other positions.
    pub(super) non_hot_latency: Option<Percentiles>,
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) error_samples: BTreeMap<String, String>,
    pub(super) rejection_latency: Option<Percentiles>,
    /// Open loop: how late the generator itself sent requests.
    pub(super) dispatch_lag: Option<Percentiles>,
    /// Open loop: latency of OK / RESOURCE_EXHAUSTED answers counted from
    /// the actual send instead of the intended time.
    pub(super) accepted_from_actual_send: Option<Percentiles>,
    pub(super) rejections_from_actual_send: Option<Percentiles>,
    pub(super) check: Option<Check>,
    pub(super) node_peak_rss_mib: Option<f64>,
    pub(super) cpu: Option<CpuUse>,
    /// CPU microseconds per OK reply in the measured window: node, generator.
    pub(super) node_cpu_us_per_ok: Option<f64>,
    pub(super) generator_cpu_us_per_ok: Option<f64>,
    /// `--subscribers`: events per subscriber and their delivery lag.
    pub(super) subscribers: Option<subscribers::SubscriberReport>,
    pub(super) extra: serde_json::Value,
    pub(super) series: Vec<SecondSample>,
}

pub(super) fn mode(args: &Args) -> String {
    match args.rate {
        Some(rate) => format!(
            "open loop {rate:.0}/s, max {} outstanding",
            args.max_outstanding
        ),
        None => format!("closed loop, {} callers", args.concurrency),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn build_report(
    args: &Args,
    run: &str,
    name: &str,
    mode: String,
    result: &OpenResult,
    series: Vec<SecondSample>,
    check: Option<Check>,
    extra: serde_json::Value,
) -> Report {
    let recorder = &result.recorder;
    let duration = args.duration.max(f64::MIN_POSITIVE);
    let has_hot = recorder
        .by_operation
        .keys()
        .any(|name| name.ends_with("-hot"));
    Report {
        scenario: name.to_owned(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        endpoint: args.endpoint.clone(),
        run_id: run.to_owned(),
        mode,
        connections: args.connections,
        warmup_s: args.warmup,
        duration_s: duration,
        ok: recorder.ok_count(),
        ok_per_second: recorder.ok_count() as f64 / duration,
        errors_total: recorder.error_count(),
        latency: Percentiles::of(&recorder.latency),
        latency_distribution: distribution(&recorder.latency),
        by_operation: recorder
            .by_operation
            .iter()
            .map(|(name, h)| ((*name).to_owned(), Percentiles::of(h)))
            .collect(),
        non_hot_latency: has_hot
            .then(|| Percentiles::of(&combined(recorder, |name| !name.ends_with("-hot")))),
        errors: recorder.errors.clone(),
        error_samples: recorder.error_samples.clone(),
        rejection_latency: (!recorder.rejections.is_empty())
            .then(|| Percentiles::of(&recorder.rejections)),
        dispatch_lag: (!result.dispatch_lag.is_empty())
            .then(|| Percentiles::of(&result.dispatch_lag)),
        accepted_from_actual_send: (!result.accepted_from_send.is_empty())
            .then(|| Percentiles::of(&result.accepted_from_send)),
        rejections_from_actual_send: (!result.rejected_from_send.is_empty())
            .then(|| Percentiles::of(&result.rejected_from_send)),
        check,
        node_peak_rss_mib: args.node_pid.and_then(peak_rss_mib),
        cpu: result.cpu,
        node_cpu_us_per_ok: result
            .cpu
            .and_then(|cpu| cpu.node_cpu_s)
            .and_then(|seconds| per_ok_us(seconds, recorder.ok_count())),
        generator_cpu_us_per_ok: result
            .cpu
            .and_then(|cpu| per_ok_us(cpu.generator_cpu_s, recorder.ok_count())),
        subscribers: result.subscribers.clone(),
        extra,
        series,
    }
}

pub(super) fn per_ok_us(cpu_seconds: f64, ok: u64) -> Option<f64> {
    (ok > 0).then(|| cpu_seconds * 1e6 / ok as f64)
}

pub(super) fn print_row(name: &str, p: &Percentiles) {
    println!(
        "  {name:<20} {:>10} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
    );
}

pub(super) fn print_report(report: &Report) {
    println!();
    println!(
        "scenario {}: {}, {} connections, {:.0} s measured after {:.0} s warmup, run id {}",
        report.scenario,
        report.mode,
        report.connections,
        report.duration_s,
        report.warmup_s,
        report.run_id
    );
    println!(
        "  {:<20} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "ok", "p50", "p90", "p99", "p99.9", "max"
    );
    print_row("all", &report.latency);
    for (name, p) in &report.by_operation {
        print_row(name, p);
    }
    if let Some(p) = &report.non_hot_latency {
        print_row("all but hot position", p);
    }
    println!("  throughput           {:.0} ok/s", report.ok_per_second);
    if report.errors.is_empty() {
        println!("  errors               none");
    } else {
        for (code, count) in &report.errors {
            println!(
                "  errors {code:<13} {count:>10}   e.g. {:?}",
                report.error_samples.get(code).map_or("", String::as_str)
            );
        }
    }
    if let Some(p) = &report.rejection_latency {
        println!(
            "  RESOURCE_EXHAUSTED   p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            p.p50_ms, p.p99_ms, p.max_ms
        );
    }
    if let Some(p) = &report.dispatch_lag {
        println!(
            "  generator send lag   p99 {:.2} ms, max {:.2} ms (behind the timetable)",
            p.p99_ms, p.max_ms
        );
    }
    if let Some(p) = &report.accepted_from_actual_send {
        println!(
            "  OK from actual send  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            p.p50_ms, p.p99_ms, p.max_ms
        );
    }
    if let Some(p) = &report.rejections_from_actual_send {
        println!(
            "  RESOURCE_EXHAUSTED from actual send  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            p.p50_ms, p.p99_ms, p.max_ms
        );
    }
    if let Some(cpu) = &report.cpu {
        let per_ok =
            |value: Option<f64>| value.map_or("-".to_owned(), |us| format!("{us:.1} us/ok"));
        println!(
            "  CPU                  node {} ({}), generator {:.2} cores ({}), over {:.1} s",
            cpu.node_cpu_s
                .map_or("-".to_owned(), |s| format!("{:.2} cores", s / cpu.window_s)),
            per_ok(report.node_cpu_us_per_ok),
            cpu.generator_cpu_s / cpu.window_s,
            per_ok(report.generator_cpu_us_per_ok),
            cpu.window_s
        );
    }
    if let Some(subscribers) = &report.subscribers {
        print_subscribers(subscribers, report.duration_s);
    }
    if let Some(rss) = report.node_peak_rss_mib {
        println!("  node peak RSS        {rss:.0} MiB (VmHWM)");
    }
    if let Some(check) = &report.check {
        println!(
            "  correctness          {}: {} positions read back, {} requests with unknown outcome on {} positions, {} replayed replies",
            if check.passed { "PASS" } else { "FAIL" },
            check.positions_checked,
            check.unknown_outcomes,
            check.positions_with_unknown_outcomes,
            check.replayed_replies
        );
        for failure in check.failures.iter().take(10) {
            println!("    {failure}");
        }
        if check.failures.len() > 10 {
            println!("    ... {} more", check.failures.len() - 10);
        }
    }
}

fn print_subscribers(report: &subscribers::SubscriberReport, duration_s: f64) {
    let lag = &report.lag;
    println!(
        "  subscribers          {}: events each {} to {} ({:.0} to {:.0}/s), {} in all",
        report.subscribers,
        report.events_min,
        report.events_max,
        report.events_min as f64 / duration_s,
        report.events_max as f64 / duration_s,
        report.events_total
    );
    println!(
        "  delivery lag (ms)    p50 {:.2}, p99 {:.2}, p99.9 {:.2}, max {:.2} over {} events",
        lag.p50_ms, lag.p99_ms, lag.p999_ms, lag.max_ms, lag.count
    );
    if report.ahead_of_clock > 0 {
        println!(
            "  subscribers          {} events stamped after their receipt by this clock (not in the lag)",
            report.ahead_of_clock
        );
    }
    for error in &report.errors {
        println!("  subscriber error     {error}");
    }
}

pub(super) fn save(args: &Args, report: &Report, result: &OpenResult) -> anyhow::Result<()> {
    print_report(report);
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let json = out.join(format!("{}.json", report.scenario));
        std::fs::write(&json, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("cannot write {}", json.display()))?;
        let svg = out.join(format!("{}.svg", report.scenario));
        write_svg(
            &svg,
            &format!("skuld-load {} ({})", report.scenario, report.mode),
            &report.series,
            &result.recorder.latency,
        )?;
        eprintln!("wrote {} and {}", json.display(), svg.display());
    }
    Ok(())
}
