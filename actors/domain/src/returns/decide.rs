//! `decide` and `apply` for return cases.

use std::collections::BTreeSet;

use super::state::*;
use crate::key::validate_token;
use crate::position::MAX_QUANTITY;
use crate::Refusal;

/// Time and identity a decision is made under.
#[derive(Debug, Clone)]
pub struct ReturnContext {
    pub now_ms: i64,
    pub return_id: String,
}

const DAY_MS: i64 = 86_400_000;
/// Lines of one return at most.
pub const MAX_RETURN_LINES: usize = 200;
/// Largest amount paid for one order line, in minor units (10^15: ten
/// trillion in a currency of cents). With at most [`MAX_RETURN_LINES`]
/// lines, every total of a return fits an i64 many times over.
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;
/// Effect attempts after which an exception is raised (retries go on).
pub const EFFECT_ATTEMPTS_BEFORE_EXCEPTION: u32 = 5;

fn refuse(message: impl Into<String>) -> Refusal {
    Refusal::FailedPrecondition(message.into())
}

fn command_name(command: &ReturnCommand) -> &'static str {
    match command {
        ReturnCommand::Open { .. } => "Open",
        ReturnCommand::FlagForReview { .. } => "FlagForReview",
        ReturnCommand::Approve { .. } => "Approve",
        ReturnCommand::Decline { .. } => "Decline",
        ReturnCommand::AttachLabel { .. } => "AttachLabel",
        ReturnCommand::CarrierMilestone { .. } => "CarrierMilestone",
        ReturnCommand::Receive { .. } => "Receive",
        ReturnCommand::Inspect { .. } => "Inspect",
        ReturnCommand::Dispose { .. } => "Dispose",
        ReturnCommand::Process { .. } => "Process",
        ReturnCommand::ApproveRefund { .. } => "ApproveRefund",
        ReturnCommand::ConfirmErp { .. } => "ConfirmErp",
        ReturnCommand::Close => "Close",
        ReturnCommand::Reopen { .. } => "Reopen",
        ReturnCommand::Cancel { .. } => "Cancel",
        ReturnCommand::ResolveException { .. } => "ResolveException",
        ReturnCommand::CompleteEffect { .. } => "CompleteEffect",
        ReturnCommand::Tick => "Tick",
    }
}

/// The client commands a state accepts (exception resolution is always allowed).
pub fn allowed_commands(state: ReturnState) -> Vec<&'static str> {
    use ReturnState::*;
    let mut allowed = match state {
        Requested => vec!["FlagForReview", "Approve", "Decline", "Cancel"],
        InReview => vec!["Approve", "Decline", "Cancel"],
        Approved => vec![
            "AttachLabel",
            "CarrierMilestone",
            "Receive",
            "Dispose",
            "Process",
            "ApproveRefund",
            "ConfirmErp",
            "Cancel",
        ],
        InTransit => vec![
            "AttachLabel",
            "CarrierMilestone",
            "Receive",
            "Dispose",
            "Process",
            "ApproveRefund",
            "ConfirmErp",
            "Cancel",
        ],
        Received | Inspected => vec![
            "CarrierMilestone",
            "Receive",
            "Inspect",
            "Dispose",
            "Process",
            "ApproveRefund",
            "ConfirmErp",
        ],
        Processed => vec![
            "CarrierMilestone",
            "Receive",
            "Inspect",
            "Dispose",
            "Process",
            "ApproveRefund",
            "ConfirmErp",
            "Close",
        ],
        Closed => vec!["Reopen"],
        Declined | Canceled | Expired => vec![],
    };
    allowed.push("ResolveException");
    allowed
}

/// Units of a line a refund may cover now, before subtracting what was
/// already refunded: the policy's gate decides whether they must have been
/// received or passed inspection first.
pub fn refundable_quantity(line: &ReturnLine, policy: &ReturnPolicy) -> i64 {
    match line.resolution {
        Some(Resolution::Exchange) | None => 0,
        Some(Resolution::KeepItem) => line.approved - line.canceled,
        Some(Resolution::RefundOriginal | Resolution::StoreCredit) => match policy.refund_gate {
            RefundGate::OnReceipt => line.received,
            RefundGate::OnInspectionPass => line.inspected - line.unsellable,
            _ => line.approved - line.canceled - line.not_returned,
        },
    }
    .max(0)
}

fn gate_satisfied(case: &ReturnCase) -> bool {
    match case.policy.refund_gate {
        RefundGate::Immediate | RefundGate::OnReceipt | RefundGate::OnInspectionPass => true,
        RefundGate::OnLabelCreated => case.milestone(Milestone::LabelCreated).is_some(),
        RefundGate::OnFirstScan => case.milestone(Milestone::InTransit).is_some(),
        RefundGate::OnOutForDelivery => case.milestone(Milestone::OutForDelivery).is_some(),
        RefundGate::OnDelivered => case.milestone(Milestone::Delivered).is_some(),
        RefundGate::Manual => case.manual_refund_approved_by.is_some(),
        RefundGate::ErpValidation => case.erp_credit_memo.is_some(),
    }
}

