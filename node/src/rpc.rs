//! What every RPC of every service needs: correlation id, deadline, a
//! tracing span, metrics, and the one error-to-status mapping.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

use skuld_actors::runtime::RequestMeta;
use skuld_actors::Error;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::auth::{self, Caller, Scoped};
use crate::status::to_status;

/// Metadata key of the correlation id, accepted and echoed back.
pub const CORRELATION_ID: &str = "x-correlation-id";
/// Reply metadata naming the node that served the request (cluster mode),
/// so a smart client can go to the owner directly next time.
pub const OWNER: &str = "skuld-owner";

/// What a handler fails with: mostly the runtime's [`Error`]; a handler
/// that authorizes once it has looked something up (a webhook by id) may
/// fail with the status of that check.
pub enum Failure {
    Error(Error),
    Status(Status),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self::Error(error)
    }
}

impl From<skuld_actors::Refusal> for Failure {
    fn from(refusal: skuld_actors::Refusal) -> Self {
        Self::Error(Error::Refused(refusal))
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Self::Status(status)
    }
}

/// Wraps a handler with what every RPC needs: correlation id, deadline,
/// a tracing span, the caller's authorization for the message (before the
/// handler looks anything up), metrics and the error-to-status mapping.
pub async fn serve<Req, Resp, F, Fut>(
    method: &'static str,
    request: Request<Req>,
    handler: F,
) -> Result<Response<Resp>, Status>
where
    Req: Scoped,
    F: FnOnce(Req, RequestMeta) -> Fut,
    Fut: Future<Output = Result<Resp, Error>>,
{
    serve_checked(method, request, |message, meta| async move {
        handler(message, meta).await.map_err(Failure::Error)
    })
    .await
}

/// [`serve`] for a handler that checks the caller itself once it has
/// looked up what the request names by id (its tenant unknown before),
/// and so may fail with that check's status.
pub async fn serve_checked<Req, Resp, F, Fut>(
    method: &'static str,
    request: Request<Req>,
    handler: F,
) -> Result<Response<Resp>, Status>
where
    Req: Scoped,
    F: FnOnce(Req, RequestMeta) -> Fut,
    Fut: Future<Output = Result<Resp, Failure>>,
{
    let started = Instant::now();
    let correlation_id = correlation_id(request.metadata());
    let meta = RequestMeta {
        correlation_id: correlation_id.clone(),
        deadline: deadline(request.metadata(), started),
        ..RequestMeta::default()
    };
    let served_by = meta.served_by.clone();
    // Named after the method in a trace. The status code, known at the
    // end, goes to the exported span only: recording a field on a log span
    // costs a rewrite of all its fields with JSON logs, on every RPC.
    let span = tracing::info_span!(
        "rpc",
        otel.name = method,
        otel.kind = "server",
        rpc.method = method,
        skuld.correlation_id = %correlation_id,
    );
    crate::trace_context::adopt_parent(&span, request.metadata());
    let admitted = span.in_scope(|| {
        auth::admit(
            request.extensions().get::<Caller>(),
            request.get_ref().access(),
        )
    });
    let result = match admitted {
        Ok(()) => handler(request.into_inner(), meta)
            .instrument(span.clone())
            .await
            .map_err(|failure| match failure {
                Failure::Error(error) => {
                    span.in_scope(|| match &error {
                        Error::Unavailable(_) => tracing::warn!(%error, "request failed"),
                        _ => tracing::debug!(%error, "request refused"),
                    });
                    to_status(&error)
                }
                Failure::Status(status) => status,
            }),
        Err(status) => Err(status),
    };
    let status_code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    // A no-op unless OTLP export is on.
    span.set_attribute("rpc.grpc.status_code", status_code as i64);
    let code = skuld_proto::code_name(status_code);
    metrics::counter!("skuld_grpc_requests_total", "method" => method, "code" => code).increment(1);
    metrics::histogram!("skuld_grpc_request_duration_seconds", "method" => method)
        .record(started.elapsed().as_secs_f64());
    let echo = MetadataValue::try_from(correlation_id.as_str()).ok();
    let owner = served_by
        .get()
        .and_then(|node| MetadataValue::try_from(node).ok());
    match result {
        Ok(body) => {
            let mut response = Response::new(body);
            if let Some(value) = echo {
                response.metadata_mut().insert(CORRELATION_ID, value);
            }
            if let Some(value) = owner {
                response.metadata_mut().insert(OWNER, value);
            }
            Ok(response)
        }
        Err(mut status) => {
            if let Some(value) = echo {
                status.metadata_mut().insert(CORRELATION_ID, value);
            }
            if let Some(value) = owner {
                status.metadata_mut().insert(OWNER, value);
            }
            Err(status)
        }
    }
}

/// The caller's correlation id when it is a sane token, else a new one.
pub(crate) fn correlation_id(metadata: &MetadataMap) -> String {
    metadata
        .get(CORRELATION_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|value| skuld_actors::key::validate_token(CORRELATION_ID, value).is_ok())
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

/// Parses the `grpc-timeout` header (`<digits><unit>`, unit one of H M S m u n).
/// The caller's deadline: `grpc-timeout` counted from `received`.
pub(crate) fn deadline(metadata: &MetadataMap, received: Instant) -> Option<Instant> {
    grpc_timeout(metadata).and_then(|timeout| received.checked_add(timeout))
}

pub(crate) fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    // The gRPC spec allows at most 8 digits.
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3_600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeouts() {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(grpc_timeout(&metadata), Some(Duration::from_millis(250)));
        metadata.insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(grpc_timeout(&metadata), Some(Duration::from_secs(2)));
        metadata.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(grpc_timeout(&metadata), None);
        metadata.insert("grpc-timeout", "18446744073709551615S".parse().unwrap());
        assert_eq!(grpc_timeout(&metadata), None);
    }

    #[test]
    fn keeps_a_sane_correlation_id_and_replaces_a_bad_one() {
        let mut metadata = MetadataMap::new();
        metadata.insert(CORRELATION_ID, "order-42".parse().unwrap());
        assert_eq!(correlation_id(&metadata), "order-42");
        metadata.insert(CORRELATION_ID, "x".repeat(200).parse().unwrap());
        assert_eq!(correlation_id(&metadata).len(), 36);
    }
}
