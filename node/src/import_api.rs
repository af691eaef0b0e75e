//! `InventoryService.ImportPositions`: a bulk load of physical counts over
//! a bidirectional stream. Each line is the `SetOnHand` of its position
//! through the position runtime (validation, idempotency, routing to the
//! owner in cluster mode, group commit), so an import cannot do what a
//! unary call could not.
//!
//! Back-pressure: the stream is read only as fast as lines are applied.
//! At most [`MESSAGES_IN_FLIGHT`] request messages are being applied at a
//! time, each with at most [`LINES_IN_FLIGHT_PER_MESSAGE`] lines waiting for
//! their commit; the reply channel holds a few messages, and a client that
//! stops reading replies stops the import.

use std::pin::Pin;
use std::sync::Arc;
use tokio::time::Instant;

use futures::{Stream, StreamExt as _};
use skuld_actors::position::PositionEntity;
use skuld_actors::runtime::{EntityRuntime, RequestMeta};
use skuld_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::auth::{self, Caller, Scoped as _};
use crate::convert;
use crate::status::to_status;

/// Lines one request message may carry.
pub const MAX_LINES_PER_MESSAGE: usize = 1000;
/// Request messages applied at once.
const MESSAGES_IN_FLIGHT: usize = 2;
/// Lines of one message waiting for their commit at once: enough for group
/// commit to batch them, far below the runtime's admission limit
/// (`max_in_flight`, 512 by default), so an import leaves room for other
/// traffic.
const LINES_IN_FLIGHT_PER_MESSAGE: usize = 64;
/// Reply messages buffered for a slow reader.
const REPLIES_BUFFERED: usize = 4;

const LINES_TOTAL: &str = "skuld_import_lines_total";

pub type ImportStream =
    Pin<Box<dyn Stream<Item = Result<pb::ImportPositionsResponse, Status>> + Send + 'static>>;

/// Registers the metrics' help texts.
pub fn describe_metrics() {
    metrics::describe_counter!(
        LINES_TOTAL,
        "Lines of ImportPositions streams, by outcome (applied, replayed, refused)"
    );
}

/// Serves one ImportPositions stream.
pub async fn serve(
    runtime: Arc<EntityRuntime<PositionEntity>>,
    request: Request<Streaming<pb::ImportPositionsRequest>>,
) -> Result<Response<ImportStream>, Status> {
    let started = Instant::now();
    let correlation_id = crate::rpc::correlation_id(request.metadata());
    let deadline = crate::rpc::deadline(request.metadata(), started);
    // A writer, before a line is read; each message's tenant is checked
    // (and charged to its quota) as it arrives.
    let writer = auth::Access {
        role: Some(auth::Role::Writer),
        target: auth::Target::Node,
    };
    let caller = request.extensions().get::<Caller>().cloned();
    auth::admit(caller.as_ref(), writer)?;
    let Some(caller) = caller else {
        return Err(crate::status::unauthenticated());
    };
    let span = tracing::info_span!(
        "rpc",
        otel.name = "ImportPositions",
        otel.kind = "server",
        rpc.method = "ImportPositions",
        skuld.correlation_id = %correlation_id,
    );
    crate::trace_context::adopt_parent(&span, request.metadata());
    let inbound = request.into_inner();
    let (replies, replies_out) = mpsc::channel(REPLIES_BUFFERED);
    let import = Import {
        runtime,
        caller,
        correlation_id,
        deadline,
    };
    tokio::spawn(
        async move {
            let code = import.run(inbound, replies).await;
            metrics::counter!(
                "skuld_grpc_requests_total",
                "method" => "ImportPositions",
                "code" => skuld_proto::code_name(code),
            )
            .increment(1);
            metrics::histogram!(
                "skuld_grpc_request_duration_seconds",
                "method" => "ImportPositions"
            )
            .record(started.elapsed().as_secs_f64());
        }
        .instrument(span),
    );
    Ok(Response::new(Box::pin(ReceiverStream::new(replies_out))))
}

struct Import {
    runtime: Arc<EntityRuntime<PositionEntity>>,
    caller: Caller,
    correlation_id: String,
    deadline: Option<Instant>,
}