struct Builder<'c> {
    case: ReturnCase,
    original: &'c ReturnCase,
    events: Vec<ReturnEvent>,
    now_ms: i64,
}

impl<'c> Builder<'c> {
    fn new(case: &'c ReturnCase, now_ms: i64) -> Self {
        Self {
            case: case.clone(),
            original: case,
            events: Vec::new(),
            now_ms,
        }
    }

    fn push(&mut self, event: ReturnEvent) {
        apply(&mut self.case, &event);
        self.events.push(event);
    }

    fn transition(&mut self, to: ReturnState) {
        if let Some(from) = self.case.state {
            if from != to {
                self.push(ReturnEvent::StateChanged { from, to });
            }
        }
    }

    fn effect(&mut self, kind: EffectKind) {
        let step = self.case.next_step;
        self.push(ReturnEvent::EffectScheduled {
            effect: Effect {
                step,
                kind,
                attempts: 0,
                last_error: String::new(),
                retry_at_ms: self.now_ms,
            },
        });
    }

    fn raise(&mut self, kind: ExceptionKind, note: String) {
        if self.case.has_open_exception(kind) {
            return;
        }
        let exception_id = u32::try_from(self.case.exceptions.len()).unwrap_or(u32::MAX) + 1;
        self.push(ReturnEvent::ExceptionRaised {
            exception: CaseException {
                exception_id,
                kind,
                owner: kind.owner(),
                raised_at_ms: self.now_ms,
                note,
                resolved_by: None,
                resolved_at_ms: None,
                resolution_note: String::new(),
            },
        });
    }

    fn release_exchange_holds(&mut self) {
        let holds: Vec<ExchangeHold> = self.case.exchanges.clone();
        for hold in holds {
            if matches!(hold.state, ExchangeState::Requested | ExchangeState::Held) {
                self.effect(EffectKind::ReleaseExchange {
                    sku: hold.sku.clone(),
                    location: hold.location.clone(),
                    reservation_id: hold.reservation_id.clone(),
                });
                self.push(ReturnEvent::ExchangeUpdated {
                    line_id: hold.line_id.clone(),
                    state: ExchangeState::Released,
                });
            }
        }
    }

    fn approve(&mut self) {
        let ship_by_ms = self.now_ms + i64::from(self.case.policy.ship_by_days) * DAY_MS;
        self.push(ReturnEvent::Approved {
            ship_by_ms,
            at_ms: self.now_ms,
        });
        self.transition(ReturnState::Approved);
        let holds: Vec<ExchangeHold> = self.case.exchanges.clone();
        for hold in holds {
            if hold.state == ExchangeState::Requested {
                self.effect(EffectKind::HoldExchange {
                    sku: hold.sku,
                    location: hold.location,
                    quantity: hold.quantity,
                    reservation_id: hold.reservation_id,
                });
            }
        }
    }

    /// Releases refunds waiting for a gate that is now satisfied.
    fn release_refunds(&mut self) {
        if !gate_satisfied(&self.case) {
            return;
        }
        let pending: Vec<String> = self
            .case
            .refunds
            .iter()
            .filter(|r| r.state == RefundState::PendingGate)
            .map(|r| r.refund_id.clone())
            .collect();
        for refund_id in pending {
            self.push(ReturnEvent::RefundReleased {
                refund_id,
                at_ms: self.now_ms,
            });
        }
    }

    fn finish(mut self) -> Vec<ReturnEvent> {
        if self
            .original
            .refunds
            .iter()
            .any(|r| r.state == RefundState::PendingGate)
            || self
                .case
                .refunds
                .iter()
                .any(|r| r.state == RefundState::PendingGate)
        {
            self.release_refunds();
        }
        self.events
    }
}

fn require_state(command: &ReturnCommand, state: ReturnState) -> Result<(), Refusal> {
    let name = command_name(command);
    let allowed = allowed_commands(state);
    if allowed.contains(&name) {
        Ok(())
    } else {
        Err(Refusal::IllegalTransition {
            command: name.into(),
            state,
            allowed: allowed.into_iter().map(Into::into).collect(),
        })
    }
}

fn line<'a>(case: &'a ReturnCase, line_id: &str) -> Result<&'a ReturnLine, Refusal> {
    case.lines.get(line_id).ok_or_else(|| {
        Refusal::invalid(
            "line_id",
            format!("{line_id:?} is not a line of this return"),
        )
    })
}

/// Client quantities are bounded like a position's, so every sum of them
/// (received + inspected + ..., per line) stays far from overflow.
fn positive(field: &'static str, value: i64) -> Result<(), Refusal> {
    if value <= 0 {
        return Err(Refusal::invalid(field, format!("must be > 0, got {value}")));
    }
    if value > MAX_QUANTITY {
        return Err(Refusal::invalid(
            field,
            format!("must be at most {MAX_QUANTITY}, got {value}"),
        ));
    }
    Ok(())
}

