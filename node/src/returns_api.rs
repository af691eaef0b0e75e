//! The `skuld.v1.ReturnsService` implementation and its conversions.

use std::collections::BTreeMap;
use std::sync::Arc;

use skuld_actors::returns::{
    self as domain, summary_scope, DeclineReason, Disposition, Grade, InspectedLine, Label,
    Milestone, ReceivedLine, RefundMethod, Requester, Resolution, ReturnCase, ReturnCommand,
    ReturnEntity, ReturnMutation, ReturnPolicy, ReturnState, ReturnSummary,
};
use skuld_actors::runtime::{EntityRuntime, Mutated, RequestMeta};
use skuld_actors::{Error, Refusal, ReturnKey};
use skuld_proto::v1 as pb;
use skuld_proto::v1::returns_service_server::ReturnsService;
use tonic::{Request, Response, Status};

use crate::convert::return_key;
use crate::rpc;

/// Return policies by scope: `"<tenant>/<channel>"`, then `"<tenant>"`, then
/// `"default"`; the built-in default when none matches.
#[derive(Debug, Clone, Default)]
pub struct ReturnPolicies(pub BTreeMap<String, ReturnPolicy>);

impl ReturnPolicies {
    pub fn resolve(&self, tenant: &str, channel: &str) -> ReturnPolicy {
        self.0
            .get(&format!("{tenant}/{channel}"))
            .or_else(|| self.0.get(tenant))
            .or_else(|| self.0.get("default"))
            .cloned()
            .unwrap_or_default()
    }
}

pub struct ReturnsApi {
    runtime: Arc<EntityRuntime<ReturnEntity>>,
    policies: ReturnPolicies,
}

type ReturnResult = Result<Response<pb::ReturnResponse>, Status>;

fn header(header: Option<pb::ReturnHeader>) -> Result<(ReturnKey, String, Option<u64>), Error> {
    let header = header.ok_or_else(|| Error::invalid("header", "is required"))?;
    Ok((
        return_key(header.key)?,
        header.idempotency_key,
        header.expected_version,
    ))
}

fn mutation(
    header_fields: Option<pb::ReturnHeader>,
    command: ReturnCommand,
) -> Result<ReturnMutation, Error> {
    let (key, idempotency_key, expected_version) = header(header_fields)?;
    Ok(ReturnMutation {
        key,
        idempotency_key,
        expected_version,
        command,
    })
}

fn resolution(value: i32) -> Result<Resolution, Error> {
    match pb::Resolution::try_from(value) {
        Ok(pb::Resolution::RefundOriginal) => Ok(Resolution::RefundOriginal),
        Ok(pb::Resolution::StoreCredit) => Ok(Resolution::StoreCredit),
        Ok(pb::Resolution::Exchange) => Ok(Resolution::Exchange),
        Ok(pb::Resolution::KeepItem) => Ok(Resolution::KeepItem),
        _ => Err(Error::invalid(
            "lines.resolution",
            format!("must be set to a known value, got {value}"),
        )),
    }
}

fn disposition(value: i32) -> Result<Disposition, Error> {
    match pb::Disposition::try_from(value) {
        Ok(pb::Disposition::Restock) => Ok(Disposition::Restock),
        Ok(pb::Disposition::RestockAfterProcessing) => Ok(Disposition::RestockAfterProcessing),
        Ok(pb::Disposition::DamagedHold) => Ok(Disposition::DamagedHold),
        Ok(pb::Disposition::Scrap) => Ok(Disposition::Scrap),
        Ok(pb::Disposition::ReturnToVendor) => Ok(Disposition::ReturnToVendor),
        Ok(pb::Disposition::Missing) => Ok(Disposition::Missing),
        Ok(pb::Disposition::KeepItem) => Ok(Disposition::KeepItem),
        _ => Err(Error::invalid(
            "disposition",
            format!("must be set to a known value, got {value}"),
        )),
    }
}

