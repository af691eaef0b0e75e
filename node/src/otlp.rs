//! Trace export over OTLP/gRPC: the exporter, the batch processor and the
//! tracer the tracing layer records into, on only when an endpoint is
//! configured (`[telemetry] otlp_endpoint`).
//!
//! The SDK's batch processor exports from an OS thread of its own, with the
//! tonic client built here: it must be built inside the node's Tokio
//! runtime, and that runtime must outlive [`TraceExport::shutdown`], which
//! flushes from a blocking thread (not a runtime worker). Done otherwise,
//! the export thread panics and every later span is dropped silently.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Tracer};
use opentelemetry_sdk::Resource;

/// The service name every span's resource carries.
pub const SERVICE_NAME: &str = "skuld";

/// One export attempt's bound; a collector slower than this loses the batch
/// rather than holding the node's spans.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("trace export must start inside the Tokio runtime")]
    NoRuntime,
    #[error("cannot set up the OTLP exporter for {endpoint}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// The running export; [`TraceExport::shutdown`] flushes what is queued.
pub struct TraceExport {
    provider: SdkTracerProvider,
}

impl TraceExport {
    /// Starts exporting to `endpoint` (an OTLP/gRPC collector), with
    /// `service.name` skuld and `service.instance.id` the node id; returns
    /// the tracer for the tracing layer.
    pub fn start(endpoint: &str, node_id: &str) -> Result<(Self, Tracer), OtlpError> {
        // The tonic channel spawns its connection onto the current runtime.
        tokio::runtime::Handle::try_current().map_err(|_| OtlpError::NoRuntime)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|source| OtlpError::Exporter {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        let resource = Resource::builder()
            .with_service_name(SERVICE_NAME)
            .with_attribute(KeyValue::new("service.instance.id", node_id.to_owned()))
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        // Every request is traced, whatever a client's traceparent says:
        // a caller's sampled flag must not hide its requests from us (the
        // SDK's default sampler follows the parent's decision).
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOn)
            .with_resource(resource)
            .with_batch_exporter(exporter)
            .build();
        let tracer = provider.tracer(SERVICE_NAME);
        Ok((Self { provider }, tracer))
    }

    /// Exports what is still queued and stops, within `timeout`. Runs the
    /// blocking shutdown on a blocking thread, so the runtime keeps driving
    /// the export meanwhile.
    pub async fn shutdown(self, timeout: Duration) {
        let provider = self.provider;
        let stopped =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout)).await;
        match stopped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "trace export did not flush"),
            Err(error) => tracing::warn!(%error, "trace export shutdown failed"),
        }
    }
}
