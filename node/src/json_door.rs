//! The JSON door: every unary RPC of the client API (`skuld.v1`) as
//! HTTP/JSON on the HTTP port, in the Connect protocol's unary JSON shape
//! (`POST /skuld.v1.InventoryService/Reserve`, ProtoJSON body; see
//! `docs/json-door.md`).
//!
//! Nothing here knows a message: the request is parsed against the
//! method's descriptor (the set reflection serves), encoded, and called
//! in process through the very services the gRPC port serves, behind the
//! same load shedding, authentication, size limits, validation and
//! idempotency, so the door cannot drift from the gRPC API and a service
//! added to the API is reachable here without a change.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, MethodDescriptor,
    ReflectMessage as _, SerializeOptions, Value,
};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::{Code, Status};

use crate::rpc::CORRELATION_ID;
use crate::shed::Shed;

/// The package whose services the door opens; the internal peer API is
/// never among them.
const PACKAGE: &str = "skuld.v1";

/// HTTP request headers carried into the call as gRPC metadata of the
/// same name: credentials, correlation and trace context. Any other
/// metadata can be sent as `Grpc-Metadata-<name>` (grpc-gateway's rule).
const FORWARDED: [&str; 4] = ["authorization", CORRELATION_ID, "traceparent", "tracestate"];

/// The REST habit of an `Idempotency-Key` header, accepted as the
/// message's `idempotency_key` when the body names none (D.6: the key
/// lives in the message, so the header is only a fallback).
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// JSON spends more bytes than protobuf on the same message (field names,
/// int64 as strings): the body may be this many times `max_message_bytes`
/// before it is refused unread; the encoded message then meets the gRPC
/// side's own limit.
const JSON_BYTES_PER_PROTO_BYTE: usize = 4;

/// The client API's services, as the gRPC port serves them.
pub type ClientApi = Shed<tonic::service::Routes>;

#[derive(Clone)]
struct Door {
    pool: DescriptorPool,
    api: ClientApi,
    max_body_bytes: usize,
    max_reply_bytes: usize,
}

/// `POST /{package.Service}/{Method}` for every unary method of
/// `skuld.v1`, calling `api`. `descriptors` is the encoded descriptor set
/// of the API (`skuld_proto::FILE_DESCRIPTOR_SET`).
pub fn routes(
    descriptors: &[u8],
    api: ClientApi,
    max_message_bytes: usize,
) -> anyhow::Result<axum::Router> {
    let mut pool = DescriptorPool::decode(descriptors)?;
    // google.rpc's details (BadRequest, PreconditionFailure, RetryInfo) so
    // an error's details can be shown as JSON too.
    pool.decode_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)?;
    let door = Door {
        pool,
        api,
        max_body_bytes: max_message_bytes.saturating_mul(JSON_BYTES_PER_PROTO_BYTE),
        // As the gRPC services encode at most (server.rs).
        max_reply_bytes: max_message_bytes.max(4 * 1024 * 1024),
    };
    Ok(axum::Router::new()
        .route("/{service}/{method}", post(call))
        // The body is read by `call` against its own limit, not axum's.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(door))
}