fn grade(value: i32) -> Result<Grade, Error> {
    match pb::Grade::try_from(value) {
        Ok(pb::Grade::A) => Ok(Grade::A),
        Ok(pb::Grade::B) => Ok(Grade::B),
        Ok(pb::Grade::C) => Ok(Grade::C),
        Ok(pb::Grade::Unsellable) => Ok(Grade::Unsellable),
        _ => Err(Error::invalid(
            "lines.grade",
            format!("must be set to a known value, got {value}"),
        )),
    }
}

fn milestone(value: i32) -> Result<Milestone, Error> {
    match pb::CarrierMilestone::try_from(value) {
        Ok(pb::CarrierMilestone::InTransit) => Ok(Milestone::InTransit),
        Ok(pb::CarrierMilestone::OutForDelivery) => Ok(Milestone::OutForDelivery),
        Ok(pb::CarrierMilestone::Delivered) => Ok(Milestone::Delivered),
        _ => Err(Error::invalid(
            "milestone",
            format!("must be set to a known value, got {value}"),
        )),
    }
}

fn decline_reason(value: i32) -> Result<DeclineReason, Error> {
    match pb::DeclineReason::try_from(value) {
        Ok(pb::DeclineReason::WindowEnded) => Ok(DeclineReason::WindowEnded),
        Ok(pb::DeclineReason::FinalSale) => Ok(DeclineReason::FinalSale),
        Ok(pb::DeclineReason::Policy) => Ok(DeclineReason::Policy),
        Ok(pb::DeclineReason::Fraud) => Ok(DeclineReason::Fraud),
        Ok(pb::DeclineReason::Other) => Ok(DeclineReason::Other),
        _ => Err(Error::invalid(
            "reason",
            format!("must be set to a known value, got {value}"),
        )),
    }
}

fn refund_method(value: i32) -> Result<RefundMethod, Error> {
    match pb::RefundMethod::try_from(value) {
        Ok(pb::RefundMethod::OriginalPayment | pb::RefundMethod::Unspecified) => {
            Ok(RefundMethod::OriginalPayment)
        }
        Ok(pb::RefundMethod::StoreCredit) => Ok(RefundMethod::StoreCredit),
        Err(_) => Err(Error::invalid(
            "method",
            format!("unknown refund method {value}"),
        )),
    }
}

fn proto_state(state: Option<ReturnState>) -> pb::ReturnState {
    match state {
        None => pb::ReturnState::Unspecified,
        Some(ReturnState::Requested) => pb::ReturnState::Requested,
        Some(ReturnState::InReview) => pb::ReturnState::InReview,
        Some(ReturnState::Approved) => pb::ReturnState::Approved,
        Some(ReturnState::InTransit) => pb::ReturnState::InTransit,
        Some(ReturnState::Received) => pb::ReturnState::Received,
        Some(ReturnState::Inspected) => pb::ReturnState::Inspected,
        Some(ReturnState::Processed) => pb::ReturnState::Processed,
        Some(ReturnState::Declined) => pb::ReturnState::Declined,
        Some(ReturnState::Canceled) => pb::ReturnState::Canceled,
        Some(ReturnState::Expired) => pb::ReturnState::Expired,
        Some(ReturnState::Closed) => pb::ReturnState::Closed,
    }
}

fn proto_resolution(resolution: Option<Resolution>) -> pb::Resolution {
    match resolution {
        None => pb::Resolution::Unspecified,
        Some(Resolution::RefundOriginal) => pb::Resolution::RefundOriginal,
        Some(Resolution::StoreCredit) => pb::Resolution::StoreCredit,
        Some(Resolution::Exchange) => pb::Resolution::Exchange,
        Some(Resolution::KeepItem) => pb::Resolution::KeepItem,
    }
}