fn optional_token(field: &'static str, value: &str) -> Result<(), Refusal> {
    if value.is_empty() {
        Ok(())
    } else {
        validate_token(field, value)
    }
}

fn free_text(field: &'static str, value: &str) -> Result<(), Refusal> {
    if value.len() > 1_024 || value.chars().any(char::is_control) {
        return Err(Refusal::invalid(
            field,
            "at most 1024 bytes, no control characters",
        ));
    }
    Ok(())
}

/// Decides a command against a case. Never mutates.
pub fn decide(
    case: &ReturnCase,
    expected_version: Option<u64>,
    command: &ReturnCommand,
    context: &ReturnContext,
) -> Result<Vec<ReturnEvent>, Refusal> {
    if let Some(expected) = expected_version {
        if expected != case.version {
            return Err(Refusal::VersionMismatch {
                expected,
                current: case.version,
            });
        }
    }
    let now = context.now_ms;
    let Some(state) = case.state else {
        return match command {
            ReturnCommand::Open { .. } => open(case, command, context),
            ReturnCommand::Tick | ReturnCommand::CompleteEffect { .. } => Ok(Vec::new()),
            _ => Err(Refusal::ReturnNotFound(context.return_id.clone())),
        };
    };
    let mut b = Builder::new(case, now);
    match command {
        ReturnCommand::Open { .. } => return Err(Refusal::ReturnExists(context.return_id.clone())),
        ReturnCommand::Tick => tick(&mut b, state),
        ReturnCommand::CompleteEffect {
            step,
            outcome,
            error,
        } => complete_effect(&mut b, *step, *outcome, error),
        ReturnCommand::ResolveException {
            exception_id,
            resolved_by,
            note,
        } => {
            validate_token("resolved_by", resolved_by)?;
            free_text("note", note)?;
            let exception = case
                .exceptions
                .iter()
                .find(|e| e.exception_id == *exception_id)
                .ok_or(Refusal::ExceptionNotFound(*exception_id))?;
            if exception.resolved_at_ms.is_some() {
                return Err(refuse(format!(
                    "exception {exception_id} is already resolved"
                )));
            }
            b.push(ReturnEvent::ExceptionResolved {
                exception_id: *exception_id,
                resolved_by: resolved_by.clone(),
                note: note.clone(),
                at_ms: now,
            });
        }
        other => {
            require_state(other, state)?;
            client_command(&mut b, state, other, context)?;
        }
    }
    Ok(b.finish())
}

