//! Node-to-node forwarding (cluster mode): the `skuld.internal.v1`
//! PeerService that owners serve, and the client side that sends a request
//! to the owner of its key.
//!
//! The peer API has its own listener, mTLS only: the TLS layer accepts only
//! certificates of the cluster's CA, and [`PeerApi`] then asks that the
//! certificate name the host of a current member. A forwarded payload is a
//! whole domain command that skips the client API's checks, so nobody but
//! a node may send one.
//!
//! The one exception is the deterministic simulation's plaintext hop
//! ([`PeerChannels::Plaintext`], [`CallerCheck::Anyone`]), which only an
//! injected `node_io::Peers::plaintext` sets up; no configuration can.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use async_trait::async_trait;
use dashmap::DashMap;
use skuld_actors::runtime::routing::{ForwardError, ForwardTarget, Forwarder, Operation};
use skuld_actors::runtime::{codec, RequestMeta};
use skuld_actors::{Error, Refusal};
use skuld_cluster::membership::ClusterView;
use skuld_cluster::shards::Peer;
use skuld_proto::internal::v1 as wire;
use skuld_proto::internal::v1::peer_service_client::PeerServiceClient;
use skuld_proto::internal::v1::peer_service_server::PeerService;
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::node_io::Dialer;
use crate::rpc::{self, CORRELATION_ID};
use crate::status::{retry_after_ms, to_status};
use crate::tls::{endpoint_host, names_host, PeerClientTls};

/// Serves requests forwarded by other nodes.
pub struct PeerApi {
    node_id: String,
    targets: Vec<Arc<dyn ForwardTarget>>,
    members: watch::Receiver<Arc<ClusterView>>,
    callers: CallerCheck,
}

/// Who may call the peer API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerCheck {
    /// A caller whose certificate names a current member's host (the mTLS
    /// peer listener's, production's).
    MemberCertificate,
    /// Anyone who reaches the listener: only for plaintext peers, which
    /// only an injected `node_io::Peers::plaintext` sets up (a simulated
    /// network, where every host is a node of the test).
    Anyone,
}

impl PeerApi {
    pub fn new(
        node_id: String,
        targets: Vec<Arc<dyn ForwardTarget>>,
        members: watch::Receiver<Arc<ClusterView>>,
        callers: CallerCheck,
    ) -> Self {
        Self {
            node_id,
            targets,
            members,
            callers,
        }
    }

    /// The caller's certificate (verified by the listener to chain to the
    /// cluster CA) must name the host a current member advertises.
    async fn check_caller(
        &self,
        certs: Option<Arc<Vec<rustls_pki_types::CertificateDer<'static>>>>,
    ) -> Result<(), Status> {
        let leaf = certs.as_ref().and_then(|certs| certs.first());
        let Some(leaf) = leaf.and_then(|leaf| webpki::EndEntityCert::try_from(leaf).ok()) else {
            metrics::counter!("skuld_peer_refused_total", "reason" => "no_certificate")
                .increment(1);
            return Err(Status::unauthenticated(
                "the peer API needs a node certificate",
            ));
        };
        let names_a_member = |view: &ClusterView| {
            view.members.values().any(|member| {
                endpoint_host(&member.endpoint).is_some_and(|host| names_host(&leaf, &host))
            })
        };
        let view = Arc::clone(&self.members.borrow());
        if names_a_member(&view) {
            return Ok(());
        }
        // A node that just joined may call before this node's view shows
        // its record: give the watch a moment to catch up once.
        let mut members = self.members.clone();
        let seen = view.revision;
        let newer = tokio::time::timeout(
            MEMBERSHIP_CATCH_UP,
            members.wait_for(|view| view.revision > seen),
        )
        .await;
        let caught_up = match newer {
            Ok(Ok(view)) => names_a_member(&view),
            _ => false,
        };
        if caught_up {
            return Ok(());
        }
        metrics::counter!("skuld_peer_refused_total", "reason" => "not_a_member").increment(1);
        Err(Status::permission_denied(
            "the certificate names no current member of this cluster",
        ))
    }
}

/// How long a peer call from a certificate that names no member waits for
/// a newer membership view before it is refused.
const MEMBERSHIP_CATCH_UP: Duration = Duration::from_secs(1);

fn operation_from_wire(value: i32) -> Option<Operation> {
    match wire::Operation::try_from(value).ok()? {
        wire::Operation::Mutate => Some(Operation::Mutate),
        wire::Operation::Read => Some(Operation::Read),
        wire::Operation::Unspecified => None,
    }
}

