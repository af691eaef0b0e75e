//! `skuld returns ...`: one subcommand per `ReturnsService` RPC.

use clap::{Args, Subcommand, ValueEnum};
use skuld_proto::v1 as pb;
use skuld_proto::v1::returns_service_client::ReturnsServiceClient;
use tonic::transport::Channel;

use super::{
    emit, fail, format_fields, format_table, format_unix_ms, print_json, Align, CallContext,
    IdempotencyKey,
};

#[derive(Subcommand, Debug)]
pub enum ReturnsCommand {
    /// A customer's return request (REQUESTED, or IN_REVIEW by policy).
    Request(OpenArgs),
    /// An agent's or API's pre-approved return (APPROVED).
    Create(OpenArgs),
    /// Send a requested return to review.
    Flag(NoteArgs),
    /// Approve a requested or reviewed return (places exchange holds).
    Approve(ByArgs),
    /// Decline a requested or reviewed return (releases exchange holds).
    Decline(DeclineArgs),
    /// Attach a return label and tracking number.
    Label(LabelArgs),
    /// Record a carrier milestone: in transit, out for delivery, delivered.
    Carrier(CarrierArgs),
    /// Receive units at the warehouse or store (into quality_control).
    Receive(ReceiveArgs),
    /// Grade received units.
    Inspect(InspectArgs),
    /// Give received units a disposition (restock, damaged hold, scrap, ...).
    Dispose(DisposeArgs),
    /// Decide the refund or store credit, and confirm exchanges.
    Process(ProcessArgs),
    /// Release refunds held by the MANUAL gate.
    ApproveRefund(ByArgs),
    /// Confirm finance's credit memo (ERP_VALIDATION gate).
    ConfirmErp(ErpArgs),
    /// Close a processed return.
    Close(CaseArgs),
    /// Reopen a closed return.
    Reopen(NoteArgs),
    /// Cancel a return before any receipt, inspection or refund.
    Cancel(NoteArgs),
    /// Resolve an exception raised on a return.
    ResolveException(ResolveArgs),
    /// Show a return (with `--history`, its events).
    Get(GetArgs),
    /// List a tenant's returns, by state, open exception or order.
    List(ListArgs),
}

/// Names one return case, and the mutation guards.
#[derive(Args, Debug, Clone)]
pub struct CaseArgs {
    #[arg(long, env = "SKULD_TENANT", default_value = "default")]
    pub tenant: String,
    #[arg(long)]
    pub return_id: String,
    /// Idempotency key; a UUID v4 is generated (and printed) when absent.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[arg(long)]
    pub expected_version: Option<u64>,
}

impl ReturnsCommand {
    /// The return case a command acts on, to send it to the case's owner;
    /// `None` for a list.
    pub(super) fn key(&self) -> Option<pb::ReturnKey> {
        use ReturnsCommand as C;
        let case = match self {
            C::Request(args) | C::Create(args) => &args.case,
            C::Flag(args) | C::Reopen(args) | C::Cancel(args) => &args.case,
            C::Approve(args) | C::ApproveRefund(args) => &args.case,
            C::Decline(args) => &args.case,
            C::Label(args) => &args.case,
            C::Carrier(args) => &args.case,
            C::Receive(args) => &args.case,
            C::Inspect(args) => &args.case,
            C::Dispose(args) => &args.case,
            C::Process(args) => &args.case,
            C::ConfirmErp(args) => &args.case,
            C::Close(args) => args,
            C::ResolveException(args) => &args.case,
            C::Get(args) => {
                return Some(pb::ReturnKey {
                    tenant: args.tenant.clone(),
                    return_id: args.return_id.clone(),
                })
            }
            C::List(_) => return None,
        };
        Some(case.key())
    }
}

impl CaseArgs {
    fn key(&self) -> pb::ReturnKey {
        pb::ReturnKey {
            tenant: self.tenant.clone(),
            return_id: self.return_id.clone(),
        }
    }

    fn header(&self) -> (Option<pb::ReturnHeader>, IdempotencyKey) {
        let key = IdempotencyKey::from_flag(self.idempotency_key.as_deref());
        let header = pb::ReturnHeader {
            key: Some(self.key()),
            idempotency_key: key.value.clone(),
            expected_version: self.expected_version,
        };
        (Some(header), key)
    }
}