fn open(
    case: &ReturnCase,
    command: &ReturnCommand,
    context: &ReturnContext,
) -> Result<Vec<ReturnEvent>, Refusal> {
    let ReturnCommand::Open {
        order_ref,
        customer_ref,
        channel,
        requester,
        order_lines,
        lines,
        pre_approved,
        override_window,
        policy,
    } = command
    else {
        return Err(refuse("not an open command"));
    };
    validate_token("return_id", &context.return_id)?;
    validate_token("order_ref", order_ref)?;
    optional_token("customer_ref", customer_ref)?;
    optional_token("channel", channel)?;
    if order_lines.is_empty() || order_lines.len() > MAX_RETURN_LINES {
        return Err(Refusal::invalid(
            "order_lines",
            format!("1 to {MAX_RETURN_LINES} order lines required"),
        ));
    }
    if lines.is_empty() || lines.len() > MAX_RETURN_LINES {
        return Err(Refusal::invalid(
            "lines",
            format!("1 to {MAX_RETURN_LINES} lines required"),
        ));
    }
    let mut seen = BTreeSet::new();
    for order_line in order_lines {
        validate_token("order_lines.line_id", &order_line.line_id)?;
        validate_token("order_lines.sku", &order_line.sku)?;
        validate_token("order_lines.location", &order_line.location)?;
        positive("order_lines.quantity", order_line.quantity)?;
        if !(0..=MAX_AMOUNT_MINOR).contains(&order_line.amount_paid_minor) {
            return Err(Refusal::invalid(
                "order_lines.amount_paid_minor",
                format!(
                    "must be 0 to {MAX_AMOUNT_MINOR}, got {}",
                    order_line.amount_paid_minor
                ),
            ));
        }
        if !seen.insert(order_line.line_id.as_str()) {
            return Err(Refusal::invalid(
                "order_lines.line_id",
                format!("{:?} appears twice", order_line.line_id),
            ));
        }
    }
    let mut requested_lines = BTreeSet::new();
    let mut return_lines = Vec::with_capacity(lines.len());
    let mut exchanges = Vec::new();
    let mut value_minor: i64 = 0;
    for requested in lines {
        let order_line = order_lines
            .iter()
            .find(|l| l.line_id == requested.order_line_id)
            .ok_or_else(|| {
                Refusal::invalid(
                    "lines.order_line_id",
                    format!(
                        "{:?} is not a line of order {order_ref:?}",
                        requested.order_line_id
                    ),
                )
            })?;
        if !requested_lines.insert(requested.order_line_id.as_str()) {
            return Err(Refusal::invalid(
                "lines.order_line_id",
                format!("{:?} appears twice", requested.order_line_id),
            ));
        }
        positive("lines.quantity", requested.quantity)?;
        if requested.quantity > order_line.quantity {
            return Err(Refusal::invalid(
                "lines.quantity",
                format!(
                    "line {:?}: {} requested but {} bought",
                    order_line.line_id, requested.quantity, order_line.quantity
                ),
            ));
        }
        free_text("lines.reason_code", &requested.reason_code)?;
        if policy.final_sale_skus.contains(&order_line.sku) {
            return Err(refuse(format!(
                "sku {:?} is final sale and cannot be returned",
                order_line.sku
            )));
        }
        let window_start = match policy.window_start {
            WindowStart::Delivered => order_line.delivered_at_ms,
            WindowStart::Fulfilled => order_line.fulfilled_at_ms,
        };
        let window_end = window_start + i64::from(policy.window_days) * DAY_MS;
        let may_override = *override_window && *requester != Requester::Customer;
        if context.now_ms > window_end && !may_override {
            return Err(refuse(format!(
                "line {:?}: the {}-day return window ended at {window_end} ms",
                order_line.line_id, policy.window_days
            )));
        }
        if requested.resolution == Resolution::Exchange {
            let sku = requested.exchange_sku.as_deref().ok_or_else(|| {
                Refusal::invalid("lines.exchange_sku", "required for an exchange")
            })?;
            validate_token("lines.exchange_sku", sku)?;
            exchanges.push(ExchangeHold {
                line_id: order_line.line_id.clone(),
                sku: sku.to_owned(),
                location: order_line.location.clone(),
                quantity: requested.quantity,
                reservation_id: format!(
                    "return:{}:exchange:{}",
                    context.return_id, order_line.line_id
                ),
                state: ExchangeState::Requested,
            });
        }
        value_minor = value_minor.saturating_add(order_line.paid_for(requested.quantity));
        return_lines.push(ReturnLine {
            line_id: order_line.line_id.clone(),
            sku: order_line.sku.clone(),
            reason_code: requested.reason_code.clone(),
            resolution: Some(requested.resolution),
            requested: requested.quantity,
            receiving_location: order_line.location.clone(),
            ..ReturnLine::default()
        });
    }
    let mut b = Builder::new(case, context.now_ms);
    b.push(ReturnEvent::Opened {
        return_id: context.return_id.clone(),
        order_ref: order_ref.clone(),
        customer_ref: customer_ref.clone(),
        channel: channel.clone(),
        requester: *requester,
        order_lines: order_lines.clone(),
        lines: return_lines,
        exchanges,
        policy: policy.clone(),
        state: ReturnState::Requested,
        at_ms: context.now_ms,
    });
    if *pre_approved {
        b.approve();
    } else if policy
        .review_threshold_minor
        .is_some_and(|threshold| value_minor > threshold)
    {
        b.push(ReturnEvent::FlaggedForReview {
            reason: format!("value {value_minor} above the review threshold"),
        });
        b.transition(ReturnState::InReview);
    }
    Ok(b.finish())
}