async fn call(
    State(door): State<Door>,
    Path((service, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match door.call(&service, &method, &headers, body).await {
        Ok(reply) => reply,
        Err(refusal) => refusal.into_response(&door.pool),
    }
}

/// A call the door or the service refused: its status, and the HTTP code
/// when not the status's own (415, 413).
struct Refusal {
    status: Status,
    http: Option<StatusCode>,
}

impl From<Status> for Refusal {
    fn from(status: Status) -> Self {
        Self { status, http: None }
    }
}

impl Door {
    async fn call(
        &self,
        service: &str,
        method: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response, Refusal> {
        let method = self.method(service, method)?;
        if method.is_client_streaming() || method.is_server_streaming() {
            return Err(Status::unimplemented(format!(
                "{}/{} streams: the JSON door serves unary methods only; call it over gRPC",
                service,
                method.name()
            ))
            .into());
        }
        if !is_json(headers) {
            return Err(Refusal {
                status: Status::invalid_argument(
                    "the JSON door takes Content-Type: application/json",
                ),
                http: Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
            });
        }
        let body = axum::body::to_bytes(body, self.max_body_bytes)
            .await
            .map_err(|_| Refusal {
                status: Status::resource_exhausted(format!(
                    "request body larger than {} bytes, or cut short",
                    self.max_body_bytes
                )),
                http: Some(StatusCode::PAYLOAD_TOO_LARGE),
            })?;
        let mut message = parse(method.input(), &body)?;
        idempotency_fallback(&mut message, headers)?;

        let mut request = tonic::Request::new(message.encode_to_vec());
        forward_headers(headers, request.metadata_mut())?;
        if let Some(timeout) = connect_timeout(headers)? {
            request.set_timeout(timeout);
        }
        let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
        let path = path
            .parse()
            .map_err(|_| Status::not_found(format!("no method at {path}")))?;
        let mut grpc = tonic::client::Grpc::new(self.api.clone())
            .max_decoding_message_size(self.max_reply_bytes);
        grpc.ready().await.map_err(|error| {
            Status::unavailable(format!("the client API is not ready: {error}"))
        })?;
        let reply = grpc.unary(request, path, RawCodec).await?;
        let (metadata, bytes, _) = reply.into_parts();
        let reply = DynamicMessage::decode(method.output(), bytes)
            .map_err(|error| Status::internal(format!("undecodable reply: {error}")))?;
        let json = to_json(&reply).map_err(|error| {
            Status::internal(format!("reply not representable as JSON: {error}"))
        })?;
        let mut response = (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response();
        copy_metadata(&metadata, response.headers_mut());
        Ok(response)
    }

    fn method(&self, service: &str, name: &str) -> Result<MethodDescriptor, Status> {
        let found = self
            .pool
            .get_service_by_name(service)
            .filter(|found| found.package_name() == PACKAGE)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no service {service} in {PACKAGE} (path /<package.Service>/<Method>)"
                ))
            })?;
        let method = found.methods().find(|candidate| candidate.name() == name);
        method.ok_or_else(|| Status::not_found(format!("no method {name} in {service}")))
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// ProtoJSON into the method's input. Unknown fields are refused, as the
/// ProtoJSON spec says, rather than dropped as grpc-gateway does: a
/// misspelt `expectedVersion` silently ignored would apply a write the
/// caller meant to guard.
fn parse(descriptor: MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, Status> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let message = DynamicMessage::deserialize_with_options(
        descriptor.clone(),
        &mut deserializer,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .and_then(|message| deserializer.end().map(|()| message))
    .map_err(|error| {
        Status::invalid_argument(format!(
            "malformed JSON for {}: {error}",
            descriptor.full_name()
        ))
    })?;
    Ok(message)
}

/// Fills the message's idempotency key (top level, or in its `header`)
/// from an `Idempotency-Key` header when the body left it empty; a body
/// and a header that disagree are refused, since either could be the one
/// the caller retries with.
fn idempotency_fallback(message: &mut DynamicMessage, headers: &HeaderMap) -> Result<(), Status> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(());
    };
    let key = value
        .to_str()
        .map_err(|_| Status::invalid_argument("Idempotency-Key is not printable ASCII"))?
        .to_owned();
    let target = if message
        .descriptor()
        .get_field_by_name("idempotency_key")
        .is_some()
    {
        Some(message)
    } else if message
        .descriptor()
        .get_field_by_name("header")
        .and_then(|field| field.kind().as_message().cloned())
        .is_some_and(|header| header.get_field_by_name("idempotency_key").is_some())
    {
        match message.get_field_by_name_mut("header") {
            Some(Value::Message(header)) => Some(header),
            _ => None,
        }
    } else {
        None
    };
    let Some(target) = target else {
        return Err(Status::invalid_argument(
            "Idempotency-Key sent to a method that takes none",
        ));
    };
    match target.get_field_by_name("idempotency_key").as_deref() {
        Some(Value::String(existing)) if !existing.is_empty() && *existing != key => Err(
            Status::invalid_argument("Idempotency-Key header and the body's idempotencyKey differ"),
        ),
        _ => {
            target.set_field_by_name("idempotency_key", Value::String(key));
            Ok(())
        }
    }
}

fn forward_headers(
    headers: &HeaderMap,
    metadata: &mut tonic::metadata::MetadataMap,
) -> Result<(), Status> {
    for (name, value) in headers {
        let name = name.as_str();
        let key = if FORWARDED.contains(&name) {
            name
        } else if let Some(rest) = name.strip_prefix("grpc-metadata-") {
            rest
        } else {
            continue;
        };
        // Binary metadata and gRPC's own headers are not a client's to set
        // through the door.
        if key.ends_with("-bin") || key.starts_with("grpc-") {
            continue;
        }
        let key = MetadataKey::from_bytes(key.as_bytes()).map_err(|_| {
            Status::invalid_argument(format!("header {name} is not valid metadata"))
        })?;
        let value = MetadataValue::try_from(value.as_bytes())
            .map_err(|_| Status::invalid_argument(format!("header {name} is not printable")))?;
        metadata.append(key, value);
    }
    Ok(())
}

/// `Connect-Timeout-Ms` (at most 10 digits) as the call's deadline.
fn connect_timeout(headers: &HeaderMap) -> Result<Option<Duration>, Status> {
    let Some(value) = headers.get("connect-timeout-ms") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|text| !text.is_empty() && text.len() <= 10)
        .and_then(|text| text.parse::<u64>().ok())
        .map(|millis| Some(Duration::from_millis(millis)))
        .ok_or_else(|| Status::invalid_argument("Connect-Timeout-Ms must be 1 to 10 digits"))
}