#[derive(Args, Debug)]
pub struct OpenArgs {
    #[command(flatten)]
    pub case: CaseArgs,
    #[arg(long)]
    pub order_ref: String,
    #[arg(long, default_value = "")]
    pub customer_ref: String,
    /// Selects the channel's return policy.
    #[arg(long, default_value = "")]
    pub channel: String,
    /// An order line: LINE_ID:SKU:QTY_BOUGHT:PAID_MINOR:LOCATION[:DELIVERED_AT_MS]
    /// (delivered now when omitted). Repeat for each line.
    #[arg(long = "order-line", required = true)]
    pub order_lines: Vec<String>,
    /// A returned line: LINE_ID:QTY:RESOLUTION[:EXCHANGE_SKU], resolution one
    /// of refund, store-credit, exchange, keep. Repeat for each line.
    #[arg(long = "line", required = true)]
    pub lines: Vec<String>,
    #[arg(long, default_value = "")]
    pub reason: String,
    /// `create` only: accept the return outside the window.
    #[arg(long)]
    pub override_window: bool,
}

#[derive(Args, Debug)]
pub struct NoteArgs {
    #[command(flatten)]
    pub case: CaseArgs,
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Args, Debug)]
pub struct ByArgs {
    #[command(flatten)]
    pub case: CaseArgs,
    /// Who approves.
    #[arg(long, default_value = "cli")]
    pub by: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DeclineReasonArg {
    WindowEnded,
    FinalSale,
    Policy,
    Fraud,
    Other,
}

#[derive(Args, Debug)]
pub struct DeclineArgs {
    #[command(flatten)]
    pub case: CaseArgs,
    #[arg(long, value_enum, default_value = "other")]
    pub reason: DeclineReasonArg,
    #[arg(long, default_value = "")]
    pub note: String,
}

#[derive(Args, Debug)]
pub struct LabelArgs {
    #[command(flatten)]
    pub case: CaseArgs,
    #[arg(long, default_value = "")]
    pub carrier: String,
    #[arg(long)]
    pub tracking: String,
    #[arg(long, default_value = "")]
    pub label_url: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MilestoneArg {
    InTransit,
    OutForDelivery,
    Delivered,
}

#[derive(Args, Debug)]
pub struct CarrierArgs {
    #[command(flatten)]
    pub case: CaseArgs,
    #[arg(long, value_enum)]
    pub milestone: MilestoneArg,
    /// When the carrier saw it (unix ms); now when omitted.
    #[arg(long, default_value_t = 0)]
    pub at_ms: i64,
}

#[derive(Args, Debug)]
pub struct ReceiveArgs {
    #[command(flatten)]
    pub case: CaseArgs,
    /// LINE_ID:QTY[:LOCATION]; repeat for each line.
    #[arg(long = "line", required = true)]
    pub lines: Vec<String>,
    /// Record units beyond the approved quantity as an exception.
    #[arg(long)]
    pub accept_surplus: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub case: CaseArgs,
    /// LINE_ID:QTY:GRADE (a, b, c, unsellable); repeat for each line.
    #[arg(long = "line", required = true)]
    pub lines: Vec<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DispositionArg {
    Restock,
    RestockAfterProcessing,
    DamagedHold,
    Scrap,
    ReturnToVendor,
    Missing,
    KeepItem,
}

#[derive(Args, Debug)]
pub struct DisposeArgs {
    #[command(flatten)]
    pub case: CaseArgs,
    #[arg(long)]
    pub line_id: String,
    #[arg(long)]
    pub quantity: i64,
    #[arg(long, value_enum)]
    pub disposition: DispositionArg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MethodArg {
    OriginalPayment,
    StoreCredit,
}

#[derive(Args, Debug)]
pub struct ProcessArgs {
    #[command(flatten)]
    pub case: CaseArgs,
    #[arg(long, value_enum, default_value = "original-payment")]
    pub method: MethodArg,
}

#[derive(Args, Debug)]
pub struct ErpArgs {
    #[command(flatten)]
    pub case: CaseArgs,
    #[arg(long)]
    pub credit_memo: String,
}

#[derive(Args, Debug)]
pub struct ResolveArgs {
    #[command(flatten)]
    pub case: CaseArgs,
    #[arg(long)]
    pub exception_id: u32,
    #[arg(long)]
    pub by: String,
    #[arg(long, default_value = "")]
    pub note: String,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    #[arg(long, env = "SKULD_TENANT", default_value = "default")]
    pub tenant: String,
    #[arg(long)]
    pub return_id: String,
    /// Include the case's history (its events).
    #[arg(long)]
    pub history: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StateArg {
    Requested,
    InReview,
    Approved,
    InTransit,
    Received,
    Inspected,
    Processed,
    Declined,
    Canceled,
    Expired,
    Closed,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(long, env = "SKULD_TENANT", default_value = "default")]
    pub tenant: String,
    #[arg(long, value_enum)]
    pub state: Option<StateArg>,
    /// Only returns with an open exception.
    #[arg(long)]
    pub with_exception: bool,
    #[arg(long, default_value = "")]
    pub order_ref: String,
    #[arg(long, default_value_t = 50)]
    pub page_size: u32,
    #[arg(long, default_value = "")]
    pub page_token: String,
}

fn field<'a>(
    spec: &'a str,
    parts: &[&'a str],
    index: usize,
    name: &str,
) -> anyhow::Result<&'a str> {
    parts
        .get(index)
        .copied()
        .filter(|part| !part.is_empty())
        .ok_or_else(|| fail(format!("{spec:?}: missing {name}")))
}

fn number(spec: &str, value: &str, name: &str) -> anyhow::Result<i64> {
    value
        .parse()
        .map_err(|_| fail(format!("{spec:?}: {name} {value:?} is not a whole number")))
}

fn order_line(spec: &str, now_ms: i64) -> anyhow::Result<pb::OrderLine> {
    let parts: Vec<&str> = spec.split(':').collect();
    let delivered = match parts.get(5) {
        Some(value) => number(spec, value, "delivered_at_ms")?,
        None => now_ms,
    };
    Ok(pb::OrderLine {
        line_id: field(spec, &parts, 0, "line id")?.to_owned(),
        sku: field(spec, &parts, 1, "sku")?.to_owned(),
        quantity: number(spec, field(spec, &parts, 2, "quantity")?, "quantity")?,
        amount_paid_minor: number(spec, field(spec, &parts, 3, "amount paid")?, "amount paid")?,
        fulfilled_at_unix_ms: delivered,
        delivered_at_unix_ms: delivered,
        location: field(spec, &parts, 4, "location")?.to_owned(),
    })
}

fn requested_line(spec: &str, reason: &str) -> anyhow::Result<pb::RequestedLine> {
    let parts: Vec<&str> = spec.split(':').collect();
    let resolution = match field(spec, &parts, 2, "resolution")? {
        "refund" => pb::Resolution::RefundOriginal,
        "store-credit" => pb::Resolution::StoreCredit,
        "exchange" => pb::Resolution::Exchange,
        "keep" => pb::Resolution::KeepItem,
        other => {
            return Err(fail(format!(
                "{spec:?}: resolution {other:?} is not refund, store-credit, exchange or keep"
            )))
        }
    };
    Ok(pb::RequestedLine {
        order_line_id: field(spec, &parts, 0, "line id")?.to_owned(),
        quantity: number(spec, field(spec, &parts, 1, "quantity")?, "quantity")?,
        reason_code: reason.to_owned(),
        resolution: resolution.into(),
        exchange_sku: parts
            .get(3)
            .map(|sku| (*sku).to_owned())
            .unwrap_or_default(),
    })
}

fn received_line(spec: &str) -> anyhow::Result<pb::ReceivedLine> {
    let parts: Vec<&str> = spec.split(':').collect();
    Ok(pb::ReceivedLine {
        line_id: field(spec, &parts, 0, "line id")?.to_owned(),
        quantity: number(spec, field(spec, &parts, 1, "quantity")?, "quantity")?,
        location: parts.get(2).map(|l| (*l).to_owned()).unwrap_or_default(),
    })
}

fn inspected_line(spec: &str) -> anyhow::Result<pb::InspectedLine> {
    let parts: Vec<&str> = spec.split(':').collect();
    let grade = match field(spec, &parts, 2, "grade")? {
        "a" | "A" => pb::Grade::A,
        "b" | "B" => pb::Grade::B,
        "c" | "C" => pb::Grade::C,
        "unsellable" => pb::Grade::Unsellable,
        other => {
            return Err(fail(format!(
                "{spec:?}: grade {other:?} is not a, b, c or unsellable"
            )))
        }
    };
    Ok(pb::InspectedLine {
        line_id: field(spec, &parts, 0, "line id")?.to_owned(),
        quantity: number(spec, field(spec, &parts, 1, "quantity")?, "quantity")?,
        grade: grade.into(),
    })
}

fn label(raw: i32, names: &[(i32, &str)]) -> String {
    names
        .iter()
        .find(|(value, _)| *value == raw)
        .map_or_else(|| raw.to_string(), |(_, name)| (*name).to_owned())
}

fn state_name(raw: i32) -> String {
    pb::ReturnState::try_from(raw)
        .map(|state| {
            state
                .as_str_name()
                .trim_start_matches("RETURN_STATE_")
                .to_owned()
        })
        .unwrap_or_else(|_| raw.to_string())
}

/// The readable view of a case.
pub(super) fn format_case(case: &pb::ReturnCase) -> String {
    let key = case.key.clone().unwrap_or_default();
    let mut text = format_fields(&[
        ("return", format!("{}/{}", key.tenant, key.return_id)),
        ("state", state_name(case.state)),
        ("version", case.version.to_string()),
        ("order", case.order_ref.clone()),
        ("refund gate", case.refund_gate.clone()),
        (
            "ship by",
            if case.ship_by_unix_ms == 0 {
                "-".into()
            } else {
                format_unix_ms(case.ship_by_unix_ms)
            },
        ),
        (
            "tracking",
            if case.tracking_number.is_empty() {
                "-".into()
            } else {
                case.tracking_number.clone()
            },
        ),
    ]);
    let rows: Vec<Vec<String>> = case
        .lines
        .iter()
        .map(|line| {
            vec![
                line.line_id.clone(),
                line.sku.clone(),
                pb::Resolution::try_from(line.resolution)
                    .map(|r| r.as_str_name().trim_start_matches("RESOLUTION_").to_owned())
                    .unwrap_or_default(),
                line.requested.to_string(),
                line.approved.to_string(),
                line.received.to_string(),
                line.inspected.to_string(),
                line.disposed.to_string(),
                line.refunded_minor.to_string(),
            ]
        })
        .collect();
    text.push('\n');
    text.push_str(&format_table(
        &[
            ("LINE", Align::Left),
            ("SKU", Align::Left),
            ("RESOLUTION", Align::Left),
            ("REQ", Align::Right),
            ("APPR", Align::Right),
            ("RECV", Align::Right),
            ("INSP", Align::Right),
            ("DISP", Align::Right),
            ("REFUNDED", Align::Right),
        ],
        &rows,
    ));
    if !case.refunds.is_empty() {
        let rows: Vec<Vec<String>> = case
            .refunds
            .iter()
            .map(|r| {
                vec![
                    r.refund_id.clone(),
                    r.state.clone(),
                    r.gross_minor.to_string(),
                    (r.restocking_fee_minor + r.shipping_fee_minor).to_string(),
                    r.total_minor.to_string(),
                ]
            })
            .collect();
        text.push_str("\nrefunds\n");
        text.push_str(&format_table(
            &[
                ("REFUND", Align::Left),
                ("STATE", Align::Left),
                ("GROSS", Align::Right),
                ("FEES", Align::Right),
                ("TOTAL", Align::Right),
            ],
            &rows,
        ));
    }
    if !case.exchanges.is_empty() {
        let rows: Vec<Vec<String>> = case
            .exchanges
            .iter()
            .map(|h| {
                vec![
                    h.line_id.clone(),
                    h.sku.clone(),
                    h.location.clone(),
                    h.quantity.to_string(),
                    h.state.clone(),
                ]
            })
            .collect();
        text.push_str("\nexchanges\n");
        text.push_str(&format_table(
            &[
                ("LINE", Align::Left),
                ("SKU", Align::Left),
                ("LOCATION", Align::Left),
                ("QTY", Align::Right),
                ("STATE", Align::Left),
            ],
            &rows,
        ));
    }
    if !case.exceptions.is_empty() {
        let kinds = [
            (1, "RECEIPT_OVERDUE"),
            (2, "RECEIVED_MORE_THAN_APPROVED"),
            (3, "DAMAGED_ON_ARRIVAL"),
            (4, "ERP_CONFIRMATION_OVERDUE"),
            (5, "EFFECT_FAILING"),
            (6, "ERP_REFUSED"),
        ];
        let rows: Vec<Vec<String>> = case
            .exceptions
            .iter()
            .map(|e| {
                vec![
                    e.exception_id.to_string(),
                    label(e.kind, &kinds),
                    e.owner.clone(),
                    if e.resolved_by.is_empty() {
                        "open".into()
                    } else {
                        format!("resolved by {}", e.resolved_by)
                    },
                    e.note.clone(),
                ]
            })
            .collect();
        text.push_str("\nexceptions\n");
        text.push_str(&format_table(
            &[
                ("ID", Align::Right),
                ("KIND", Align::Left),
                ("OWNER", Align::Left),
                ("STATUS", Align::Left),
                ("NOTE", Align::Left),
            ],
            &rows,
        ));
    }
    if !case.pending_steps.is_empty() {
        text.push_str("\ninventory steps in progress\n");
        for step in &case.pending_steps {
            let retry = if step.attempts > 0 {
                format!(
                    " (attempt {}, last error: {})",
                    step.attempts + 1,
                    step.last_error
                )
            } else {
                String::new()
            };
            text.push_str(&format!("  {}. {}{}\n", step.step, step.description, retry));
        }
    }
    if !case.history.is_empty() {
        text.push_str("\nhistory\n");
        for entry in &case.history {
            text.push_str(&format!(
                "  v{:<4} {}  {}\n",
                entry.version,
                format_unix_ms(entry.recorded_at_unix_ms),
                entry.events.join(", ")
            ));
        }
    }
    text
}

fn show(
    ctx: &CallContext,
    reply: &pb::ReturnResponse,
    key: Option<&IdempotencyKey>,
) -> anyhow::Result<()> {
    if ctx.json {
        return print_json(reply);
    }
    let mut text = reply.r#case.as_ref().map(format_case).unwrap_or_default();
    if reply.replayed {
        text.push_str("\nreplayed: true (the stored reply of an earlier request with this key)\n");
    }
    if let Some(key) = key.filter(|key| key.generated) {
        text.push_str(&format!(
            "\nidempotency key: {} (generated; pass --idempotency-key to retry)\n",
            key.value
        ));
    }
    emit(&text)
}

pub(super) async fn run(
    ctx: &CallContext,
    channel: Channel,
    command: ReturnsCommand,
) -> anyhow::Result<()> {
    let mut client = ReturnsServiceClient::new(channel);
    macro_rules! mutate {
        ($case:expr, $method:ident, |$header:ident| $message:expr) => {{
            let (header, key) = $case.header();
            let $header = header;
            let reply = ctx
                .call($message, Some(&key), |r| client.$method(r))
                .await?;
            show(ctx, &reply, Some(&key))
        }};
    }
    match command {
        ReturnsCommand::Request(args) => open(ctx, &mut client, args, false).await,
        ReturnsCommand::Create(args) => open(ctx, &mut client, args, true).await,
        ReturnsCommand::Flag(args) => mutate!(args.case, flag_for_review, |header| {
            pb::FlagForReviewRequest {
                header,
                reason: args.reason,
            }
        }),
        ReturnsCommand::Approve(args) => mutate!(args.case, approve_return, |header| {
            pb::ApproveReturnRequest {
                header,
                approved_by: args.by,
            }
        }),
        ReturnsCommand::Decline(args) => {
            let reason = match args.reason {
                DeclineReasonArg::WindowEnded => pb::DeclineReason::WindowEnded,
                DeclineReasonArg::FinalSale => pb::DeclineReason::FinalSale,
                DeclineReasonArg::Policy => pb::DeclineReason::Policy,
                DeclineReasonArg::Fraud => pb::DeclineReason::Fraud,
                DeclineReasonArg::Other => pb::DeclineReason::Other,
            };
            mutate!(args.case, decline_return, |header| {
                pb::DeclineReturnRequest {
                    header,
                    reason: reason.into(),
                    note: args.note,
                }
            })
        }
        ReturnsCommand::Label(args) => {
            mutate!(args.case, attach_label, |header| pb::AttachLabelRequest {
                header,
                carrier: args.carrier,
                tracking_number: args.tracking,
                label_url: args.label_url,
            })
        }
        ReturnsCommand::Carrier(args) => {
            let milestone = match args.milestone {
                MilestoneArg::InTransit => pb::CarrierMilestone::InTransit,
                MilestoneArg::OutForDelivery => pb::CarrierMilestone::OutForDelivery,
                MilestoneArg::Delivered => pb::CarrierMilestone::Delivered,
            };
            mutate!(args.case, record_carrier_event, |header| {
                pb::RecordCarrierEventRequest {
                    header,
                    milestone: milestone.into(),
                    at_unix_ms: args.at_ms,
                }
            })
        }
        ReturnsCommand::Receive(args) => {
            let lines = args
                .lines
                .iter()
                .map(|spec| received_line(spec))
                .collect::<anyhow::Result<Vec<_>>>()?;
            mutate!(args.case, receive_items, |header| pb::ReceiveItemsRequest {
                header,
                lines,
                accept_surplus: args.accept_surplus
            })
        }
        ReturnsCommand::Inspect(args) => {
            let lines = args
                .lines
                .iter()
                .map(|spec| inspected_line(spec))
                .collect::<anyhow::Result<Vec<_>>>()?;
            mutate!(args.case, inspect_items, |header| pb::InspectItemsRequest {
                header,
                lines
            })
        }
        ReturnsCommand::Dispose(args) => {
            let disposition = match args.disposition {
                DispositionArg::Restock => pb::Disposition::Restock,
                DispositionArg::RestockAfterProcessing => pb::Disposition::RestockAfterProcessing,
                DispositionArg::DamagedHold => pb::Disposition::DamagedHold,
                DispositionArg::Scrap => pb::Disposition::Scrap,
                DispositionArg::ReturnToVendor => pb::Disposition::ReturnToVendor,
                DispositionArg::Missing => pb::Disposition::Missing,
                DispositionArg::KeepItem => pb::Disposition::KeepItem,
            };
            mutate!(args.case, dispose_items, |header| pb::DisposeItemsRequest {
                header,
                line_id: args.line_id,
                quantity: args.quantity,
                disposition: disposition.into(),
            })
        }
        ReturnsCommand::Process(args) => {
            let method = match args.method {
                MethodArg::OriginalPayment => pb::RefundMethod::OriginalPayment,
                MethodArg::StoreCredit => pb::RefundMethod::StoreCredit,
            };
            mutate!(args.case, process_return, |header| {
                pb::ProcessReturnRequest {
                    header,
                    method: method.into(),
                }
            })
        }
        ReturnsCommand::ApproveRefund(args) => mutate!(args.case, approve_refund, |header| {
            pb::ApproveRefundRequest {
                header,
                approved_by: args.by,
            }
        }),
        ReturnsCommand::ConfirmErp(args) => {
            mutate!(args.case, confirm_erp, |header| pb::ConfirmErpRequest {
                header,
                credit_memo: args.credit_memo
            })
        }
        ReturnsCommand::Close(case) => mutate!(case, close_return, |header| {
            pb::CloseReturnRequest { header }
        }),
        ReturnsCommand::Reopen(args) => {
            mutate!(args.case, reopen_return, |header| pb::ReopenReturnRequest {
                header,
                reason: args.reason
            })
        }
        ReturnsCommand::Cancel(args) => {
            mutate!(args.case, cancel_return, |header| pb::CancelReturnRequest {
                header,
                reason: args.reason
            })
        }
        ReturnsCommand::ResolveException(args) => mutate!(args.case, resolve_exception, |header| {
            pb::ResolveExceptionRequest {
                header,
                exception_id: args.exception_id,
                resolved_by: args.by,
                note: args.note,
            }
        }),
        ReturnsCommand::Get(args) => {
            let request = pb::GetReturnRequest {
                key: Some(pb::ReturnKey {
                    tenant: args.tenant,
                    return_id: args.return_id,
                }),
                include_history: args.history,
            };
            let reply = ctx.call(request, None, |r| client.get_return(r)).await?;
            show(ctx, &reply, None)
        }
        ReturnsCommand::List(args) => {
            let state = args
                .state
                .map_or(pb::ReturnState::Unspecified, |state| match state {
                    StateArg::Requested => pb::ReturnState::Requested,
                    StateArg::InReview => pb::ReturnState::InReview,
                    StateArg::Approved => pb::ReturnState::Approved,
                    StateArg::InTransit => pb::ReturnState::InTransit,
                    StateArg::Received => pb::ReturnState::Received,
                    StateArg::Inspected => pb::ReturnState::Inspected,
                    StateArg::Processed => pb::ReturnState::Processed,
                    StateArg::Declined => pb::ReturnState::Declined,
                    StateArg::Canceled => pb::ReturnState::Canceled,
                    StateArg::Expired => pb::ReturnState::Expired,
                    StateArg::Closed => pb::ReturnState::Closed,
                });
            let request = pb::ListReturnsRequest {
                tenant: args.tenant,
                state: state.into(),
                with_open_exception: args.with_exception,
                order_ref: args.order_ref,
                page_size: args.page_size,
                page_token: args.page_token,
            };
            let reply = ctx.call(request, None, |r| client.list_returns(r)).await?;
            if ctx.json {
                return print_json(&reply);
            }
            let rows: Vec<Vec<String>> = reply
                .returns
                .iter()
                .map(|r| {
                    vec![
                        r.key
                            .as_ref()
                            .map(|k| k.return_id.clone())
                            .unwrap_or_default(),
                        state_name(r.state),
                        r.order_ref.clone(),
                        r.open_exceptions.to_string(),
                        r.version.to_string(),
                    ]
                })
                .collect();
            let mut text = format_table(
                &[
                    ("RETURN", Align::Left),
                    ("STATE", Align::Left),
                    ("ORDER", Align::Left),
                    ("EXCEPTIONS", Align::Right),
                    ("VERSION", Align::Right),
                ],
                &rows,
            );
            if !reply.next_page_token.is_empty() {
                text.push_str(&format!("\nmore: --page-token {}\n", reply.next_page_token));
            }
            emit(&text)
        }
    }
}

async fn open(
    ctx: &CallContext,
    client: &mut ReturnsServiceClient<Channel>,
    args: OpenArgs,
    pre_approved: bool,
) -> anyhow::Result<()> {
    let now = skuld_cluster::now_ms();
    let order_lines = args
        .order_lines
        .iter()
        .map(|spec| order_line(spec, now))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let lines = args
        .lines
        .iter()
        .map(|spec| requested_line(spec, &args.reason))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (header, key) = args.case.header();
    let request = pb::OpenReturnRequest {
        header,
        order_ref: args.order_ref,
        customer_ref: args.customer_ref,
        channel: args.channel,
        order_lines,
        lines,
        override_window: args.override_window,
    };
    let reply = if pre_approved {
        ctx.call(request, Some(&key), |r| client.create_return(r))
            .await?
    } else {
        ctx.call(request, Some(&key), |r| client.request_return(r))
            .await?
    };
    show(ctx, &reply, Some(&key))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_line_specs() {
        let line = order_line("L1:SHIRT:3:9000:DC1", 7).unwrap();
        assert_eq!(
            (
                line.quantity,
                line.amount_paid_minor,
                line.delivered_at_unix_ms,
                line.location.as_str()
            ),
            (3, 9_000, 7, "DC1")
        );
        let requested = requested_line("L1:2:exchange:SHIRT-L", "too_small").unwrap();
        assert_eq!(
            (requested.quantity, requested.exchange_sku.as_str()),
            (2, "SHIRT-L")
        );
        assert!(requested_line("L1:2:swap", "").is_err());
        assert_eq!(
            inspected_line("L1:1:unsellable").unwrap().grade,
            pb::Grade::Unsellable as i32
        );
        assert!(received_line("L1:x").is_err());
    }
}