/// The owner's error as it crosses the hop: the error itself, plus its
/// status for a node that cannot decode it (an older version).
fn error_to_wire(error: &Error) -> wire::RemoteError {
    let status = to_status(error);
    let shard = match error {
        Error::ShardMoving { shard, .. } => Some(*shard),
        _ => None,
    };
    wire::RemoteError {
        code: status.code() as i32,
        message: status.message().to_owned(),
        retry_after_ms: retry_after_ms(error),
        moved: shard.is_some(),
        shard: shard.unwrap_or_default(),
        reservation_not_found: match error {
            Error::Refused(Refusal::ReservationNotFound(id)) => Some(id.clone()),
            _ => None,
        },
        error: codec::encode(error).unwrap_or_default(),
    }
}

/// The owner's error, typed: the same refusal (and so the same status and
/// details for the client) whichever node answered.
fn error_from_wire(error: wire::RemoteError) -> Error {
    // Taken only when it means what the owner's status says: bytes of a
    // version whose variants differ could decode as another error.
    if let Ok(typed) = codec::decode_limited::<Error>(&error.error) {
        if to_status(&typed).code() as i32 == error.code {
            return typed;
        }
    }
    if error.moved {
        return Error::ShardMoving {
            shard: error.shard,
            retry_after_ms: error.retry_after_ms.unwrap_or(100),
        };
    }
    if let Some(id) = error.reservation_not_found {
        return Error::Refused(Refusal::ReservationNotFound(id));
    }
    Error::Remote {
        code: error.code,
        message: error.message,
        retry_after_ms: error.retry_after_ms,
    }
}

#[tonic::async_trait]
impl PeerService for PeerApi {
    async fn forward(
        &self,
        request: Request<wire::ForwardRequest>,
    ) -> Result<Response<wire::ForwardReply>, Status> {
        let started = Instant::now();
        if self.callers == CallerCheck::MemberCertificate {
            self.check_caller(request.peer_certs()).await?;
        }
        let meta = RequestMeta {
            correlation_id: rpc::correlation_id(request.metadata()),
            deadline: rpc::deadline(request.metadata(), started),
            ..RequestMeta::default()
        };
        // A child of the forwarding node's span: one trace across the hop.
        let (metadata, _, message) = request.into_parts();
        let span = tracing::info_span!(
            "forwarded",
            otel.name = "PeerService/Forward",
            otel.kind = "server",
            skuld.correlation_id = %meta.correlation_id,
            skuld.kind = message.kind.as_str(),
        );
        crate::trace_context::adopt_parent(&span, &metadata);
        let target = self
            .targets
            .iter()
            .find(|target| target.kind() == message.kind)
            .ok_or_else(|| Status::invalid_argument(format!("unknown kind {:?}", message.kind)))?;
        let operation = operation_from_wire(message.operation)
            .ok_or_else(|| Status::invalid_argument("operation is unspecified"))?;
        let result = target
            .serve_forwarded(operation, message.payload, meta)
            .instrument(span)
            .await;
        metrics::counter!("skuld_forwarded_served_total", "kind" => target.kind()).increment(1);
        let outcome = match result {
            Ok(bytes) => wire::forward_reply::Outcome::Ok(bytes),
            Err(ForwardError::Malformed(error)) => {
                metrics::counter!("skuld_forwarded_malformed_total", "kind" => target.kind())
                    .increment(1);
                return Err(Status::invalid_argument(error.to_string()));
            }
            Err(ForwardError::Failed(error)) => {
                wire::forward_reply::Outcome::Error(error_to_wire(&error))
            }
        };
        Ok(Response::new(wire::ForwardReply {
            served_by: self.node_id.clone(),
            outcome: Some(outcome),
        }))
    }
}

/// How a node opens its channels to peers.
#[derive(Clone)]
pub enum PeerChannels {
    /// mTLS from the peer TLS files (production's), over tonic's own TCP
    /// connector.
    Tls(Arc<PeerClientTls>),
    /// Plaintext over an injected dialer: reachable only through
    /// `node_io::Peers::plaintext`, never from a configuration.
    Plaintext(Dialer),
}

impl PeerChannels {
    /// Changes whenever channels opened before must be replaced (the TLS
    /// files were read again).
    fn generation(&self) -> u64 {
        match self {
            Self::Tls(tls) => tls.generation(),
            Self::Plaintext(_) => 0,
        }
    }
}