/// ProtoJSON with lowerCamelCase names, enums by name, 64-bit integers as
/// strings, and fields at their default printed (as grpc-gateway does):
/// a POS reading `reserved` should find `"0"`, not nothing.
fn to_json(message: &DynamicMessage) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::new(&mut out);
    message.serialize_with_options(
        &mut serializer,
        &SerializeOptions::new().skip_default_fields(false),
    )?;
    Ok(out)
}

/// Response metadata (`x-correlation-id`, `skuld-owner`, `retry-after-ms`)
/// as HTTP headers of the same name.
fn copy_metadata(metadata: &tonic::metadata::MetadataMap, headers: &mut HeaderMap) {
    for (name, value) in metadata.clone().into_headers() {
        let Some(name) = name else { continue };
        if name.as_str().starts_with("grpc-")
            || name.as_str().ends_with("-bin")
            || name == axum::http::header::CONTENT_TYPE
        {
            continue;
        }
        headers.append(name, value);
    }
}

impl Refusal {
    /// The Connect error body: `{"code": "failed_precondition", "message":
    /// "...", "details": [{"type", "value", "debug"}]}`, `value` the
    /// detail's protobuf in unpadded base64 and `debug` its ProtoJSON.
    fn into_response(self, pool: &DescriptorPool) -> Response {
        let status = self.status;
        let http = self.http.unwrap_or_else(|| http_status(status.code()));
        let details = details(pool, &status);
        let body = serde_json::json!({
            "code": connect_code(status.code()),
            "message": status.message(),
            "details": details,
        });
        let mut response = (
            http,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        copy_metadata(status.metadata(), response.headers_mut());
        if status.code() == Code::Unauthenticated {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

fn details(pool: &DescriptorPool, status: &Status) -> Vec<serde_json::Value> {
    if status.details().is_empty() {
        return Vec::new();
    }
    let Ok(decoded) = tonic_types::pb::Status::decode(status.details()) else {
        return Vec::new();
    };
    decoded
        .details
        .iter()
        .map(|any| {
            let name = any.type_url.rsplit('/').next().unwrap_or_default();
            let mut detail = serde_json::json!({
                "type": name,
                "value": base64::engine::general_purpose::STANDARD_NO_PAD.encode(&any.value),
            });
            let debug = pool
                .get_message_by_name(name)
                .and_then(|descriptor| {
                    DynamicMessage::decode(descriptor, any.value.as_slice()).ok()
                })
                .and_then(|message| to_json(&message).ok())
                .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok());
            if let (Some(debug), Some(object)) = (debug, detail.as_object_mut()) {
                object.insert("debug".into(), debug);
            }
            detail
        })
        .collect()
}

/// grpc-gateway v2's `HTTPStatusFromCode`, which Connect's table matches
/// (CANCELLED 499, DEADLINE_EXCEEDED 504, RESOURCE_EXHAUSTED 429,
/// FAILED_PRECONDITION 400, not v1's 408/403/412).
pub fn http_status(code: Code) -> StatusCode {
    let status = match code {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::Unauthenticated => 401,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
    };
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The Connect name of a code: gRPC's in snake case, CANCELLED spelt
/// `canceled`.
pub fn connect_code(code: Code) -> String {
    match code {
        Code::Cancelled => "canceled".to_owned(),
        other => skuld_proto::code_name(other).to_ascii_lowercase(),
    }
}

/// Passes encoded messages through unchanged: the door encodes and
/// decodes with the descriptors itself.
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        use bytes_buf::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        use bytes_buf::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// `bytes`' traits as prost re-exports them (the node has no direct
/// dependency on `bytes`).
mod bytes_buf {
    pub use prost::bytes::{Buf, BufMut};
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code against grpc-gateway v2's table (ERP.md D.2), so a
    /// change to the mapping (say, back to v1's 412 for
    /// FAILED_PRECONDITION) fails here.
    #[test]
    fn status_codes_map_as_grpc_gateway_v2() {
        let table = [
            (Code::Ok, 200, "ok"),
            (Code::Cancelled, 499, "canceled"),
            (Code::Unknown, 500, "unknown"),
            (Code::InvalidArgument, 400, "invalid_argument"),
            (Code::DeadlineExceeded, 504, "deadline_exceeded"),
            (Code::NotFound, 404, "not_found"),
            (Code::AlreadyExists, 409, "already_exists"),
            (Code::PermissionDenied, 403, "permission_denied"),
            (Code::Unauthenticated, 401, "unauthenticated"),
            (Code::ResourceExhausted, 429, "resource_exhausted"),
            (Code::FailedPrecondition, 400, "failed_precondition"),
            (Code::Aborted, 409, "aborted"),
            (Code::OutOfRange, 400, "out_of_range"),
            (Code::Unimplemented, 501, "unimplemented"),
            (Code::Internal, 500, "internal"),
            (Code::Unavailable, 503, "unavailable"),
            (Code::DataLoss, 500, "data_loss"),
        ];
        for (code, http, name) in table {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
            assert_eq!(connect_code(code), name, "{code:?}");
        }
    }

    #[test]
    fn json_content_types() {
        let mut headers = HeaderMap::new();
        assert!(!is_json(&headers));
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(is_json(&headers));
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        assert!(!is_json(&headers));
    }

    #[test]
    fn connect_timeouts() {
        let mut headers = HeaderMap::new();
        assert_eq!(connect_timeout(&headers).ok(), Some(None));
        headers.insert("connect-timeout-ms", HeaderValue::from_static("250"));
        assert_eq!(
            connect_timeout(&headers).ok(),
            Some(Some(Duration::from_millis(250)))
        );
        headers.insert(
            "connect-timeout-ms",
            HeaderValue::from_static("12345678901"),
        );
        assert!(connect_timeout(&headers).is_err());
    }
}