fn screaming<T: std::fmt::Debug>(value: T) -> String {
    let name = format!("{value:?}");
    let mut out = String::with_capacity(name.len() + 4);
    for (index, ch) in name.chars().enumerate() {
        if ch.is_uppercase() && index > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

fn proto_exception_kind(kind: domain::ExceptionKind) -> pb::ExceptionKind {
    match kind {
        domain::ExceptionKind::ReceiptOverdue => pb::ExceptionKind::ReceiptOverdue,
        domain::ExceptionKind::ReceivedMoreThanApproved => {
            pb::ExceptionKind::ReceivedMoreThanApproved
        }
        domain::ExceptionKind::DamagedOnArrival => pb::ExceptionKind::DamagedOnArrival,
        domain::ExceptionKind::ErpConfirmationOverdue => pb::ExceptionKind::ErpConfirmationOverdue,
        domain::ExceptionKind::EffectFailing => pb::ExceptionKind::EffectFailing,
        domain::ExceptionKind::ErpRefused => pb::ExceptionKind::ErpRefused,
    }
}

fn describe_effect(kind: &domain::EffectKind) -> String {
    use domain::EffectKind::*;
    match kind {
        ReceiveIntoInspection {
            sku,
            location,
            quantity,
        } => {
            format!("receive {quantity} x {sku} into quality_control at {location}")
        }
        Dispose {
            sku,
            location,
            quantity,
            disposition,
        } => {
            format!(
                "{} {quantity} x {sku} at {location}",
                screaming(disposition).to_lowercase()
            )
        }
        HoldExchange {
            sku,
            location,
            quantity,
            ..
        } => format!("hold {quantity} x {sku} at {location} for the exchange"),
        ReleaseExchange { sku, location, .. } => {
            format!("release the exchange hold of {sku} at {location}")
        }
        ConfirmExchange { sku, location, .. } => {
            format!("commit the exchange hold of {sku} at {location}")
        }
    }
}

pub fn proto_case(key: &ReturnKey, case: &ReturnCase) -> pb::ReturnCase {
    pb::ReturnCase {
        key: Some(pb::ReturnKey {
            tenant: key.tenant.clone(),
            return_id: key.return_id.clone(),
        }),
        version: case.version,
        state: proto_state(case.state).into(),
        order_ref: case.order_ref.clone(),
        customer_ref: case.customer_ref.clone(),
        channel: case.channel.clone(),
        lines: case
            .lines
            .values()
            .map(|line| pb::ReturnLine {
                line_id: line.line_id.clone(),
                sku: line.sku.clone(),
                reason_code: line.reason_code.clone(),
                resolution: proto_resolution(line.resolution).into(),
                requested: line.requested,
                approved: line.approved,
                received: line.received,
                inspected: line.inspected,
                unsellable: line.unsellable,
                disposed: line.disposed,
                awaiting_processing: line.awaiting_processing,
                not_returned: line.not_returned,
                refunded_quantity: line.refunded_quantity,
                refunded_minor: line.refunded_minor,
                receiving_location: line.receiving_location.clone(),
            })
            .collect(),
        refunds: case
            .refunds
            .iter()
            .map(|refund| pb::Refund {
                refund_id: refund.refund_id.clone(),
                method: match refund.method {
                    RefundMethod::OriginalPayment => pb::RefundMethod::OriginalPayment,
                    RefundMethod::StoreCredit => pb::RefundMethod::StoreCredit,
                }
                .into(),
                gross_minor: refund.lines.iter().map(|l| l.gross_minor).sum(),
                restocking_fee_minor: refund.restocking_fee_minor,
                shipping_fee_minor: refund.shipping_fee_minor,
                total_minor: refund.total_minor,
                state: screaming(refund.state),
                released_at_unix_ms: refund.released_at_ms.unwrap_or(0),
            })
            .collect(),
        exceptions: case
            .exceptions
            .iter()
            .map(|exception| pb::CaseException {
                exception_id: exception.exception_id,
                kind: proto_exception_kind(exception.kind).into(),
                owner: screaming(exception.owner),
                raised_at_unix_ms: exception.raised_at_ms,
                note: exception.note.clone(),
                resolved_by: exception.resolved_by.clone().unwrap_or_default(),
                resolved_at_unix_ms: exception.resolved_at_ms.unwrap_or(0),
            })
            .collect(),
        exchanges: case
            .exchanges
            .iter()
            .map(|hold| pb::ExchangeHold {
                line_id: hold.line_id.clone(),
                sku: hold.sku.clone(),
                location: hold.location.clone(),
                quantity: hold.quantity,
                reservation_id: hold.reservation_id.clone(),
                state: screaming(hold.state),
            })
            .collect(),
        pending_steps: case
            .pending_effects
            .values()
            .map(|effect| pb::PendingStep {
                step: effect.step,
                description: describe_effect(&effect.kind),
                attempts: effect.attempts,
                last_error: effect.last_error.clone(),
            })
            .collect(),
        ship_by_unix_ms: case.ship_by_ms.unwrap_or(0),
        refund_gate: screaming(case.policy.refund_gate),
        tracking_number: case
            .label
            .as_ref()
            .map(|label| label.tracking_number.clone())
            .unwrap_or_default(),
        opened_at_unix_ms: case.opened_at_ms,
        history: Vec::new(),
        erp_credit_memo: case.erp_credit_memo.clone().unwrap_or_default(),
    }
}

fn response(key: &ReturnKey, mutated: &Mutated<ReturnCase>) -> pb::ReturnResponse {
    pb::ReturnResponse {
        r#case: Some(proto_case(key, &mutated.reply)),
        replayed: mutated.replayed,
    }
}

impl ReturnsApi {
    pub fn new(runtime: Arc<EntityRuntime<ReturnEntity>>, policies: ReturnPolicies) -> Self {
        Self { runtime, policies }
    }

    async fn mutate(
        &self,
        mutation: Result<ReturnMutation, Error>,
        meta: RequestMeta,
    ) -> Result<pb::ReturnResponse, Error> {
        let mutation = mutation?;
        let key = mutation.key.clone();
        let mutated = self.runtime.mutate(mutation, meta).await?;
        Ok(response(&key, &mutated))
    }

    fn open(
        &self,
        message: pb::OpenReturnRequest,
        pre_approved: bool,
    ) -> Result<ReturnMutation, Error> {
        let tenant = message
            .header
            .as_ref()
            .and_then(|h| h.key.as_ref())
            .map(|k| k.tenant.clone())
            .unwrap_or_default();
        let policy = self.policies.resolve(&tenant, &message.channel);
        let order_lines = message
            .order_lines
            .into_iter()
            .map(|line| domain::OrderLine {
                line_id: line.line_id,
                sku: line.sku,
                quantity: line.quantity,
                amount_paid_minor: line.amount_paid_minor,
                fulfilled_at_ms: line.fulfilled_at_unix_ms,
                delivered_at_ms: line.delivered_at_unix_ms,
                location: line.location,
            })
            .collect();
        let lines = message
            .lines
            .into_iter()
            .map(|line| {
                Ok(domain::RequestedLine {
                    order_line_id: line.order_line_id,
                    quantity: line.quantity,
                    reason_code: line.reason_code,
                    resolution: resolution(line.resolution)?,
                    exchange_sku: (!line.exchange_sku.is_empty()).then_some(line.exchange_sku),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        if message.override_window && !pre_approved {
            return Err(Error::invalid(
                "override_window",
                "only CreateReturn (agent or API) may override the window",
            ));
        }
        mutation(
            message.header,
            ReturnCommand::Open {
                order_ref: message.order_ref,
                customer_ref: message.customer_ref,
                channel: message.channel,
                requester: if pre_approved {
                    Requester::Api
                } else {
                    Requester::Customer
                },
                order_lines,
                lines,
                pre_approved,
                override_window: message.override_window,
                policy,
            },
        )
    }
}

const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 500;
/// Summaries read at most for one ListReturns page (filters may skip many).
const MAX_SCANNED: usize = 20_000;

#[tonic::async_trait]
impl ReturnsService for ReturnsApi {
    async fn request_return(&self, request: Request<pb::OpenReturnRequest>) -> ReturnResult {
        rpc::serve("RequestReturn", request, |message, meta| async move {
            self.mutate(self.open(message, false), meta).await
        })
        .await
    }

    async fn create_return(&self, request: Request<pb::OpenReturnRequest>) -> ReturnResult {
        rpc::serve("CreateReturn", request, |message, meta| async move {
            self.mutate(self.open(message, true), meta).await
        })
        .await
    }

    async fn flag_for_review(&self, request: Request<pb::FlagForReviewRequest>) -> ReturnResult {
        rpc::serve("FlagForReview", request, |m, meta| async move {
            self.mutate(
                mutation(m.header, ReturnCommand::FlagForReview { reason: m.reason }),
                meta,
            )
            .await
        })
        .await
    }

    async fn approve_return(&self, request: Request<pb::ApproveReturnRequest>) -> ReturnResult {
        rpc::serve("ApproveReturn", request, |m, meta| async move {
            self.mutate(
                mutation(
                    m.header,
                    ReturnCommand::Approve {
                        approved_by: m.approved_by,
                    },
                ),
                meta,
            )
            .await
        })
        .await
    }

    async fn decline_return(&self, request: Request<pb::DeclineReturnRequest>) -> ReturnResult {
        rpc::serve("DeclineReturn", request, |m, meta| async move {
            let command = decline_reason(m.reason).map(|reason| ReturnCommand::Decline {
                reason,
                note: m.note,
            });
            self.mutate(command.and_then(|c| mutation(m.header, c)), meta)
                .await
        })
        .await
    }

    async fn attach_label(&self, request: Request<pb::AttachLabelRequest>) -> ReturnResult {
        rpc::serve("AttachLabel", request, |m, meta| async move {
            let label = Label {
                carrier: m.carrier,
                tracking_number: m.tracking_number,
                label_url: m.label_url,
            };
            self.mutate(
                mutation(m.header, ReturnCommand::AttachLabel { label }),
                meta,
            )
            .await
        })
        .await
    }

    async fn record_carrier_event(
        &self,
        request: Request<pb::RecordCarrierEventRequest>,
    ) -> ReturnResult {
        rpc::serve("RecordCarrierEvent", request, |m, meta| async move {
            let command = milestone(m.milestone).map(|milestone| ReturnCommand::CarrierMilestone {
                milestone,
                at_ms: m.at_unix_ms,
            });
            self.mutate(command.and_then(|c| mutation(m.header, c)), meta)
                .await
        })
        .await
    }

    async fn receive_items(&self, request: Request<pb::ReceiveItemsRequest>) -> ReturnResult {
        rpc::serve("ReceiveItems", request, |m, meta| async move {
            let command = ReturnCommand::Receive {
                lines: m
                    .lines
                    .into_iter()
                    .map(|l| ReceivedLine {
                        line_id: l.line_id,
                        quantity: l.quantity,
                        location: l.location,
                    })
                    .collect(),
                accept_surplus: m.accept_surplus,
            };
            self.mutate(mutation(m.header, command), meta).await
        })
        .await
    }

    async fn inspect_items(&self, request: Request<pb::InspectItemsRequest>) -> ReturnResult {
        rpc::serve("InspectItems", request, |m, meta| async move {
            let lines = m
                .lines
                .into_iter()
                .map(|l| {
                    Ok(InspectedLine {
                        line_id: l.line_id,
                        quantity: l.quantity,
                        grade: grade(l.grade)?,
                    })
                })
                .collect::<Result<Vec<_>, Error>>();
            let command = lines.map(|lines| ReturnCommand::Inspect { lines });
            self.mutate(command.and_then(|c| mutation(m.header, c)), meta)
                .await
        })
        .await
    }

    async fn dispose_items(&self, request: Request<pb::DisposeItemsRequest>) -> ReturnResult {
        rpc::serve("DisposeItems", request, |m, meta| async move {
            let command = disposition(m.disposition).map(|disposition| ReturnCommand::Dispose {
                line_id: m.line_id,
                quantity: m.quantity,
                disposition,
            });
            self.mutate(command.and_then(|c| mutation(m.header, c)), meta)
                .await
        })
        .await
    }

    async fn process_return(&self, request: Request<pb::ProcessReturnRequest>) -> ReturnResult {
        rpc::serve("ProcessReturn", request, |m, meta| async move {
            let command = refund_method(m.method).map(|method| ReturnCommand::Process { method });
            self.mutate(command.and_then(|c| mutation(m.header, c)), meta)
                .await
        })
        .await
    }

    async fn approve_refund(&self, request: Request<pb::ApproveRefundRequest>) -> ReturnResult {
        rpc::serve("ApproveRefund", request, |m, meta| async move {
            self.mutate(
                mutation(
                    m.header,
                    ReturnCommand::ApproveRefund {
                        approved_by: m.approved_by,
                    },
                ),
                meta,
            )
            .await
        })
        .await
    }

    async fn confirm_erp(&self, request: Request<pb::ConfirmErpRequest>) -> ReturnResult {
        rpc::serve("ConfirmErp", request, |m, meta| async move {
            self.mutate(
                mutation(
                    m.header,
                    ReturnCommand::ConfirmErp {
                        credit_memo: m.credit_memo,
                    },
                ),
                meta,
            )
            .await
        })
        .await
    }

    async fn close_return(&self, request: Request<pb::CloseReturnRequest>) -> ReturnResult {
        rpc::serve("CloseReturn", request, |m, meta| async move {
            self.mutate(mutation(m.header, ReturnCommand::Close), meta)
                .await
        })
        .await
    }

    async fn reopen_return(&self, request: Request<pb::ReopenReturnRequest>) -> ReturnResult {
        rpc::serve("ReopenReturn", request, |m, meta| async move {
            self.mutate(
                mutation(m.header, ReturnCommand::Reopen { reason: m.reason }),
                meta,
            )
            .await
        })
        .await
    }

    async fn cancel_return(&self, request: Request<pb::CancelReturnRequest>) -> ReturnResult {
        rpc::serve("CancelReturn", request, |m, meta| async move {
            self.mutate(
                mutation(m.header, ReturnCommand::Cancel { reason: m.reason }),
                meta,
            )
            .await
        })
        .await
    }

    async fn resolve_exception(
        &self,
        request: Request<pb::ResolveExceptionRequest>,
    ) -> ReturnResult {
        rpc::serve("ResolveException", request, |m, meta| async move {
            let command = ReturnCommand::ResolveException {
                exception_id: m.exception_id,
                resolved_by: m.resolved_by,
                note: m.note,
            };
            self.mutate(mutation(m.header, command), meta).await
        })
        .await
    }

    async fn get_return(&self, request: Request<pb::GetReturnRequest>) -> ReturnResult {
        rpc::serve("GetReturn", request, |m, meta| async move {
            let key = return_key(m.key)?;
            let case = self.runtime.read(&key, meta).await?;
            if case.state.is_none() {
                return Err(Error::Refused(Refusal::ReturnNotFound(
                    key.return_id.clone(),
                )));
            }
            let mut view = proto_case(&key, &case);
            if m.include_history {
                view.history = self
                    .runtime
                    .journal(&key)
                    .await?
                    .into_iter()
                    .map(|entry| pb::HistoryEntry {
                        version: entry.version,
                        recorded_at_unix_ms: entry.recorded_at_ms,
                        correlation_id: entry.correlation_id,
                        events: entry.events.iter().map(|e| e.name().to_owned()).collect(),
                    })
                    .collect();
            }
            Ok(pb::ReturnResponse {
                r#case: Some(view),
                replayed: false,
            })
        })
        .await
    }

    async fn list_returns(
        &self,
        request: Request<pb::ListReturnsRequest>,
    ) -> Result<Response<pb::ListReturnsResponse>, Status> {
        rpc::serve("ListReturns", request, |m, _meta| async move {
            skuld_actors::key::validate_tenant("tenant", &m.tenant)?;
            if !m.order_ref.is_empty() {
                skuld_actors::key::validate_token("order_ref", &m.order_ref)?;
            }
            let page_size = match usize::try_from(m.page_size).unwrap_or(MAX_PAGE_SIZE) {
                0 => DEFAULT_PAGE_SIZE,
                n if n > MAX_PAGE_SIZE => {
                    return Err(Error::invalid(
                        "page_size",
                        format!("at most {MAX_PAGE_SIZE}"),
                    ))
                }
                n => n,
            };
            let state_filter = match pb::ReturnState::try_from(m.state) {
                Ok(pb::ReturnState::Unspecified) => None,
                Ok(state) => Some(state),
                Err(_) => {
                    return Err(Error::invalid(
                        "state",
                        format!("unknown state {}", m.state),
                    ))
                }
            };
            let mut after = if m.page_token.is_empty() {
                None
            } else {
                Some(
                    ReturnKey::new(m.tenant.clone(), m.page_token.clone()).map_err(|_| {
                        Error::invalid("page_token", "is not a token this service issued")
                    })?,
                )
            };
            let scope = summary_scope(&m.tenant);
            let mut returns = Vec::new();
            let mut scanned = 0;
            let mut exhausted = false;
            while returns.len() < page_size && scanned < MAX_SCANNED {
                let rows = self
                    .runtime
                    .summaries(&scope, after.as_ref(), page_size * 4)
                    .await?;
                if rows.is_empty() {
                    exhausted = true;
                    break;
                }
                for (key, bytes) in rows {
                    scanned += 1;
                    after = Some(key.clone());
                    let summary = ReturnSummary::decode(&bytes)?;
                    let state = proto_state(summary.state);
                    let matches = state_filter.is_none_or(|wanted| wanted == state)
                        && (!m.with_open_exception || summary.open_exceptions > 0)
                        && (m.order_ref.is_empty() || m.order_ref == summary.order_ref);
                    if matches {
                        returns.push(pb::ReturnSummary {
                            key: Some(pb::ReturnKey {
                                tenant: key.tenant.clone(),
                                return_id: key.return_id.clone(),
                            }),
                            state: state.into(),
                            order_ref: summary.order_ref,
                            open_exceptions: summary.open_exceptions,
                            version: summary.version,
                        });
                        if returns.len() == page_size {
                            break;
                        }
                    }
                }
            }
            let next_page_token = match (&after, exhausted) {
                (Some(last), false) => last.return_id.clone(),
                _ => String::new(),
            };
            Ok(pb::ListReturnsResponse {
                returns,
                next_page_token,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_policy_wins() {
        let mut policies = BTreeMap::new();
        policies.insert(
            "default".to_owned(),
            ReturnPolicy {
                window_days: 30,
                ..ReturnPolicy::default()
            },
        );
        policies.insert(
            "acme".to_owned(),
            ReturnPolicy {
                window_days: 60,
                ..ReturnPolicy::default()
            },
        );
        policies.insert(
            "acme/marketplace".to_owned(),
            ReturnPolicy {
                window_days: 14,
                ..ReturnPolicy::default()
            },
        );
        let policies = ReturnPolicies(policies);
        assert_eq!(policies.resolve("acme", "marketplace").window_days, 14);
        assert_eq!(policies.resolve("acme", "web").window_days, 60);
        assert_eq!(policies.resolve("other", "web").window_days, 30);
        assert_eq!(
            ReturnPolicies::default().resolve("x", "y"),
            ReturnPolicy::default()
        );
    }

    #[test]
    fn enum_names_read_like_the_proto() {
        assert_eq!(
            screaming(domain::RefundGate::OnInspectionPass),
            "ON_INSPECTION_PASS"
        );
        assert_eq!(screaming(domain::Team::CustomerService), "CUSTOMER_SERVICE");
    }
}
