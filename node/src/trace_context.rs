//! W3C trace context (`traceparent`, `tracestate`) in gRPC metadata: put
//! into a request this node sends for a span, and taken from one it receives
//! as the parent of its span, so one trace follows a request from node to
//! node. Without trace export (no OpenTelemetry layer) spans carry no
//! context: nothing is sent and a received one is ignored.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header that carries the parent span.
const TRACEPARENT: &str = "traceparent";

struct Inject<'a>(&'a mut MetadataMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct Extract<'a>(&'a MetadataMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                KeyRef::Ascii(key) => Some(key.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Writes `span`'s context into outgoing `metadata`, so the receiver's span
/// becomes its child.
pub fn inject(span: &tracing::Span, metadata: &mut MetadataMap) {
    let context = span.context();
    TraceContextPropagator::new().inject_context(&context, &mut Inject(metadata));
}

/// Makes the caller's span (named by incoming `metadata`) the parent of
/// `span`, which must not have been entered yet.
pub fn adopt_parent(span: &tracing::Span, metadata: &MetadataMap) {
    if !metadata.contains_key(TRACEPARENT) {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Extract(metadata));
    // Fails only when no export layer is installed (or the span is filtered
    // out): then there is no trace to join.
    let _ = span.set_parent(parent);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::Context;

    #[test]
    fn a_context_crosses_metadata_unchanged() {
        let sent = SpanContext::new(
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
            SpanId::from(0x00f0_67aa_0ba9_02b7),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let mut metadata = MetadataMap::new();
        TraceContextPropagator::new().inject_context(
            &Context::new().with_remote_span_context(sent.clone()),
            &mut Inject(&mut metadata),
        );
        assert_eq!(
            metadata.get(TRACEPARENT).unwrap().to_str().unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let received = TraceContextPropagator::new().extract(&Extract(&metadata));
        assert_eq!(received.span().span_context(), &sent);
    }

    #[test]
    fn without_export_nothing_is_sent() {
        let mut metadata = MetadataMap::new();
        inject(&tracing::info_span!("no layer"), &mut metadata);
        assert!(metadata.is_empty());
    }
}