fn client_command(
    b: &mut Builder<'_>,
    state: ReturnState,
    command: &ReturnCommand,
    context: &ReturnContext,
) -> Result<(), Refusal> {
    let now = context.now_ms;
    match command {
        ReturnCommand::FlagForReview { reason } => {
            free_text("reason", reason)?;
            b.push(ReturnEvent::FlaggedForReview {
                reason: reason.clone(),
            });
            b.transition(ReturnState::InReview);
        }
        ReturnCommand::Approve { approved_by } => {
            optional_token("approved_by", approved_by)?;
            b.approve();
        }
        ReturnCommand::Decline { reason, note } => {
            free_text("note", note)?;
            b.push(ReturnEvent::Declined {
                reason: *reason,
                note: note.clone(),
            });
            b.transition(ReturnState::Declined);
            b.release_exchange_holds();
        }
        ReturnCommand::AttachLabel { label } => {
            optional_token("label.carrier", &label.carrier)?;
            validate_token("label.tracking_number", &label.tracking_number)?;
            free_text("label.label_url", &label.label_url)?;
            b.push(ReturnEvent::LabelAttached {
                label: label.clone(),
                at_ms: now,
            });
            if b.case.milestone(Milestone::LabelCreated).is_none() {
                b.push(ReturnEvent::MilestoneReached {
                    milestone: Milestone::LabelCreated,
                    at_ms: now,
                });
            }
        }
        ReturnCommand::CarrierMilestone { milestone, at_ms } => {
            if *milestone == Milestone::LabelCreated {
                return Err(Refusal::invalid(
                    "milestone",
                    "a label is created with AttachLabel",
                ));
            }
            let at_ms = if *at_ms == 0 { now } else { *at_ms };
            // Any carrier scan means the parcel is moving.
            let implied: &[Milestone] = match milestone {
                Milestone::InTransit => &[Milestone::InTransit],
                Milestone::OutForDelivery => &[Milestone::InTransit, Milestone::OutForDelivery],
                _ => &[
                    Milestone::InTransit,
                    Milestone::OutForDelivery,
                    Milestone::Delivered,
                ],
            };
            for reached in implied {
                if b.case.milestone(*reached).is_none() {
                    b.push(ReturnEvent::MilestoneReached {
                        milestone: *reached,
                        at_ms,
                    });
                }
            }
            if state == ReturnState::Approved {
                b.transition(ReturnState::InTransit);
            }
        }
        ReturnCommand::Receive {
            lines,
            accept_surplus,
        } => {
            if lines.is_empty() {
                return Err(Refusal::invalid("lines", "name at least one line"));
            }
            for received in lines {
                positive("lines.quantity", received.quantity)?;
                optional_token("lines.location", &received.location)?;
                let line = line(&b.case, &received.line_id)?.clone();
                let location = if received.location.is_empty() {
                    line.receiving_location.clone()
                } else {
                    received.location.clone()
                };
                if line.received > 0 && location != line.receiving_location {
                    return Err(refuse(format!(
                        "line {:?} is being received at {:?}, not {location:?}",
                        line.line_id, line.receiving_location
                    )));
                }
                let remaining = line.approved - line.received - line.canceled - line.not_returned;
                let mut quantity = received.quantity;
                if quantity > remaining {
                    if !*accept_surplus {
                        return Err(refuse(format!(
                            "line {:?}: {} of {} approved units already received or settled; cannot receive {quantity} more (set accept_surplus to record the surplus as an exception)",
                            line.line_id,
                            line.approved - remaining,
                            line.approved
                        )));
                    }
                    b.raise(
                        ExceptionKind::ReceivedMoreThanApproved,
                        format!(
                            "line {:?}: {quantity} units arrived, {remaining} expected",
                            line.line_id
                        ),
                    );
                    quantity = remaining;
                }
                if quantity > 0 {
                    b.push(ReturnEvent::ItemsReceived {
                        line_id: line.line_id.clone(),
                        quantity,
                        location: location.clone(),
                    });
                    b.effect(EffectKind::ReceiveIntoInspection {
                        sku: line.sku.clone(),
                        location,
                        quantity,
                    });
                }
            }
            if matches!(
                state,
                ReturnState::Approved | ReturnState::InTransit | ReturnState::Inspected
            ) && b.case.lines.values().any(|l| l.received > 0)
            {
                b.transition(ReturnState::Received);
            }
        }
        ReturnCommand::Inspect { lines } => {
            if lines.is_empty() {
                return Err(Refusal::invalid("lines", "name at least one line"));
            }
            for inspected in lines {
                positive("lines.quantity", inspected.quantity)?;
                let line = line(&b.case, &inspected.line_id)?.clone();
                if inspected.quantity > line.received - line.inspected {
                    return Err(refuse(format!(
                        "line {:?}: {} received, {} already inspected; cannot inspect {}",
                        line.line_id, line.received, line.inspected, inspected.quantity
                    )));
                }
                b.push(ReturnEvent::ItemsInspected {
                    line_id: line.line_id.clone(),
                    quantity: inspected.quantity,
                    grade: inspected.grade,
                });
                if inspected.grade == Grade::Unsellable {
                    b.raise(
                        ExceptionKind::DamagedOnArrival,
                        format!(
                            "line {:?}: {} units unsellable",
                            line.line_id, inspected.quantity
                        ),
                    );
                }
            }
            let all_inspected = b.case.lines.values().all(|l| l.inspected == l.received);
            if all_inspected && state == ReturnState::Received {
                b.transition(ReturnState::Inspected);
            }
        }
        ReturnCommand::Dispose {
            line_id,
            quantity,
            disposition,
        } => {
            positive("quantity", *quantity)?;
            let line = line(&b.case, line_id)?.clone();
            let limit = match disposition {
                Disposition::Missing | Disposition::KeepItem => {
                    line.approved - line.received - line.canceled - line.not_returned
                }
                Disposition::RestockAfterProcessing => {
                    line.received - line.disposed - line.awaiting_processing
                }
                _ => line.received - line.disposed,
            };
            if *quantity > limit {
                return Err(refuse(format!(
                    "line {line_id:?}: only {limit} units can take the disposition {disposition:?}, not {quantity}"
                )));
            }
            b.push(ReturnEvent::ItemsDisposed {
                line_id: line_id.clone(),
                quantity: *quantity,
                disposition: *disposition,
            });
            if matches!(
                disposition,
                Disposition::Restock
                    | Disposition::DamagedHold
                    | Disposition::Scrap
                    | Disposition::ReturnToVendor
            ) {
                b.effect(EffectKind::Dispose {
                    sku: line.sku.clone(),
                    location: line.receiving_location.clone(),
                    quantity: *quantity,
                    disposition: *disposition,
                });
            }
        }
        ReturnCommand::Process { method } => process(b, state, *method, context)?,
        ReturnCommand::ApproveRefund { approved_by } => {
            validate_token("approved_by", approved_by)?;
            if b.case.manual_refund_approved_by.is_none() {
                b.push(ReturnEvent::RefundManuallyApproved {
                    approved_by: approved_by.clone(),
                });
            }
        }
        ReturnCommand::ConfirmErp { credit_memo } => {
            validate_token("credit_memo", credit_memo)?;
            if b.case.erp_credit_memo.is_none() {
                b.push(ReturnEvent::ErpConfirmed {
                    credit_memo: credit_memo.clone(),
                });
                let overdue: Vec<u32> = b
                    .case
                    .open_exceptions()
                    .filter(|e| e.kind == ExceptionKind::ErpConfirmationOverdue)
                    .map(|e| e.exception_id)
                    .collect();
                for exception_id in overdue {
                    b.push(ReturnEvent::ExceptionResolved {
                        exception_id,
                        resolved_by: "erp".into(),
                        note: format!("credit memo {credit_memo} confirmed"),
                        at_ms: now,
                    });
                }
            }
        }
        ReturnCommand::Close => {
            if b.case
                .refunds
                .iter()
                .any(|r| r.state == RefundState::PendingGate)
            {
                return Err(refuse("a refund is still waiting for its gate"));
            }
            if !b.case.pending_effects.is_empty() {
                return Err(refuse("inventory steps are still in progress"));
            }
            b.push(ReturnEvent::Closed { at_ms: now });
            b.transition(ReturnState::Closed);
        }
        ReturnCommand::Reopen { reason } => {
            validate_token("reason", reason)?;
            let to = b
                .case
                .state_before_processing
                .unwrap_or(ReturnState::Received);
            b.push(ReturnEvent::Reopened {
                to,
                reason: reason.clone(),
            });
            b.transition(to);
        }
        ReturnCommand::Cancel { reason } => {
            free_text("reason", reason)?;
            let work_done = b
                .case
                .lines
                .values()
                .any(|l| l.received > 0 || l.inspected > 0 || l.disposed > 0)
                || !b.case.refunds.is_empty();
            if work_done {
                return Err(refuse(
                    "a return can be canceled only before any receipt, inspection or refund",
                ));
            }
            b.push(ReturnEvent::Canceled {
                reason: reason.clone(),
            });
            b.transition(ReturnState::Canceled);
            b.release_exchange_holds();
        }
        ReturnCommand::Open { .. }
        | ReturnCommand::ResolveException { .. }
        | ReturnCommand::CompleteEffect { .. }
        | ReturnCommand::Tick => {}
    }
    Ok(())
}