/// Sends requests to their owners over one lazily connected channel per
/// peer (mTLS in production), opened again once the peer TLS files
/// changed.
pub struct GrpcForwarder {
    /// By endpoint: the channel and the TLS generation it was opened with.
    channels: DashMap<String, (u64, Channel)>,
    transport: PeerChannels,
    max_message_bytes: usize,
}

impl GrpcForwarder {
    pub fn new(max_message_bytes: usize, transport: PeerChannels) -> Self {
        Self {
            channels: DashMap::new(),
            transport,
            max_message_bytes,
        }
    }

    fn channel(&self, endpoint: &str) -> Result<Channel, Error> {
        let generation = self.transport.generation();
        if let Some(entry) = self.channels.get(endpoint) {
            if entry.0 == generation {
                return Ok(entry.1.clone());
            }
        }
        let host = endpoint_host(endpoint)
            .ok_or_else(|| Error::Unavailable(format!("bad peer endpoint {endpoint}: no host")))?;
        let settings = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|error| Error::Unavailable(format!("bad peer endpoint {endpoint}: {error}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        // Calls in flight on a replaced channel finish on it: they hold
        // clones of it.
        let channel = match &self.transport {
            PeerChannels::Tls(tls) => settings
                .tls_config(tls.config_for(&host))
                .map_err(|error| Error::Unavailable(format!("peer endpoint {endpoint}: {error}")))?
                .connect_lazy(),
            PeerChannels::Plaintext(dialer) => settings.connect_with_connector_lazy(dialer.clone()),
        };
        self.channels
            .insert(endpoint.to_owned(), (generation, channel.clone()));
        Ok(channel)
    }
}

#[async_trait]
impl Forwarder for GrpcForwarder {
    async fn forward(
        &self,
        peer: &Peer,
        kind: &'static str,
        operation: Operation,
        payload: Vec<u8>,
        meta: &RequestMeta,
    ) -> Result<Vec<u8>, Error> {
        let channel = self.channel(&peer.endpoint)?;
        let mut client = PeerServiceClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes.max(4 * 1024 * 1024))
            .max_encoding_message_size(self.max_message_bytes.max(4 * 1024 * 1024));
        let mut request = Request::new(wire::ForwardRequest {
            kind: kind.to_owned(),
            operation: match operation {
                Operation::Mutate => wire::Operation::Mutate,
                Operation::Read => wire::Operation::Read,
            } as i32,
            payload,
        });
        // Without a caller deadline a dead peer must still not hold the
        // request forever.
        let timeout = meta.deadline.map_or(Duration::from_secs(10), |deadline| {
            deadline.saturating_duration_since(Instant::now())
        });
        request.set_timeout(timeout);
        if let Ok(value) = MetadataValue::try_from(meta.correlation_id.as_str()) {
            request.metadata_mut().insert(CORRELATION_ID, value);
        }
        // The hop as a span of the request's trace, whose context the owner
        // continues.
        let span = tracing::info_span!(
            "forward",
            otel.name = "forward to owner",
            otel.kind = "client",
            skuld.correlation_id = %meta.correlation_id,
            skuld.kind = kind,
            skuld.owner = %peer.node_id,
        );
        crate::trace_context::inject(&span, request.metadata_mut());
        metrics::counter!("skuld_forwarded_total", "kind" => kind).increment(1);
        match client.forward(request).instrument(span).await {
            Ok(reply) => match reply.into_inner().outcome {
                Some(wire::forward_reply::Outcome::Ok(bytes)) => Ok(bytes),
                Some(wire::forward_reply::Outcome::Error(error)) => Err(error_from_wire(error)),
                None => Err(Error::Unavailable(format!(
                    "{} answered without an outcome",
                    peer.node_id
                ))),
            },
            // The owner refused this node itself (its certificate names no
            // member the owner knows): a configuration fault, not a route
            // that may change, so no waiting for one. Nothing was applied.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                ) =>
            {
                metrics::counter!("skuld_forward_failures_total", "kind" => kind).increment(1);
                tracing::warn!(owner = %peer.node_id, message = status.message(), "the owner refused this node's peer certificate");
                Err(Error::Remote {
                    code: tonic::Code::Unavailable as i32,
                    message: format!(
                        "owner {} refused this node's peer certificate",
                        peer.node_id
                    ),
                    retry_after_ms: Some(1_000),
                })
            }
            // The owner refused the request as malformed: nothing was
            // applied, and sending it again cannot help.
            Err(status) if status.code() == tonic::Code::InvalidArgument => Err(Error::Remote {
                code: status.code() as i32,
                message: status.message().to_owned(),
                retry_after_ms: None,
            }),
            // The request may or may not have been applied; the caller
            // resends with the same idempotency key, which replays it.
            Err(status) => {
                metrics::counter!("skuld_forward_failures_total", "kind" => kind).increment(1);
                Err(Error::Unavailable(format!(
                    "owner {} not reachable: {}",
                    peer.node_id,
                    status.message()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_cross_the_wire_with_their_code_and_hint() {
        let moving = error_from_wire(error_to_wire(&Error::ShardMoving {
            shard: 17,
            retry_after_ms: 100,
        }));
        assert_eq!(
            moving,
            Error::ShardMoving {
                shard: 17,
                retry_after_ms: 100
            }
        );
        let refused = error_from_wire(error_to_wire(&Error::Refused(Refusal::Insufficient {
            requested: 5,
            available: 2,
        })));
        let status = to_status(&refused);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("available 2"));
        let overloaded = to_status(&error_from_wire(error_to_wire(&Error::Overloaded {
            queue: "node".into(),
            retry_after_ms: 250,
        })));
        assert_eq!(overloaded.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            overloaded
                .metadata()
                .get(crate::status::RETRY_AFTER_MS)
                .map(|v| v.to_str().ok()),
            Some(Some("250"))
        );
        // A missing reservation stays typed across the hop: a return's
        // exchange release treats it as already done, on any node.
        let missing = Error::Refused(Refusal::ReservationNotFound("hold-1".into()));
        assert_eq!(error_from_wire(error_to_wire(&missing)), missing);
    }

    #[test]
    fn every_error_crosses_the_hop_as_itself_with_the_same_status() {
        let errors = [
            Error::invalid("quantity", "must be > 0"),
            Error::Refused(Refusal::Insufficient {
                requested: 5,
                available: 2,
            }),
            Error::Refused(Refusal::NegativeBucket {
                bucket: skuld_actors::position::Bucket::Damaged,
                value: -1,
            }),
            Error::Refused(Refusal::VersionMismatch {
                expected: 3,
                current: 4,
            }),
            Error::Refused(Refusal::IllegalTransition {
                command: "Close".into(),
                state: skuld_actors::returns::ReturnState::Requested,
                allowed: vec!["Approve".into(), "Cancel".into()],
            }),
            Error::Refused(Refusal::IdempotencyKeyReused("k".into())),
            Error::Overloaded {
                queue: "position".into(),
                retry_after_ms: 50,
            },
            Error::DeadlineExceeded,
            Error::Unavailable("the store failed".into()),
        ];
        for error in errors {
            let crossed = error_from_wire(error_to_wire(&error));
            assert_eq!(crossed, error);
            let (here, there) = (to_status(&error), to_status(&crossed));
            assert_eq!(here.code(), there.code());
            assert_eq!(here.message(), there.message());
            assert_eq!(here.details(), there.details(), "{error:?}");
        }
        // From a node that sends no typed error: the status still crosses.
        let mut old = error_to_wire(&Error::Refused(Refusal::Insufficient {
            requested: 5,
            available: 2,
        }));
        old.error.clear();
        assert_eq!(
            to_status(&error_from_wire(old)).code(),
            tonic::Code::FailedPrecondition
        );
    }

    #[test]
    fn typed_bytes_that_contradict_the_status_are_not_trusted() {
        // As a node of another version could send: bytes that decode as
        // a refusal, beside a status that says something else.
        let mut wire = error_to_wire(&Error::Refused(Refusal::Insufficient {
            requested: 5,
            available: 2,
        }));
        wire.code = tonic::Code::Unavailable as i32;
        wire.message = "store failed".into();
        let crossed = error_from_wire(wire);
        assert_eq!(
            crossed,
            Error::Remote {
                code: tonic::Code::Unavailable as i32,
                message: "store failed".into(),
                retry_after_ms: None,
            }
        );
        assert!(crossed.is_retryable());
    }

    #[test]
    fn an_untyped_remote_error_is_retried_as_every_client_retries() {
        for code in 0..=16 {
            let remote = Error::Remote {
                code,
                message: String::new(),
                retry_after_ms: None,
            };
            assert_eq!(
                remote.is_retryable(),
                skuld_proto::retry::worth_retrying(tonic::Code::from(code)),
                "{:?}",
                tonic::Code::from(code)
            );
        }
    }
}