type Reply = Result<pb::ImportPositionsResponse, Status>;

impl Import {
    /// Applies every message of `inbound`, sending each one's results;
    /// returns the stream's final code.
    async fn run(
        self,
        inbound: Streaming<pb::ImportPositionsRequest>,
        replies: mpsc::Sender<Reply>,
    ) -> tonic::Code {
        let this = &self;
        let mut applied = inbound
            .map(|message| async move {
                match message {
                    Ok(message) => this.apply_message(message).await,
                    Err(status) => Err(status),
                }
            })
            .buffer_unordered(MESSAGES_IN_FLIGHT);
        while let Some(reply) = applied.next().await {
            let failed = reply.as_ref().err().map(Status::code);
            if failed.is_some() {
                tracing::debug!(?failed, "import stream ended");
            }
            if replies.send(reply).await.is_err() {
                // The client went away; what was applied stays applied.
                return tonic::Code::Cancelled;
            }
            if let Some(code) = failed {
                return code;
            }
        }
        tonic::Code::Ok
    }

    /// One request message: authorized once for its tenant, then every line.
    async fn apply_message(&self, message: pb::ImportPositionsRequest) -> Reply {
        self.caller.admit(message.access())?;
        if message.lines.is_empty() || message.lines.len() > MAX_LINES_PER_MESSAGE {
            return Err(Status::invalid_argument(format!(
                "lines: {} in one message, expected 1 to {MAX_LINES_PER_MESSAGE}",
                message.lines.len()
            )));
        }
        if self
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return Err(Status::deadline_exceeded(
                "the import's deadline passed; the lines not answered were not applied",
            ));
        }
        let tenant = &message.tenant;
        let results = futures::stream::iter(message.lines)
            .map(|line| self.apply_line(tenant, line))
            .buffer_unordered(LINES_IN_FLIGHT_PER_MESSAGE)
            .collect()
            .await;
        Ok(pb::ImportPositionsResponse { results })
    }

    /// One line as the SetOnHand of its position.
    async fn apply_line(&self, tenant: &str, line: pb::ImportPositionLine) -> pb::ImportLineResult {
        let line_number = line.line_number;
        let reason = match pb::AdjustmentReason::try_from(line.reason) {
            Ok(pb::AdjustmentReason::Unspecified) => pb::AdjustmentReason::CycleCount.into(),
            _ => line.reason,
        };
        let request = pb::SetOnHandRequest {
            header: Some(pb::MutationHeader {
                key: Some(pb::PositionKey {
                    tenant: tenant.to_owned(),
                    sku: line.sku,
                    location: line.location,
                }),
                idempotency_key: line.idempotency_key,
                expected_version: None,
            }),
            on_hand: line.on_hand,
            reason,
            counted_at_unix_ms: line.counted_at_unix_ms,
            change_from: None,
            reference_document_uri: String::new(),
        };
        let meta = RequestMeta {
            correlation_id: self.correlation_id.clone(),
            deadline: self.deadline,
            ..RequestMeta::default()
        };
        let outcome = match convert::set_on_hand(request) {
            Ok(mutation) => self.runtime.mutate(mutation, meta).await,
            Err(error) => Err(error),
        };
        let result = match outcome {
            Ok(mutated) => pb::ImportLineResult {
                line_number,
                outcome: if mutated.replayed {
                    pb::ImportLineOutcome::Replayed
                } else {
                    pb::ImportLineOutcome::Applied
                }
                .into(),
                code: 0,
                message: String::new(),
                version: mutated.reply.version,
            },
            Err(error) => {
                let status = to_status(&error);
                pb::ImportLineResult {
                    line_number,
                    outcome: pb::ImportLineOutcome::Refused.into(),
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                    version: 0,
                }
            }
        };
        let outcome = match pb::ImportLineOutcome::try_from(result.outcome) {
            Ok(pb::ImportLineOutcome::Applied) => "applied",
            Ok(pb::ImportLineOutcome::Replayed) => "replayed",
            _ => "refused",
        };
        metrics::counter!(LINES_TOTAL, "outcome" => outcome).increment(1);
        result
    }
}