fn process(
    b: &mut Builder<'_>,
    state: ReturnState,
    method: RefundMethod,
    context: &ReturnContext,
) -> Result<(), Refusal> {
    let policy = b.case.policy.clone();
    let mut refund_lines = Vec::new();
    for line in b.case.lines.values() {
        let quantity = refundable_quantity(line, &policy) - line.refunded_quantity;
        if quantity <= 0 {
            continue;
        }
        let Some(order_line) = b.case.order_lines.get(&line.line_id) else {
            continue;
        };
        // Never above what was paid for the line: price the units refunded
        // so far plus these, and take the difference.
        let paid_through = order_line.paid_for(line.refunded_quantity + quantity);
        let gross_minor = (paid_through - line.refunded_minor).max(0);
        refund_lines.push(RefundLine {
            line_id: line.line_id.clone(),
            quantity,
            gross_minor,
        });
    }
    let exchanges_to_confirm: Vec<ExchangeHold> = b
        .case
        .exchanges
        .iter()
        .filter(|h| h.state == ExchangeState::Held)
        .cloned()
        .collect();
    if refund_lines.is_empty() && exchanges_to_confirm.is_empty() {
        return Err(refuse(format!(
            "nothing to process yet under the {:?} refund gate",
            policy.refund_gate
        )));
    }
    if !refund_lines.is_empty() {
        // Checked: each line's gross is at most what was paid for it, but a
        // total over lines is still a sum, and fees come from configuration.
        let gross = refund_lines
            .iter()
            .try_fold(0i64, |total, line| total.checked_add(line.gross_minor))
            .ok_or_else(|| refuse("the refund total does not fit an amount"))?;
        let restocking_fee_minor =
            i64::try_from(i128::from(gross) * i128::from(policy.restocking_fee_bps) / 10_000)
                .unwrap_or(gross);
        let shipping_fee_minor = if b.case.refunds.is_empty() {
            policy.return_shipping_fee_minor.max(0)
        } else {
            0
        };
        let fees = restocking_fee_minor
            .saturating_add(shipping_fee_minor)
            .min(gross);
        let refund = Refund {
            refund_id: format!("{}-refund-{}", context.return_id, b.case.refunds.len() + 1),
            method,
            lines: refund_lines,
            restocking_fee_minor: restocking_fee_minor.min(gross),
            shipping_fee_minor: (fees - restocking_fee_minor.min(gross)).max(0),
            total_minor: gross - fees,
            state: RefundState::PendingGate,
            decided_at_ms: context.now_ms,
            released_at_ms: None,
        };
        b.push(ReturnEvent::RefundDecided { refund });
    }
    for hold in exchanges_to_confirm {
        b.effect(EffectKind::ConfirmExchange {
            sku: hold.sku.clone(),
            location: hold.location.clone(),
            reservation_id: hold.reservation_id.clone(),
            order_ref: format!("return:{}:exchange", context.return_id),
        });
        b.push(ReturnEvent::ExchangeUpdated {
            line_id: hold.line_id.clone(),
            state: ExchangeState::Confirmed,
        });
    }
    if state != ReturnState::Processed {
        b.transition(ReturnState::Processed);
    }
    b.release_refunds();
    Ok(())
}

