//! Logging (tracing to stderr), span export (to OTLP, when configured) and
//! the Prometheus recorder.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// skuld's own crates, whose level a bare level in the filter sets.
const OWN_TARGETS: &[&str] = &["skuld", "skuld_node", "skuld_actors", "skuld_cluster"];

/// A bare level (`info`, `debug`) applies to skuld's own logs; its
/// dependencies (fjall, tonic, h2, etcd-client, ...) stay at `warn` unless
/// the filter names them (`info,fjall=info`) or sets a default for all
/// (`info,warn` is read as written).
fn effective_filter(filter: &str) -> String {
    let filter = filter.trim();
    let bare_level = !filter.is_empty() && !filter.contains(['=', ',']);
    if !bare_level {
        return filter.to_owned();
    }
    let mut directives = vec!["warn".to_owned()];
    directives.extend(
        OWN_TARGETS
            .iter()
            .map(|target| format!("{target}={filter}")),
    );
    directives.join(",")
}

/// Installs the global tracing subscriber: logs to stderr (`RUST_LOG` wins
/// over `filter`) and, given a `tracer`, skuld's spans to it. Each has its
/// own filter, so quieter logs do not thin the traces.
pub fn init_logging(format: &str, filter: &str, tracer: Option<opentelemetry_sdk::trace::Tracer>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(effective_filter(filter)))
        .unwrap_or_else(|_| EnvFilter::new(effective_filter("info")));
    let logs = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let logs = if format == "json" {
        logs.json().with_filter(filter).boxed()
    } else {
        logs.with_filter(filter).boxed()
    };
    let spans = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // Busy/idle times and thread attributes cost a clock read or a
            // lookup on every poll of every request.
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(exported_spans())
    });
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    if installed.is_err() {
        eprintln!("warning: a tracing subscriber was already installed");
    }
}

/// What is exported as spans: skuld's own, from info up (a request's spans
/// and the events logged inside them), none of its dependencies'.
fn exported_spans() -> Targets {
    OWN_TARGETS.iter().fold(Targets::new(), |targets, target| {
        targets.with_target(*target, LevelFilter::INFO)
    })
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// Steps that take seconds to minutes: a shard handoff, one census, a
/// channel push's lag.
const STEP_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
const HOUR: f64 = 3_600.0;
const DAY: f64 = 24.0 * HOUR;
/// A return's request to refund: hours to weeks.
const CYCLE_BUCKETS: &[f64] = &[
    HOUR,
    6.0 * HOUR,
    12.0 * HOUR,
    DAY,
    2.0 * DAY,
    3.0 * DAY,
    5.0 * DAY,
    7.0 * DAY,
    10.0 * DAY,
    14.0 * DAY,
    21.0 * DAY,
    30.0 * DAY,
    60.0 * DAY,
];

/// Installs the Prometheus recorder (histograms, not summaries). A full
/// name's buckets win over the `_seconds` suffix's.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("skuld_return_cycle_seconds".into()),
            CYCLE_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Full("skuld_handoff_seconds".into()), STEP_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("skuld_census_seconds".into()), STEP_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full("skuld_channel_push_lag_seconds".into()),
            STEP_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets(SIZE_BUCKETS)?
        .install_recorder()?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_level_is_skulds_and_dependencies_stay_at_warn() {
        assert_eq!(
            effective_filter("info"),
            "warn,skuld=info,skuld_node=info,skuld_actors=info,skuld_cluster=info"
        );
        assert_eq!(effective_filter("info,fjall=debug"), "info,fjall=debug");
        assert_eq!(
            effective_filter("skuld_cluster=trace"),
            "skuld_cluster=trace"
        );
    }
}
