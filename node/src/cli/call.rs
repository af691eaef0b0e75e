//! Calling a node: connection, deadlines, correlation ids, idempotency keys
//! made for the user, and one-line failures.

use super::*;
use std::fmt;
use std::future::Future;
use std::io::{self, Write};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use skuld_proto::v1::MutationResponse;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};
use tonic_types::StatusExt as _;
use uuid::Uuid;

/// Metadata key carrying the correlation id of a call.
const CORRELATION_ID_HEADER: &str = "x-correlation-id";
/// Metadata key in which the server hints how long to wait before retrying.
pub(super) const RETRY_AFTER_HEADER: &str = "retry-after-ms";

/// A client command failed and its one-line reason was already printed to
/// stderr; the caller only needs to exit non-zero.
#[derive(Debug)]
pub struct CommandFailed {
    message: String,
}

impl fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CommandFailed {}

/// Prints `error: <message>` to stderr and returns it as an error.
pub(super) fn fail(message: String) -> anyhow::Error {
    // Nothing sensible is left to do if stderr itself is gone.
    let _ = writeln!(io::stderr(), "error: {message}");
    CommandFailed { message }.into()
}

/// The idempotency key a mutation was sent with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IdempotencyKey {
    pub(super) value: String,
    /// Made up by the client because none was given.
    pub(super) generated: bool,
}

impl IdempotencyKey {
    /// The key given with `--idempotency-key`, or a new UUID v4.
    pub(super) fn from_flag(flag: Option<&str>) -> Self {
        match flag {
            Some(value) => Self {
                value: value.to_owned(),
                generated: false,
            },
            None => Self {
                value: Uuid::new_v4().to_string(),
                generated: true,
            },
        }
    }
}

/// Opens a channel to `endpoint` (with `tls` for https://), reporting
/// failure as one line on stderr.
pub(super) async fn connect(
    endpoint: &str,
    tls: Option<ClientTlsConfig>,
    timeout: Duration,
) -> anyhow::Result<Channel> {
    let mut builder = Endpoint::from_shared(endpoint.to_owned()).map_err(|e| {
        fail(format!(
            "invalid endpoint {endpoint:?}: {}",
            error_chain(&e)
        ))
    })?;
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(|e| {
            fail(format!(
                "cannot use the TLS files for {endpoint}: {}",
                error_chain(&e)
            ))
        })?;
    }
    let channel = builder
        .connect_timeout(timeout)
        .connect()
        .await
        .map_err(|e| {
            fail(format!(
                "cannot reach skuld at {endpoint}: {}",
                error_chain(&e)
            ))
        })?;
    Ok(channel)
}

/// What every call of one invocation shares.
pub(super) struct CallContext {
    pub(super) correlation_id: AsciiMetadataValue,
    /// `Bearer <token>`, marked sensitive; `None` without a token.
    pub(super) authorization: Option<AsciiMetadataValue>,
    pub(super) timeout: Duration,
    pub(super) json: bool,
}

impl CallContext {
    /// `message` with the correlation id and the token attached.
    pub(super) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(CORRELATION_ID_HEADER, self.correlation_id.clone());
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }

    /// Sends one request with the correlation id and deadline attached and
    /// turns a failed call into a printed one-line error.
    pub(super) async fn call<T, R, F, Fut>(
        &self,
        message: T,
        idempotency_key: Option<&IdempotencyKey>,
        send: F,
    ) -> anyhow::Result<R>
    where
        F: FnOnce(Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let mut request = self.request(message);
        // Sent as `grpc-timeout` so the server drops the request once it is
        // too late; the local timer below covers a server that never answers.
        request.set_timeout(self.timeout);
        let status = match tokio::time::timeout(self.timeout, send(request)).await {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) => status,
            Err(_elapsed) => Status::deadline_exceeded(format!(
                "no reply within {} ms",
                self.timeout.as_millis()
            )),
        };
        Err(fail(format_status(&status, idempotency_key)))
    }

    /// Prints the reply of a mutation, as JSON or as readable text.
    pub(super) fn show_mutation(
        &self,
        reply: &MutationResponse,
        position: &PositionArgs,
        key: &IdempotencyKey,
        show_granted: bool,
    ) -> anyhow::Result<()> {
        if self.json {
            if key.generated {
                // stdout carries only the JSON; the key a person needs to
                // retry goes to stderr.
                let _ = writeln!(io::stderr(), "idempotency key: {}", key.value);
            }
            return print_json(reply);
        }
        emit(&format_mutation(
            reply,
            &position.key(),
            key,
            show_granted,
            skuld_cluster::now_ms(),
        ))
    }
}

/// Prints a proto reply in the proto3 JSON mapping.
pub(super) fn print_json<T: Serialize>(reply: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(reply).context("cannot encode reply as JSON")?;
    text.push('\n');
    emit(&text)
}

/// Writes to stdout; a closed pipe (`skuld ... | head`) is not an error.
pub(super) fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

/// Joins an error and its sources: `transport error: tcp connect error: ...`.
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Wrappers often repeat their source's message; print it once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The server's retry hint: the `retry-after-ms` metadata, else the
/// `google.rpc.RetryInfo` detail.
pub(super) fn retry_after_ms(status: &Status) -> Option<u128> {
    retry_after_from_metadata(status.metadata()).or_else(|| {
        status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay)
            .map(|delay| delay.as_millis())
    })
}

pub(super) fn retry_after_from_metadata(metadata: &MetadataMap) -> Option<u128> {
    metadata
        .get(RETRY_AFTER_HEADER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The one-line description of a failed call (without the `error: ` prefix).
pub(super) fn format_status(status: &Status, idempotency_key: Option<&IdempotencyKey>) -> String {
    let code = status.code();
    let message = if status.message().is_empty() {
        code.description()
    } else {
        status.message()
    };
    let mut line = format!("{}: {}", skuld_proto::code_name(code), message.trim());
    if let Some(ms) = retry_after_ms(status) {
        line.push_str(&format!("; retry after {ms} ms"));
    }
    if let Some(key) =
        idempotency_key.filter(|k| k.generated && skuld_proto::retry::worth_retrying(code))
    {
        line.push_str(&format!(
            "; to retry safely pass --idempotency-key {}",
            key.value
        ));
    }
    line
}