fn tick(b: &mut Builder<'_>, state: ReturnState) {
    let now = b.now_ms;
    if state == ReturnState::Approved
        && b.case.milestone(Milestone::InTransit).is_none()
        && b.case.ship_by_ms.is_some_and(|ship_by| ship_by <= now)
    {
        b.push(ReturnEvent::Expired { at_ms: now });
        b.transition(ReturnState::Expired);
        b.release_exchange_holds();
        return;
    }
    if let Some(delivered) = b.case.milestone(Milestone::Delivered) {
        let overdue_at = delivered + i64::from(b.case.policy.receipt_overdue_hours) * 3_600_000;
        if b.case.lines.values().all(|l| l.received == 0)
            && now >= overdue_at
            && !state.is_terminal()
        {
            b.raise(
                ExceptionKind::ReceiptOverdue,
                format!("delivered at {delivered} ms and not received"),
            );
        }
    }
    if b.case.policy.refund_gate == RefundGate::ErpValidation && b.case.erp_credit_memo.is_none() {
        if let Some(processed) = b.case.processed_at_ms {
            let overdue_at = processed + i64::from(b.case.policy.erp_overdue_hours) * 3_600_000;
            if now >= overdue_at {
                b.raise(
                    ExceptionKind::ErpConfirmationOverdue,
                    format!("processed at {processed} ms; no credit memo confirmed"),
                );
            }
        }
    }
}

/// Backoff of a failing effect: 1 s doubling to at most 5 minutes.
fn retry_delay_ms(attempts: u32) -> i64 {
    (1_000i64 << attempts.min(9)).min(300_000)
}

fn complete_effect(b: &mut Builder<'_>, step: u32, outcome: EffectOutcome, error: &str) {
    let Some(effect) = b.case.pending_effects.get(&step).cloned() else {
        // Already completed: a repeated report changes nothing.
        return;
    };
    match outcome {
        EffectOutcome::Retry => {
            let attempts = effect.attempts + 1;
            b.push(ReturnEvent::EffectFailed {
                step,
                error: error.to_owned(),
                retry_at_ms: b.now_ms + retry_delay_ms(attempts),
            });
            if attempts >= EFFECT_ATTEMPTS_BEFORE_EXCEPTION {
                b.raise(
                    ExceptionKind::EffectFailing,
                    format!("inventory step {step} failed {attempts} times: {error}"),
                );
            }
        }
        EffectOutcome::Applied | EffectOutcome::Refused => {
            b.push(ReturnEvent::EffectCompleted { step, outcome });
            match (&effect.kind, outcome) {
                (EffectKind::HoldExchange { .. }, _) => {
                    if let Some(hold) = b.case.exchanges.iter().find(|h| {
                        matches!(&effect.kind, EffectKind::HoldExchange { reservation_id, .. } if *reservation_id == h.reservation_id)
                    }) {
                        // A hold released or confirmed meanwhile keeps that state.
                        if hold.state == ExchangeState::Requested {
                            let state = if outcome == EffectOutcome::Applied {
                                ExchangeState::Held
                            } else {
                                ExchangeState::OutOfStock
                            };
                            let line_id = hold.line_id.clone();
                            b.push(ReturnEvent::ExchangeUpdated { line_id, state });
                        }
                    }
                }
                (_, EffectOutcome::Refused) => {
                    b.raise(
                        ExceptionKind::EffectFailing,
                        format!("inventory step {step} was refused: {error}"),
                    );
                }
                _ => {}
            }
        }
    }
}

/// Folds one event into the case.
pub fn apply(case: &mut ReturnCase, event: &ReturnEvent) {
    match event {
        ReturnEvent::Opened {
            return_id,
            order_ref,
            customer_ref,
            channel,
            requester,
            order_lines,
            lines,
            exchanges,
            policy,
            state,
            at_ms,
        } => {
            case.return_id = return_id.clone();
            case.order_ref = order_ref.clone();
            case.customer_ref = customer_ref.clone();
            case.channel = channel.clone();
            case.requester = Some(*requester);
            case.order_lines = order_lines
                .iter()
                .map(|l| (l.line_id.clone(), l.clone()))
                .collect();
            case.lines = lines
                .iter()
                .map(|l| (l.line_id.clone(), l.clone()))
                .collect();
            case.exchanges = exchanges.clone();
            case.policy = policy.clone();
            case.state = Some(*state);
            case.opened_at_ms = *at_ms;
        }
        ReturnEvent::FlaggedForReview { .. } | ReturnEvent::LabelAttached { .. } => {
            if let ReturnEvent::LabelAttached { label, .. } = event {
                case.label = Some(label.clone());
            }
        }
        ReturnEvent::Approved { ship_by_ms, .. } => {
            case.ship_by_ms = Some(*ship_by_ms);
            for line in case.lines.values_mut() {
                line.approved = line.requested;
            }
        }
        ReturnEvent::Declined { reason, note } => {
            case.decline_reason = Some(format!("{reason:?}: {note}"));
        }
        ReturnEvent::MilestoneReached { milestone, at_ms } => {
            case.milestones
                .insert(milestone_name(*milestone).to_owned(), *at_ms);
        }
        ReturnEvent::ItemsReceived {
            line_id,
            quantity,
            location,
        } => {
            if let Some(line) = case.lines.get_mut(line_id) {
                line.received += quantity;
                line.receiving_location = location.clone();
            }
        }
        ReturnEvent::ItemsInspected {
            line_id,
            quantity,
            grade,
        } => {
            if let Some(line) = case.lines.get_mut(line_id) {
                line.inspected += quantity;
                if *grade == Grade::Unsellable {
                    line.unsellable += quantity;
                }
            }
        }
        ReturnEvent::ItemsDisposed {
            line_id,
            quantity,
            disposition,
        } => {
            if let Some(line) = case.lines.get_mut(line_id) {
                match disposition {
                    Disposition::Missing | Disposition::KeepItem => line.not_returned += quantity,
                    Disposition::RestockAfterProcessing => line.awaiting_processing += quantity,
                    _ => {
                        // Parked units are disposed of first.
                        let from_parked = (*quantity).min(line.awaiting_processing);
                        line.awaiting_processing -= from_parked;
                        line.disposed += quantity;
                    }
                }
            }
        }
        ReturnEvent::StateChanged { from, to } => {
            if *to == ReturnState::Processed && *from != ReturnState::Processed {
                case.state_before_processing = Some(*from);
            }
            case.state = Some(*to);
        }
        ReturnEvent::RefundDecided { refund } => {
            for refund_line in &refund.lines {
                if let Some(line) = case.lines.get_mut(&refund_line.line_id) {
                    line.refunded_quantity += refund_line.quantity;
                    line.refunded_minor += refund_line.gross_minor;
                }
            }
            case.processed_at_ms = Some(refund.decided_at_ms);
            case.refunds.push(refund.clone());
        }
        ReturnEvent::RefundReleased { refund_id, at_ms } => {
            if let Some(refund) = case.refunds.iter_mut().find(|r| r.refund_id == *refund_id) {
                refund.state = RefundState::Released;
                refund.released_at_ms = Some(*at_ms);
            }
        }
        ReturnEvent::RefundManuallyApproved { approved_by } => {
            case.manual_refund_approved_by = Some(approved_by.clone());
        }
        ReturnEvent::ErpConfirmed { credit_memo } => {
            case.erp_credit_memo = Some(credit_memo.clone())
        }
        ReturnEvent::Closed { at_ms } => case.closed_at_ms = Some(*at_ms),
        ReturnEvent::Reopened { .. } => case.closed_at_ms = None,
        ReturnEvent::Canceled { .. } | ReturnEvent::Expired { .. } => {}
        ReturnEvent::ExceptionRaised { exception } => case.exceptions.push(exception.clone()),
        ReturnEvent::ExceptionResolved {
            exception_id,
            resolved_by,
            note,
            at_ms,
        } => {
            if let Some(exception) = case
                .exceptions
                .iter_mut()
                .find(|e| e.exception_id == *exception_id)
            {
                exception.resolved_by = Some(resolved_by.clone());
                exception.resolved_at_ms = Some(*at_ms);
                exception.resolution_note = note.clone();
            }
        }
        ReturnEvent::ExchangeUpdated { line_id, state } => {
            if let Some(hold) = case.exchanges.iter_mut().find(|h| h.line_id == *line_id) {
                hold.state = *state;
            }
        }
        ReturnEvent::EffectScheduled { effect } => {
            case.next_step = effect.step + 1;
            case.pending_effects.insert(effect.step, effect.clone());
        }
        ReturnEvent::EffectCompleted { step, .. } => {
            case.pending_effects.remove(step);
        }
        ReturnEvent::EffectFailed {
            step,
            error,
            retry_at_ms,
        } => {
            if let Some(effect) = case.pending_effects.get_mut(step) {
                effect.attempts += 1;
                effect.last_error = error.clone();
                effect.retry_at_ms = *retry_at_ms;
            }
        }
    }
}

/// Applies a journal entry: its events, then its version.
pub fn apply_entry(case: &mut ReturnCase, entry: &ReturnEntry) {
    for event in &entry.events {
        apply(case, event);
    }
    case.version = entry.version;
}
